// Typed errors for everything that crosses the FFI boundary. Each names the call, the code, the
// library's own message and whatever context (shapes, sizes) the caller gave.

/**
 * A mistake the user made, not a bug: a bad argument or environment value, a missing GPU or library.
 * Command-line tools (cli.ts) print its message alone and exit non-zero; anything else keeps its stack.
 */
export class UserError extends Error {
  override name = "UserError";
}

export class CudaError extends Error {
  override name = "CudaError";
  constructor(
    readonly call: string,
    readonly code: number,
    readonly codeName: string,
    readonly libraryMessage: string,
    readonly context?: string,
  ) {
    super(`${call} failed: ${codeName} (${code}): ${libraryMessage}${context ? ` [${context}]` : ""}`);
  }
}

/** A device allocation that did not fit; the process can go on (the pool is left intact). */
export class CudaOutOfMemoryError extends CudaError {
  override name = "CudaOutOfMemoryError";
}

export class CublasError extends Error {
  override name = "CublasError";
  constructor(
    readonly call: string,
    readonly code: number,
    readonly libraryMessage: string,
    readonly context?: string,
  ) {
    super(`${call} failed: status ${code}: ${libraryMessage}${context ? ` [${context}]` : ""}`);
  }
}

export class LibraryNotFoundError extends UserError {
  override name = "LibraryNotFoundError";
  constructor(
    readonly library: string,
    readonly tried: readonly string[],
    hint: string,
  ) {
    super(`${library} not found. Looked in:\n  ${tried.join("\n  ")}\n${hint}`);
  }
}

/**
 * A LIGHTSEQ_*_SO override that names no file: the user's mistake, reported as such (never a silent
 * fallback to whatever library the search would find instead).
 */
export class LibraryOverrideError extends UserError {
  override name = "LibraryOverrideError";
  constructor(
    readonly envVar: string,
    readonly path: string,
    library: string,
  ) {
    super(`${envVar}=${path}: no such file (it names the ${library} to load: fix the path, or unset it to search the usual places)`);
  }
}

/** No usable GPU: no driver, no device, or the runtime could not be loaded. */
export class NoGpuError extends UserError {
  override name = "NoGpuError";
}
