// Errors raised by tensor argument checks. Messages name the argument, what was expected and what came.

export class TensorError extends Error {
  override name = "TensorError";
}

export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

export function shapeNumel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function assertShape(shape: readonly number[], argName: string): readonly number[] {
  if (!Array.isArray(shape)) throw new TensorError(`${argName}: expected a shape (array of sizes), got ${String(shape)}`);
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new TensorError(`${argName}: every size must be a non-negative integer, got ${fmtShape(shape)}`);
    }
  }
  return Object.freeze([...shape]);
}
