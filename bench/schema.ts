// The benchmarks' JSON files, in one place: the shapes the writers produce (packages/comm/bench/
// nccl-bench.ts, packages/attention/bench/distattn-bench.ts and attn-bench.ts, bench/foundation.ts;
// torch's side: packages/comm/bench/torch_dist_bench.py, bench/torch_cp_attn.py) and the checks
// bench/report.ts reads them through. Every file carries `version` (SCHEMA_VERSION when written);
// change the version with any change a reader must know of, and say here what changed.
//
// Versions:
//   (none)  files written before the field existed (up to 2026-11-30, e.g. bench/results/): the
//           shapes below, read as version 1;
//   1       the field added; nothing else changed.

export const SCHEMA_VERSION = 1;

export class SchemaError extends Error {
  override name = "SchemaError";
}

export interface Versioned {
  /** SCHEMA_VERSION of the writer; absent in files from before the field existed. */
  version?: number;
}

/** What a writer saves: its payload with the current version first. */
export function versioned<T extends object>(payload: T): T & { version: number } {
  return { version: SCHEMA_VERSION, ...payload };
}

/**
 * The version a file was written with: a file without the field predates it and has version 1's
 * shape (see the list above); a newer or malformed version is refused, naming the file.
 */
export function checkVersion(name: string, j: Record<string, unknown>): number {
  if (!("version" in j)) return 1;
  const v = j.version;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1)
    throw new SchemaError(`${name}: "version" must be a positive integer, got ${JSON.stringify(v)}`);
  if (v > SCHEMA_VERSION)
    throw new SchemaError(
      `${name}: written with schema version ${v}, but this reader knows up to ${SCHEMA_VERSION}: update bench/schema.ts`,
    );
  return v;
}

// ---------------------------------------------------------------------------------------------
// Communication: nccl-bench.ts and torch_dist_bench.py

export interface CommRow {
  bytes: number;
  ms: number;
  algbw: number;
  busbw: number;
}

export interface OverlapJson {
  gemm: string;
  comm: string;
  gemmMs: number;
  commMs: number;
  bothMs: number;
  /** "posted" (host posting time counts; files without it) or "queued" (GPU time only). */
  protocol?: string;
  /** nccl-bench only. */
  commPriority?: string;
  gemmInBothMs?: number;
  commInBothMs?: number;
}

export interface CommFile extends Versioned {
  tool: string;
  /** nccl-bench: the CUDA device of rank 0, the GPUs visible, the bandwidth conventions ("nccl-tests"). */
  device?: number;
  gpus?: number;
  conventions?: string;
  nccl?: string;
  torch?: string;
  ranks: number;
  dtype: string;
  results: Record<string, CommRow[]>;
  overlap?: OverlapJson;
  /** torch_dist_bench.py: the "queued" protocol's measurement. */
  overlapQueued?: OverlapJson;
  /** nccl-bench since --comm-priority took a list: one per priority and protocol (overlap = the first). */
  overlaps?: OverlapJson[];
  ncclEnv?: Record<string, string | undefined>;
  overlapOnly?: boolean;
}

// ---------------------------------------------------------------------------------------------
// DistAttn: distattn-bench.ts, and PyTorch context parallel (torch_cp_attn.py)

export interface DistRow {
  N: number;
  H: number;
  Hkv: number;
  P: number;
  schedule: string;
  kernel: string;
  /** Our kernel's variant ("wgmma" or "mma.sync"), in files written since it was recorded. */
  attnKernels?: string;
  /** -1 when the one-GPU baseline did not run. */
  oneGpuMs: number;
  commPriority?: string;
  ncclEnv?: Record<string, string | undefined>;
  /** distattn-bench BENCH_PHASE: the row times only this pass (no speedup or PyTorch comparison). */
  phase?: string;
  overlap_ms?: number;
  sync_ms?: number;
  nocomm_ms?: number;
  schedule_bound?: number;
  sent_bytes_rank0?: { fwd: number; bwd: number };
  analytic_bytes_rank0?: { fwd: number; bwd: number };
}

