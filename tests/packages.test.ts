// Every package is usable on its own (issue 18): packed, it holds its sources and manifest and
// nothing else, with real dependency ranges; installed offline into a project outside the repository
// (scripts/outside-project.ts), each README's example runs there; the README blocks are the very files
// that run; every package carries the one version that `lightseq-launch --version` prints.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createOutsideProject, type OutsideProject, PACKAGE_DIRS, ROOT } from "../scripts/outside-project.ts";
import { READMES, readmeExamples } from "../scripts/readme-examples.ts";
import { workspaceManifests } from "../scripts/set-version.ts";

const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

let project: OutsideProject;

beforeAll(() => {
  project = createOutsideProject();
}, 60_000);

afterAll(() => {
  if (project) rmSync(project.dir, { recursive: true, force: true });
});

function runIn(dir: string, cmd: string[], env: Record<string, string> = {}) {
  const r = Bun.spawnSync(cmd, { cwd: dir, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

describe("packed packages", () => {
  test("every workspace has the repository's version (bun scripts/set-version.ts sets it)", () => {
    const manifests = workspaceManifests();
    for (const folder of PACKAGE_DIRS) expect(manifests).toContain(join(ROOT, folder, "package.json"));
    for (const path of manifests) {
      const m = JSON.parse(readFileSync(path, "utf8")) as { name: string; version: string };
      expect(`${m.name}@${m.version}`).toBe(`${m.name}@${version}`);
    }
  });

  test("tarballs hold sources, manifest and README only, with exact dependency versions", () => {
    expect(project.packages.map((p) => p.name)).toEqual([
      "@lightseq/kernels",
      "@lightseq/cuda",
      "@lightseq/tensor",
      "@lightseq/comm",
      "@lightseq/attention",
      "@lightseq/checkpointing",
      "@lightseq/llama",
    ]);
    for (const p of project.packages) {
      expect(p.files).toContain("package.json");
      expect(p.files).toContain("README.md");
      const allowed = p.name === "@lightseq/kernels" ? /^(build\.ts|src\/[\w-]+\.(cu|cuh|h))$/ : /^src\/[\w/-]+\.ts$/;
      const extra = p.files.filter((f) => f !== "package.json" && f !== "README.md" && !allowed.test(f));
      expect(`${p.name}: ${extra.join(", ")}`).toBe(`${p.name}: `);
      const bad = p.files.filter((f) => /\.test\.ts$|fixtures\/|bench\/|examples\/|^dev\/|^build\//.test(f));
      expect(`${p.name}: ${bad.join(", ")}`).toBe(`${p.name}: `);
      for (const [dep, range] of Object.entries(p.manifest.dependencies ?? {})) {
        expect(range).not.toContain("workspace:");
        if (dep.startsWith("@lightseq/")) expect(`${dep}@${range}`).toBe(`${dep}@${version}`);
      }
    }
    const kernels = project.packages.find((p) => p.name === "@lightseq/kernels");
    expect(kernels?.files).toContain("src/lightseq.cuh");
    expect(project.packages.find((p) => p.name === "@lightseq/cuda")?.manifest.dependencies).toEqual({ "@lightseq/kernels": version });
    // llama's test helpers live in src/ beside the code: the fixture loader and the ops' finite differences stay out.
    const llama = project.packages.find((p) => p.name === "@lightseq/llama")?.files ?? [];
    expect(llama).toEqual(expect.arrayContaining(["src/index.ts", "src/hf.ts", "src/safetensors.ts", "src/ops/rmsnorm.ts"]));
    expect(llama.filter((f) => f === "src/hf-fixture.ts" || f === "src/ops/testing.ts")).toEqual([]);
  });
});

describe("a project outside the repository", () => {
  test("it is outside the repository and installed only from the tarballs", () => {
    expect(project.dir.startsWith(`${ROOT}/`)).toBe(false);
    const lock = readFileSync(join(project.dir, "bun.lock"), "utf8");
    expect(lock).not.toContain(ROOT);
  });

  test("every example of every package is in its README, verbatim", () => {
    const inReadmes = READMES.flatMap(readmeExamples);
    for (const e of inReadmes) expect(`${e.readme}: ${e.file}\n${e.inReadme}`).toBe(`${e.readme}: ${e.file}\n${e.inFile}`);
    const shown = inReadmes.map((e) => join(e.readme.replace(/README\.md$/, ""), e.file).replace(`${ROOT}/`, ""));
    expect(shown.sort()).toEqual(project.examples.map((e) => e.source).sort());
    expect(project.examples.length).toBeGreaterThanOrEqual(7);
  });

  const expected: Record<string, RegExp> = {
    "packages/cuda/examples/probe.ts": /^@lightseq\/cuda \d+\.\d+\.\d+\n[\s\S]*GPUs: \d+/,
    "packages/tensor/examples/matmul.ts": /on cpu \(OpenBLAS, .*\): max \|error\| .* vs the reference/,
    "packages/comm/examples/allreduce.ts": /rank 0 of 2 \(cpu backend, on cpu\): all-reduce sum = 3, 3, 3, 3/,
    "packages/attention/examples/attention.ts": /attention fwd\+bwd on cpu \(reference, f32\): o, dq, dk, dv match the reference/,
    "packages/checkpointing/examples/estimate.ts":
      /auto: remat-aware x15 \+ none x17, offload none\. remat-aware x15 \+ none x17: [\d.]+ GiB of 139\.0 GiB on the GPU; faster ones do not fit: none needs GPU[\s\S]*262144 tokens on one GPU: MemoryEstimateError: no checkpoint policy fits/,
    "packages/llama/examples/train-step.ts":
      /llama fwd\+bwd on cpu \(reference, f32\): loss 10\.\d+ over 127 labels \(ln 32000 = 10\.3735\), \|grad\| [\d.]+/,
    "packages/llama/examples/hf-checkpoint.ts":
      /saved 5 files to .*: config\.json, model-00001-of-00003\.safetensors, .*model\.safetensors\.index\.json\nloaded 39 tensors: config equal, every tensor the bf16 rounding of ours; loss/,
  };

  for (const [source, pattern] of Object.entries(expected)) {
    test(`${source} runs there`, () => {
      const e = project.examples.find((x) => x.source === source);
      expect(e).toBeDefined();
      const r = runIn(project.dir, [process.execPath, e?.copy as string]);
      expect(`exit ${r.code}\n${r.err}`).toBe("exit 0\n");
      expect(r.out).toMatch(pattern);
    }, 30_000);
  }

  test("lightseq-launch --version prints the version; the kernels build command is installed", () => {
    const r = runIn(project.dir, [process.execPath, "x", "lightseq-launch", "--version"]);
    expect(r.out).toBe(`lightseq-launch ${version}\n`);
    const bin = runIn(project.dir, ["readlink", "node_modules/.bin/lightseq-build-kernels"]);
    expect(bin.out.trim()).toBe("../@lightseq/kernels/build.ts");
  });

  test("the kernels library is looked for in the installed package, and the error says what to run", () => {
    const script = `import { kernelsPath, KERNELS_BUILD_HINT } from "@lightseq/cuda"; console.log(JSON.stringify({ ...kernelsPath(), hint: KERNELS_BUILD_HINT }));`;
    const installed = runIn(project.dir, [process.execPath, "-e", script], { LIGHTSEQ_KERNELS_SO: "" });
    const found = JSON.parse(installed.out) as { path: string; tried: string[]; hint: string };
    expect(found.path).toBe("");
    expect(found.tried).toContain(join(project.dir, "node_modules/@lightseq/kernels/build/liblightseq.so"));
    expect(found.hint).toContain("`bunx lightseq-build-kernels`");
    // A path given that does not exist is an error naming the variable, not a silent search elsewhere.
    const missing = runIn(project.dir, [process.execPath, "-e", script], { LIGHTSEQ_KERNELS_SO: "/nonexistent/liblightseq.so" });
    expect(missing.code).toBe(1);
    expect(missing.err).toContain("LibraryOverrideError: LIGHTSEQ_KERNELS_SO=/nonexistent/liblightseq.so: no such file");
  });
});
