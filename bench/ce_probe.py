"""What a copy-engine transfer costs a GEMM running beside it (one process, two GPUs).

    python3 bench/ce_probe.py [MiB]

Times, with CUDA events after warm-up (median of 10), a bf16 8192^3 GEMM on GPU 0 alone and beside:
  - a local device-to-device cudaMemcpyAsync on GPU 0 (the copy-engine transport's staging copy),
  - a peer cudaMemcpyAsync GPU 0 -> GPU 1 (NVLink write by the copy engine),
  - a peer cudaMemcpyAsync GPU 1 -> GPU 0 (NVLink write into GPU 0's memory),
  - the same peer write in 16 MiB chunks (one copy per chunk),
  - the copy-engine transport's protocol in one direction, in one process: 16 MiB chunks through 4
    slots on GPU 1, each chunk a stream wait, a peer copy and a flag write on GPU 0's stream, then a
    wait, a local copy and a flag write on GPU 1's (packages/comm/src/experimental/copy-engine.ts, kernels/src/p2p.cu),
and each copy alone. Prints one JSON line per case. The last two tell whether the transport's stall
beside a GEMM (BENCHMARKS.md, issue 3) comes from chunking, from the stream memory operations, or from
neither (then from the two processes / IPC mapping, which this probe does not have).
"""

import ctypes
import ctypes.util
import json
import statistics
import sys

import torch

MiB = 2**20
nbytes = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 256 * MiB
cudart = ctypes.CDLL(ctypes.util.find_library("cudart") or "libcudart.so.13")


def memcpy(dst, src, n, stream):
    rc = cudart.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(n), 3, ctypes.c_void_p(stream))
    assert rc == 0, f"cudaMemcpyAsync: {rc}"


torch.cuda.set_device(0)
N = 8192
x = torch.randn(N, N, device="cuda:0", dtype=torch.bfloat16)
w = torch.randn(N, N, device="cuda:0", dtype=torch.bfloat16)
y = torch.empty(N, N, device="cuda:0", dtype=torch.bfloat16)
a0 = torch.randn(nbytes // 4, device="cuda:0")
b0 = torch.empty_like(a0)
a1 = torch.randn(nbytes // 4, device="cuda:1")
compute = torch.cuda.Stream(device=0)
copy0 = torch.cuda.Stream(device=0, priority=-1)
copy1 = torch.cuda.Stream(device=1, priority=-1)

# Peer access both ways, so the driver copies over NVLink directly.
for d, p in ((0, 1), (1, 0)):
    with torch.cuda.device(d):
        rc = cudart.cudaDeviceEnablePeerAccess(p, 0)
        assert rc in (0, 704), f"cudaDeviceEnablePeerAccess({d}->{p}): {rc}"

cuda = ctypes.CDLL("libcuda.so.1")
CHUNK, SLOTS = 16 * MiB, 4
slots1 = torch.empty(SLOTS * CHUNK // 4, device="cuda:1")
dst1 = torch.empty(nbytes // 4, device="cuda:1")
freed0 = torch.zeros(64, dtype=torch.int32, device="cuda:0")  # written by GPU 1's stream
full1 = torch.zeros(64, dtype=torch.int32, device="cuda:1")  # written by GPU 0's stream
sequence = [0]


def wait_value(stream, addr, value):
    rc = cuda.cuStreamWaitValue32_v2(ctypes.c_void_p(stream.cuda_stream), ctypes.c_uint64(addr), ctypes.c_uint32(value & 0xFFFFFFFF), 0)
    assert rc == 0, f"cuStreamWaitValue32: {rc}"


def write_value(stream, addr, value):
    rc = cuda.cuStreamWriteValue32_v2(ctypes.c_void_p(stream.cuda_stream), ctypes.c_uint64(addr), ctypes.c_uint32(value & 0xFFFFFFFF), 0)
    assert rc == 0, f"cuStreamWriteValue32: {rc}"


def chunked(s):
    for off in range(0, nbytes, CHUNK):
        memcpy(dst1.data_ptr() + off, a0.data_ptr() + off, min(CHUNK, nbytes - off), s.cuda_stream)


def protocol(s):
    first = sequence[0]
    for i, off in enumerate(range(0, nbytes, CHUNK)):
        k, n = first + i, min(CHUNK, nbytes - off)
        slot = slots1.data_ptr() + (k % SLOTS) * CHUNK
        if k >= SLOTS:
            wait_value(copy0, freed0.data_ptr(), k - SLOTS + 1)
        memcpy(slot, a0.data_ptr() + off, n, copy0.cuda_stream)
        write_value(copy0, full1.data_ptr(), k + 1)
        wait_value(copy1, full1.data_ptr(), k + 1)
        memcpy(dst1.data_ptr() + off, slot, n, copy1.cuda_stream)
        write_value(copy1, freed0.data_ptr(), k + 1)
    sequence[0] = first + (nbytes + CHUNK - 1) // CHUNK
    done = torch.cuda.Event()
    done.record(copy1)
    copy0.wait_event(done)  # the timed stream ends when the receiver has its data


copies = {
    "local d2d on gpu0": (copy0, lambda s: memcpy(b0.data_ptr(), a0.data_ptr(), nbytes, s.cuda_stream)),
    "peer gpu0 -> gpu1": (copy0, lambda s: memcpy(a1.data_ptr(), a0.data_ptr(), nbytes, s.cuda_stream)),
    "peer gpu1 -> gpu0": (copy1, lambda s: memcpy(b0.data_ptr(), a1.data_ptr(), nbytes, s.cuda_stream)),
    "peer gpu0 -> gpu1, 16 MiB chunks": (copy0, chunked),
    "transport protocol gpu0 -> gpu1 (waits, chunks, flags)": (copy0, protocol),
}


def timed(stream, fn):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(stream)
    fn()
    e.record(stream)
    return s, e


def gemm():
    with torch.cuda.stream(compute):
        torch.matmul(x, w, out=y)


def run(name, trials=10):
    copy_stream, copy_fn = copies[name] if name else (None, None)
    alone_g, alone_c, both_g, both_c = [], [], [], []
    for t in range(trials + 2):
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        s, e = timed(compute, gemm)
        torch.cuda.synchronize(0)
        g = s.elapsed_time(e)
        if copy_fn is None:
            if t >= 2:
                alone_g.append(g)
            continue
        s2, e2 = timed(copy_stream, lambda: copy_fn(copy_stream))
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        c = s2.elapsed_time(e2)
        # Both: the copy first (as the exchange is posted before the GEMM), then the GEMM.
        sc, ec = timed(copy_stream, lambda: copy_fn(copy_stream))
        sg, eg = timed(compute, gemm)
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        if t >= 2:
            alone_g.append(g)
            alone_c.append(c)
            both_g.append(sg.elapsed_time(eg))
            both_c.append(sc.elapsed_time(ec))
    med = statistics.median
    out = {"case": name or "gemm alone", "MiB": nbytes // MiB, "gemm_ms": med(alone_g)}
    if copy_fn is not None:
        out |= {
            "copy_ms": med(alone_c),
            "copy_GBps": nbytes / med(alone_c) / 1e6,
            "gemm_beside_ms": med(both_g),
            "copy_beside_ms": med(both_c),
            "gemm_slowdown": med(both_g) / med(alone_g),
        }
    print(json.dumps(out), flush=True)


run(None)
for name in copies:
    run(name)