export interface EqualityRow {
  check: "equality";
  N: number;
  Hkv: number;
  schedule: string;
  kernel?: string;
  attnKernels?: string;
  commPriority?: string;
  worstRelErr: number;
}

export interface DistFile extends Versioned {
  P: number;
  results: (DistRow | EqualityRow)[];
}

export interface CpRow {
  T: number;
  H: number;
  Hkv: number;
  world: number;
  sdpa: string;
  cp_fwdbwd_ms?: number;
  cp_error?: string;
  one_gpu_fwdbwd_ms?: number;
  one_gpu_error?: string;
}

export interface CpFile extends Versioned {
  device: string;
  torch: string;
  results: CpRow[];
}

// ---------------------------------------------------------------------------------------------
// One GPU: attn-bench.ts (attention kernels) and foundation.ts (GEMM, copies, launch cost)

export interface AttnRow {
  backend: string;
  /** Which kernels ran, e.g. "wgmma" or cuDNN's version. */
  kernel: string;
  T: number;
  H: number;
  Hkv: number;
  D: number;
  causal: boolean;
  fwdMs: number;
  bwdMs: number;
  fwdBwdMs: number;
  fwdTflops: number;
  bwdTflops: number;
  fwdBwdTflops: number;
}

export interface AttnFile extends Versioned {
  device: string;
  date: string;
  results: AttnRow[];
}

export type FoundationRow =
  | { kind: "gemm"; name: string; m: number; k: number; n: number; transA: boolean; transB: boolean; ms: number; tflops: number }
  | { kind: "copy"; mib: number; ms: number; gbps: number }
  | { kind: "launch"; hostUsPerLaunch: number; gpuUsPerLaunch: number }
  | { kind: "launch-api"; hostUsPerOp: number };

export interface FoundationFile extends Versioned {
  device: string;
  date: string;
  results: FoundationRow[];
}

// ---------------------------------------------------------------------------------------------
// Checks (what report.ts reads)

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);

export function asCommFile(name: string, j: unknown, want: "ours" | "torch" | "either"): CommFile {
  const tools = {
    ours: ["lightseq nccl-bench"],
    torch: ["torch.distributed bench"],
    either: ["lightseq nccl-bench", "torch.distributed bench"],
  }[want];
  if (!isObject(j) || !tools.includes(j.tool as string)) {
    const got = isObject(j) ? `tool ${JSON.stringify(j.tool)}` : "no object";
    throw new SchemaError(`${name}: expected a file written by ${tools.map((t) => `"${t}"`).join(" or ")}, got ${got}`);
  }
  if (!isObject(j.results)) throw new SchemaError(`${name}: no "results" object`);
  checkVersion(name, j);
  return j as unknown as CommFile;
}

export function asDistFile(name: string, j: unknown): DistFile {
  if (!isObject(j) || typeof j.P !== "number" || !Array.isArray(j.results))
    throw new SchemaError(`${name}: expected a file written by distattn-bench.ts ({ P, results: [...] })`);
  for (const r of j.results) {
    if (!isObject(r) || (r.check !== "equality" && (typeof r.N !== "number" || typeof r.schedule !== "string")))
      throw new SchemaError(`${name}: a result is neither a timing row (N, schedule, ...) nor an equality check: ${JSON.stringify(r)}`);
  }
  checkVersion(name, j);
  return j as unknown as DistFile;
}

export function asCpFile(name: string, j: unknown): CpFile {
  if (!isObject(j) || !Array.isArray(j.results) || !("torch" in j))
    throw new SchemaError(`${name}: expected a file written by bench/torch_cp_attn.py ({ device, torch, results: [...] })`);
  for (const r of j.results) {
    if (!isObject(r) || typeof r.T !== "number" || typeof r.Hkv !== "number" || typeof r.world !== "number")
      throw new SchemaError(`${name}: a result lacks T, Hkv or world: ${JSON.stringify(r)}`);
  }
  checkVersion(name, j);
  return j as unknown as CpFile;
}
