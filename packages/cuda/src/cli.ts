// How every command-line tool of the repository ends on an error (the demo, the launcher, the
// benchmarks): a UserError (errors.ts: bad argument, bad environment value, no GPU, missing library)
// prints "<tool>: <message>" and exits 1, with no stack trace, since the fix is the user's and the
// message says it; any other error is a bug and keeps its stack trace. It lives in @lightseq/cuda
// because every package and app depends on it.
//
//   import { cliErrors, UserError } from "@lightseq/cuda";
//   cliErrors("my-tool"); // first, before the tool's own top-level code
//   if (bad) throw new UserError("--steps: expected a positive integer, got -1");

import { UserError } from "./errors.ts";

let installed = false;

/** True for the errors cliErrors prints as one line: UserError and what extends it. */
export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

/** Installs the handlers once per process; `tool` prefixes the line. */
export function cliErrors(tool: string): void {
  if (installed) return;
  installed = true;
  const end = (e: unknown) => {
    if (isUserError(e)) process.stderr.write(`${tool}: ${e.message}\n`);
    else console.error(e);
    process.exit(1);
  };
  process.on("uncaughtException", end);
  process.on("unhandledRejection", end);
}
