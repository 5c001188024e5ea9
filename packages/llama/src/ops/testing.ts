// Test helpers for the ops: seeded f64 inputs and central finite differences of a scalar function.

import { randn, toFloat32Array } from "@lightseq/tensor";

/** n normal(0, std) numbers from the counter-based generator, as f64. */
export function randomF64(n: number, seed: number, std = 1): Float64Array {
  using t = randn([n], { seed, std });
  return Float64Array.from(toFloat32Array(t));
}

/** `count` distinct indices in [0, n), spread deterministically (all of them when n <= count). */
export function sampleIndices(n: number, count: number): number[] {
  if (n <= count) return Array.from({ length: n }, (_, i) => i);
  const out = new Set<number>();
  for (let i = 0; out.size < count; i++) out.add(Math.floor(((i * 0.6180339887498949) % 1) * n));
  return [...out].sort((a, b) => a - b);
}

/** d f / d x[i] by central differences with step h (f64; error ~h^2 f''' + eps/h). */
export function numericGrad(f: (x: Float64Array) => number, x: Float64Array, indices: readonly number[], h = 1e-5): Float64Array {
  const g = new Float64Array(indices.length);
  const y = Float64Array.from(x);
  indices.forEach((i, k) => {
    const v = x[i] as number;
    y[i] = v + h;
    const fp = f(y);
    y[i] = v - h;
    const fm = f(y);
    y[i] = v;
    g[k] = (fp - fm) / (2 * h);
  });
  return g;
}

/** sum_i a[i] * b[i] in f64: the scalar L = <forward(x), g> whose gradient the backward computes. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] as number) * (b[i] as number);
  return s;
}

export function pick(a: ArrayLike<number>, indices: readonly number[]): Float64Array {
  return Float64Array.from(indices, (i) => a[i] as number);
}
