# The comparison for layer-bench.ts: one Llama-2-7B decoder layer (C = 4096, 32 heads x 128, MHA,
# ffn 11008) in plain PyTorch, bf16 weights and activations, written as transformers computes it
# (RMSNorm in f32 then cast, rotate-half RoPE, SDPA causal, SwiGLU MLP with separate gate/up/down
# linears), attention through SDPA's cuDNN backend. Eager and torch.compile (static shapes), at T
# local tokens (default 32K and 64K). Forward (training mode) and backward (dx and the weight
# gradients) timed separately with CUDA events after 2 warm-up steps, median of 5. FLOPs as in
# layer-bench.ts: fwd = 2 T N_mm + 2 T^2 C, bwd = 2 x fwd.
#   python3 packages/llama/bench/torch_llama_layer.py [out.json] [T1,T2,...]
import json
import statistics
import sys
import traceback

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

out_path = sys.argv[1] if len(sys.argv) > 1 else None
Ts = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [32768, 65536]
C, H, HKV, FFN, EPS, THETA, REPS, WARMUP = 4096, 32, 32, 11008, 1e-5, 10000.0, 5, 2
D = C // H
N_MM = 4 * C * C + 3 * C * FFN


def rms(x, w):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
    return w * xf.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.attn_norm = torch.nn.Parameter(torch.ones(C))
        self.q, self.k, self.v, self.o = lin(C, H * D), lin(C, HKV * D), lin(C, HKV * D), lin(H * D, C)
        self.mlp_norm = torch.nn.Parameter(torch.ones(C))
        self.gate, self.up, self.down = lin(C, FFN), lin(C, FFN), lin(FFN, C)
        for m in (self.q, self.k, self.v, self.o, self.gate, self.up, self.down):
            torch.nn.init.normal_(m.weight, std=0.02)

    def forward(self, x, cos, sin):
        T = x.shape[0]
        xn = rms(x, self.attn_norm)
        q = self.q(xn).view(T, H, D).transpose(0, 1)
        k = self.k(xn).view(T, HKV, D).transpose(0, 1)
        v = self.v(xn).view(T, HKV, D).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=HKV != H)[0]
        h = x + self.o(o.transpose(0, 1).reshape(T, H * D))
        hn = rms(h, self.mlp_norm)
        return h + self.down(F.silu(self.gate(hn)) * self.up(hn))


def rope(T):
    inv = 1.0 / (THETA ** (torch.arange(0, D, 2, device="cuda", dtype=torch.float32) / D))
    f = torch.outer(torch.arange(T, device="cuda", dtype=torch.float32), inv)
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)


def bench(name, fn, layer, T):
    g = torch.Generator(device="cuda").manual_seed(T)
    x = torch.randn(T, C, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
    dy = torch.randn(T, C, device="cuda", dtype=torch.bfloat16, generator=g) * 1e-3
    cos, sin = rope(T)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    fwd, bwd = [], []
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for i in range(WARMUP + REPS):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        ev[0].record()
        y = fn(x, cos, sin)
        ev[1].record()
        y.backward(dy)
        ev[2].record()
        ev[2].synchronize()
        del y
        if i >= WARMUP:
            fwd.append(ev[0].elapsed_time(ev[1]))
            bwd.append(ev[1].elapsed_time(ev[2]))
    f_ms, b_ms = statistics.median(fwd), statistics.median(bwd)
    fl = 2 * T * N_MM + 2 * T * T * C
    return {
        "impl": name,
        "policy": "none",
        "T": T,
        "fwdMs": f_ms,
        "bwdMs": b_ms,
        "fwdTflops": fl / f_ms / 1e9,
        "bwdTflops": 2 * fl / b_ms / 1e9,
        "totalTflops": 3 * fl / (f_ms + b_ms) / 1e9,
        "peakGiB": torch.cuda.max_memory_allocated() / 2**30,
    }


props = torch.cuda.get_device_properties(0)
print(f"device: {props.name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; layer C={C} H={H} Hkv={HKV} ffn={FFN} bf16, SDPA cuDNN, median of {REPS}")
torch.manual_seed(0)
layer = Layer().to(device="cuda", dtype=torch.bfloat16)
rows = []
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    for T in Ts:
        for name in ("torch-eager", "torch-compile"):
            try:
                fn = layer if name == "torch-eager" else torch.compile(layer, dynamic=False)
                r = bench(name, fn, layer, T)
                rows.append(r)
                print(f"{name:>14} T={T:>6}: fwd {r['fwdMs']:8.1f} ms ({r['fwdTflops']:.0f} TF/s), bwd {r['bwdMs']:8.1f} ms ({r['bwdTflops']:.0f} TF/s), "
                      f"f+b {r['totalTflops']:.0f} TF/s, peak {r['peakGiB']:.1f} GiB", flush=True)
            except Exception as e:  # a failed variant (e.g. compile) is reported, the others still run
                traceback.print_exc()
                rows.append({"impl": name, "T": T, "error": f"{type(e).__name__}: {e}"[:300]})
            torch.cuda.empty_cache()
if out_path:
    with open(out_path, "w") as f:
        json.dump({"device": props.name, "torch": torch.__version__, "rows": [r for r in rows if "error" not in r], "errors": [r for r in rows if "error" in r]}, f, indent=2)
