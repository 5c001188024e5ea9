"""PyTorch-native Llama training, written the way an expert PyTorch user (torchtitan) writes it: the
baseline that apps/trainer is measured against (issues 13, 14 and 15).

    torchrun --standalone --nproc-per-node=1 bench/torch_llama_train.py --preset llama2-7b --seq 32768 \\
        --out out.json [--layers N] [--steps 6] [--warmup-steps 2] [--no-compile] [--cpu-offload] [--cp N]

What it is:
  - a Llama decoder in plain PyTorch (RMSNorm, RoPE rotate-half, GQA, SwiGLU); the model knows nothing
    of parallelism, `parallelize` applies it in torchtitan's order: full activation checkpointing per
    block (torch.utils.checkpoint, use_reentrant=False), torch.compile per block, then FSDP2
    (`fully_shard`, bf16 parameters, fp32 gradient reduction, fp32 master weights), optionally with
    `CPUOffloadPolicy` (parameters, gradients and AdamW state on the host);
  - attention through F.scaled_dot_product_attention under sdpa_kernel(CUDNN_ATTENTION) only (a shape
    cuDNN refuses is an error, not a slower kernel); with --cp N, PyTorch's context_parallel (ring
    attention over N ranks, head-tail = zigzag load balance for causal masks; the other ranks are
    data-parallel);
  - AdamW with fused=True, global-norm clipping at 1.0, the full-vocabulary fp32 cross-entropy;
  - data: seeded random tokens (ids 1..V-1, a fresh sequence per step), or a raw token file (--data).

What it reports: loss and step time per step (torch.cuda.synchronize and the host clock around each
step, slowest rank: with --cpu-offload the optimizer step runs on the host, which CUDA events alone
would not see); the median step time of the steps after the warm-up ones; tokens/s, TFLOP/s per GPU and MFU counted as ../shared/DESIGN.md section 9 says (6 * params *
tokens + 3 * causal attention forward FLOPs, 2*S^2*d_model*layers per sequence; recompute not counted;
peak 989 TFLOP/s bf16 per GPU); peak GPU memory (allocated and reserved) and peak host RSS. One JSON
object to --out and a one-line summary. An out-of-memory error (GPU or host) is a result row, "OOM at
step k", not a crash; with several ranks the rank that ran out writes it and exits 3 so that torchrun
stops the others.

If torch.compile fails, the line "compile failed ... running eager" is printed, the JSON says so
("compile": "failed: ..."), and the run goes on eagerly (torch.compiler.set_stance("force_eager")).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import context_parallel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16, per GPU (DESIGN.md section 9)
GiB = 2**30


# ---------------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class LlamaConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Llama-3 rope scaling (factor, low_freq_factor, high_freq_factor, original context); None = plain
    rope_scaling: tuple[float, float, float, int] | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


PRESETS = {
    "llama2-7b": LlamaConfig(4096, 32, 32, 32, 11008, 32000),
    "llama3-8b": LlamaConfig(4096, 32, 32, 8, 14336, 128256, rope_theta=500000.0, rope_scaling=(8.0, 1.0, 4.0, 8192)),
    # Llama-3.2-1B's shapes with an untied output projection (1.50B parameters instead of 1.24B)
    "llama3-1b": LlamaConfig(2048, 16, 32, 8, 8192, 128256, rope_theta=500000.0, rope_scaling=(32.0, 1.0, 4.0, 8192)),
    # a few seconds on any GPU: for checking the script itself
    "debug": LlamaConfig(256, 2, 4, 2, 768, 2048),
}


def param_count(cfg: LlamaConfig) -> int:
    hd = cfg.head_dim
    attn = cfg.dim * cfg.n_heads * hd * 2 + cfg.dim * cfg.n_kv_heads * hd * 2  # wq, wo, wk, wv
    mlp = 3 * cfg.dim * cfg.ffn_dim
    per_layer = attn + mlp + 2 * cfg.dim  # + two RMSNorm weights
    return cfg.n_layers * per_layer + 2 * cfg.vocab_size * cfg.dim + cfg.dim  # embedding, output, final norm


def train_flops_per_sequence(cfg: LlamaConfig, n_params: int, seq: int) -> float:
    """DESIGN.md section 9: 6*params*tokens + 3 * causal attention forward (4*S^2*d*L/2); no recompute."""
    attn_fwd = 4 * seq * seq * cfg.dim * cfg.n_layers / 2
    return 6 * n_params * seq + 3 * attn_fwd


# ---------------------------------------------------------------------------------------------------
# Model (plain PyTorch; Hugging Face's LlamaForCausalLM math)


def rope_tables(cfg: LlamaConfig, seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [seq, head_dim] in bf16, rotate-half layout (the frequencies repeated twice)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd))
    if cfg.rope_scaling is not None:
        # Llama 3: wavelengths longer than original/low_freq_factor are slowed by `factor`, shorter than
        # original/high_freq_factor kept, and the band between interpolated smoothly.
        factor, low, high, original = cfg.rope_scaling
        wavelen = 2 * math.pi / inv_freq
        # (Clamping the blend weight to [0, 1] gives Hugging Face's three cases in one expression.)
        smooth = ((original / wavelen - low) / (high - low)).clamp(0.0, 1.0)
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    pos = torch.arange(seq, dtype=torch.float64, device=device)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, S, H, hd]; cos, sin [S, hd]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = apply_rope(self.wq(x).view(b, s, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(b, s, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, hd]: SDPA's layout, seq dim 2
        if self.n_kv_heads != self.n_heads:
            # K/V repeated per query group before SDPA (torchtitan's repeat_kv): neither cuDNN's SDPA
            # path nor context_parallel's ring takes enable_gqa.
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # Called through the module attribute F.scaled_dot_product_attention on purpose: that is the
        # name context_parallel replaces with its ring attention.
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.output(self.norm(h))  # logits [B, S, V] in bf16


# ---------------------------------------------------------------------------------------------------
# Parallelism, applied outside the model in torchtitan's order: AC, compile, FSDP2


class FullCheckpoint(nn.Module):
    """Full activation checkpointing of one block: only its input is kept, the rest recomputed."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, *args, use_reentrant=False, preserve_rng_state=False)


