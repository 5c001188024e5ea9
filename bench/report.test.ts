// bench/report.ts on hand-made files (bench/fixtures/report/) shaped like what the benchmarks write:
// the numbers are chosen so each flag, ratio and match can be checked by hand.

import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { commReport, distattnReport, fmtTokens, overlapReport } from "./report.ts";
import { asCommFile, asCpFile, asDistFile, type CommFile, SchemaError } from "./schema.ts";

const DIR = join(import.meta.dir, "fixtures", "report");
const load = (name: string): unknown => JSON.parse(readFileSync(join(DIR, name), "utf8"));
const ours = asCommFile("nccl-ours.json", load("nccl-ours.json"), "ours");
const torch = asCommFile("nccl-torch.json", load("nccl-torch.json"), "torch");

/** The cells of the table row whose first cells are `start`. */
function row(md: string, ...start: string[]): string[] {
  const prefix = `| ${start.join(" | ")} |`;
  const lines = md.split("\n").filter((l) => l.startsWith(prefix));
  if (lines.length !== 1) throw new Error(`expected one row starting ${prefix}, found ${lines.length} in:\n${md}`);
  return (lines[0] as string)
    .slice(2, -2)
    .split(" | ")
    .map((c) => c.trim());
}

describe("comm report", () => {
  const md = commReport(ours, torch);

  test("ours / torch per size and operation, with the ratio", () => {
    expect(row(md, "64 MiB")).toEqual([
      "64 MiB",
      "335.5 / 335.5 (100%)",
      "279.6 / 279.6 (100%)",
      "247.8 / 258.1 (96%)",
      "104.9 / 104.9 (100%)",
      "104.9 / 104.9 (100%)",
    ]);
  });

  test("only cells below 95% at >= 64 MiB are flagged", () => {
    // 80% at 32 MiB: below the size threshold; 96% at 64 MiB: above the ratio.
    expect(row(md, "32 MiB")[1]).toBe("268.4 / 335.5 (80%)");
    expect(row(md, "128 MiB")[1]).toBe("**201.3 / 335.5 (60%)** (!)");
    expect(md).toContain("1 of 10 cells at >= 64 MiB below 95% of torch: sendrecv 128 MiB (60.0%).");
  });

  test("overlap rows: one per comm priority of ours, then torch's", () => {
    expect(row(md, "ours (ours)", "posted", "default")).toEqual([
      "ours (ours)",
      "posted",
      "default",
      "-",
      "1.47",
      "0.90",
      "3.38",
      "3.38",
      "2.90",
      "2.30x",
      "-112%",
      "no",
    ]);
    expect(row(md, "ours (ours)", "posted", "high").slice(9)).toEqual(["1.09x", "86%", "yes"]);
    expect(row(md, "torch (torch)")).toEqual([
      "torch (torch)",
      "posted",
      "torch NCCL stream (high)",
      "-",
      "1.48",
      "1.10",
      "1.76",
      "-",
      "-",
      "1.19x",
      "75%",
      "no",
    ]);
  });

  test("files of the wrong kind or not comparable are refused", () => {
    expect(() => asCommFile("t.json", load("nccl-torch.json"), "ours")).toThrow(
      't.json: expected a file written by "lightseq nccl-bench", got tool "torch.distributed bench"',
    );
    expect(() => asCommFile("d.json", load("distattn.json"), "either")).toThrow(SchemaError);
    expect(() => commReport({ ...ours, ranks: 4 }, torch)).toThrow("ours has 4 ranks, torch 2: not comparable");
    expect(() => commReport({ ...ours, dtype: "bf16" }, torch)).toThrow("not comparable");
  });

  test("an overlap-only file: no sweep, the overlaps with their NCCL env", () => {
    const ctas = asCommFile("ctas8", load("nccl-overlap-ctas8.json"), "either");
    expect(commReport(ctas, torch)).toContain("(no bandwidth sweep in ours: an --overlap-only run?)");
    const o = overlapReport([["ctas8", ctas]]);
    expect(row(o, "ctas8", "posted", "default", "NCCL_MAX_CTAS=8").slice(6)).toEqual(["2.00", "2.00", "1.90", "1.36x", "41%", "no"]);
    expect(row(o, "ctas8", "posted", "high", "NCCL_MAX_CTAS=8").slice(9)).toEqual(["1.02x", "97%", "yes"]);
  });

  test("the queued protocol's rows: ours from `overlaps`, torch's from `overlapQueued`", () => {
    const base = ours.overlaps?.[0] as NonNullable<CommFile["overlap"]>;
    const q = { ...base, protocol: "queued", gemmMs: 1.5, commMs: 1.0, bothMs: 1.53 };
    const o = overlapReport([
      ["ours", { ...ours, overlaps: [base, q] }],
      ["torch", { ...torch, overlapQueued: { ...q, bothMs: 1.8 } }],
    ]);
    expect(row(o, "ours", "queued").slice(-3)).toEqual(["1.02x", "97%", "yes"]);
    expect(row(o, "torch", "queued").slice(-3)).toEqual(["1.20x", "70%", "no"]);
    expect(row(o, "torch", "posted").slice(-3)).toEqual(["1.19x", "75%", "no"]);
  });

  test("a file from before the priority list (overlap only, no overlaps) reads as default", () => {
    const { overlaps: _, ...old } = ours;
    const o = overlapReport([["old", old as CommFile]]);
    expect(row(o, "old", "posted", "default")[6]).toBe("3.38");
    expect(o.split("\n").filter((l) => l.startsWith("| old")).length).toBe(1);
  });
});

