// `bun run apps/trainer` as a user runs it: the config printed, the data prepared, and every mistake
// one line on stderr with exit status 2.
import { expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "trainer-main-"));
const run = (...args: string[]) => {
  const p = Bun.spawnSync(["bun", join(import.meta.dir, "index.ts"), ...args], {
    // CUDA_VISIBLE_DEVICES empty: CPU ranks (the defaults of a machine without a GPU) on any machine.
    env: { ...process.env, LIGHTSEQ_CACHE: join(dir, "cache"), CUDA_VISIBLE_DEVICES: "" },
  });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString().trimEnd() };
};

test("a small text file: config and data printed, 2 steps trained, exit 0", () => {
  writeFileSync(join(dir, "a.txt"), "The quick brown fox jumps over the lazy dog. ".repeat(40));
  const r = run("--data", join(dir, "a.txt"), "--seq", "64", "--steps", "2", "--warmup", "1", "--out", join(dir, "run"));
  expect(r.code).toBe(0);
  expect(r.out).toMatch(/^config \(preset tiny\):\n {2}preset +"tiny"/);
  expect(r.out).toMatch(/data: .*a\.txt, 1 documents, \d+ tokens \(llama2 \(built in\), vocab 32000\) -> \d+ sequences of 64: /);
  expect(r.out).toMatch(/^step 2\/2 \| loss \d+\.\d{4} \|/m);
}, 60_000);

test("mistakes are one line and exit 2", () => {
  writeFileSync(join(dir, "short.txt"), "Too short.");
  writeFileSync(join(dir, "empty.txt"), "");
  const cases: [string[], RegExp][] = [
    [["--stepz", "3"], /^trainer: unknown flag --stepz \(did you mean --steps\?\) \(see --help\)$/],
    [["--data", join(dir, "missing.txt")], /^trainer: --data .*missing.txt: no such file or folder$/],
    [
      ["--data", join(dir, "short.txt")],
      /^trainer: .*short.txt: \d+ tokens, shorter than one sequence of --seq 256: give more text or a smaller --seq$/,
    ],
    [["--data", join(dir, "empty.txt")], /^trainer: .*empty.txt: no text in its 1 file\(s\)$/],
    [["--tokenizer", join(dir, "none.json")], /^trainer: tokenizer .*none.json: file not found/],
  ];
  for (const [args, msg] of cases) {
    const r = run(...args);
    expect(r.code).toBe(2);
    expect(r.err.split("\n")).toHaveLength(1);
    expect(r.err).toMatch(msg);
  }
});
