// Markdown tables for BENCHMARKS.md from the benchmarks' JSON files (no GPU needed).
//
//   bun bench/report.ts comm OURS.json TORCH.json
//       OURS from packages/comm/bench/nccl-bench.ts, TORCH from packages/comm/bench/torch_dist_bench.py:
//       per size and operation ours vs torch GB/s (send/recv: algbw; collectives: busbw) and the
//       ratio, cells below 95% of torch at >= 64 MiB flagged; then both files' overlap rows.
//   bun bench/report.ts overlap A.json [B.json ...]
//       the overlap rows of any nccl-bench / torch_dist_bench files (e.g. --overlap-only runs).
//   bun bench/report.ts distattn A.json [B.json ...] [--cp CP.json ...]
//       A, B from packages/attention/bench/distattn-bench.ts, CP from bench/torch_cp_attn.py: per
//       kernel, T, Hkv, schedule and comm setting, overlap/sync/nocomm ms, the overlap's cost over
//       nocomm, speedup over one GPU, its fraction of the ideal (P) and of the schedule's bound,
//       PyTorch context_parallel ms (matched by T, Hkv and P) and ours against it; then traffic
//       measured against the schedule's count, the equality checks and the one-GPU baselines.
//
// The functions below take parsed JSON and return markdown, so bench/report.test.ts runs them on
// hand-made fixtures. The files' shapes and their checks are bench/schema.ts's (a file of the wrong
// kind, or of a newer version, is refused with its name and what was expected).

import { basename } from "node:path";
import {
  asCommFile,
  asCpFile,
  asDistFile,
  type CommFile,
  type CpFile,
  type DistFile,
  type DistRow,
  type EqualityRow,
  type OverlapJson,
  SchemaError,
} from "./schema.ts";

const MiB = 2 ** 20;
/** Ours below this fraction of torch's bandwidth at >= FLAG_MIN_BYTES is flagged (the comm target). */
const FLAG_RATIO = 0.95;
const FLAG_MIN_BYTES = 64 * MiB;
/** The overlap target: GEMM and exchange together within 1.1x the longer of the two alone. */
const OVERLAP_TARGET = 1.1;

export class ReportError extends Error {
  override name = "ReportError";
}

// ---------------------------------------------------------------------------------------------
// Formatting

export function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n");
}

export function fmtSize(bytes: number): string {
  return bytes >= 2 ** 30 ? `${bytes / 2 ** 30} GiB` : `${bytes / MiB} MiB`;
}

