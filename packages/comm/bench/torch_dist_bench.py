"""torch.distributed (NCCL) counterpart of nccl-bench.ts: same sizes, conventions and JSON layout.

    torchrun --nproc_per_node=2 packages/comm/bench/torch_dist_bench.py OUT.json [--min-mib 1] [--max-mib 1024] [--dtype f32|bf16] [--trials 7]

Per size S (bytes, powers of two): sendrecv (even rank of each pair sends S), sendrecv-bidir (both
send and receive S in one batch; bandwidth per direction), allreduce (S in place, busbw = algbw *
2(n-1)/n), allgather (S = output bytes, busbw = algbw * (n-1)/n), reducescatter (S = input bytes,
busbw = algbw * (n-1)/n). Time per op: CUDA events around back-to-back ops after warm-up and a
barrier, median over trials, max over ranks. GB/s = 1e9 B/s. Overlap: bf16 GEMM 8192^3 on the
current stream beside a 256 MiB bidirectional exchange (NCCL's own stream), alone and together.
"""

import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist

MiB = 2**20


def iters_for(nbytes: int) -> int:
    return max(2, min(20, (512 * MiB) // nbytes))


def slowest(ms: float) -> float:
    t = torch.tensor([ms], dtype=torch.float32, device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def time_op(op, nbytes: int, trials: int) -> float:
    iters = iters_for(nbytes)
    for _ in range(3):
        op()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per = []
    for _ in range(trials):
        dist.barrier()
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            op()
        end.record()
        end.synchronize()
        per.append(start.elapsed_time(end) / iters)
    return slowest(statistics.median(per))


def row(nbytes: int, ms: float, factor: float) -> dict:
    algbw = nbytes / (ms / 1e3) / 1e9
    return {"bytes": nbytes, "ms": ms, "algbw": algbw, "busbw": algbw * factor}


def wait_all(works):
    for w in works:
        w.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--min-mib", type=int, default=1)
    p.add_argument("--max-mib", type=int, default=1024)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--trials", type=int, default=7)
    args = p.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    rank, n = dist.get_rank(), dist.get_world_size()
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    elem = torch.tensor([], dtype=dtype).element_size()
    max_bytes = args.max_mib * MiB
    buf_a = torch.empty(max_bytes // elem, dtype=dtype, device="cuda")
    buf_b = torch.empty(max_bytes // elem, dtype=dtype, device="cuda")
    peer = rank ^ 1
    paired = peer < n

    results = {"sendrecv": [], "sendrecv-bidir": [], "allreduce": [], "allgather": [], "reducescatter": []}
    nbytes = args.min_mib * MiB
    while nbytes <= max_bytes:
        a = buf_a[: nbytes // elem]
        b = buf_b[: nbytes // elem]

        def one_way():
            if not paired:
                return
            op = dist.P2POp(dist.isend, a, peer) if rank % 2 == 0 else dist.P2POp(dist.irecv, b, peer)
            wait_all(dist.batch_isend_irecv([op]))

        def both_ways():
            if paired:
                wait_all(dist.batch_isend_irecv([dist.P2POp(dist.isend, a, peer), dist.P2POp(dist.irecv, b, peer)]))

        results["sendrecv"].append(row(nbytes, time_op(one_way, nbytes, args.trials), 1))
        results["sendrecv-bidir"].append(row(nbytes, time_op(both_ways, nbytes, args.trials), 1))
        results["allreduce"].append(row(nbytes, time_op(lambda: dist.all_reduce(a), nbytes, args.trials), 2 * (n - 1) / n))
        part = nbytes // n
        if part % elem == 0 and part * n == nbytes:
            gin = buf_a[: part // elem]
            rout = buf_b[: part // elem]
            results["allgather"].append(row(nbytes, time_op(lambda: dist.all_gather_into_tensor(b, gin), nbytes, args.trials), (n - 1) / n))
            results["reducescatter"].append(row(nbytes, time_op(lambda: dist.reduce_scatter_tensor(rout, a), nbytes, args.trials), (n - 1) / n))
        nbytes *= 2
    del buf_a, buf_b
    torch.cuda.empty_cache()

    overlap = measure_overlap(rank, n, peer, args.trials, queued=False)
    overlap_queued = measure_overlap(rank, n, peer, args.trials, queued=True)

    if rank == 0:
        print_table(results, n, args.dtype)
        o = overlap
        print(
            f"\noverlap ({o['gemm']}, {o['comm']}): GEMM alone {o['gemmMs']:.2f} ms ({o['gemmTflops']:.0f} TFLOP/s), "
            f"comm alone {o['commMs']:.2f} ms, together {o['bothMs']:.2f} ms; hidden: {o['hiddenFraction'] * 100:.0f}% of the shorter one"
        )
        report = {
            "version": 1,  # bench/schema.ts SCHEMA_VERSION
            "tool": "torch.distributed bench",
            "torch": torch.__version__,
            "nccl": ".".join(str(x) for x in torch.cuda.nccl.version()),
            "ranks": n,
            "device": local_rank,
            "gpus": torch.cuda.device_count(),
            "dtype": args.dtype,
            "conventions": "nccl-tests",
            "results": results,
            "overlap": overlap,
            "overlapQueued": overlap_queued,
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    dist.destroy_process_group()


def spin_cycles_per_ms() -> float:
    """torch.cuda._sleep spins for a number of clock cycles: how many make a millisecond here."""
    torch.cuda._sleep(1_000_000)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    torch.cuda._sleep(10_000_000)
    e.record()
    e.synchronize()
    return 10_000_000 / s.elapsed_time(e)


def measure_overlap(rank: int, n: int, peer: int, trials: int, queued: bool) -> dict:
    """queued=False: the GPU idles while the host posts (host posting time counts); queued=True: a 3 ms
    spin holds the stream while the host posts, so only the GPU's work is timed (nccl-bench's protocols)."""
    hold_cycles = int(3 * spin_cycles_per_ms()) if queued else 0

    def hold():
        if hold_cycles:
            torch.cuda._sleep(hold_cycles)

    N = 8192
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(N, N, dtype=torch.bfloat16, device="cuda", generator=g)
    w = torch.randn(N, N, dtype=torch.bfloat16, device="cuda", generator=g)
    y = torch.empty(N, N, dtype=torch.bfloat16, device="cuda")
    nbytes = 256 * MiB
    send_buf = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    recv_buf = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")

    def exchange():
        if peer >= n:
            return []
        return dist.batch_isend_irecv([dist.P2POp(dist.isend, send_buf, peer), dist.P2POp(dist.irecv, recv_buf, peer)])

    def gemm():
        torch.matmul(x, w, out=y)

    for _ in range(2):
        gemm()
        wait_all(exchange())
    torch.cuda.synchronize()
    ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    gemm_alone, comm_alone, both = [], [], []

    def timed(work, aligned: bool) -> float:
        """ms of `work` on the current stream, after a barrier (aligned) and the hold (queued)."""
        if aligned:
            dist.barrier()
            torch.cuda.synchronize()
        e0, e1 = ev(), ev()
        hold()
        e0.record()
        work()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1)

    def together():
        works = exchange()
        gemm()
        wait_all(works)

    for _ in range(trials):
        gemm_alone.append(timed(gemm, aligned=False))
        comm_alone.append(timed(lambda: wait_all(exchange()), aligned=True))  # current stream waits for NCCL's
        both.append(timed(together, aligned=True))
    gemm_ms = slowest(statistics.median(gemm_alone))
    comm_ms = slowest(statistics.median(comm_alone))
    both_ms = slowest(statistics.median(both))
    return {
        "protocol": "queued" if queued else "posted",
        "gemm": f"bf16 {N}x{N}x{N}",
        "comm": "send+recv 256 MiB each way",
        "gemmMs": gemm_ms,
        "gemmTflops": 2 * N**3 / (gemm_ms / 1e3) / 1e12,
        "commMs": comm_ms,
        "commGBps": nbytes / (comm_ms / 1e3) / 1e9,
        "bothMs": both_ms,
        "hiddenFraction": (gemm_ms + comm_ms - both_ms) / min(gemm_ms, comm_ms),
    }


def print_table(results: dict, n: int, dtype: str) -> None:
    print(f"torch.distributed NCCL, {n} ranks, {dtype}; time = median per op (slowest rank); GB/s = 1e9 B/s")
    head = ["size", "sendrecv ms", "GB/s", "bidir ms", "GB/s/dir", "allreduce ms", "busbw", "allgather ms", "busbw", "reducescat ms", "busbw"]
    print("".join(h.rjust(13) for h in head))
    for i, r in enumerate(results["sendrecv"]):

        def pick(k, f):
            rows = results[k]
            return f"{rows[i][f]:.3f}" if f == "ms" and i < len(rows) else (f"{rows[i][f]:.1f}" if i < len(rows) else "-")

        size = f"{r['bytes'] // 2**30} GiB" if r["bytes"] >= 2**30 else f"{r['bytes'] // MiB} MiB"
        cells = [size, f"{r['ms']:.3f}", f"{r['algbw']:.1f}", pick("sendrecv-bidir", "ms"), pick("sendrecv-bidir", "algbw"), pick("allreduce", "ms"), pick("allreduce", "busbw"), pick("allgather", "ms"), pick("allgather", "busbw"), pick("reducescatter", "ms"), pick("reducescatter", "busbw")]
        print("".join(c.rjust(13) for c in cells))


if __name__ == "__main__":
    main()
