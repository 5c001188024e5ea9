import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatHelp, parseArgs, runCli, VERSION } from "./cli.ts";
import { ConfigError, FIELDS, formatConfig, meshOf, PRESETS, parseConfigObject, resolveConfig, type TrainConfig } from "./config.ts";

const cpu = { gpus: 0 };
const flagsOf = (argv: string[]) => {
  const c = parseArgs(argv);
  if (c.kind !== "run") throw new Error("expected a run");
  return c.flags;
};
const run = async (argv: string[], m = cpu) => {
  const out: string[] = [];
  const err: string[] = [];
  const r = await runCli(argv, m, undefined, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { r, out: out.join("\n"), err: err.join("\n") };
};
const tmp = () => mkdtempSync(join(tmpdir(), "trainer-cli-"));

describe("flags", () => {
  test("every required flag exists", () => {
    const flags = Object.values(FIELDS).map((f) => f.flag);
    for (const f of [
      "preset",
      "model",
      "seq",
      "steps",
      "cp",
      "nprocs",
      "batch",
      "lr",
      "warmup",
      "min-lr",
      "policy",
      "optimizer",
      "update",
      "data",
      "tokenizer",
      "out",
      "resume",
      "init-from",
      "seed",
      "snapshot-every",
      "keep-snapshots",
    ])
      expect(flags).toContain(f);
  });

  test("values parse into their types; K suffix; --k=v; a bare boolean is true", () => {
    expect(flagsOf(["--seq", "32K", "--lr=3e-4", "--resume", "--policy", "full", "--data", "a.txt", "--min-lr", "0"])).toEqual({
      seq: 32768,
      lr: 3e-4,
      resume: true,
      policy: "full",
      data: "a.txt",
      minLr: 0,
    });
    expect(flagsOf(["--resume=false"])).toEqual({ resume: false });
    expect(flagsOf(["--deterministic", "--attention", "cudnn"])).toEqual({ deterministic: true, attention: "cudnn" });
    expect(flagsOf(["--decay-steps", "2k"])).toEqual({ decaySteps: 2048 });
  });

  test("bad flags are one clear error naming the flag", () => {
    const cases: [string[], RegExp][] = [
      [["--sequence", "4"], /unknown flag --sequence \(did you mean --seq\?\)/],
      [["--seq", "abc"], /--seq: expected an integer >= 2, got "abc"/],
      [["--seq", "1"], /--seq: expected an integer >= 2, got "1"/],
      [["--lr", "fast"], /--lr: expected a number >= 0, got "fast"/],
      [
        ["--policy", "most"],
        /--policy: checkpoint policy: expected one of none, full, remat-aware, or a per-layer mix such as remat-aware\*8,none\*24, got "most"/,
      ],
      [
        ["--policy", "none*3,full*x"],
        /--policy: checkpoint policy "none\*3,full\*x": part "full\*x": the layer count must be a positive integer/,
      ],
      [["--steps"], /--steps needs a value \(N\)/],
      [["--steps", "--seq", "4"], /--steps needs a value/],
      [["--seed", "1", "--seed", "2"], /--seed given twice/],
      [["train"], /unexpected argument "train"/],
      [["--resume=maybe"], /--resume: expected true or false/],
    ];
    for (const [argv, msg] of cases) expect(() => parseArgs(argv)).toThrow(msg);
  });

  test("runCli: a bad flag prints one line to stderr and exits 2", async () => {
    const { r, err, out } = await run(["--cp", "x"]);
    expect(r.exit).toBe(2);
    expect(out).toBe("");
    expect(err.split("\n")).toHaveLength(1);
    expect(err).toBe('trainer: --cp: expected an integer >= 1, got "x"');
  });

  test("--help lists every flag with its default and exits 0; --version prints the version", async () => {
    const h = await run(["--seq", "8", "--help"]);
    expect(h.r.exit).toBe(0);
    for (const f of Object.values(FIELDS)) expect(h.out).toContain(`--${f.flag}`);
    expect(h.out).toContain("[256]"); // tiny's seq
    expect(h.out).toContain('["runs/tiny"]');
    expect(h.out).toBe(formatHelp(cpu));
    const v = await run(["--version"]);
    expect(v.r.exit).toBe(0);
    expect(v.out).toBe(VERSION);
  });
});

describe("config", () => {
  test("presets are complete configs that pass their own checks, on CPU and on GPUs", () => {
    for (const [name, p] of Object.entries(PRESETS)) {
      for (const m of [{ gpus: 0 }, { gpus: 1 }, { gpus: 8 }]) {
        const c = p(m);
        expect(Object.keys(c).sort()).toEqual(Object.keys(FIELDS).sort());
        expect(c.preset).toBe(name);
        expect(resolveConfig({ machine: m, flags: { preset: name } })).toEqual(c);
      }
    }
  });

  test("default: tiny on CPU ranks without a GPU, one rank per GPU otherwise", () => {
    const c = resolveConfig({ machine: cpu });
    expect(c.model).toBe("tiny");
    expect(c.nprocs).toBeGreaterThan(1);
    expect(resolveConfig({ machine: { gpus: 4 } }).nprocs).toBe(4);
  });

  test("layering: preset < file < flags", () => {
    const c = resolveConfig({ machine: cpu, file: { seq: 512, steps: 70 }, flags: { steps: 90 } });
    expect(c.seq).toBe(512);
    expect(c.steps).toBe(90);
    expect(resolveConfig({ machine: cpu, file: { preset: "llama2-7b-32k" } }).model).toBe("llama2-7b");
    // --steps says where to stop, not the schedule: a run in two parts has the schedule of one run.
    expect(resolveConfig({ machine: cpu, flags: { steps: 20 } }).decaySteps).toBe(
      resolveConfig({ machine: cpu, flags: { steps: 30 } }).decaySteps,
    );
  });

  test("config file: unknown keys and wrong types name the key and what was expected", () => {
    expect(() => parseConfigObject({ sequence: 4 }, "f.json")).toThrow(/f.json: unknown key "sequence" \(known: preset, model, seq/);
    expect(() => parseConfigObject({ seq: "4" }, "f.json")).toThrow('f.json: "seq" must be an integer >= 2, got "4"');
    expect(() => parseConfigObject({ seq: 4.5 }, "f.json")).toThrow(/"seq" must be an integer/);
    expect(() => parseConfigObject({ resume: 1 }, "f.json")).toThrow('"resume" must be true or false, got 1');
    expect(() => parseConfigObject({ beta2: 1 }, "f.json")).toThrow('"beta2" must be a number in [0, 0.999999], got 1');
    expect(() => parseConfigObject({ data: 3 }, "f.json")).toThrow('"data" must be a path (or null), got 3');
    expect(() => parseConfigObject([1], "f.json")).toThrow("expected a JSON object");
    expect(parseConfigObject({ data: null, lr: 0.1 }, "f.json")).toEqual({ data: null, lr: 0.1 });
  });

  test("config files through the CLI: applied under the flags; missing and malformed files are one line", async () => {
    const d = tmp();
    const good = join(d, "good.json");
    writeFileSync(good, JSON.stringify({ steps: 5, warmup: 2, lr: 0.01, decaySteps: 50 }));
    const r = await run(["--config", good, "--lr", "0.02"]);
    if (r.r.exit !== null) throw new Error(r.err);
    expect(r.r.config.steps).toBe(5);
    expect(r.r.config.lr).toBe(0.02);
    writeFileSync(join(d, "bad.json"), "{ steps: 5 ");
    const bad = await run(["--config", join(d, "bad.json")]);
    expect(bad.r.exit).toBe(2);
    expect(bad.err).toMatch(/^trainer: config file .*bad.json: not valid JSON/);
    const missing = await run(["--config", join(d, "none.json")]);
    expect(missing.err).toMatch(/^trainer: config file .*none.json: not found$/);
    writeFileSync(join(d, "unknown.json"), JSON.stringify({ stepz: 5 }));
    expect((await run(["--config", join(d, "unknown.json")])).err).toMatch(/unknown key "stepz"/);
  });

  test("checks between keys", () => {
    const bad: [Partial<TrainConfig>, RegExp][] = [
      [{ nprocs: 4, cp: 3 }, /--cp 3 must divide --nprocs 4/],
      [{ nprocs: 4, cp: 2, batch: 3 }, /--batch 3 must be a multiple of the data-parallel degree 2/],
      [{ seq: 6, cp: 4, nprocs: 4, batch: 1 }, /--seq 6 is too short for --cp 4/],
      [{ lr: 1e-4, minLr: 1e-3 }, /--min-lr 0.001 is above --lr 0.0001/],
      [{ decaySteps: 5, warmup: 10 }, /--warmup 10 is longer than the schedule \(--decay-steps 5\)/],
      [{ resume: true, initFrom: "hf" }, /--resume and --init-from exclude each other/],
      [
        { deterministic: true, attention: "cuda" },
        /^--deterministic with --attention cuda: our flash-attention kernels sum dQ with f32 atomics \(kernels\/src\/attention_kernels.cuh\), so their backward is not deterministic; use --attention cudnn or auto$/,
      ],
    ];
    for (const [flags, msg] of bad) expect(() => resolveConfig({ machine: cpu, flags })).toThrow(msg);
    expect(() => resolveConfig({ machine: { gpus: 2 }, flags: { nprocs: 4, cp: 4 } })).toThrow(/more than the 2 GPUs/);
    for (const attention of ["auto", "cudnn"] as const)
      expect(resolveConfig({ machine: { gpus: 1 }, flags: { deterministic: true, attention } }).deterministic).toBe(true);
    expect(() => resolveConfig({ machine: cpu, flags: { preset: "huge" } })).toThrow(/unknown preset "huge" \(known: tiny/);
  });

  test("the model name goes through the validation hook", () => {
    const validateModel = (name: string) => {
      if (name !== "tiny") throw new ConfigError(`unknown model "${name}"`);
    };
    expect(() => resolveConfig({ machine: cpu, flags: { model: "tinyy" }, validateModel })).toThrow('unknown model "tinyy"');
    expect(resolveConfig({ machine: cpu, validateModel }).model).toBe("tiny");
  });

  test("the resolved config prints every key and the mesh", () => {
    const c = resolveConfig({ machine: cpu, flags: { nprocs: 4, cp: 2, batch: 4 } });
    expect(meshOf(c)).toEqual({ cp: 2, dp: 2, microBatches: 2 });
    const s = formatConfig(c);
    for (const k of Object.keys(FIELDS)) expect(s).toMatch(new RegExp(`^  ${k} +`, "m"));
    expect(s).toContain("cp 2 x dp 2, 2 micro-batch(es) per rank and step");
  });
});