def parallelize(model: Llama, mesh, use_compile: bool, cpu_offload: bool) -> None:
    for i, block in enumerate(model.layers):
        wrapped: nn.Module = FullCheckpoint(block)
        if use_compile:
            wrapped = torch.compile(wrapped, fullgraph=True)
        model.layers[i] = wrapped
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kw = {"mesh": mesh, "mp_policy": mp}
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
    n = len(model.layers)
    for i, block in enumerate(model.layers):
        # The last block's parameters are needed again right away by the backward: keep them gathered.
        fully_shard(block, reshard_after_forward=i < n - 1, **kw)
    fully_shard(model, **kw)  # embedding, final norm, output


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, rank: int) -> None:
    """Hugging Face's Llama init (normal, std 0.02; norms 1), drawn on the GPU shard by shard (fast also
    when the shards live in host memory) from a generator seeded per parameter and rank."""
    g = torch.Generator(device="cuda")
    for i, (name, p) in enumerate(model.named_parameters()):
        local = p.to_local() if isinstance(p, DTensor) else p
        tmp = torch.empty(local.shape, dtype=local.dtype, device="cuda")
        if name.endswith("norm.weight"):
            tmp.fill_(1.0)
        else:
            g.manual_seed(seed * 1_000_003 + i * 7919 + rank)
            tmp.normal_(0.0, 0.02, generator=g)
        local.copy_(tmp)
        del tmp


# ---------------------------------------------------------------------------------------------------
# Data


