// Typed errors for everything that crosses the FFI boundary. Each names the call, the code, the
// library's own message and whatever context (shapes, sizes) the caller gave.

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

export class LibraryNotFoundError extends Error {
  override name = "LibraryNotFoundError";
  constructor(
    readonly library: string,
    readonly tried: readonly string[],
    hint: string,
  ) {
    super(`${library} not found. Looked in:\n  ${tried.join("\n  ")}\n${hint}`);
  }
}

/** No usable GPU: no driver, no device, or the runtime could not be loaded. */
export class NoGpuError extends Error {
  override name = "NoGpuError";
}
