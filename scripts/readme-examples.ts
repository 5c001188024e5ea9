// The examples in the package READMEs are copies of real files that a CI test runs
// (tests/packages.test.ts). A README marks each with a comment naming the file, followed by a
// fenced block holding the file's text:
//
//   <!-- example: examples/matmul.ts -->
//   ```ts
//   ...the file, verbatim...
//   ```
//
//   bun scripts/readme-examples.ts          rewrites every marked block from its file
//   bun scripts/readme-examples.ts --check  exits 1 naming each block that differs

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

const MARKED = /<!-- example: (\S+) -->\n```ts\n([\s\S]*?)```\n/g;

export interface ReadmeExample {
  readme: string;
  /** As written in the marker, relative to the README's folder. */
  file: string;
  /** The block's text and the file's. */
  inReadme: string;
  inFile: string;
}

export function readmeExamples(readme: string): ReadmeExample[] {
  const text = readFileSync(readme, "utf8");
  return [...text.matchAll(MARKED)].map((m) => ({
    readme,
    file: m[1] as string,
    inReadme: m[2] as string,
    inFile: readFileSync(join(dirname(readme), m[1] as string), "utf8"),
  }));
}

function sync(readme: string): void {
  const text = readFileSync(readme, "utf8");
  const next = text.replace(MARKED, (_, file: string) => {
    const body = readFileSync(join(dirname(readme), file), "utf8");
    return `<!-- example: ${file} -->\n\`\`\`ts\n${body}${body.endsWith("\n") ? "" : "\n"}\`\`\`\n`;
  });
  if (next !== text) writeFileSync(readme, next);
}

export const READMES = ["cuda", "tensor", "comm", "attention", "checkpointing", "llama"].map((p) =>
  resolve(import.meta.dir, "..", "packages", p, "README.md"),
);

if (import.meta.main) {
  if (process.argv.includes("--check")) {
    const stale = READMES.flatMap(readmeExamples).filter((e) => e.inReadme !== e.inFile);
    for (const e of stale) console.error(`${e.readme}: the block for ${e.file} differs from the file`);
    process.exit(stale.length === 0 ? 0 : 1);
  }
  for (const r of READMES) sync(r);
}
