// NCCL bandwidth through our bindings, in nccl-tests' conventions, plus communication/GEMM overlap.
//
//   bun packages/comm/bench/nccl-bench.ts OUT.json [--min-mib 1] [--max-mib 1024] [--dtype f32|bf16] [--trials 7]
//       [--comm-priority default|high|default,high] [--overlap-only]
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
// GB/s = 1e9 bytes/s, as nccl-tests prints. The sweep runs on a comm stream of the first priority
// given; --overlap-only skips it.
//
// Overlap: a bf16 GEMM 8192^3 (matmul from @lightseq/tensor, cuBLASLt) on a compute stream and a
// bidirectional send/recv of 256 MiB on a comm stream, each alone, then both started together;
// once per priority in --comm-priority, each on a comm stream of its own, and per protocol ("posted"
// and "queued": see Protocol). The JSON has `overlaps` (priority-major, in order) and `overlap` (the
// first, as earlier files had it).
// NCCL_* variables in the environment (NCCL_MAX_CTAS, say) are recorded in the JSON as `ncclEnv`.
// Needs the kernels library (kernels/build) for the random fill.

import { join } from "node:path";
import { checkLaunch, cliErrors, Event, kernels, probeGpus, Stream } from "@lightseq/cuda";
import { copy, type DType, dtypeBytes, empty, matmul, randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { type CommFile, versioned } from "../../../bench/schema.ts";
import { type Communicator, initCommunicator, launch, ncclVersion } from "../src/index.ts";

type Priority = "default" | "high";

interface Args {
  out: string;
  minMiB: number;
  maxMiB: number;
  dtype: DType;
  trials: number;
  /**
   * Priorities of the comm stream, in order: "default" (as measured in BENCHMARKS.md) or "high" (as
   * PyTorch gives NCCL). The overlap is measured once per entry; the sweep uses the first.
   */
  commPriorities: Priority[];
  /** Skip the bandwidth sweep; measure (and write) only the overlap. */
  overlapOnly: boolean;
}

const USAGE =
  "usage: nccl-bench.ts OUT.json [--min-mib 1] [--max-mib 1024] [--dtype f32|bf16] [--trials 7] " +
  "[--comm-priority default|high|default,high] [--overlap-only]";

/** Bad arguments: the reason and the usage on stderr, exit 2 (before any rank is launched). */
function usageError(reason: string): never {
  console.error(`nccl-bench: ${reason}\n${USAGE}`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const valueFlags = ["--min-mib", "--max-mib", "--dtype", "--trials", "--comm-priority"];
  const values = new Map<string, string>();
  const positional: string[] = [];
  let overlapOnly = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--overlap-only") overlapOnly = true;
    else if (valueFlags.includes(a)) {
      const v = argv[++i];
      if (v === undefined || v.startsWith("--")) usageError(`${a} needs a value`);
      values.set(a, v);
    } else if (a.startsWith("--")) usageError(`unknown option ${a}`);
    else positional.push(a);
  }
  if (positional.length !== 1)
    usageError(positional.length === 0 ? "OUT.json is required" : `one OUT.json expected, got ${positional.join(" ")}`);
  const positiveInt = (name: string, fallback: number): number => {
    const raw = values.get(name);
    const v = raw === undefined ? fallback : Number(raw);
    if (!Number.isInteger(v) || v < 1) usageError(`${name}: expected a positive integer, got ${raw}`);
    return v;
  };
  const dtype = values.get("--dtype") ?? "f32";
  if (dtype !== "f32" && dtype !== "bf16") usageError(`--dtype: expected f32 or bf16, got ${dtype}`);
  const commPriorities = (values.get("--comm-priority") ?? "default").split(",").map((p) => {
    if (p !== "high" && p !== "default") usageError(`--comm-priority: expected a comma list of default and high, got "${p}"`);
    return p as Priority;
  });
  const minMiB = positiveInt("--min-mib", 1);
  const maxMiB = positiveInt("--max-mib", 1024);
  if (minMiB > maxMiB) usageError(`--min-mib ${minMiB} is above --max-mib ${maxMiB}`);
  return { out: positional[0] as string, minMiB, maxMiB, dtype, trials: positiveInt("--trials", 7), commPriorities, overlapOnly };
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
    priority: Priority,
  ) {
    const d = comm.device.kind === "cuda" ? comm.device.index : 0;
    // "high" gives the comm stream the device's highest priority (PyTorch does so for NCCL).
    this.stream = Stream.create(d, { priority });
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
      await this.align();
      this.start.record(this.stream);
      for (let i = 0; i < iters; i++) await op();
      this.end.record(this.stream);
      this.end.synchronize();
      per.push(this.start.elapsedMs(this.end) / iters);
    }
    return this.slowest(median(per));
  }

  /**
   * Lines the ranks up on the device timeline: a host barrier, then a one-element all-reduce on this
   * stream, after which each rank records its start event. The all-reduce finishes on both GPUs at
   * about the same moment whatever the ranks' host skew (a rank that leaves the barrier later only
   * delays both), so the timed operations start together and no rank's time includes waiting for a
   * late peer. torch_dist_bench.py gets the same from its blocking dist.barrier().
   */
  async align(stream: Stream = this.stream): Promise<void> {
    await this.comm.barrier();
    await this.comm.allReduce(this.scratch, "max", { stream });
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
  const b = new Bench(comm, args.commPriorities[0] as Priority);
  const results: Record<string, Row[]> = { sendrecv: [], "sendrecv-bidir": [], allreduce: [], allgather: [], reducescatter: [] };
  if (!args.overlapOnly) await sweep(comm, b, args, results);

  const overlaps: Overlap[] = [];
  for (const priority of args.commPriorities)
    for (const protocol of ["posted", "queued"] as const) overlaps.push(await measureOverlap(comm, b, priority, protocol, args.trials));

  if (comm.rank === 0) {
    const v = ncclVersion();
    const device = comm.device.kind === "cuda" ? comm.device.index : -1;
    // NCCL's variables and our send/recv transport's (LIGHTSEQ_P2P*): what the numbers ran with.
    const ncclEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("NCCL_") || k.startsWith("LIGHTSEQ_P2P")));
    if (!args.overlapOnly) printTable(results, n, args.dtype, v.text);
    else console.log(`NCCL ${v.text}, ${n} ranks; overlap only`);
    const envText = Object.entries(ncclEnv)
      .filter(([k]) => k !== "NCCL_NVLS_ENABLE")
      .map(([k, x]) => `${k}=${x}`)
      .join(" ");
    for (const o of overlaps) {
      console.log(
        `\noverlap (${o.gemm}, ${o.comm}; ${o.protocol}; comm stream priority ${o.commPriority}${envText ? `; ${envText}` : ""}): ` +
          `GEMM alone ${o.gemmMs.toFixed(2)} ms (${o.gemmTflops.toFixed(0)} TFLOP/s), ` +
          `comm alone ${o.commMs.toFixed(2)} ms, together ${o.bothMs.toFixed(2)} ms ` +
          `(GEMM ${o.gemmInBothMs.toFixed(2)} ms, comm ${o.commInBothMs.toFixed(2)} ms) = ${o.bothOverLonger.toFixed(2)}x the longer alone; ` +
          `hidden: ${(o.hiddenFraction * 100).toFixed(0)}% of the shorter one`,
      );
    }
    const report: CommFile = versioned({
      tool: "lightseq nccl-bench",
      nccl: v.text,
      ranks: n,
      device,
      gpus: probeGpus().count,
      dtype: args.dtype,
      conventions: "nccl-tests",
      overlapOnly: args.overlapOnly,
      ncclEnv,
      results,
      overlap: overlaps[0],
      overlaps,
    });
    await Bun.write(args.out, JSON.stringify(report, null, 2));
    console.log(`wrote ${args.out}`);
  }
  await comm.destroy();
}

