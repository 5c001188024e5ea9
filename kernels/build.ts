#!/usr/bin/env bun
// Builds kernels/build/liblightseq.so from kernels/src/*.cu (C ABI: kernels/src/lightseq.cuh).
//
//   bun kernels/build.ts [--verbose] [--force]
//
// Rebuilds only what changed: kernels/build/stamp.json holds a hash per object (its .cu, the local
// headers it includes, transitively, its flags and the nvcc version); a source whose hash differs is
// recompiled, the others are kept, and the library is relinked. When every hash matches (and the link
// flags), nothing runs. With no nvcc it says so and exits 0: the CPU paths still work. `--force`
// recompiles everything.
// A source file holding the line `// build: sm_90a` also gets Hopper-only code (wgmma, TMA).

import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

const kernelsDir = import.meta.dir;
const srcDir = join(kernelsDir, "src");
const buildDir = join(kernelsDir, "build");
const objDir = join(buildDir, "obj");
const libPath = join(buildDir, "liblightseq.so");
const stampPath = join(buildDir, "stamp.json");

const verbose = process.argv.includes("--verbose");
const force = process.argv.includes("--force");
const parallelJobs = 2;

const commonFlags = [
  "-O3",
  "-std=c++17",
  "-Xcompiler",
  "-fPIC",
  "-Xcompiler",
  "-fvisibility=hidden", // only the LS_API functions are exported
  "-cudart",
  "shared",
  "--expt-relaxed-constexpr",
  "-lineinfo",
  "-gencode",
  "arch=compute_80,code=sm_80",
  "-gencode",
  "arch=compute_90,code=sm_90",
];
// Hopper files are built for sm_80 (where their kernels only trap: the host never launches them there)
// and sm_90a, but not plain sm_90: with both sm_90 and sm_90a images the loader could pick the one
// without wgmma.
const hopperFlags = ["-gencode", "arch=compute_90a,code=sm_90a"];
const linkFlags = ["-shared", "-cudart", "shared"];

function findNvcc(): { nvcc: string | null; looked: string[] } {
  const looked: string[] = [];
  const { CUDA_HOME, CUDA_PATH } = process.env;
  const candidates: Array<[string, string | undefined]> = [
    [CUDA_HOME ? `$CUDA_HOME/bin/nvcc (${CUDA_HOME})` : "$CUDA_HOME (unset)", CUDA_HOME && join(CUDA_HOME, "bin", "nvcc")],
    [CUDA_PATH ? `$CUDA_PATH/bin/nvcc (${CUDA_PATH})` : "$CUDA_PATH (unset)", CUDA_PATH && join(CUDA_PATH, "bin", "nvcc")],
    ["PATH", Bun.which("nvcc") ?? undefined],
    ["/usr/local/cuda/bin/nvcc", "/usr/local/cuda/bin/nvcc"],
  ];
  for (const [where, path] of candidates) {
    looked.push(where);
    if (path && existsSync(path)) return { nvcc: path, looked };
  }
  return { nvcc: null, looked };
}

function run(cmd: string[]): { ok: boolean; output: string } {
  if (verbose) console.log(cmd.join(" "));
  const p = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { ok: p.exitCode === 0, output: p.stdout.toString() + p.stderr.toString() };
}

async function runAsync(cmd: string[]): Promise<{ ok: boolean; output: string }> {
  if (verbose) console.log(cmd.join(" "));
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { ok: code === 0, output: out + err };
}

function flagsFor(source: string): string[] {
  const needsHopper = /^\/\/ build: sm_90a$/m.test(readFileSync(join(srcDir, source), "utf8"));
  if (!needsHopper) return commonFlags;
  const withoutSm90 = commonFlags.filter(
    (f, i) => f !== "arch=compute_90,code=sm_90" && commonFlags[i + 1] !== "arch=compute_90,code=sm_90",
  );
  return [...withoutSm90, ...hopperFlags];
}

