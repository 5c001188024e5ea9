// The model knows nothing of parallelism (DESIGN.md section 4): no module under packages/llama/src
// imports @lightseq/comm except parallelize.ts. Tests and the rank workers under fixtures/ are the
// harness that starts ranks, not the model, and may.

import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const SRC = import.meta.dir;
const ALLOWED = new Set(["parallelize.ts"]);

/** Module specifiers of every import, export-from, dynamic import and require in a source text. */
export function importedModules(source: string): string[] {
  const out: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^'"]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\b(?:import|require)\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const re of patterns) for (const m of source.matchAll(re)) out.push(m[1] as string);
  return out;
}

function modelSources(dir: string): string[] {
  const files: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (relative(SRC, p) !== "fixtures") files.push(...modelSources(p));
    } else if (e.name.endsWith(".ts") && !e.name.endsWith(".test.ts")) files.push(p);
  }
  return files;
}

test("the import scanner sees every form of import", () => {
  const src = [
    'import { a } from "@lightseq/comm";',
    'import type { Communicator } from "@lightseq/comm/testing";',
    "import {\n  b,\n  c,\n} from '@lightseq/comm';",
    'export * from "@lightseq/comm";',
    'import "@lightseq/comm";',
    'const m = await import("@lightseq/comm");',
    'require("@lightseq/comm")',
  ].join("\n");
  expect(importedModules(src).filter((m) => m.startsWith("@lightseq/comm")).length).toBe(7);
  expect(importedModules('import { x } from "@lightseq/tensor";')).toEqual(["@lightseq/tensor"]);
});

test("only parallelize.ts imports @lightseq/comm", () => {
  const files = modelSources(SRC);
  expect(files.map((f) => relative(SRC, f))).toContain("model.ts");
  const offenders = files
    .filter((f) => !ALLOWED.has(relative(SRC, f)))
    .filter((f) => importedModules(readFileSync(f, "utf8")).some((m) => m === "@lightseq/comm" || m.startsWith("@lightseq/comm/")))
    .map((f) => relative(SRC, f));
  expect(offenders).toEqual([]);
  // parallelize.ts is where the communicator comes in (the scan would see it).
  expect(importedModules(readFileSync(join(SRC, "parallelize.ts"), "utf8"))).toContain("@lightseq/comm");
});
