// Every lightseq package carries one version (tests/packages.test.ts checks it). This sets it in the
// root package.json and in every workspace's, and nowhere else: `workspace:*` ranges become that
// version when `bun pm pack` packs a package.
//   bun scripts/set-version.ts 0.2.0

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const ROOT = join(import.meta.dir, "..");

/** The root package.json and every workspace's, as paths. */
export function workspaceManifests(): string[] {
  const root = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { workspaces: string[] };
  const found = root.workspaces.flatMap((w) => [...new Bun.Glob(`${w}/package.json`).scanSync({ cwd: ROOT })]);
  return [join(ROOT, "package.json"), ...found.sort().map((p) => join(ROOT, p))];
}

if (import.meta.main) {
  const version = process.argv[2];
  if (!version || !/^\d+\.\d+\.\d+(-[\w.]+)?$/.test(version)) {
    console.error(`set-version: expected a version like 0.2.0, got ${JSON.stringify(version ?? "")}`);
    process.exit(2);
  }
  for (const path of workspaceManifests()) {
    const text = readFileSync(path, "utf8");
    if (!/^ {2}"version": /m.test(text)) throw new Error(`${path} has no top-level "version" field`);
    writeFileSync(path, text.replace(/^ {2}"version": "[^"]*"/m, `  "version": "${version}"`));
    console.log(`${path.replace(`${ROOT}/`, "")}: ${version}`);
  }
}
