// The multi-GPU runs behind BENCHMARKS.md's tables, one named recipe per table (or pair of tables),
// each fitting one device call (BUDGET, default 480 s, bounds the whole run; every command has its
// own cap). The benchmark CLIs are called exactly as the measured numbers were taken; the stage names
// BENCHMARKS.md cites (I3B, FIN, FIN2, CE1-CE5, DIAG, I5F, I5KZ, C/D) were calls of the former
// scripts/device-multi.sh, whose diary of stages stays in git history.
//
//   source .device/setup.sh && bun bench/recipes.ts <name>     run it: JSON and a log under $OUT, tables last
//   bun bench/recipes.ts --list                                 names, GPUs, what each fills
//   bun bench/recipes.ts --dry <name>                           the commands, without running them
//
// Every command runs with NVLink multicast off and PYTHONUNBUFFERED=1; two-GPU recipes pin
// CUDA_VISIBLE_DEVICES=0,1. Each command's full output (rank 0's lines) goes to $OUT/<name>.log; the
// lines that say how it went are shown as it runs; bench/report.ts's tables come at the end.

import { existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { cliErrors, probeGpus, UserError } from "@lightseq/cuda";

export interface Step {
  /** The command, from the repository root; "$OUT/x" in an argument is the output folder. */
  cmd: string[];
  env?: Record<string, string>;
  /** Seconds the command may run at most (less when the budget is nearly spent). */
  capS: number;
  /** Which of its output lines to show (all go to the log). */
  show: "progress" | "equality" | "tests" | "all";
}

export interface Recipe {
  name: string;
  gpus: number;
  /** The BENCHMARKS.md section and table(s) it fills. */
  fills: string;
  steps: Step[];
  /** bench/report.ts argument lists, run at the end over the files that were written. */
  reports: string[][];
}

const DISTATTN = "packages/attention/bench/distattn-bench.ts";
const NCCL_BENCH = "packages/comm/bench/nccl-bench.ts";
const TORCH_DIST = ["torchrun", "--nproc-per-node=2", "packages/comm/bench/torch_dist_bench.py"];
const TORCH_CP = ["torchrun", "--nproc-per-node=2", "bench/torch_cp_attn.py"];
const T3 = "65536,131072,262144";
const CUDNN_TIMING = { BENCH_BACKEND: "cudnn", BENCH_EQUALITY: "skip" };
const overlapOnly = (out: string, priorities: string, env: Record<string, string> = {}, capS = 45): Step => ({
  cmd: ["bun", NCCL_BENCH, out, "--overlap-only", "--comm-priority", priorities, "--trials", "10"],
  env,
  capS,
  show: "progress",
});

export const RECIPES: Recipe[] = [
  {
    name: "gpu-tests",
    gpus: 2,
    fills: "Communication: 'Correctness on the GPU' (every GPU test, the NCCL and copy-engine conformance and watchdogs among them)",
    steps: [{ cmd: ["bun", "test", "packages"], env: { LIGHTSEQ_REQUIRE_GPU: "1" }, capS: 240, show: "tests" }],
    reports: [],
  },
  {
    name: "comm",
    gpus: 2,
    fills: "Communication: the bandwidth table, ours vs torch.distributed (was stage I3B), and its overlap rows",
    // Ours and torch's alternately, twice: a difference that follows the order is the machine's, not ours.
    steps: [
      ...[1, 2].flatMap((i): Step[] => [
        { cmd: ["bun", NCCL_BENCH, `$OUT/nccl-${i}.json`, "--trials", "10"], capS: 75, show: "progress" },
        { cmd: [...TORCH_DIST, `$OUT/torch-${i}.json`, "--trials", "10"], capS: 90, show: "progress" },
      ]),
      overlapOnly("$OUT/overlap.json", "default,high"),
    ],
    reports: [
      ["comm", "$OUT/nccl-1.json", "$OUT/torch-1.json"],
      ["comm", "$OUT/nccl-2.json", "$OUT/torch-2.json"],
      ["overlap", "$OUT/overlap.json", "$OUT/torch-1.json", "$OUT/torch-2.json"],
    ],
  },
  {
    name: "overlap",
    gpus: 2,
    fills: "Communication: the overlap by comm stream priority and protocol beside torch's (was stage FIN's first part)",
    steps: [
      overlapOnly("$OUT/ov.json", "default,high", {}, 40),
      { cmd: [...TORCH_DIST, "$OUT/torch.json", "--trials", "5"], capS: 60, show: "progress" },
    ],
    reports: [["overlap", "$OUT/ov.json", "$OUT/torch.json"]],
  },
  {
    name: "overlap-variants",
    gpus: 2,
    fills: "Communication: the experiments table, NCCL P2P channel limits and CTA policy, and the copy-engine transport (stages CE4, CE5)",
    steps: [
      ...["NCCL_MAX_P2P_NCHANNELS=8", "NCCL_MAX_P2P_NCHANNELS=4", "NCCL_MAX_P2P_NCHANNELS=2", "NCCL_CTA_POLICY=1", "NCCL_CTA_POLICY=2"].map(
        (v) => {
          const [k, x] = v.split("=") as [string, string];
          return overlapOnly(`$OUT/ov-${v}.json`, "high", { [k]: x, LIGHTSEQ_P2P: "nccl" }, 30);
        },
      ),
      ...["nccl", "copy-engine"].map((p2p) => overlapOnly(`$OUT/ov-${p2p}.json`, "high", { LIGHTSEQ_P2P: p2p }, 40)),
      { cmd: [...TORCH_DIST, "$OUT/torch.json", "--trials", "5"], capS: 60, show: "progress" },
    ],
    reports: [
      [
        "overlap",
        "$OUT/ov-nccl.json",
        "$OUT/ov-copy-engine.json",
        "$OUT/ov-NCCL_CTA_POLICY=1.json",
        "$OUT/ov-NCCL_CTA_POLICY=2.json",
        "$OUT/ov-NCCL_MAX_P2P_NCHANNELS=2.json",
        "$OUT/ov-NCCL_MAX_P2P_NCHANNELS=4.json",
        "$OUT/ov-NCCL_MAX_P2P_NCHANNELS=8.json",
        "$OUT/torch.json",
      ],
    ],
  },
  {
    name: "copy-engine-bandwidth",
    gpus: 2,
    fills: "Communication: the copy-engine transport's bandwidth beside torch's NCCL (was stage CE1)",
    steps: [
      { cmd: ["bun", NCCL_BENCH, "$OUT/nccl-ce.json", "--trials", "7"], env: { LIGHTSEQ_P2P: "copy-engine" }, capS: 80, show: "progress" },
      { cmd: [...TORCH_DIST, "$OUT/torch.json", "--trials", "7"], capS: 90, show: "progress" },
    ],
    reports: [["comm", "$OUT/nccl-ce.json", "$OUT/torch.json"]],
  },
  {
    name: "distattn",
    gpus: 2,
    fills:
      "DistAttn: the main grid on cuDNN blocks, MHA every schedule and mode, GQA overlap and nocomm, PyTorch CP beside both (was stages FIN, FIN2)",
    steps: [
      {
        cmd: ["bun", DISTATTN, "$OUT/mha.json", T3, "32", "ring,lightseq,zigzag", "overlap,sync,nocomm"],
        env: { ...CUDNN_TIMING, BENCH_ALL_MODES_HKV: "32" },
        capS: 200,
        show: "progress",
      },
      {
        cmd: ["bun", DISTATTN, "$OUT/gqa.json", T3, "8", "ring,lightseq,zigzag", "overlap,nocomm"],
        env: { ...CUDNN_TIMING, BENCH_ALL_MODES_HKV: "8" },
        capS: 130,
        show: "progress",
      },
      { cmd: [...TORCH_CP, "$OUT/cp32.json", T3, "32", "32", "cudnn"], capS: 70, show: "progress" },
      { cmd: [...TORCH_CP, "$OUT/cp8.json", T3, "32", "8", "cudnn"], capS: 70, show: "progress" },
    ],
    reports: [["distattn", "$OUT/mha.json", "$OUT/gqa.json", "--cp", "$OUT/cp32.json", "--cp", "$OUT/cp8.json"]],
  },
  {
    name: "distattn-phases",
    gpus: 2,
    fills:
      "DistAttn: where the cost lies, forward and backward timed apart, and the backward over the copy-engine transport (was stage DIAG)",
    steps: [
      ...["fwd", "bwd"].map(
        (ph): Step => ({
          cmd: ["bun", DISTATTN, `$OUT/${ph}.json`, T3, "32", "zigzag", "overlap,sync,nocomm"],
          env: { ...CUDNN_TIMING, BENCH_ALL_MODES_HKV: "32", BENCH_NO_BASELINE: "1", BENCH_PHASE: ph },
          capS: 90,
          show: "progress",
        }),
      ),
      {
        cmd: ["bun", DISTATTN, "$OUT/bwd-ce.json", T3, "32", "zigzag", "overlap,sync,nocomm"],
        env: { ...CUDNN_TIMING, BENCH_ALL_MODES_HKV: "32", BENCH_NO_BASELINE: "1", BENCH_PHASE: "bwd", LIGHTSEQ_P2P: "copy-engine" },
        capS: 80,
        show: "progress",
      },
    ],
    reports: [["distattn", "$OUT/fwd.json", "$OUT/bwd.json", "$OUT/bwd-ce.json"]],
  },
  {
    name: "copy-engine-distattn",
    gpus: 2,
    fills:
      "DistAttn: the copy-engine transport under DistAttn beside NCCL, lightseq and zigzag MHA, overlap and nocomm (was stage CE5's second part)",
    steps: [
      ...["copy-engine", "nccl"].map(
        (p2p): Step => ({
          cmd: ["bun", DISTATTN, `$OUT/dist-${p2p}.json`, T3, "32", "lightseq,zigzag", "overlap,nocomm"],
          env: { ...CUDNN_TIMING, BENCH_ALL_MODES_HKV: "32", LIGHTSEQ_P2P: p2p, BENCH_NO_BASELINE: p2p === "nccl" ? "1" : "0" },
          capS: 150,
          show: "progress",
        }),
      ),
      { cmd: [...TORCH_CP, "$OUT/cp32.json", T3, "32", "32", "cudnn"], capS: 90, show: "progress" },
    ],
    reports: [["distattn", "$OUT/dist-copy-engine.json", "$OUT/dist-nccl.json", "--cp", "$OUT/cp32.json"]],
  },
  {
    name: "distattn-ours",
    gpus: 2,
    fills: "DistAttn: our own kernels as the blocks, MHA, every schedule and mode at 64K and 128K, zigzag at 256K (was stage I5KZ)",
    steps: [
      {
        cmd: ["bun", DISTATTN, "$OUT/distattn-cuda-mha.json", "65536,131072", "32", "ring,lightseq,zigzag", "overlap,sync,nocomm"],
        env: { BENCH_BACKEND: "cuda", BENCH_EQUALITY: "skip", BENCH_ALL_MODES_HKV: "32" },
        capS: 200,
        show: "progress",
      },
      {
        cmd: ["bun", DISTATTN, "$OUT/distattn-cuda-mha-256k.json", "262144", "32", "zigzag", "overlap,sync,nocomm"],
        env: { BENCH_BACKEND: "cuda", BENCH_EQUALITY: "skip", BENCH_ALL_MODES_HKV: "32" },
        capS: 120,
        show: "progress",
      },
    ],
    reports: [["distattn", "$OUT/distattn-cuda-mha.json", "$OUT/distattn-cuda-mha-256k.json"]],
  },
  {
    name: "distattn-equality",
    gpus: 2,
    fills:
      "DistAttn: bf16 equality with one-GPU attention, every schedule, MHA and GQA, both block backends, and cuDNN over the copy-engine transport (was I5F's second part and the eq call)",
    steps: [
      ...(["cudnn", "cuda"] as const).map(
        (be): Step => ({
          cmd: ["bun", DISTATTN, `$OUT/eq-${be}.json`, "0", "0", "ring,lightseq,zigzag"],
          env: { BENCH_BACKEND: be, BENCH_EQUALITY: "only" },
          capS: 45,
          show: "equality",
        }),
      ),
      {
        cmd: ["bun", DISTATTN, "$OUT/eq-ce.json", "0", "0", "ring,lightseq,zigzag"],
        env: { BENCH_BACKEND: "cudnn", BENCH_EQUALITY: "only", LIGHTSEQ_P2P: "copy-engine" },
        capS: 45,
        show: "equality",
      },
    ],
    reports: [["distattn", "$OUT/eq-cudnn.json", "$OUT/eq-cuda.json", "$OUT/eq-ce.json"]],
  },
  {
    name: "distattn-4gpu",
    gpus: 4,
    fills:
      "DistAttn on 4 GPUs: every schedule at 128K-512K beside PyTorch CP, the share of communication hidden at 256K, 1M tokens (was stages C, D)",
    steps: [
      {
        cmd: ["bun", DISTATTN, "$OUT/distattn4.json", "131072,262144,524288", "32,8", "ring,lightseq,zigzag", "overlap"],
        env: { ...CUDNN_TIMING, BENCH_REPS: "2", BENCH_ALL_MODES_HKV: "0" },
        capS: 220,
        show: "progress",
      },
      {
        cmd: ["torchrun", "--nproc-per-node=4", "bench/torch_cp_attn.py", "$OUT/cp4.json", "131072,262144,524288", "32", "32", "cudnn"],
        capS: 90,
        show: "progress",
      },
      {
        cmd: ["bun", DISTATTN, "$OUT/hidden4.json", "262144", "32", "zigzag,lightseq", "overlap,nocomm"],
        env: { ...CUDNN_TIMING, BENCH_REPS: "2", BENCH_ALL_MODES_HKV: "32" },
        capS: 60,
        show: "progress",
      },
      {
        cmd: ["bun", DISTATTN, "$OUT/m1.json", "1048576", "32", "zigzag", "overlap"],
        env: { ...CUDNN_TIMING, BENCH_REPS: "1", BENCH_NO_BASELINE: "1" },
        capS: 80,
        show: "progress",
      },
    ],
    reports: [["distattn", "$OUT/distattn4.json", "$OUT/hidden4.json", "$OUT/m1.json", "--cp", "$OUT/cp4.json"]],
  },
];

/** The lines of a command's output to show as it runs (the rest is in the log). */
const SHOW: Record<Step["show"], RegExp> = {
  progress: /^==|^overlap|^wrote|^block kernels|rror|timed out|skipped|^one GPU/,
  equality: /^==|bf16 equality|rror|timed out/,
  tests: /^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error:/,
  all: /./,
};

export function findRecipe(name: string | undefined): Recipe {
  const r = RECIPES.find((x) => x.name === name);
  if (!r)
    throw new UserError(
      `${name === undefined ? "a recipe name is required" : `unknown recipe ${JSON.stringify(name)}`}; one of: ${RECIPES.map((x) => x.name).join(", ")} (--list says what each fills)`,
    );
  return r;
}

/** A step's arguments with $OUT replaced. */
export function expand(args: readonly string[], out: string): string[] {
  return args.map((a) => a.replaceAll("$OUT", out));
}

/** The bench/report.ts calls over the files that exist (a report with no input file is left out). */
export function reportCalls(r: Recipe, out: string, exists: (path: string) => boolean): string[][] {
  const calls: string[][] = [];
  for (const rep of r.reports) {
    const [mode, ...rest] = expand(rep, out) as [string, ...string[]];
    const files: string[] = [];
    const cps: string[] = [];
    for (let i = 0; i < rest.length; i++) {
      if (rest[i] === "--cp") {
        const f = rest[++i] as string;
        if (exists(f)) cps.push(f);
      } else if (exists(rest[i] as string)) files.push(rest[i] as string);
    }
    if (mode === "comm" ? files.length === 2 : files.length > 0) calls.push([mode, ...files, ...cps.flatMap((f) => ["--cp", f])]);
  }
  return calls;
}

function environment(r: Recipe, step: Step): Record<string, string | undefined> {
  return {
    ...process.env,
    ...(r.gpus === 2 ? { CUDA_VISIBLE_DEVICES: "0,1" } : {}),
    ...step.env,
    NCCL_NVLS_ENABLE: "0",
    TORCH_SYMM_MEM_DISABLE_MULTICAST: "1",
    NVSHMEM_DISABLE_NVLS: "1",
    PYTHONUNBUFFERED: "1",
  };
}

const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`);
const describe = (step: Step, out: string) =>
  [...Object.entries(step.env ?? {}).map(([k, v]) => `${k}=${v}`), ...expand(step.cmd, out)].map(quote).join(" ");

/** Runs the steps in order, then the reports; returns 1 if a step failed, timed out or was skipped. */
async function run(r: Recipe, out: string, budgetS: number): Promise<number> {
  const start = performance.now();
  const elapsed = () => Math.round((performance.now() - start) / 1000);
  const log = Bun.file(join(out, `${r.name}.log`)).writer();
  let failures = 0;
  for (const step of r.steps) {
    const left = budgetS - elapsed();
    if (left < 15) {
      console.log(`skipped (budget of ${budgetS} s spent): ${describe(step, out)}`);
      failures++;
      continue;
    }
    const cap = Math.min(step.capS, left);
    const head = `== [${elapsed()}s] ${describe(step, out)}`;
    console.log(head);
    log.write(`${head}\n`);
    const p = Bun.spawn(["timeout", "-k", "10", String(cap), ...expand(step.cmd, out)], {
      env: environment(r, step),
      stdout: "pipe",
      stderr: "pipe",
    });
    const show = SHOW[step.show];
    const pump = async (s: ReadableStream<Uint8Array>) => {
      let pending = "";
      const emit = (line: string) => {
        if (/^\[rank [1-9]/.test(line) || line.includes("Warning")) return; // rank 0 speaks for all
        log.write(`${line}\n`);
        if (show.test(line)) console.log(line);
      };
      for await (const chunk of s) {
        pending += new TextDecoder().decode(chunk);
        const lines = pending.split("\n");
        pending = lines.pop() as string;
        for (const l of lines) emit(l);
      }
      if (pending) emit(pending);
    };
    await Promise.all([pump(p.stdout), pump(p.stderr), p.exited]);
    const tail = p.exitCode === 124 ? `timed out after ${cap} s` : `exit ${p.exitCode}`;
    console.log(`== [${elapsed()}s] ${tail}`);
    log.write(`== [${elapsed()}s] ${tail}\n`);
    if (p.exitCode !== 0) failures++;
  }
  const exists = (f: string) => existsSync(f) && statSync(f).size > 0;
  for (const call of reportCalls(r, out, exists)) {
    const p = Bun.spawnSync(["bun", "bench/report.ts", ...call], { stdout: "pipe", stderr: "pipe" });
    const text = `\n${p.stdout.toString()}${p.stderr.toString()}`;
    console.log(text);
    log.write(text);
  }
  await log.end();
  if (failures > 0)
    console.log(`recipes: ${failures} of ${r.steps.length} commands failed, timed out or were skipped (see ${join(out, `${r.name}.log`)})`);
  return failures > 0 ? 1 : 0;
}

function main(argv: string[]): Promise<number> | number {
  if (argv[0] === "--list" || argv.length === 0) {
    for (const r of RECIPES) console.log(`${r.name.padEnd(22)} ${r.gpus} GPUs  ${r.fills}`);
    return argv.length === 0 ? 2 : 0;
  }
  const dry = argv[0] === "--dry";
  const r = findRecipe(dry ? argv[1] : argv[0]);
  const out = process.env.OUT || "/tmp/out";
  if (dry) {
    for (const s of r.steps) console.log(`${describe(s, out)}   # at most ${s.capS} s`);
    for (const c of r.reports) console.log(`bun bench/report.ts ${expand(c, out).map(quote).join(" ")}`);
    return 0;
  }
  const budget = Number(process.env.BUDGET ?? 480);
  if (!Number.isFinite(budget) || budget <= 0)
    throw new UserError(`BUDGET: expected a positive number of seconds, got ${JSON.stringify(process.env.BUDGET)}`);
  const gpus = probeGpus();
  if (gpus.count < r.gpus)
    throw new UserError(`recipe ${r.name} needs ${r.gpus} GPUs, found ${gpus.count}${gpus.count === 0 ? ` (${gpus.reason})` : ""}`);
  mkdirSync(out, { recursive: true });
  const build = Bun.spawnSync(["bun", "kernels/build.ts"], { stdout: "pipe", stderr: "pipe" });
  const last = `${build.stdout.toString()}${build.stderr.toString()}`.trim().split("\n").pop();
  console.log(last);
  if (build.exitCode !== 0) {
    console.log(`recipes: the kernel build failed (exit ${build.exitCode}); \`bun run build:kernels\` says why`);
    return 1;
  }
  return run(r, out, budget);
}

if (import.meta.main) {
  cliErrors("recipes");
  process.exit(await main(process.argv.slice(2)));
}
