// End to end: `bun run apps/trainer` as a user runs it, on CPU ranks (issue 13's acceptance). Small
// runs (the tiny model at 64-128 tokens) so each test takes seconds on 2 cores:
// - a fixed seed learns: the loss of the last steps falls well below the first;
// - the run folder: metrics.jsonl (step, loss, lr, grad_norm, tokens_per_s, mfu), loss.png,
//   snapshots, hf/ (config.json + safetensors);
// - resume is exact: 6 steps, then --resume to 12, gives the very losses of the 12-step run (also with
//   the update per layer, whose clip uses the previous step's norm; and with --deterministic added);
// - SIGKILL while a snapshot is being written: --resume continues from the previous complete one;
// - SIGTERM: a snapshot, exit 0; a rank killed: every rank stops, the launcher names it, non-zero;
// - meshes: cp=1, 2, 4 and dp=2 give the same losses (within f32 reordering, see the test);
// - --profile: a block after each step line and DIR/profile.jsonl;
// - bad flags, config files and data: one line on stderr, exit 2.

import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const TRAINER = join(ROOT, "apps/trainer/index.ts");
const dir = mkdtempSync(join(tmpdir(), "trainer-e2e-"));
/** CPU ranks on any machine: with no GPU visible the trainer starts CPU processes (the launcher's and the ranks' probe). */
const env = { ...process.env, CUDA_VISIBLE_DEVICES: "" };
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Small and quick: 128 tokens a sequence, schedule of 30 steps. */
const BASE = ["--seq", "128", "--lr", "3e-3", "--warmup", "3", "--decay-steps", "30"];
/** ... with snapshots every 3 steps. */
const SMALL = [...BASE, "--snapshot-every", "3"];

interface Run {
  code: number | null;
  out: string;
  err: string;
}

