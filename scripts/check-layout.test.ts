// The layout checker finds what it is for: a cycle (also through type-only imports), and a long file
// without a reason, on hand-made inputs.

import { expect, test } from "bun:test";
import { cycles, importsOf, longFiles } from "./check-layout.ts";

test("imports: static, type-only, re-exports, side effects and dynamic; not the ones in comments", () => {
  const src = [
    "// import { x } from './commented.ts';",
    "/* import y from './block-commented.ts'; */",
    'import { a } from "./a.ts";',
    'import type { B } from "./b.ts";',
    "import {\n  c,\n  type D,\n} from '@lightseq/cuda';",
    'export { e } from "./e.ts";',
    'export * from "./f.ts";',
    'import "./side.ts";',
    'const g = await import("./g.ts");',
  ].join("\n");
  expect(importsOf(src).map((i) => i.spec)).toEqual(["./a.ts", "./b.ts", "@lightseq/cuda", "./e.ts", "./f.ts", "./side.ts", "./g.ts"]);
  expect(importsOf(src).filter((i) => i.dynamic)).toEqual([{ spec: "./g.ts", dynamic: true }]);
});

test("cycles: each strongly connected component of two or more files, and self-imports; none in a tree", () => {
  const g = new Map<string, string[]>([
    ["a", ["b"]],
    ["b", ["c"]],
    ["c", ["a", "d"]],
    ["d", []],
    ["e", ["e"]],
    ["f", ["d"]],
  ]);
  expect(cycles(g)).toEqual([["a", "b", "c"], ["e"]]);
  expect(
    cycles(
      new Map([
        ["x", ["y"]],
        ["y", []],
      ]),
    ),
  ).toEqual([]);
});

test("long files: over 600 lines under packages/*/src need '// Over 600 lines:' in the header", () => {
  const body = "const x = 1;\n".repeat(601);
  const files: Record<string, string> = {
    "packages/p/src/long.ts": `// A module.\n${body}`,
    "packages/p/src/reasoned.ts": `#!/usr/bin/env bun\n// A module.\n// Over 600 lines: one table that reads best whole.\n\n${body}`,
    "packages/p/src/late-reason.ts": `// A module.\n${body}// Over 600 lines: not in the header\n`,
    "packages/p/src/short.ts": "const x = 1;\n".repeat(600),
    "bench/long.ts": body,
  };
  expect(longFiles(Object.keys(files), (f) => files[f] as string)).toEqual([
    { file: "packages/p/src/long.ts", lines: 602 },
    { file: "packages/p/src/late-reason.ts", lines: 603 },
  ]);
});
