// Global gradient-norm clipping. Each rank sums the squares of its gradient shards (f64 accumulation),
// the caller all-reduces those partial sums (one number per rank), and the clip coefficient then scales
// every gradient inside the AdamW update (gradScale). The coefficient is PyTorch's clip_grad_norm_:
// min(1, max_norm / (norm + 1e-6)).

/** Sum of squares of x, accumulated in f64 (this rank's partial sum). */
export function sumSquares(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    s += v * v;
  }
  return s;
}

/** The global norm from every rank's partial sum of squares (after the all-reduce, their total). */
export function globalNorm(totalSumSquares: number): number {
  return Math.sqrt(totalSumSquares);
}

/** Factor to multiply every gradient by; 1 when maxNorm is 0 (clipping off) or the norm is within it. */
export function clipCoefficient(norm: number, maxNorm: number): number {
  if (maxNorm <= 0) return 1;
  if (!Number.isFinite(norm)) throw new RangeError(`gradient norm is ${norm}: the loss or a gradient overflowed`);
  return Math.min(1, maxNorm / (norm + 1e-6));
}
