// Two acceptance checks on the tree, run by `bun run check` and .ci/run:
//   1. no import cycle between files: every TypeScript file git tracks, its static imports (type-only
//      ones included: a cycle of types is a knot in the design too), relative paths and workspace
//      packages (@lightseq/<name>[/sub] through the package's "exports") resolved to files; a cycle
//      is a strongly connected component of two or more files, or a file importing itself;
//   2. no file under packages/*/src over MAX_LINES lines unless its header (the leading comment)
//      says why, in a line starting "// Over 600 lines:".
// Prints each finding on one line and exits 1 if any is not in KNOWN below.
//   bun scripts/check-layout.ts

import { existsSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const MAX_LINES = 600;

/**
 * Findings allowed for now, each with why. The tidy-attn branch splits cudnn.ts into cudnn/ and breaks
 * the merge.ts <-> cuda.ts cycle: delete both entries when it merges (a stale entry fails the check).
 */
const KNOWN: Record<string, string> = {};

function trackedTs(): string[] {
  const r = Bun.spawnSync(["git", "ls-files", "-z", "*.ts"], { cwd: ROOT, stdout: "pipe" });
  if (r.exitCode !== 0) throw new Error("git ls-files failed: run this from a git checkout");
  return r.stdout
    .toString()
    .split("\0")
    .filter((f) => f !== "" && existsSync(join(ROOT, f)));
}

/**
 * Import/export specifiers of a source file (comments removed first): the static ones (statements
 * start a line), then dynamic import("x") calls, which a regex may also find inside a string, so an
 * unresolved dynamic one is not an error.
 */
export function importsOf(source: string): { spec: string; dynamic: boolean }[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const found: { spec: string; dynamic: boolean }[] = [];
  for (const m of code.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']/gm))
    found.push({ spec: m[1] as string, dynamic: false });
  for (const m of code.matchAll(/^\s*import\s*["']([^"']+)["']/gm)) found.push({ spec: m[1] as string, dynamic: false });
  for (const m of code.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)) found.push({ spec: m[1] as string, dynamic: true });
  return found;
}

const packageExports = new Map<string, Record<string, string>>();

function workspaceFile(spec: string): string | null {
  const m = /^@lightseq\/([^/]+)(\/.*)?$/.exec(spec);
  if (!m) return null;
  const name = m[1] as string;
  if (!packageExports.has(name)) {
    let exports: Record<string, string> = {};
    for (const dir of [`packages/${name}`, `apps/${name}`]) {
      const pj = join(ROOT, dir, "package.json");
      if (!existsSync(pj)) continue;
      const raw = JSON.parse(readFileSync(pj, "utf8")).exports ?? {};
      exports = Object.fromEntries(
        Object.entries(typeof raw === "string" ? { ".": raw } : raw).map(([k, v]) => [k, join(dir, v as string)]),
      );
    }
    packageExports.set(name, exports);
  }
  return packageExports.get(name)?.[`.${m[2] ?? ""}`] ?? null;
}

function resolveSpec(from: string, spec: string): string | null {
  if (spec.startsWith(".")) {
    const base = relative(ROOT, resolve(ROOT, dirname(from), spec));
    for (const f of [base, `${base}.ts`, join(base, "index.ts")]) if (existsSync(join(ROOT, f)) && f.endsWith(".ts")) return f;
    return null;
  }
  return workspaceFile(spec);
}

/** Strongly connected components of size > 1 (and self-loops), Tarjan's algorithm. */
export function cycles(graph: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop() as string;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return out;
}

/** Files under packages/*\/src over MAX_LINES lines whose header does not say why. */
export function longFiles(files: readonly string[], read: (f: string) => string): { file: string; lines: number }[] {
  const long: { file: string; lines: number }[] = [];
  for (const f of files) {
    if (!/^packages\/[^/]+\/src\//.test(f)) continue;
    const text = read(f);
    const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
    if (lines <= MAX_LINES) continue;
    const all = text.split("\n");
    const end = all.findIndex((l, i) => !(l.startsWith("//") || l.trim() === "" || (i === 0 && l.startsWith("#!"))));
    const header = all.slice(0, end < 0 ? all.length : end);
    if (!header.some((l) => l.startsWith("// Over 600 lines:"))) long.push({ file: f, lines });
  }
  return long;
}

function main(): void {
  const files = trackedTs();
  const read = (f: string) => readFileSync(join(ROOT, f), "utf8");
  const graph = new Map<string, string[]>();
  const unresolved: string[] = [];
  for (const f of files) {
    const deps: string[] = [];
    for (const { spec, dynamic } of importsOf(read(f))) {
      // A JSON file (package.json for the version) is a leaf: no imports of its own, no cycle through it.
      if (spec.startsWith(".") && spec.endsWith(".json") && existsSync(resolve(ROOT, dirname(f), spec))) continue;
      const target = resolveSpec(f, spec);
      if (target) deps.push(target);
      else if (!dynamic && (spec.startsWith(".") || spec.startsWith("@lightseq/")))
        unresolved.push(`${f}: import ${JSON.stringify(spec)} names no file`);
    }
    graph.set(f, deps);
  }
  // Each finding: its key (as KNOWN names it) and the line shown.
  const findings = [
    ...cycles(graph).map((c) => ({ key: `cycle: ${c.join(" <-> ")}`, shown: `import cycle: ${c.join(" <-> ")}` })),
    ...longFiles(files, read).map(({ file, lines }) => ({
      key: `long: ${file}`,
      shown: `${file}: ${lines} lines, over ${MAX_LINES}, and no "// Over 600 lines:" in its header saying why`,
    })),
  ];
  let failed = unresolved.length;
  for (const u of unresolved) console.log(`check-layout: ${u}`);
  const seen = new Set<string>();
  for (const { key, shown } of findings) {
    seen.add(key);
    if (KNOWN[key]) console.log(`check-layout: allowed for now (${KNOWN[key]}): ${shown}`);
    else {
      console.log(`check-layout: ${shown}`);
      failed++;
    }
  }
  for (const key of Object.keys(KNOWN)) {
    if (seen.has(key)) continue;
    console.log(`check-layout: "${key}" is allowed in KNOWN but no longer found: delete the entry`);
    failed++;
  }
  console.log(`check-layout: ${files.length} files, ${failed === 0 ? "ok" : `${failed} problem(s)`}`);
  process.exit(failed === 0 ? 0 : 1);
}

if (import.meta.main) main();
