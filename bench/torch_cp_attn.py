# PyTorch's context-parallel ring attention (torch.distributed.tensor.experimental.context_parallel with
# SDPA), forward+backward, causal, bf16, [1, H, T, D]: the comparison for bench/distattn.ts.
# Run: torchrun --nproc-per-node=P bench/torch_cp_attn.py out.json T1,T2,... H HKV [backend]
# Also times one GPU on the whole sequence (rank 0, if it fits) as the speedup baseline.
import json, os, statistics, sys
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

out_path, Ts, H, HKV = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
backend_name = sys.argv[5] if len(sys.argv) > 5 else "cudnn"
backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]
D = 128
dist.init_process_group("nccl")
rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.experimental import context_parallel
mesh = init_device_mesh("cuda", (world,))

def flops(T):  # causal halved: fwd 4*T*T*H*D/2, bwd 2.5x
    f = 4 * T * T * H * D / 2
    return f, 3.5 * f

def med_time(fn, warmup=1, reps=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        dist.barrier()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize()
        t = torch.tensor([s.elapsed_time(e)], device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        ts.append(t.item())
    return statistics.median(ts)

results = []
for T in Ts:
    g = torch.Generator(device="cuda").manual_seed(T)
    mk = lambda h: torch.randn(1, h, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v, do = mk(H), mk(HKV), mk(HKV), mk(H)
    if HKV != H:  # context_parallel's ring does not take GQA: K/V are repeated (what users do today)
        k = k.repeat_interleave(H // HKV, dim=1)
        v = v.repeat_interleave(H // HKV, dim=1)
    row = {"T": T, "H": H, "Hkv": HKV, "world": world, "sdpa": backend_name}
    try:
        with context_parallel(mesh, buffers=[q, k, v, do], buffer_seq_dims=[2, 2, 2, 2]):
            # the buffers are sharded in place on entry; only then can they require grad
            for t in (q, k, v):
                t.requires_grad_(True)
            with sdpa_kernel(backend):
                def fwd():
                    with torch.no_grad():
                        F.scaled_dot_product_attention(q, k, v, is_causal=True)
                def fwdbwd():
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    o.backward(do)
                row["cp_fwdbwd_ms"] = med_time(fwdbwd)
            # Leaving the context restores the full buffers in place, which torch refuses for tensors
            # that require grad ("cannot resize variables that require grad"): drop the flag first.
            for t in (q, k, v):
                t.grad = None
                t.requires_grad_(False)
    except Exception as e:  # noqa: BLE001
        row["cp_error"] = f"{type(e).__name__}: {e}"[:300]
    del q, k, v, do
    torch.cuda.empty_cache()
    if rank == 0:
        try:
            q, k, v, do = mk(H), mk(H), mk(H), mk(H)
            for t in (q, k, v):
                t.requires_grad_(True)
            with sdpa_kernel(backend):
                def f1():
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True); o.backward(do)
                f1()
                ts = []
                for _ in range(3):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record(); f1(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
                row["one_gpu_fwdbwd_ms"] = statistics.median(ts)
            del q, k, v, do
        except Exception as e:  # noqa: BLE001
            row["one_gpu_error"] = f"{type(e).__name__}: {e}"[:200]
        torch.cuda.empty_cache()
    dist.barrier()
    fw, fb = flops(T)
    if "cp_fwdbwd_ms" in row:
        row["cp_fwdbwd_tflops_total"] = fb / (row["cp_fwdbwd_ms"] * 1e-3) / 1e12
    if rank == 0:
        print(json.dumps(row), flush=True)
        results.append(row)
if rank == 0:
    # version: bench/schema.ts SCHEMA_VERSION
    json.dump({"version": 1, "device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, open(out_path, "w"), indent=2)
dist.destroy_process_group()
