# PyTorch side of bench/foundation.ts: the same GEMMs through torch.matmul (cuBLAS) and device copies,
# timed the same way (CUDA events, warm-up, median). Usage: python3 bench/torch_foundation.py out.json
import json, sys, statistics, torch

dev = "cuda"
torch.manual_seed(0)

def time_ms(fn, warmup=3, reps=9, inner=3):
    for _ in range(warmup):
        fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / inner)
    return statistics.median(times)

T = 32768
cases = [("square 8192^3", 8192, 8192, 8192, False, False)]
for name, din, dout in [("qkv 4096->12288", 4096, 12288), ("o 4096->4096", 4096, 4096), ("gate_up 4096->22016", 4096, 22016), ("down 11008->4096", 11008, 4096)]:
    cases += [(f"{name} fwd", T, din, dout, False, True), (f"{name} dgrad", T, dout, din, False, False), (f"{name} wgrad", dout, T, din, True, False)]

results = []
for name, m, k, n, ta, tb in cases:
    a = torch.randn((k, m) if ta else (m, k), device=dev, dtype=torch.bfloat16)
    b = torch.randn((n, k) if tb else (k, n), device=dev, dtype=torch.bfloat16)
    A = a.t() if ta else a
    B = b.t() if tb else b
    out = torch.empty((m, n), device=dev, dtype=torch.bfloat16)
    ms = time_ms(lambda: torch.matmul(A, B, out=out))
    results.append({"kind": "gemm", "name": name, "m": m, "k": k, "n": n, "ms": ms, "tflops": 2 * m * n * k / (ms * 1e-3) / 1e12})
    print(f"torch gemm {name:26s} {ms:.3f} ms {results[-1]['tflops']:.1f} TFLOP/s", flush=True)
    del a, b, out

for mib in (256, 1024):
    n = mib * 1024 * 1024 // 4
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), inner=5)
    results.append({"kind": "copy", "mib": mib, "ms": ms, "gbps": 2 * n * 4 / (ms * 1e-3) / 1e9})
    print(f"torch copy {mib} MiB {ms:.3f} ms {results[-1]['gbps']:.0f} GB/s", flush=True)

json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, open(sys.argv[1], "w"), indent=2)
