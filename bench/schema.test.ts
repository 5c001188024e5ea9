// The benchmarks' JSON schema: writers stamp the version, readers take files without one (written
// before the field existed) as version 1 and refuse newer or malformed versions, naming the file.

import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { asCommFile, asCpFile, asDistFile, checkVersion, SCHEMA_VERSION, SchemaError, versioned } from "./schema.ts";

const DIR = join(import.meta.dir, "fixtures", "report");
const load = (name: string): Record<string, unknown> => JSON.parse(readFileSync(join(DIR, name), "utf8"));

test("writers stamp the current version first", () => {
  const f = versioned({ P: 2, results: [] });
  expect(f).toEqual({ version: SCHEMA_VERSION, P: 2, results: [] });
  expect(Object.keys(f)[0]).toBe("version");
});

test("files from before the version field are read as version 1; versioned files as theirs", () => {
  expect("version" in load("distattn-old.json")).toBe(false);
  expect(checkVersion("distattn-old.json", load("distattn-old.json"))).toBe(1);
  expect(asDistFile("distattn-old.json", load("distattn-old.json")).version).toBeUndefined();
  expect(checkVersion("distattn.json", load("distattn.json"))).toBe(1);
  expect(asCommFile("nccl-ours.json", load("nccl-ours.json"), "ours").version).toBe(1);
  expect(asCommFile("nccl-torch.json", load("nccl-torch.json"), "torch").version).toBeUndefined();
  expect(asCpFile("cp32.json", load("cp32.json")).version).toBe(1);
});

test("a newer or malformed version is refused with the file's name", () => {
  const newer = { ...load("distattn.json"), version: SCHEMA_VERSION + 1 };
  expect(() => asDistFile("new.json", newer)).toThrow(
    new SchemaError(
      `new.json: written with schema version ${SCHEMA_VERSION + 1}, but this reader knows up to ${SCHEMA_VERSION}: update bench/schema.ts`,
    ),
  );
  for (const v of ["1", 0, 1.5, null])
    expect(() => asCpFile("bad.json", { ...load("cp32.json"), version: v })).toThrow(/^bad\.json: "version" must be a positive integer/);
});
