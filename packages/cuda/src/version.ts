// The one version of every lightseq package (they are released together; tests/packages.test.ts
// checks that every package.json says the same), for `--version` and the trainer's start line.

import manifest from "../package.json" with { type: "json" };

export const LIGHTSEQ_VERSION: string = manifest.version;