/** The local headers `file` includes (#include "x"), transitively. */
function localIncludes(file: string, seen = new Set<string>()): Set<string> {
  for (const m of readFileSync(join(srcDir, file), "utf8").matchAll(/^\s*#\s*include\s*"([^"]+)"/gm)) {
    const header = m[1] as string;
    if (seen.has(header) || !existsSync(join(srcDir, header))) continue;
    seen.add(header);
    localIncludes(header, seen);
  }
  return seen;
}

async function main(): Promise<number> {
  const started = performance.now();
  const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)} s`;

  const { nvcc, looked } = findNvcc();
  if (!nvcc) {
    console.log(`kernels: nvcc not found (looked at ${looked.join(", ")}); GPU paths will be unavailable`);
    return 0;
  }
  const version = run([nvcc, "--version"]);
  if (!version.ok) {
    console.error(`kernels: ${nvcc} --version failed:\n${version.output}`);
    return 1;
  }

  const entries = readdirSync(srcDir).sort();
  const sources = entries.filter((f) => f.endsWith(".cu"));
  const inputs = entries.filter((f) => f.endsWith(".cu") || f.endsWith(".cuh") || f.endsWith(".h"));
  if (sources.length === 0) {
    console.error(`kernels: no .cu files in ${srcDir}`);
    return 1;
  }

  const objectHash = (source: string): string => {
    const h = new Bun.CryptoHasher("sha256");
    h.update(JSON.stringify({ flags: flagsFor(source), nvcc: version.output }));
    for (const f of [source, ...[...localIncludes(source)].sort()]) {
      h.update(`\0${f}\0`);
      h.update(readFileSync(join(srcDir, f)));
    }
    return h.digest("hex");
  };
  const objectHashes = Object.fromEntries(sources.map((f) => [f, objectHash(f)]));
  const hash = new Bun.CryptoHasher("sha256").update(JSON.stringify({ linkFlags, objectHashes })).digest("hex");
  const stamp = existsSync(stampPath)
    ? (JSON.parse(readFileSync(stampPath, "utf8")) as { hash?: string; objects?: Record<string, string> })
    : {};
  if (!force && existsSync(libPath) && stamp.hash === hash) {
    console.log(`kernels up to date (${elapsed()})`);
    return 0;
  }

  mkdirSync(objDir, { recursive: true });
  rmSync(stampPath, { force: true });
  const objects = sources.map((f) => join(objDir, `${basename(f, ".cu")}.o`));
  for (const f of readdirSync(objDir)) {
    if (!objects.includes(join(objDir, f))) rmSync(join(objDir, f), { force: true }); // from deleted sources
  }
  const stale = sources.filter((f, i) => force || !existsSync(objects[i]!) || stamp.objects?.[f] !== objectHashes[f]);

  console.log(
    stale.length === 0
      ? "kernels: relinking (no object changed)"
      : `kernels: compiling ${stale.length} of ${sources.length} files with ${nvcc}${stale.length < sources.length ? ` (changed: ${stale.join(", ")})` : ""}`,
  );
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < stale.length && !failed) {
      const source = stale[next++]!;
      const t0 = performance.now();
      const r = await runAsync([nvcc, ...flagsFor(source), "-c", join(srcDir, source), "-o", join(objDir, `${basename(source, ".cu")}.o`)]);
      if (!r.ok) {
        failed = true;
        console.error(`kernels: compiling ${source} failed:\n${r.output}`);
        return;
      }
      if (r.output.trim()) console.log(r.output.trimEnd()); // warnings
      console.log(`  ${source} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
  };
  await Promise.all(Array.from({ length: parallelJobs }, worker));
  if (failed) return 1;

  // Link to a temporary name, then rename: a process that has the old library mapped keeps it intact.
  const tmpLib = `${libPath}.tmp`;
  const link = run([nvcc, ...linkFlags, ...objects, "-o", tmpLib]);
  if (!link.ok) {
    console.error(`kernels: linking failed:\n${link.output}`);
    return 1;
  }
  if (link.output.trim()) console.log(link.output.trimEnd());
  renameSync(tmpLib, libPath);

  const nvccVersion = /release [\d.]+, V[\d.]+/.exec(version.output)?.[0] ?? version.output.trim();
  writeFileSync(stampPath, `${JSON.stringify({ hash, nvcc, nvccVersion, inputs, objects: objectHashes }, null, 2)}\n`);
  console.log(`kernels: built ${libPath} (${elapsed()})`);
  return 0;
}

process.exit(await main());
