// NCCL bandwidth through our bindings, in nccl-tests' conventions, plus communication/GEMM overlap.
//
//   bun packages/comm/bench/nccl-bench.ts OUT.json [--min-mib 1] [--max-mib 1024] [--dtype f32|bf16] [--trials 7] [--comm-priority default|high]
//
// Without RANK in the environment it launches itself on every visible GPU (one rank each) and
// exits with the job's status; rank 0 prints the table and writes OUT.json.
//
// What is measured, per size S (bytes, 1 MiB .. 1 GiB by powers of two):
//   sendrecv       ranks paired (0<->1, 2<->3, ...): the even rank sends S, the odd one receives.
//   sendrecv-bidir both ranks of a pair send S and receive S in one group; bandwidth per direction.
//   allreduce      S in place;        algbw = S/t, busbw = algbw * 2(n-1)/n
//   allgather      S = output bytes;  algbw = S/t, busbw = algbw * (n-1)/n
//   reducescatter  S = input bytes;   algbw = S/t, busbw = algbw * (n-1)/n
// Time per operation: CUDA events around `iters` back-to-back operations after a warm-up, after a
// barrier; the median over trials; then the max over ranks (the slowest rank bounds the job).
// GB/s = 1e9 bytes/s, as nccl-tests prints.
//
// Overlap: a bf16 GEMM 8192^3 (matmul from @lightseq/tensor, cuBLASLt) on a compute stream and a
// bidirectional send/recv of 256 MiB on the comm stream, each alone, then both started together.
// Needs the kernels library (kernels/build) for the random fill.

import { join } from "node:path";
import { Event, probeGpus, Stream } from "@lightseq/cuda";
import { copy, type DType, dtypeBytes, empty, matmul, randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { type Communicator, initCommunicator, launch, ncclVersion } from "../src/index.ts";

interface Args {
  out: string;
  minMiB: number;
  maxMiB: number;
  dtype: DType;
  trials: number;
  /** Priority of the comm stream: "default" (as measured in BENCHMARKS.md) or "high" (as PyTorch gives NCCL). */
  commPriority: "high" | "default";
}

function parseArgs(argv: string[]): Args {
  const out = argv.find((a) => !a.startsWith("--"));
  if (!out) {
    console.error(
      "usage: nccl-bench.ts OUT.json [--min-mib 1] [--max-mib 1024] [--dtype f32|bf16] [--trials 7] [--comm-priority default|high]",
    );
    process.exit(2);
  }
  const flag = (name: string, fallback: string) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : fallback;
  };
  const dtype = flag("--dtype", "f32");
  const commPriority = flag("--comm-priority", "default");
  if (commPriority !== "high" && commPriority !== "default")
    throw new Error(`--comm-priority: expected high or default, got ${commPriority}`);
  if (dtype !== "f32" && dtype !== "bf16") throw new Error(`--dtype: expected f32 or bf16, got ${dtype}`);
  return {
    out,
    minMiB: Number(flag("--min-mib", "1")),
    maxMiB: Number(flag("--max-mib", "1024")),
    dtype,
    trials: Number(flag("--trials", "7")),
    commPriority,
  };
}

const MiB = 2 ** 20;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function fmtSize(bytes: number): string {
  return bytes >= 2 ** 30 ? `${bytes / 2 ** 30} GiB` : `${bytes / MiB} MiB`;
}

/** Back-to-back operations per timed trial: enough to hide launch gaps at small sizes. */
function itersFor(bytes: number): number {
  return Math.max(2, Math.min(20, Math.floor((512 * MiB) / bytes)));
}

class Bench {
  readonly stream: Stream;
  readonly start: Event;
  readonly end: Event;
  readonly scratch: Tensor;

  constructor(
    readonly comm: Communicator,
    commPriority: "high" | "default",
  ) {
    const d = comm.device.kind === "cuda" ? comm.device.index : 0;
    // --comm-priority high gives the comm stream the device's highest priority (PyTorch does so for NCCL).
    this.stream = Stream.create(d, { priority: commPriority });
    this.start = Event.create(d, { timing: true });
    this.end = Event.create(d, { timing: true });
    this.scratch = empty([1], { dtype: "f32", device: comm.device });
  }

  /** Median ms per call of `op` (which enqueues one operation on this.stream), slowest rank. */
  async time(op: () => Promise<void>, bytes: number, trials: number): Promise<number> {
    const iters = itersFor(bytes);
    for (let i = 0; i < 3; i++) await op();
    this.stream.synchronize();
    const per: number[] = [];
    for (let t = 0; t < trials; t++) {
      await this.comm.barrier();
      this.start.record(this.stream);
      for (let i = 0; i < iters; i++) await op();
      this.end.record(this.stream);
      this.end.synchronize();
      per.push(this.start.elapsedMs(this.end) / iters);
    }
    return this.slowest(median(per));
  }