class Batches:
    """inputs, labels [1, seq] int64 on the GPU for (step, data-parallel rank): seeded random ids in
    1..V-1 (never all zero; a new sequence every step), or consecutive windows of a raw token file."""

    def __init__(self, cfg: LlamaConfig, seq: int, seed: int, path: str | None, dtype: str):
        self.vocab, self.seq, self.seed = cfg.vocab_size, seq, seed
        self.tokens = None
        if path is not None:
            import numpy as np

            if not os.path.isfile(path):
                sys.exit(f"torch_llama_train: --data {path}: no such file; give a raw {dtype} token file")
            self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
            if len(self.tokens) < seq + 1:
                sys.exit(f"torch_llama_train: --data {path} holds {len(self.tokens)} tokens, fewer than --seq + 1 = {seq + 1}")

    def get(self, step: int, dp_rank: int, dp: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokens is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + dp_rank)
            ids = torch.randint(1, self.vocab, (self.seq + 1,), generator=g)
        else:
            start = ((step * dp + dp_rank) * self.seq) % (len(self.tokens) - self.seq)
            ids = torch.from_numpy(self.tokens[start : start + self.seq + 1].astype("int64"))
            if int(ids.max()) >= self.vocab:
                sys.exit(f"torch_llama_train: token id {int(ids.max())} in --data is >= the vocabulary ({self.vocab}); check --data-dtype and the tokenizer")
        ids = ids.to("cuda", non_blocking=True).view(1, -1)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


# ---------------------------------------------------------------------------------------------------
# Run


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="PyTorch FSDP2 Llama training baseline (see the module docstring)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama2-7b")
    p.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    p.add_argument("--seq", type=int, default=32768, help="tokens per sequence (one sequence per data-parallel rank)")
    p.add_argument("--steps", type=int, default=6, help="steps run in all, the warm-up ones included")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile each block")
    p.add_argument("--cpu-offload", action="store_true", help="FSDP2 CPUOffloadPolicy: parameters, gradients, AdamW state on the host")
    p.add_argument("--cp", type=int, default=1, help="context-parallel degree (PyTorch context_parallel); world/cp ranks are data-parallel")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="raw little-endian token file (default: seeded random tokens)")
    p.add_argument("--data-dtype", choices=["uint16", "uint32"], default="uint16")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    a = p.parse_args(argv)
    if a.layers is not None and a.layers < 1:
        p.error(f"--layers {a.layers}: give at least 1")
    if a.steps <= a.warmup_steps or a.warmup_steps < 0:
        p.error(f"--steps {a.steps} --warmup-steps {a.warmup_steps}: need 0 <= warm-up < steps so that a step is timed")
    if a.cp < 1:
        p.error(f"--cp {a.cp}: give at least 1")
    return a


def init_distributed(cpu_offload: bool) -> tuple[int, int, int]:
    # Works under torchrun and as a plain single process.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    # Offloaded gradients are on the host: clipping reduces their norm there, through gloo.
    backend = "cpu:gloo,cuda:nccl" if cpu_offload else "nccl"
    dist.init_process_group(backend, device_id=torch.device("cuda", local_rank))
    return dist.get_rank(), dist.get_world_size(), local_rank