/** The bandwidth sweep (sizes x operations) on b.stream, into `results`. */
async function sweep(comm: Communicator, b: Bench, args: Args, results: Record<string, Row[]>): Promise<void> {
  const n = comm.size;
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
}

/**
 * How a timed region starts. "posted": the GPU idles while the host posts the region's work, so the
 * host's posting time (the exchange's, for the GEMM posted after it) counts, as in
 * torch_dist_bench.py's first measurement. "queued": a 3 ms spin kernel holds the stream while the
 * host posts everything, so the region times the GPU's work alone, as in a training step where the
 * host runs ahead of the GPU.
 */
type Protocol = "posted" | "queued";
const HOLD_NS = 3_000_000;

interface Overlap {
  protocol: Protocol;
  commPriority: Priority;
  gemm: string;
  comm: string;
  gemmMs: number;
  gemmTflops: number;
  commMs: number;
  commGBps: number;
  bothMs: number;
  gemmInBothMs: number;
  commInBothMs: number;
  /** together / max(alone): the target is <= 1.1. */
  bothOverLonger: number;
  /** (alone_a + alone_b - together) / min(alone_a, alone_b): 1 = the shorter one fully hidden. */
  hiddenFraction: number;
}

/** GEMM alone, exchange alone, both together, with the exchange on a fresh comm stream of `priority`. */
async function measureOverlap(comm: Communicator, b: Bench, priority: Priority, protocol: Protocol, trials: number): Promise<Overlap> {
  const d = comm.device;
  const index = d.kind === "cuda" ? d.index : 0;
  const compute = Stream.create(index);
  const commStream = Stream.create(index, { priority });
  const N = 8192;
  const x = randn([N, N], { dtype: "bf16", device: d, seed: 1, stream: compute });
  const w = randn([N, N], { dtype: "bf16", device: d, seed: 2, stream: compute });
  const y = empty([N, N], { dtype: "bf16", device: d, stream: compute });
  const bytes = 256 * MiB;
  const sendBuf = empty([bytes / 2], { dtype: "bf16", device: d, stream: commStream });
  const recvBuf = empty([bytes / 2], { dtype: "bf16", device: d, stream: commStream });
  compute.synchronize();
  commStream.synchronize();
  const peer = comm.rank ^ 1;
  const exchange = () =>
    peer < comm.size
      ? comm.group(() => {
          void comm.send(sendBuf, peer, { stream: commStream });
          void comm.recv(recvBuf, peer, { stream: commStream });
        })
      : Promise.resolve();
  const gemm = () => matmul(x, w, { out: y, stream: compute }).dispose();
  const ev = () => Event.create(index, { timing: true });
  const hold = (st: Stream) => {
    if (protocol === "queued") checkLaunch(kernels().ls_spin_ns(HOLD_NS, st.handle), "ls_spin_ns");
  };
  /** The ranks lined up on the comm stream, then (queued) held, then e0: the start of a comm region. */
  const startOnComm = async () => {
    await b.align(commStream);
    hold(commStream);
    e0.record(commStream);
  };
  const [e0, eCompute, eComm] = [ev(), ev(), ev()];
  const gemmAlone: number[] = [];
  const commAlone: number[] = [];
  const both: number[] = [];
  const gemmInBoth: number[] = [];
  const commInBoth: number[] = [];
  for (let i = 0; i < 2; i++) {
    await exchange();
    gemm();
  }
  compute.synchronize();
  commStream.synchronize();
  for (let t = 0; t < trials; t++) {
    hold(compute);
    e0.record(compute);
    gemm();
    eCompute.record(compute);
    eCompute.synchronize();
    gemmAlone.push(e0.elapsedMs(eCompute));

    await startOnComm();
    await exchange();
    eComm.record(commStream);
    eComm.synchronize();
    commAlone.push(e0.elapsedMs(eComm));

    await startOnComm();
    compute.wait(e0); // both streams start from the aligned point
    // The exchange is posted before the GEMM, as torch_dist_bench.py does and as DistAttn's executor
    // posts a step's transfers before its blocks: NCCL's kernels are queued first and get SMs first.
    await exchange();
    gemm();
    eCompute.record(compute);
    eComm.record(commStream);
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
  const result: Overlap = {
    protocol,
    commPriority: priority,
    gemm: `bf16 ${N}x${N}x${N}`,
    comm: `send+recv ${fmtSize(bytes)} each way`,
    gemmMs,
    gemmTflops: (2 * N ** 3) / (gemmMs / 1e3) / 1e12,
    commMs,
    commGBps: bytes / (commMs / 1e3) / 1e9,
    bothMs,
    gemmInBothMs: await b.slowest(median(gemmInBoth)),
    commInBothMs: await b.slowest(median(commInBoth)),
    bothOverLonger: bothMs / Math.max(gemmMs, commMs),
    hiddenFraction: (gemmMs + commMs - bothMs) / Math.min(gemmMs, commMs),
  };
  for (const t of [x, w, y, sendBuf, recvBuf]) t.dispose();
  for (const e of [e0, eCompute, eComm]) e.dispose();
  compute.dispose();
  commStream.dispose();
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

cliErrors("nccl-bench");
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