  /** The max over ranks of a local number (an all-reduce max of one f32 on the device). */
  async slowest(ms: number): Promise<number> {
    const host = empty([1], { dtype: "f32" });
    (host.data() as Float32Array)[0] = ms;
    const dev = empty([1], { dtype: "f32", device: this.comm.device });
    copy(dev, host, this.stream);
    await this.comm.allReduce(dev, "max", { stream: this.stream });
    const v = toFloat32Array(dev, { stream: this.stream })[0] as number;
    host.dispose();
    dev.dispose();
    return v;
  }
}

interface Row {
  bytes: number;
  ms: number;
  algbw: number;
  busbw: number;
}

async function rank(args: Args): Promise<void> {
  const comm = await initCommunicator({ backend: "nccl" });
  const n = comm.size;
  const b = new Bench(comm, args.commPriority);
  const s = { stream: b.stream };
  const elem = dtypeBytes(args.dtype);
  const maxBytes = args.maxMiB * MiB;
  const bufA = empty([maxBytes / elem], { dtype: args.dtype, device: comm.device, stream: b.stream });
  const bufB = empty([maxBytes / elem], { dtype: args.dtype, device: comm.device, stream: b.stream });
  const sizes: number[] = [];
  for (let bytes = args.minMiB * MiB; bytes <= maxBytes; bytes *= 2) sizes.push(bytes);
  const view = (t: Tensor, bytes: number) => t.narrow(0, bytes / elem);
  const peer = comm.rank ^ 1;
  const paired = peer < n;

  const results: Record<string, Row[]> = { sendrecv: [], "sendrecv-bidir": [], allreduce: [], allgather: [], reducescatter: [] };
  const row = (bytes: number, ms: number, factor: number): Row => {
    const algbw = bytes / (ms / 1e3) / 1e9;
    return { bytes, ms, algbw, busbw: algbw * factor };
  };
  for (const bytes of sizes) {
    const a = view(bufA, bytes);
    const bb = view(bufB, bytes);
    // One direction: the even rank of each pair sends.
    const oneWay = async () => {
      if (!paired) return;
      if (comm.rank % 2 === 0) await comm.send(a, peer, s);
      else await comm.recv(bb, peer, s);
    };
    results.sendrecv?.push(row(bytes, await b.time(oneWay, bytes, args.trials), 1));
    const bothWays = async () => {
      if (!paired) return;
      await comm.group(() => {
        void comm.send(a, peer, s);
        void comm.recv(bb, peer, s);
      });
    };
    results["sendrecv-bidir"]?.push(row(bytes, await b.time(bothWays, bytes, args.trials), 1));
    results.allreduce?.push(row(bytes, await b.time(() => comm.allReduce(a, "sum", s), bytes, args.trials), (2 * (n - 1)) / n));
    const part = bytes / n;
    if (Number.isInteger(part / elem)) {
      const gin = view(bufA, part);
      results.allgather?.push(row(bytes, await b.time(() => comm.allGather(gin, bb, s), bytes, args.trials), (n - 1) / n));
      const rout = view(bufB, part);
      results.reducescatter?.push(row(bytes, await b.time(() => comm.reduceScatter(a, rout, "sum", s), bytes, args.trials), (n - 1) / n));
      gin.dispose();
      rout.dispose();
    }
    a.dispose();
    bb.dispose();
  }
  bufA.dispose();
  bufB.dispose();

  const overlap = await measureOverlap(comm, b, args.trials);

  if (comm.rank === 0) {
    const v = ncclVersion();
    const device = comm.device.kind === "cuda" ? comm.device.index : -1;
    printTable(results, n, args.dtype, v.text);
    console.log(
      `\noverlap (${overlap.gemm}, ${overlap.comm}): GEMM alone ${overlap.gemmMs.toFixed(2)} ms (${overlap.gemmTflops.toFixed(0)} TFLOP/s), ` +
        `comm alone ${overlap.commMs.toFixed(2)} ms, together ${overlap.bothMs.toFixed(2)} ms ` +
        `(GEMM ${overlap.gemmInBothMs.toFixed(2)} ms, comm ${overlap.commInBothMs.toFixed(2)} ms); ` +
        `hidden: ${(overlap.hiddenFraction * 100).toFixed(0)}% of the shorter one`,
    );
    const report = {
      tool: "lightseq nccl-bench",
      nccl: v.text,
      ranks: n,
      device,
      gpus: probeGpus().count,
      dtype: args.dtype,
      conventions: "nccl-tests",
      results,
      overlap,
    };
    await Bun.write(args.out, JSON.stringify(report, null, 2));
    console.log(`wrote ${args.out}`);
  }
  await comm.destroy();
}

