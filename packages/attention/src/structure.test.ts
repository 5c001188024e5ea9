// The package's own shape: no import cycle between its files (type-only imports included), and no
// source file over ~600 lines unless its header says why (STYLE.md: one concern per file).

import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const root = import.meta.dir;
const MAX_LINES = 600;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith(".ts") && !e.name.endsWith(".test.ts") ? [p] : [];
  });
}

const files = sources(root);
const text = new Map(files.map((f) => [f, readFileSync(f, "utf8")]));

/** file -> the files of this package it imports (relative specifiers only). */
function imports(file: string): string[] {
  const src = text.get(file) as string;
  return [...src.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s+"(\.{1,2}\/[^"]+)"/g)]
    .map((m) => resolve(dirname(file), m[1] as string))
    .filter((p) => text.has(p));
}

test("no import cycle between the files of packages/attention/src", () => {
  const cycles: string[] = [];
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (f: string) => {
    state.set(f, "open");
    path.push(f);
    for (const g of imports(f)) {
      if (state.get(g) === "open") cycles.push([...path.slice(path.indexOf(g)), g].map((x) => relative(root, x)).join(" -> "));
      else if (!state.has(g)) visit(g);
    }
    path.pop();
    state.set(f, "done");
  };
  for (const f of files) if (!state.has(f)) visit(f);
  expect(cycles).toEqual([]);
});

test(`no source file over ${MAX_LINES} lines without a reason in its header`, () => {
  const long = files
    .filter((f) => (text.get(f) as string).split("\n").length > MAX_LINES)
    .filter((f) => !/^\/\/.*\blong file\b/im.test((text.get(f) as string).split("\n").slice(0, 15).join("\n")))
    .map((f) => `${relative(root, f)}: ${(text.get(f) as string).split("\n").length} lines`);
  expect(long).toEqual([]);
});