/** 65536 -> 64K, 1048576 -> 1M (token counts). */
export function fmtTokens(n: number): string {
  if (n >= 2 ** 20 && n % 2 ** 20 === 0) return `${n / 2 ** 20}M`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}K`;
  return String(n);
}

const fmtMs = (ms: number | undefined): string =>
  ms === undefined || !Number.isFinite(ms) || ms < 0 ? "-" : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
const pct = (x: number, digits = 1) => `${(x * 100).toFixed(digits)}%`;
const fmtBytes = (n: number) => n.toLocaleString("en-US");
const signedBytes = (n: number) => `${n > 0 ? "+" : ""}${fmtBytes(n)} B`;

/** NCCL_* variables other than the multicast switch every run sets, as "K=V K=V" ("-" if none). */
function envLabel(env: Record<string, string | undefined> | undefined): string {
  const parts = Object.entries(env ?? {})
    // NCCL_NVLS_ENABLE=0 is always set; NCCL_VERSION is the machine's image saying what it ships.
    .filter(([k]) => k !== "NCCL_NVLS_ENABLE" && k !== "NCCL_VERSION")
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(" ") : "-";
}

// ---------------------------------------------------------------------------------------------
// Communication

/** Which bandwidth each operation is compared on (as nccl-tests prints and BENCHMARKS.md reads). */
const COMM_OPS: { key: string; label: string; field: "algbw" | "busbw" }[] = [
  { key: "sendrecv", label: "sendrecv GB/s", field: "algbw" },
  { key: "sendrecv-bidir", label: "bidir GB/s per dir", field: "algbw" },
  { key: "allreduce", label: "allreduce busbw", field: "busbw" },
  { key: "allgather", label: "allgather busbw", field: "busbw" },
  { key: "reducescatter", label: "reducescatter busbw", field: "busbw" },
];

export function commReport(
  ours: CommFile,
  torch: CommFile,
  names: { ours: string; torch: string } = { ours: "ours", torch: "torch" },
): string {
  if (ours.ranks !== torch.ranks)
    throw new ReportError(`${names.ours} has ${ours.ranks} ranks, ${names.torch} ${torch.ranks}: not comparable`);
  if (ours.dtype !== torch.dtype) throw new ReportError(`${names.ours} is ${ours.dtype}, ${names.torch} ${torch.dtype}: not comparable`);
  const out: string[] = [];
  out.push(
    `NCCL bandwidth, ${ours.ranks} ranks, ${ours.dtype}: ours (${names.ours}, NCCL ${ours.nccl ?? "?"}${
      envLabel(ours.ncclEnv) === "-" ? "" : `, ${envLabel(ours.ncclEnv)}`
    }) / torch (${names.torch}, torch ${torch.torch ?? "?"}, NCCL ${torch.nccl ?? "?"}), GB/s = 1e9 B/s; ` +
      `cells below ${pct(FLAG_RATIO, 0)} of torch at >= ${fmtSize(FLAG_MIN_BYTES)} in bold with (!).`,
    "",
  );
  const sizes = [
    ...new Set(COMM_OPS.flatMap((op) => [...(ours.results[op.key] ?? []), ...(torch.results[op.key] ?? [])].map((r) => r.bytes))),
  ].sort((a, b) => a - b);
  const flagged: string[] = [];
  const compared: number[] = [];
  const rows = sizes.map((bytes) => [
    fmtSize(bytes),
    ...COMM_OPS.map((op) => {
      const a = ours.results[op.key]?.find((r) => r.bytes === bytes);
      const b = torch.results[op.key]?.find((r) => r.bytes === bytes);
      if (!a || !b) return `${a ? a[op.field].toFixed(1) : "-"} / ${b ? b[op.field].toFixed(1) : "-"}`;
      const ratio = a[op.field] / b[op.field];
      const cell = `${a[op.field].toFixed(1)} / ${b[op.field].toFixed(1)} (${pct(ratio, 0)})`;
      if (bytes < FLAG_MIN_BYTES) return cell;
      compared.push(ratio);
      if (ratio >= FLAG_RATIO) return cell;
      flagged.push(`${op.key} ${fmtSize(bytes)} (${pct(ratio)})`);
      return `**${cell}** (!)`;
    }),
  ]);
  const missing = [
    [names.ours, ours],
    [names.torch, torch],
  ].filter(([, f]) => COMM_OPS.every((op) => ((f as CommFile).results[op.key] ?? []).length === 0));
  if (missing.length > 0) out.push(`(no bandwidth sweep in ${missing.map(([n]) => n).join(" and ")}: an --overlap-only run?)`);
  else {
    out.push(table(["size", ...COMM_OPS.map((op) => `${op.label} ours / torch`)], rows));
    out.push(
      "",
      compared.length === 0
        ? `No size >= ${fmtSize(FLAG_MIN_BYTES)} measured by both.`
        : flagged.length === 0
          ? `All ${compared.length} cells at >= ${fmtSize(FLAG_MIN_BYTES)} are at or above ${pct(FLAG_RATIO, 0)} of torch (lowest ${pct(Math.min(...compared))}).`
          : `${flagged.length} of ${compared.length} cells at >= ${fmtSize(FLAG_MIN_BYTES)} below ${pct(FLAG_RATIO, 0)} of torch: ${flagged.join(", ")}.`,
    );
  }
  out.push(
    "",
    overlapReport([
      [`ours (${names.ours})`, ours],
      [`torch (${names.torch})`, torch],
    ]),
  );
  return out.join("\n");
}

const overlapsOf = (f: CommFile): OverlapJson[] =>
  f.overlaps ?? [f.overlap, f.overlapQueued].filter((o): o is OverlapJson => o !== undefined);

/** One row per overlap measurement of each file (nccl-bench: one per comm priority and protocol). */
export function overlapReport(files: [string, CommFile][]): string {
  const rows: string[][] = [];
  for (const [label, f] of files) {
    const isOurs = f.tool === "lightseq nccl-bench";
    const list = overlapsOf(f);
    for (const o of list) {
      const ratio = o.bothMs / Math.max(o.gemmMs, o.commMs);
      // From the three times rather than the file's field, so every row uses one definition.
      const hidden = (o.gemmMs + o.commMs - o.bothMs) / Math.min(o.gemmMs, o.commMs);
      rows.push([
        label,
        o.protocol ?? "posted",
        isOurs ? (o.commPriority ?? "default") : "torch NCCL stream (high)",
        isOurs ? envLabel(f.ncclEnv) : "-",
        fmtMs(o.gemmMs),
        fmtMs(o.commMs),
        fmtMs(o.bothMs),
        o.gemmInBothMs === undefined ? "-" : fmtMs(o.gemmInBothMs),
        o.commInBothMs === undefined ? "-" : fmtMs(o.commInBothMs),
        `${ratio.toFixed(2)}x`,
        pct(hidden, 0),
        ratio <= OVERLAP_TARGET ? "yes" : "no",
      ]);
    }
  }
  const first = files.flatMap(([, f]) => overlapsOf(f))[0];
  const what = first ? `${first.gemm} GEMM beside a ${first.comm} exchange` : "GEMM beside an exchange";
  if (rows.length === 0) return `Overlap (${what}): no overlap measurement in these files.`;
  return [
    `Overlap (${what}); target: together <= ${OVERLAP_TARGET}x the longer alone; hidden = (a + b - together) / min(a, b); ` +
      "protocol posted = the GPU idles while the host posts the work (posting time counts), queued = a spin kernel holds the stream while the host posts (GPU time only).",
    "",
    table(
      [
        "run",
        "protocol",
        "comm stream priority",
        "NCCL env",
        "GEMM alone ms",
        "comm alone ms",
        "together ms",
        "GEMM in both ms",
        "comm in both ms",
        "together / longer",
        "hidden",
        `<= ${OVERLAP_TARGET}x`,
      ],
      rows,
    ),
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------
// DistAttn

const isEquality = (r: DistRow | EqualityRow): r is EqualityRow => (r as EqualityRow).check === "equality";

/** The comm setting of a row: stream priority plus NCCL env, "default" for files from before both were recorded. */
function commLabel(r: { commPriority?: string; ncclEnv?: Record<string, string | undefined>; phase?: string }): string {
  const env = envLabel(r.ncclEnv);
  return `${r.commPriority ?? "default"}${env === "-" ? "" : ` ${env}`}${r.phase ? ` (${r.phase} only)` : ""}`;
}

/** "cudnn", "cuda (wgmma)": the block kernel and, for ours, which variant ran. */
const kernelLabel = (r: { kernel?: string; attnKernels?: string }): string =>
  r.kernel === undefined ? "-" : r.attnKernels ? `${r.kernel} (${r.attnKernels})` : r.kernel;

/** Index of first appearance, for ordering groups as the files list them. */
function orderOf<T>(xs: T[]): (x: T) => number {
  const seen = new Map<T, number>();
  for (const x of xs) if (!seen.has(x)) seen.set(x, seen.size);
  return (x) => seen.get(x) ?? seen.size;
}

export function distattnReport(files: [string, DistFile][], cps: [string, CpFile][] = []): string {
  const rows: DistRow[] = [];
  const equality: EqualityRow[] = [];
  for (const [, f] of files) for (const r of f.results) isEquality(r) ? equality.push(r) : rows.push({ ...r, P: r.P ?? f.P });
  const cpRows = cps.flatMap(([, f]) => f.results);
  const cpFor = (r: DistRow) => cpRows.find((c) => c.T === r.N && c.Hkv === r.Hkv && c.world === r.P && c.cp_fwdbwd_ms !== undefined);
  const out: string[] = [];

  const kOrder = orderOf(rows.map(kernelLabel));
  const hOrder = orderOf(rows.map((r) => r.Hkv));
  const sOrder = orderOf(rows.map((r) => r.schedule));
  const cOrder = orderOf(rows.map(commLabel));
  const sorted = [...rows].sort(
    (a, b) =>
      a.P - b.P ||
      kOrder(kernelLabel(a)) - kOrder(kernelLabel(b)) ||
      hOrder(a.Hkv) - hOrder(b.Hkv) ||
      a.N - b.N ||
      sOrder(a.schedule) - sOrder(b.schedule) ||
      cOrder(commLabel(a)) - cOrder(commLabel(b)),
  );
  const main = sorted.map((r) => {
    const speedup = r.oneGpuMs > 0 && r.overlap_ms && !r.phase ? r.oneGpuMs / r.overlap_ms : undefined;
    const cp = r.phase ? undefined : cpFor(r);
    const vsCp = cp?.cp_fwdbwd_ms && r.overlap_ms ? r.overlap_ms / cp.cp_fwdbwd_ms - 1 : undefined;
    return [
      fmtTokens(r.N),
      String(r.Hkv),
      r.schedule,
      kernelLabel(r),
      commLabel(r),
      fmtMs(r.overlap_ms),
      fmtMs(r.sync_ms),
      fmtMs(r.nocomm_ms),
      r.overlap_ms && r.nocomm_ms ? pct(r.overlap_ms / r.nocomm_ms - 1) : "-",
      speedup === undefined ? "-" : `${speedup.toFixed(2)}x`,
      speedup === undefined ? "-" : pct(speedup / r.P, 0),
      speedup === undefined || !r.schedule_bound ? "-" : pct(speedup / r.schedule_bound, 0),
      fmtMs(cp?.cp_fwdbwd_ms),
      vsCp === undefined ? "-" : `${pct(Math.abs(vsCp))} ${vsCp > 0 ? "slower" : "faster"}`,
    ];
  });
  const Ps = [...new Set(rows.map((r) => r.P))];
  out.push(
    `DistAttn forward+backward, P = ${Ps.join(", ") || "?"}: ms (slowest rank, median); overlap cost = overlap / nocomm - 1; ` +
      "speedup = one GPU (same kernel, whole sequence) / overlap; of ideal = speedup / P; of bound = speedup / the schedule's bound; " +
      "PyTorch CP = context_parallel with SDPA, matched by T, Hkv and P; ours vs PyTorch compares overlap ms.",
    "",
  );
  out.push(
    main.length === 0
      ? "(no timing rows)"
      : table(
          [
            "T",
            "Hkv",
            "schedule",
            "kernel",
            "comm",
            "overlap ms",
            "sync ms",
            "nocomm ms",
            "overlap cost",
            "speedup vs 1 GPU",
            "of ideal",
            "of bound",
            "PyTorch CP ms",
            "ours vs PyTorch",
          ],
          main,
        ),
  );

  // Traffic: one row per distinct (P, T, Hkv, schedule, counts); it does not depend on the kernel or comm setting.
  const traffic = new Map<string, string[]>();
  for (const r of sorted) {
    const s = r.sent_bytes_rank0;
    const a = r.analytic_bytes_rank0;
    if (!s || !a || r.phase) continue; // a one-pass row counts one pass's traffic
    const key = JSON.stringify([r.P, r.N, r.Hkv, r.schedule, s, a]);
    if (traffic.has(key)) continue;
    const same = s.fwd === a.fwd && s.bwd === a.bwd;
    traffic.set(key, [
      fmtTokens(r.N),
      String(r.Hkv),
      r.schedule,
      fmtBytes(s.fwd),
      fmtBytes(a.fwd),
      fmtBytes(s.bwd),
      fmtBytes(a.bwd),
      same ? "equal" : `**differs** by ${signedBytes(s.fwd - a.fwd)} fwd, ${signedBytes(s.bwd - a.bwd)} bwd`,
    ]);
  }
  if (traffic.size > 0) {
    out.push(
      "",
      "Traffic sent by rank 0 (bytes), counted by the executor against the schedule's analytic count:",
      "",
      table(
        ["T", "Hkv", "schedule", "sent fwd", "analytic fwd", "sent bwd", "analytic bwd", "measured vs analytic"],
        [...traffic.values()],
      ),
    );
  }

  if (equality.length > 0) {
    out.push(
      "",
      "bf16 equality with one-GPU attention (worst relative error over o, dq, dk, dv; bound 1e-2):",
      "",
      table(
        ["T", "Hkv", "schedule", "kernel", "comm", "worst rel. error", "<= 1e-2"],
        equality.map((e) => [
          String(e.N),
          String(e.Hkv),
          e.schedule,
          kernelLabel(e),
          commLabel(e),
          e.worstRelErr.toExponential(1),
          e.worstRelErr <= 1e-2 ? "yes" : "**no**",
        ]),
      ),
    );
  }

  // One-GPU baselines: ours per kernel, PyTorch SDPA from the CP files (always MHA there).
  const base = new Map<string, string[]>();
  for (const r of sorted) {
    if (!(r.oneGpuMs > 0)) continue;
    const key = JSON.stringify([r.N, r.Hkv, kernelLabel(r)]);
    if (base.has(key)) continue;
    const sdpa = cpRows.find((c) => c.T === r.N && c.Hkv === r.Hkv && c.one_gpu_fwdbwd_ms !== undefined);
    base.set(key, [
      fmtTokens(r.N),
      String(r.Hkv),
      kernelLabel(r),
      fmtMs(r.oneGpuMs),
      sdpa ? `${fmtMs(sdpa.one_gpu_fwdbwd_ms)} (${sdpa.sdpa})` : "-",
    ]);
  }
  if (base.size > 0) {
    out.push(
      "",
      "One GPU on the whole sequence (the speedup baseline), forward+backward ms:",
      "",
      table(["T", "Hkv", "kernel", "ours one GPU ms", "PyTorch SDPA one GPU ms (MHA)"], [...base.values()]),
    );
  }

  const errors = cpRows.filter((c) => c.cp_error).map((c) => `T=${fmtTokens(c.T)} Hkv=${c.Hkv}: ${c.cp_error}`);
  if (errors.length > 0) out.push("", `PyTorch CP errors: ${errors.join("; ")}`);
  const unmatched = cpRows.filter(
    (c) => c.cp_fwdbwd_ms !== undefined && !rows.some((r) => r.N === c.T && r.Hkv === c.Hkv && r.P === c.world),
  );
  if (unmatched.length > 0)
    out.push(
      "",
      `PyTorch CP rows with no DistAttn row: ${unmatched.map((c) => `T=${fmtTokens(c.T)} Hkv=${c.Hkv} P=${c.world}`).join(", ")}`,
    );
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Command line

const USAGE = [
  "usage: bun bench/report.ts comm OURS.json TORCH.json",
  "       bun bench/report.ts overlap A.json [B.json ...]",
  "       bun bench/report.ts distattn A.json [B.json ...] [--cp CP.json ...]",
].join("\n");

async function readJson(path: string): Promise<unknown> {
  const f = Bun.file(path);
  if (!(await f.exists())) throw new ReportError(`${path}: no such file`);
  try {
    return await f.json();
  } catch (e) {
    throw new ReportError(`${path}: not JSON (${(e as Error).message})`);
  }
}

export async function main(argv: string[]): Promise<string> {
  const [mode, ...rest] = argv;
  switch (mode) {
    case "comm": {
      if (rest.length !== 2) throw new ReportError(`comm: expected OURS.json TORCH.json, got ${rest.length} files`);
      const [o, t] = rest as [string, string];
      return commReport(asCommFile(o, await readJson(o), "ours"), asCommFile(t, await readJson(t), "torch"), {
        ours: basename(o),
        torch: basename(t),
      });
    }
    case "overlap": {
      if (rest.length === 0) throw new ReportError("overlap: expected at least one JSON file");
      const files: [string, CommFile][] = [];
      for (const p of rest) files.push([basename(p), asCommFile(p, await readJson(p), "either")]);
      return overlapReport(files);
    }
    case "distattn": {
      const dist: [string, DistFile][] = [];
      const cps: [string, CpFile][] = [];
      for (let i = 0; i < rest.length; i++) {
        const a = rest[i] as string;
        if (a === "--cp") {
          const p = rest[++i];
          if (p === undefined) throw new ReportError("--cp needs a file");
          cps.push([basename(p), asCpFile(p, await readJson(p))]);
        } else if (a.startsWith("--")) throw new ReportError(`unknown option ${a}`);
        else dist.push([basename(a), asDistFile(a, await readJson(a))]);
      }
      if (dist.length === 0) throw new ReportError("distattn: expected at least one distattn-bench JSON file");
      return distattnReport(dist, cps);
    }
    default:
      throw new ReportError(mode === undefined ? "a mode is required" : `unknown mode ${mode}`);
  }
}

if (import.meta.main) {
  try {
    console.log(await main(process.argv.slice(2)));
  } catch (e) {
    if (!(e instanceof ReportError) && !(e instanceof SchemaError)) throw e;
    console.error(`report: ${e.message}\n${USAGE}`);
    process.exit(2);
  }
}