function run(args: string[]): Run {
  const p = Bun.spawnSync(["bun", TRAINER, ...args], { cwd: ROOT, env, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString().trimEnd() };
}

interface Rec {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  mfu: number;
}

function metrics(out: string): Rec[] {
  return readFileSync(join(out, "metrics.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Rec);
}

const losses = (out: string) => metrics(out).map((r) => r.loss);
const snapshots = (out: string) => readdirSync(join(out, "snapshots")).sort();

describe("a run", () => {
  const out = join(dir, "main");
  let r: Run;

  test("--steps 12 learns on a fixed seed and writes the run folder", () => {
    r = run([...SMALL, "--steps", "12", "--out", out]);
    expect(r.err).not.toMatch(/error/i);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^policy auto -> \S+: .*; the fastest policy fits$/m);
    expect(r.out).toMatch(/^memory: rank [\d.]+ GiB of [\d.]+ GiB at the \S+( \S+)? peak \(\d+ local tokens\)$/m);
    expect(r.out).toMatch(
      /^start-up: [\d.]+ s \(process start and imports [\d.]+, communicator [\d.]+, plan [\d.]+, optimizer state [\d.]+, model and data [\d.]+, weights [\d.]+ s\)$/m,
    );
    expect(r.out).toMatch(/^cpu matmul: blas/m);
    expect(r.out).toMatch(
      /^step 12\/12 \| loss \d+\.\d{4} \| lr .* \| grad .* \| [\d,]+ tok\/s \| .* TFLOP\/s\/GPU \| MFU .*% \| mem .* \| .* s$/m,
    );
    const m = metrics(out);
    expect(m.map((x) => x.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    for (const x of m)
      for (const k of ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"] as const) expect(Number.isFinite(x[k])).toBe(true);
    // The first loss is ln(32000) = 10.37 give or take; a model that learns is well below it by step 12.
    const first = m[0]?.loss as number;
    const last = m.slice(-3).reduce((a, x) => a + x.loss, 0) / 3;
    expect(first).toBeGreaterThan(10);
    expect(last).toBeLessThan(first - 1.5);
    expect(existsSync(join(out, "loss.png"))).toBe(true);
    expect(readFileSync(join(out, "loss.png")).subarray(1, 4).toString()).toBe("PNG");
    expect(snapshots(out)).toEqual(["step-00000009", "step-00000012"]); // every 3, the last 2 kept
    const hf = readdirSync(join(out, "hf"));
    expect(hf).toContain("config.json");
    expect(hf.some((f) => f.endsWith(".safetensors"))).toBe(true);
    const hfCfg = JSON.parse(readFileSync(join(out, "hf", "config.json"), "utf8"));
    expect(hfCfg.architectures).toEqual(["LlamaForCausalLM"]);
  }, 90_000);

  test("6 steps, then --resume to 12: exactly the losses of the 12-step run (--deterministic may be added: CPU ranks already are)", () => {
    const part = join(dir, "resumed");
    const a = run([...SMALL, "--steps", "6", "--out", part]);
    expect(a.code).toBe(0);
    const b = run([...SMALL, "--steps", "12", "--resume", "--deterministic", "--out", part]);
    expect(b.err).toBe("");
    expect(b.code).toBe(0);
    expect(b.out).toMatch(/resumed from .*step-00000006/);
    expect(b.out).toMatch(/^attention: reference \(cpu ranks; --deterministic: its backward is deterministic already\)$/m);
    expect(losses(part)).toEqual(losses(out));
  }, 90_000);

  test("--init-from the export: the same weights start the next run", () => {
    const next = join(dir, "from-hf");
    const c = run([...SMALL, "--steps", "1", "--snapshots=false", "--export=false", "--init-from", join(out, "hf"), "--out", next]);
    expect(c.code).toBe(0);
    expect(c.out).toMatch(/weights from .*hf/);
    // The export is bf16: the first loss of the new run is near the old run's last losses, far below a fresh start.
    const l = losses(next)[0] as number;
    expect(l).toBeLessThan((losses(out)[0] as number) - 1.5);
  }, 60_000);
});

describe("--update per-layer", () => {
  test("learns, and 2 steps then --resume to 5 give the losses of 5 in one go (the clip's previous norm is in the snapshot)", () => {
    const args = [...BASE, "--update", "per-layer", "--export=false"];
    const whole = join(dir, "per-layer");
    const parts = join(dir, "per-layer-parts");
    const a = run([...args, "--steps", "5", "--out", whole]);
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/^update: per layer, .*clipped by the previous step's gradient norm$/m);
    expect(run([...args, "--steps", "2", "--out", parts]).code).toBe(0);
    const b = run([...args, "--steps", "5", "--resume", "--out", parts]);
    expect(b.code).toBe(0);
    expect(losses(parts)).toEqual(losses(whole));
    const l = losses(whole);
    expect(l.at(-1) as number).toBeLessThan((l[0] as number) - 0.3);
    // A step's update per layer sees one sequence: accumulation is refused, in one line.
    const c = run([...args, "--batch", "2", "--out", join(dir, "never")]);
    expect(c.code).toBe(2);
    expect(c.err).toMatch(/^trainer: --update per-layer updates each layer from one sequence per replica: --batch must be 1/);
  }, 90_000);
});

describe("stopping", () => {
  test("SIGKILL while a snapshot is being written: --resume continues from the previous one", async () => {
    const out = join(dir, "killed");
    const p = Bun.spawn(["bun", TRAINER, ...SMALL, "--steps", "30", "--out", out], { cwd: ROOT, env, stdout: "pipe", stderr: "pipe" });
    const snaps = join(out, "snapshots");
    // Snapshot 3 complete, then the moment snapshot 6's temp folder appears: kill the launcher (the
    // ranks run with --no-orphans and die with it).
    const deadline = Date.now() + 50_000;
    let killedAt = "";
    while (Date.now() < deadline) {
      const names = existsSync(snaps) ? readdirSync(snaps) : [];
      const tmp = names.find((n) => n.startsWith(".tmp-step-"));
      if (names.includes("step-00000003") && tmp) {
        p.kill("SIGKILL");
        killedAt = tmp;
        break;
      }
      await Bun.sleep(5);
    }
    await p.exited;
    expect(killedAt).toBe(".tmp-step-00000006");
    await Bun.sleep(500); // the ranks see their parent gone
    const r = run([...SMALL, "--steps", "8", "--resume", "--out", out]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/resumed from .*step-00000003 \(step 3,/);
    expect(losses(out).slice(0, 8)).toEqual(losses(join(dir, "main")).slice(0, 8));
  }, 90_000);

  test("SIGTERM: a snapshot at the step it lands in, exit 0, no export", async () => {
    const out = join(dir, "term");
    const p = Bun.spawn(["bun", TRAINER, ...BASE, "--steps", "30", "--snapshot-every", "0", "--out", out], {
      cwd: ROOT,
      env,
      stdout: "pipe",
      stderr: "pipe",
    });
    const text = new Response(p.stdout).text();
    const deadline = Date.now() + 50_000;
    while (Date.now() < deadline && !(existsSync(join(out, "metrics.jsonl")) && metrics(out).length >= 2)) await Bun.sleep(20);
    expect(metrics(out).length).toBeGreaterThanOrEqual(2);
    p.kill("SIGTERM");
    expect(await p.exited).toBe(0);
    const stdout = await text;
    const m = /stopped at step (\d+) \(SIGTERM\)/.exec(stdout);
    expect(m).not.toBeNull();
    const step = Number(m?.[1]);
    expect(snapshots(out)).toEqual([`step-${String(step).padStart(8, "0")}`]);
    expect(existsSync(join(out, "hf"))).toBe(false);
  }, 60_000);

  test("a rank that dies: the others stop, the launcher names it and exits non-zero", async () => {
    const out = join(dir, "dead");
    const p = Bun.spawn(["bun", TRAINER, ...SMALL, "--steps", "30", "--out", out], { cwd: ROOT, env, stdout: "pipe", stderr: "pipe" });
    const err = new Response(p.stderr).text();
    const deadline = Date.now() + 50_000;
    while (Date.now() < deadline && !(existsSync(join(out, "metrics.jsonl")) && metrics(out).length >= 2)) await Bun.sleep(20);
    // The ranks are the launcher's children: kill one of them.
    const kids = readFileSync(`/proc/${p.pid}/task/${p.pid}/children`, "utf8").trim().split(/\s+/).map(Number);
    expect(kids.length).toBe(2);
    process.kill(kids[1] as number, "SIGKILL");
    const code = await p.exited;
    expect(code).not.toBe(0);
    const e = await err;
    expect(e).toMatch(/^\[launcher\] job failed: rank [01] was killed by SIGKILL/m);
    // The other rank says in one line which peer it lost.
    expect(e).toMatch(/^\[rank [01]\] rank [01]: .*rank [01] closed its connection/m);
  }, 60_000);
});

describe("meshes", () => {
  test("cp=1, cp=2, cp=4 and dp=2 (cp=1) give the same losses over 3 steps", () => {
    // batch 2 in every mesh: cp=1 and cp=2 and cp=4 accumulate 2 micro-batches, dp=2 takes one each.
    // The sums run in other orders (each rank's sgemm over its rows, the attention merge over key
    // blocks, the reduce-scatters over ranks), so the f32 results differ in their last bits, and
    // AdamW's update m / sqrt(v) carries a relative change of a gradient into the weights as it is.
    // Measured on 2 cores: 1.5e-8 relative at step 3 (cp=4 against cp=1), dp=2 equal to cp=1 within
    // 1e-15. 1e-6 leaves ~70x room and is far below a real error (a wrong label or position moves the
    // loss by more than 1e-3).
    const base = ["--seq", "64", "--batch", "2", "--warmup", "1", "--decay-steps", "30", "--snapshots=false", "--export=false"];
    const meshes = [
      ["--nprocs", "1", "--cp", "1"],
      ["--nprocs", "2", "--cp", "2"],
      ["--nprocs", "4", "--cp", "4"],
      ["--nprocs", "2", "--cp", "1"],
    ];
    const all = meshes.map((m, i) => {
      const out = join(dir, `mesh-${i}`);
      const r = run([...base, ...m, "--steps", "3", "--out", out]);
      expect(r.code).toBe(0);
      return losses(out);
    });
    const ref = all[0] as number[];
    expect(ref).toHaveLength(3);
    for (const l of all.slice(1))
      for (const [j, v] of l.entries()) expect(Math.abs(v - (ref[j] as number)) / (ref[j] as number)).toBeLessThan(1e-6);
    // Layers 1 and 3 keeping nothing (their inputs re-run in the backward, through ZeRO's gathered
    // weights and DistAttn on cp=2): recomputation gives the very losses of cp=2.
    const skip = join(dir, "mesh-skip");
    const s = run([...base, ...(meshes[1] as string[]), "--policy", "(full, skip) x2", "--steps", "3", "--out", skip]);
    expect(s.err).toBe("");
    expect(s.code).toBe(0);
    expect(s.out).toMatch(/^policy \(full, skip\) x2: .*; --policy$/m);
    expect(losses(skip)).toEqual(all[1] as number[]);

    // A snapshot of cp=2 resumed on one rank: the shards are re-cut, and step 3 continues as above.
    const moved = join(dir, "mesh-moved");
    const a = run([...base.filter((x) => x !== "--snapshots=false"), "--steps", "2", "--nprocs", "2", "--cp", "2", "--out", moved]);
    expect(a.code).toBe(0);
    const b = run([...base, "--steps", "3", "--resume", "--nprocs", "1", "--cp", "1", "--out", moved]);
    expect(b.code).toBe(0);
    expect(b.out).toMatch(/resumed from .*step-00000002 \(step 2, mesh cp 2 x dp 1\)/);
    const l = losses(moved);
    expect(l).toHaveLength(3);
    expect(Math.abs((l[2] as number) - (ref[2] as number)) / (ref[2] as number)).toBeLessThan(1e-6);
  }, 150_000);
});

describe("--profile", () => {
  test("a block after each step line and DIR/profile.jsonl (host clock on CPU ranks), by kind for a mixed policy", () => {
    const out = join(dir, "profile");
    const r = run([
      ...BASE,
      "--steps",
      "2",
      "--profile",
      "--policy",
      "remat-aware*2,none*2",
      "--snapshots=false",
      "--export=false",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    const lines = r.out.split("\n");
    for (const step of [1, 2]) {
      const at = lines.findIndex((l) => l.startsWith(`step ${step}/2 |`));
      expect(at).toBeGreaterThan(0);
      expect(lines[at + 1]).toMatch(new RegExp(`^profile step ${step} \\(host clock only\\): total [\\d.]+ ms$`));
      const block = lines.slice(at + 2, at + 10);
      expect(block.map((l) => l.trim().split(" ")[0])).toEqual([
        "setup",
        "forward",
        "loss",
        "backward",
        "backward-rest",
        "tail",
        "optimizer",
        "gaps:",
      ]);
      expect(block[1]).toMatch(
        /4 layers [\d.]+\/[\d.]+\/[\d.]+ min\/med\/max; remat-aware x2 [\d.]+ \(.*\); none x2 [\d.]+ \(.*\); weight waits/,
      );
    }
    const recs = readFileSync(join(out, "profile.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(recs.map((x) => x.step)).toEqual([1, 2]);
    const m = metrics(out) as unknown as { step_s: number }[];
    for (const [i, x] of recs.entries()) {
      expect(x.clock).toBe("host");
      expect(x.total_gpu_ms).toBeNull();
      expect(x.forward_ms).toHaveLength(4);
      expect(x.backward_ms).toHaveLength(4);
      expect(x.kinds.map((k: { kind: string }) => k.kind)).toEqual(["remat-aware", "none"]);
      // One sequence through 4 layers: the step, 4 forwards (start, end), the loss, 4 backwards (start,
      // end), the sequence's end, settled, normed, combined, end.
      expect(x.marks).toHaveLength(1 + 2 * 4 + 1 + 2 * 4 + 5);
      expect(x.optimizer_parts.map((o: { part: string }) => o.part)).toEqual([
        "sums of squares read",
        "step numbers all-gathered",
        "update, step end",
      ]);
      const phases = Object.values(x.phases as Record<string, { host_ms: number }>).reduce((a, p) => a + p.host_ms, 0);
      expect(Math.abs(phases - x.total_host_ms)).toBeLessThan(0.1);
      // The profile's step is the step line's (begin just after the loop's clock starts, finish just after it stops).
      expect(Math.abs(x.total_host_ms - 1000 * (m[i]?.step_s as number))).toBeLessThan(20);
    }
  }, 60_000);
});

describe("mistakes are one line and exit 2", () => {
  test("bad flags, config files and data", () => {
    writeFileSync(join(dir, "bad.json"), JSON.stringify({ seq: 64, stepz: 3 }));
    writeFileSync(join(dir, "notjson.json"), "{ seq: ");
    writeFileSync(join(dir, "empty.txt"), "");
    const cases: [string[], RegExp][] = [
      [["--seq", "abc"], /^trainer: --seq: expected an integer >= 2, got "abc"$/],
      [["--cp", "3"], /^trainer: --cp 3 must divide --nprocs 2/],
      [["--model", "gpt2"], /^trainer: unknown Llama preset "gpt2"/],
      [["--config", join(dir, "bad.json")], /^trainer: config file .*bad.json: unknown key "stepz"/],
      [["--config", join(dir, "notjson.json")], /^trainer: config file .*notjson.json: not valid JSON/],
      [["--data", join(dir, "empty.txt")], /^trainer: .*empty.txt: no text in its 1 file\(s\)$/],
      [["--init-from", join(dir, "nowhere")], /^trainer: .*nowhere/],
      [["--resume", "--out", join(dir, "never")], /^trainer: --resume: no complete snapshot in /],
      [["--attention", "cuda"], /^trainer: --attention cuda needs a GPU; CPU ranks run the reference attention/],
      [
        ["--deterministic", "--attention", "cuda"],
        /^trainer: --deterministic with --attention cuda: our flash-attention kernels sum dQ with f32 atomics/,
      ],
      [["--policy", "none*3"], /^trainer: --policy: checkpoint policy "none\*3": its counts add up to 3 layers, the model has 4$/],
    ];
    for (const [args, msg] of cases) {
      const r = run(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.err.split("\n")).toHaveLength(1);
      expect(r.err).toMatch(msg);
    }
  }, 60_000);
});