def host_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:400]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rank, world, _ = init_distributed(args.cpu_offload)
    say = print if rank == 0 else (lambda *a, **k: None)
    if world % args.cp != 0:
        sys.exit(f"torch_llama_train: --cp {args.cp} does not divide the {world} ranks; pick a divisor of {world}")
    if args.cp > 1 and args.seq % (2 * args.cp) != 0:
        sys.exit(f"torch_llama_train: --seq {args.seq} is not a multiple of 2 * cp = {2 * args.cp} (zigzag load balance); round it")
    cp, dp = args.cp, world // args.cp
    dp_rank = rank // cp

    cfg = PRESETS[args.preset]
    if args.layers is not None:
        cfg = replace(cfg, n_layers=args.layers)
    n_params = param_count(cfg)
    flops_step = dp * train_flops_per_sequence(cfg, n_params, args.seq)
    tokens_step = dp * args.seq

    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
        "gpus": world,
        "cp": cp,
        "dp": dp,
        "preset": args.preset,
        "model": asdict(cfg),
        "params": n_params,
        "seq": args.seq,
        "tokens_per_step": tokens_step,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "recipe": "FSDP2 (bf16 params, fp32 reduce, fp32 master) + full AC per block + cuDNN SDPA + fused AdamW",
        "cpu_offload": args.cpu_offload,
        "compile": "on" if args.compile else "off",
        "data": args.data or "random",
        "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")},
        "argv": argv,
        "status": "ok",
        "losses": [],
        "grad_norms": [],
        "step_times_s": [],
    }
    say(f"torch_llama_train: {args.preset} ({n_params / 1e9:.2f}B params, {cfg.n_layers} layers) seq {args.seq} on {world} GPU(s), "
        f"cp {cp} dp {dp}, compile {'on' if args.compile else 'off'}, cpu offload {'on' if args.cpu_offload else 'off'}, "
        f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF')}")

    fsdp_mesh = init_device_mesh("cuda", (world,), mesh_dim_names=("fsdp",))
    cp_mesh = init_device_mesh("cuda", (dp, cp), mesh_dim_names=("dp", "cp"))["cp"] if cp > 1 else None

    def finish(alone: bool = False) -> None:
        """Writes the JSON (rank 0, or a rank stopping alone) with the memory peaks over all ranks (a
        rank stopping alone reports its own)."""
        stats = torch.tensor(
            [torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(), host_rss_bytes()],
            dtype=torch.float64, device="cuda",
        )
        host_sum = stats[2].clone()
        if not alone and world > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
            dist.all_reduce(host_sum, op=dist.ReduceOp.SUM)
        result["peak_mem_allocated_gib"] = stats[0].item() / GiB
        result["peak_mem_reserved_gib"] = stats[1].item() / GiB
        result["peak_host_rss_gib"] = stats[2].item() / GiB  # largest rank
        result["host_rss_all_ranks_gib"] = host_sum.item() / GiB  # ranks share the host
        timed = result["step_times_s"][args.warmup_steps :]
        if timed and result["status"] == "ok":
            med = statistics.median(timed)
            result["median_step_s"] = med
            result["tokens_per_s"] = tokens_step / med
            result["tokens_per_s_per_gpu"] = tokens_step / med / world
            result["tflops_per_gpu"] = flops_step / med / world / 1e12
            result["mfu"] = flops_step / med / (world * PEAK_BF16_FLOPS)
            if result["step_times_s"]:
                result["first_step_s"] = result["step_times_s"][0]
                # What the first step spent beyond a steady one: compilation, mostly (plus allocator and
                # cuDNN plan warm-up, which an eager first step also pays).
                result["compile_s"] = result["step_times_s"][0] - med if result["compile"] == "on" else 0.0
        if alone or rank == 0:
            tmp = args.out + f".tmp{rank}"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, args.out)
            print(summary_line(result), flush=True)

    t_init = time.perf_counter()
    try:
        with torch.device("meta"):
            model = Llama(cfg)
        parallelize(model, fsdp_mesh, args.compile, args.cpu_offload)
        model.to_empty(device="cpu" if args.cpu_offload else "cuda")
        init_weights(model, args.seed, rank)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        cos_full, sin_full = rope_tables(cfg, args.seq, torch.device("cuda"))
        batches = Batches(cfg, args.seq, args.seed, args.data, args.data_dtype)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        result.update(status="oom", oom_step="init", error=first_line(e))
        say(f"OOM while building the model: {first_line(e)}")
        finish(alone=True)
        if world > 1:
            os._exit(3)
        dist.destroy_process_group()
        return 0
    result["init_s"] = time.perf_counter() - t_init
    say(f"init {result['init_s']:.1f} s, {torch.cuda.memory_allocated() / GiB:.1f} GiB allocated"
        + ("" if args.data else f"; on random tokens the loss stays near ln V = {math.log(cfg.vocab_size):.2f}"))

    def train_step(step: int) -> torch.Tensor:  # [loss, grad norm] on the GPU
        inputs, labels = batches.get(step, dp_rank, dp)
        if cp_mesh is not None:
            # Fresh copies each step, all left unrestored: context_parallel shards them in place, and a
            # step that raises inside it never gets to restore anything.
            cos, sin = cos_full.clone(), sin_full.clone()
            bufs = [inputs, labels, cos, sin]
            ctx = context_parallel(cp_mesh, buffers=bufs, buffer_seq_dims=[1, 1, 0, 0], no_restore_buffers=set(bufs))
        else:
            cos, sin, ctx = cos_full, sin_full, contextlib.nullcontext()
        # The backward runs inside both contexts too: checkpointing recomputes attention there.
        with ctx, sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            logits = model(inputs, cos, sin)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))
            del logits
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        return torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device)])

    step = 0
    while step < args.steps:
        failure: str | None = None
        oom = False
        torch.cuda.synchronize()
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        try:
            stats = train_step(step)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001
            oom = is_oom(e)
            if not oom and not (step == 0 and result["compile"] == "on"):
                raise
            failure = first_line(e)
        dt = time.perf_counter() - t0
        if oom:
            result.update(status="oom", oom_step=step + 1, error=failure)  # 1-based, as the step lines
            print(f"[rank {rank}] OOM at step {step + 1}: {failure}", flush=True)
            finish(alone=True)
            if world > 1:
                os._exit(3)
            dist.destroy_process_group()
            return 0
        if failure is not None:
            # Compilation fails in the first step; the same step is rerun eagerly, after the failed one's
            # tensors (held by the exception) are gone.
            result["compile"] = f"failed: {failure}"
            say(f"compile failed ({failure}); running eager from here (torch.compiler.set_stance('force_eager'))")
            torch.compiler.set_stance("force_eager")
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        if world > 1:
            t = torch.tensor([dt], device="cuda")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank ends it
            dt = t.item()
            dist.all_reduce(stats)
            stats /= world
        loss, gnorm = stats.tolist()
        result["losses"].append(loss)
        result["grad_norms"].append(gnorm)
        result["step_times_s"].append(dt)
        if step == 0 and result["compile"] == "on":
            result["compiled_graphs"] = compiled_graph_count()
        tag = "warm-up" if step < args.warmup_steps else f"{tokens_step / dt:,.0f} tok/s, MFU {flops_step / dt / (world * PEAK_BF16_FLOPS):.1%}"
        say(f"step {step + 1}/{args.steps}  loss {loss:.4f}  grad norm {gnorm:.3f}  {dt:.2f} s  ({tag})  "
            f"peak {torch.cuda.max_memory_allocated() / GiB:.1f} GiB", flush=True)
        if not math.isfinite(loss):
            result.update(status="error", error=f"loss is {loss} at step {step}")
            break
        step += 1
    finish()
    dist.destroy_process_group()
    return 0 if result["status"] == "ok" else 1