describe("distattn report", () => {
  const files = ["distattn.json", "distattn-experiment.json", "distattn-old.json"].map(
    (f) => [f, asDistFile(f, load(f))] as [string, ReturnType<typeof asDistFile>],
  );
  const cps = ["cp32.json", "cp8.json"].map((f) => [f, asCpFile(f, load(f))] as [string, ReturnType<typeof asCpFile>]);
  const md = distattnReport(files, cps);

  test("times, overlap cost, speedup, fractions and PyTorch CP matched by T and Hkv", () => {
    expect(row(md, "64K", "32", "zigzag", "cudnn", "default")).toEqual([
      "64K",
      "32",
      "zigzag",
      "cudnn",
      "default",
      "110.0",
      "112.0",
      "100.0",
      "10.0%",
      "1.82x",
      "91%",
      "91%",
      "100.0",
      "10.0% slower",
    ]);
    // GQA matches the Hkv = 8 CP file; 128K is faster than PyTorch.
    expect(row(md, "64K", "8", "zigzag", "cudnn").slice(12)).toEqual(["125.0", "16.0% faster"]);
    expect(row(md, "128K", "32", "zigzag").slice(9)).toEqual(["2.00x", "100%", "100%", "420.0", "4.8% faster"]);
    // The ring's bound for P = 2 is 4/3: 1.33x is all of it.
    expect(row(md, "64K", "32", "ring", "cudnn").slice(9, 12)).toEqual(["1.33x", "67%", "100%"]);
  });

  test("a one-pass row (BENCH_PHASE) is labelled, with no speedup, PyTorch comparison or traffic row", () => {
    const [name, f] = files[0] as [string, ReturnType<typeof asDistFile>];
    const first = f.results.find((r) => !("check" in r)) as NonNullable<(typeof f.results)[number]>;
    const one = { ...f, results: [{ ...first, phase: "bwd", overlap_ms: 50, nocomm_ms: 48, sync_ms: undefined }] };
    const out = distattnReport([[name, one as typeof f]], cps);
    const cells = out.split("\n").filter((l) => l.includes("(bwd only)"));
    expect(cells.length).toBe(1);
    const c = (cells[0] as string).split("|").map((x) => x.trim());
    expect(c.slice(6, 16)).toEqual(["50.0", "-", "48.0", "4.2%", "-", "-", "-", "-", "-", ""]);
    expect(out).not.toContain("| equal |");
  });

  test("experiments (comm priority, NCCL env, no baseline) are rows of their own", () => {
    expect(row(md, "64K", "32", "zigzag", "cudnn", "high").slice(5, 12)).toEqual(["104.0", "-", "100.0", "4.0%", "-", "-", "-"]);
    expect(row(md, "64K", "32", "zigzag", "cudnn", "default NCCL_MAX_CTAS=8")[8]).toBe("8.0%");
    // A file from before the comm setting was recorded reads as default.
    expect(row(md, "64K", "32", "zigzag", "cuda", "default")[9]).toBe("1.80x");
  });

  test("traffic against the analytic count, equality, baselines, CP errors", () => {
    expect(row(md, "64K", "32", "ring", "268,435,456").at(-1)).toBe("equal");
    expect(row(md, "64K", "8", "zigzag", "33,554,432").at(-1)).toBe("**differs** by 0 B fwd, -1,024 B bwd");
    expect(row(md, "8229", "32", "zigzag").slice(5)).toEqual(["2.2e-3", "yes"]);
    expect(row(md, "8229", "8", "zigzag").slice(5)).toEqual(["2.0e-2", "**no**"]);
    expect(row(md, "64K", "32", "cudnn", "200.0")).toEqual(["64K", "32", "cudnn", "200.0", "190.0 (cudnn)"]);
    expect(md).toContain("PyTorch CP errors: T=256K Hkv=32: OutOfMemoryError: CUDA out of memory");
  });

  test("our kernel's variant is named where the file records it", () => {
    const old = (load("distattn-old.json") as { results: Record<string, unknown>[] }).results[0];
    const wgmma = asDistFile("new", { P: 2, results: [{ ...old, attnKernels: "wgmma", overlap_ms: 200 }] });
    const md2 = distattnReport([["new", wgmma], ...files.slice(2)]);
    expect(row(md2, "64K", "32", "zigzag", "cuda (wgmma)")[5]).toBe("200.0");
    expect(row(md2, "64K", "32", "zigzag", "cuda", "default")[5]).toBe("245.9");
  });

  test("files of the wrong kind are refused", () => {
    expect(() => asDistFile("cp8.json", load("cp8.json"))).toThrow("cp8.json: expected a file written by distattn-bench.ts");
    expect(() => asCpFile("distattn.json", load("distattn.json"))).toThrow("expected a file written by bench/torch_cp_attn.py");
  });

  test("token counts", () => {
    expect([65536, 262144, 1048576, 8229].map(fmtTokens)).toEqual(["64K", "256K", "1M", "8229"]);
  });
});