async function measureOverlap(comm: Communicator, b: Bench, trials: number) {
  const d = comm.device;
  const index = d.kind === "cuda" ? d.index : 0;
  const compute = Stream.create(index);
  const N = 8192;
  const x = randn([N, N], { dtype: "bf16", device: d, seed: 1, stream: compute });
  const w = randn([N, N], { dtype: "bf16", device: d, seed: 2, stream: compute });
  const y = empty([N, N], { dtype: "bf16", device: d, stream: compute });
  const bytes = 256 * MiB;
  const sendBuf = empty([bytes / 2], { dtype: "bf16", device: d, stream: b.stream });
  const recvBuf = empty([bytes / 2], { dtype: "bf16", device: d, stream: b.stream });
  compute.synchronize();
  b.stream.synchronize();
  const peer = comm.rank ^ 1;
  const exchange = () =>
    peer < comm.size
      ? comm.group(() => {
          void comm.send(sendBuf, peer, { stream: b.stream });
          void comm.recv(recvBuf, peer, { stream: b.stream });
        })
      : Promise.resolve();
  const gemm = () => matmul(x, w, { out: y, stream: compute }).dispose();
  const ev = () => Event.create(index, { timing: true });
  const [e0, eCompute, eComm] = [ev(), ev(), ev()];
  const gemmAlone: number[] = [];
  const commAlone: number[] = [];
  const both: number[] = [];
  const gemmInBoth: number[] = [];
  const commInBoth: number[] = [];
  for (let i = 0; i < 2; i++) {
    gemm();
    await exchange();
  }
  compute.synchronize();
  b.stream.synchronize();
  for (let t = 0; t < trials; t++) {
    e0.record(compute);
    gemm();
    eCompute.record(compute);
    eCompute.synchronize();
    gemmAlone.push(e0.elapsedMs(eCompute));

    await comm.barrier();
    e0.record(b.stream);
    await exchange();
    eComm.record(b.stream);
    eComm.synchronize();
    commAlone.push(e0.elapsedMs(eComm));

    await comm.barrier();
    e0.record(compute);
    b.stream.wait(e0);
    gemm();
    await exchange();
    eCompute.record(compute);
    eComm.record(b.stream);
    eCompute.synchronize();
    eComm.synchronize();
    const g = e0.elapsedMs(eCompute);
    const c = e0.elapsedMs(eComm);
    gemmInBoth.push(g);
    commInBoth.push(c);
    both.push(Math.max(g, c));
  }
  const gemmMs = await b.slowest(median(gemmAlone));
  const commMs = await b.slowest(median(commAlone));
  const bothMs = await b.slowest(median(both));
  const result = {
    gemm: `bf16 ${N}x${N}x${N}`,
    comm: `send+recv ${fmtSize(bytes)} each way`,
    gemmMs,
    gemmTflops: (2 * N ** 3) / (gemmMs / 1e3) / 1e12,
    commMs,
    commGBps: bytes / (commMs / 1e3) / 1e9,
    bothMs,
    gemmInBothMs: await b.slowest(median(gemmInBoth)),
    commInBothMs: await b.slowest(median(commInBoth)),
    /** (alone_a + alone_b - together) / min(alone_a, alone_b): 1 = the shorter one fully hidden. */
    hiddenFraction: (gemmMs + commMs - bothMs) / Math.min(gemmMs, commMs),
  };
  for (const t of [x, w, y, sendBuf, recvBuf]) t.dispose();
  return result;
}

function printTable(results: Record<string, Row[]>, n: number, dtype: DType, version: string): void {
  console.log(`NCCL ${version}, ${n} ranks, ${dtype}; time = median per op (slowest rank); GB/s = 1e9 B/s`);
  const head = [
    "size",
    "sendrecv ms",
    "GB/s",
    "bidir ms",
    "GB/s/dir",
    "allreduce ms",
    "busbw",
    "allgather ms",
    "busbw",
    "reducescat ms",
    "busbw",
  ];
  console.log(head.map((h) => h.padStart(13)).join(""));
  const rows = results.sendrecv ?? [];
  rows.forEach((r, i) => {
    const pick = (k: string) => results[k]?.[i];
    const cells = [
      fmtSize(r.bytes),
      r.ms.toFixed(3),
      r.algbw.toFixed(1),
      pick("sendrecv-bidir")?.ms.toFixed(3) ?? "-",
      pick("sendrecv-bidir")?.algbw.toFixed(1) ?? "-",
      pick("allreduce")?.ms.toFixed(3) ?? "-",
      pick("allreduce")?.busbw.toFixed(1) ?? "-",
      pick("allgather")?.ms.toFixed(3) ?? "-",
      pick("allgather")?.busbw.toFixed(1) ?? "-",
      pick("reducescatter")?.ms.toFixed(3) ?? "-",
      pick("reducescatter")?.busbw.toFixed(1) ?? "-",
    ];
    console.log(cells.map((c) => c.padStart(13)).join(""));
  });
}

const args = parseArgs(process.argv.slice(2));
if (process.env.RANK === undefined) {
  const gpus = probeGpus().count;
  if (gpus < 1) {
    console.error(`nccl-bench: no GPU: ${probeGpus().reason}`);
    process.exit(1);
  }
  const r = await launch({ nprocs: gpus, script: join(import.meta.dir, "nccl-bench.ts"), args: process.argv.slice(2) });
  process.exit(r.exitCode);
}
await rank(args);