def compiled_graph_count() -> int:
    # How many distinct graphs dynamo built: 1-2 when the blocks share one compiled graph, as intended;
    # one per block would mean a recompile per block.
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def summary_line(r: dict) -> str:
    head = f"torch {r['preset']} seq {r['seq']} gpus {r['gpus']} cp {r['cp']} compile {r['compile'][:6]} offload {'on' if r['cpu_offload'] else 'off'}:"
    mem = f"peak GPU {r.get('peak_mem_allocated_gib', 0):.1f} GiB alloc / {r.get('peak_mem_reserved_gib', 0):.1f} reserved, host {r.get('peak_host_rss_gib', 0):.1f} GiB"
    if r["status"] == "oom":
        return f"{head} OOM at step {r['oom_step']} ({r['error'][:160]}); {mem}"
    if r["status"] != "ok" or "tokens_per_s" not in r:
        return f"{head} {r['status']}: {r.get('error', 'no timed step')}; {mem}"
    return (f"{head} {r['tokens_per_s']:,.0f} tok/s ({r['mfu']:.1%} MFU, {r['tflops_per_gpu']:.0f} TFLOP/s/GPU), "
            f"step {r['median_step_s']:.2f} s, compile ~{r['compile_s']:.0f} s, {mem}, "
            f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