describe("command line", () => {
  const cli = (...args: string[]) => {
    const p = Bun.spawnSync(["bun", join(import.meta.dir, "report.ts"), ...args], { stdout: "pipe", stderr: "pipe" });
    return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
  };

  test("comm and distattn print the tables", () => {
    const c = cli("comm", join(DIR, "nccl-ours.json"), join(DIR, "nccl-torch.json"));
    expect(c.code).toBe(0);
    expect(c.out).toContain("| 128 MiB | **201.3 / 335.5 (60%)** (!) |");
    const d = cli("distattn", join(DIR, "distattn.json"), "--cp", join(DIR, "cp32.json"), "--cp", join(DIR, "cp8.json"));
    expect(d.code).toBe(0);
    expect(d.out).toContain("| 64K | 8 | zigzag | cudnn | default | 105.0 |");
  });

  test("bad arguments exit 2 with the reason and the usage", () => {
    for (const [args, reason] of [
      [[], "a mode is required"],
      [["comm", join(DIR, "nccl-ours.json")], "comm: expected OURS.json TORCH.json, got 1 files"],
      [["distattn", join(DIR, "missing.json")], "missing.json: no such file"],
      [["distattn", join(DIR, "distattn.json"), "--cp"], "--cp needs a file"],
      [["distattn", join(DIR, "distattn.json"), "--bogus"], "unknown option --bogus"],
    ] as [string[], string][]) {
      const r = cli(...args);
      expect(r.code).toBe(2);
      expect(r.err).toContain(reason);
      expect(r.err).toContain("usage: bun bench/report.ts");
    }
  });
});
