# PyTorch SDPA on one GPU, the comparison for attn-bench.ts: cuDNN and flash backends, layout
# [B=1, H, T, D], is_causal=True, bf16, H = 32 (Hkv = 32 and 8 with enable_gqa=True), D = 128,
# T = 8K, 32K, 64K. Forward (no grad), backward alone and forward+backward; CUDA events after warm-up,
# median of 5. TFLOP/s with causal FLOPs halved (fwd 4*T*T*H*D/2, bwd 2.5x), as attn-bench.ts.
#   python3 packages/attention/bench/torch_sdpa_bench.py [out.json] [T1,T2,...]
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

out_path = sys.argv[1] if len(sys.argv) > 1 else None
Ts = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [8192, 32768, 65536]
H, D, REPS = 32, 128, 5
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def med_ms(fn, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(REPS):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


props = torch.cuda.get_device_properties(0)
print(f"device: {props.name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; SDPA H={H} D={D} causal bf16, median of {REPS}")
print(f"{'backend':>7} {'T':>6} {'Hkv':>4} {'fwd ms':>9} {'bwd ms':>9} {'f+b ms':>9} {'fwd TF':>7} {'bwd TF':>7} {'f+b TF':>7}")
results = []
for T in Ts:
    for HKV in (32, 8):
        g = torch.Generator(device="cuda").manual_seed(T + HKV)
        mk = lambda h: torch.randn(1, h, T, D, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
        q, k, v, do = mk(H), mk(HKV), mk(HKV), mk(H)
        for t in (q, k, v):
            t.requires_grad_(True)
        gqa = HKV != H
        fl = 4 * T * T * H * D / 2
        for name, backend in BACKENDS.items():
            row = {"backend": name, "T": T, "H": H, "Hkv": HKV, "D": D, "causal": True}
            try:
                with sdpa_kernel(backend):
                    def fwd():
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

                    def fwdbwd():
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
                        o.backward(do)

                    o_keep = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

                    def bwd():
                        torch.autograd.grad(o_keep, (q, k, v), do, retain_graph=True)

                    row["fwd_ms"] = med_ms(fwd)
                    row["bwd_ms"] = med_ms(bwd)
                    row["fwdbwd_ms"] = med_ms(fwdbwd)
                    del o_keep
                row["fwd_tflops"] = fl / row["fwd_ms"] / 1e9
                row["bwd_tflops"] = 2.5 * fl / row["bwd_ms"] / 1e9
                row["fwdbwd_tflops"] = 3.5 * fl / row["fwdbwd_ms"] / 1e9
                print(f"{name:>7} {T:>6} {HKV:>4} {row['fwd_ms']:9.2f} {row['bwd_ms']:9.2f} {row['fwdbwd_ms']:9.2f} "
                      f"{row['fwd_tflops']:7.1f} {row['bwd_tflops']:7.1f} {row['fwdbwd_tflops']:7.1f}")
            except Exception as e:  # noqa: BLE001 - a backend that refuses a shape is a result, not a crash
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                print(f"{name:>7} {T:>6} {HKV:>4} error: {row['error'][:100]}")
            results.append(row)
            q.grad = k.grad = v.grad = None
            torch.cuda.empty_cache()
        del q, k, v, do
        torch.cuda.empty_cache()

if out_path:
    with open(out_path, "w") as f:
        json.dump({"device": props.name, "torch": torch.__version__, "results": results}, f, indent=2)
