// Test helpers: expectClose compares two tensors (or arrays) within atol + rtol*|ref| per element and,
// on failure, prints the worst elements and the share of the tolerance used.

import { toFloat32Array } from "./ops.ts";
import { Tensor } from "./tensor.ts";

export interface CloseOptions {
  atol?: number;
  rtol?: number;
  /** Shown in the failure message. */
  label?: string;
  /** How many of the worst elements to print. */
  show?: number;
}

export interface CloseReport {
  ok: boolean;
  /** max over elements of |got - ref| / (atol + rtol * |ref|): <= 1 passes. */
  toleranceUsed: number;
  maxAbsError: number;
  /** ||got - ref|| / ||ref||. */
  relativeError: number;
  message: string;
}

function values(x: Tensor | ArrayLike<number>): Float32Array | ArrayLike<number> {
  return x instanceof Tensor ? toFloat32Array(x) : x;
}

export function compareClose(got: Tensor | ArrayLike<number>, ref: Tensor | ArrayLike<number>, o: CloseOptions = {}): CloseReport {
  const atol = o.atol ?? 1e-5;
  const rtol = o.rtol ?? 1e-5;
  const g = values(got);
  const r = values(ref);
  const label = o.label ? `${o.label}: ` : "";
  if (g.length !== r.length) {
    return {
      ok: false,
      toleranceUsed: Number.POSITIVE_INFINITY,
      maxAbsError: Number.NaN,
      relativeError: Number.NaN,
      message: `${label}length ${g.length} != reference length ${r.length}`,
    };
  }
  const worst: { i: number; used: number }[] = [];
  let used = 0;
  let maxAbs = 0;
  let num = 0;
  let den = 0;
  let bad = 0;
  for (let i = 0; i < g.length; i++) {
    const a = g[i] as number;
    const b = r[i] as number;
    let u: number;
    if (Number.isNaN(a) || Number.isNaN(b)) u = Number.isNaN(a) && Number.isNaN(b) ? 0 : Number.POSITIVE_INFINITY;
    else if (!Number.isFinite(a) || !Number.isFinite(b)) u = a === b ? 0 : Number.POSITIVE_INFINITY;
    else {
      const d = Math.abs(a - b);
      u = d / (atol + rtol * Math.abs(b));
      if (d > maxAbs) maxAbs = d;
      num += d * d;
      den += b * b;
    }
    if (u > 1) bad++;
    if (u > used) used = u;
    if (worst.length < (o.show ?? 5) || u > (worst[worst.length - 1] as { used: number }).used) {
      worst.push({ i, used: u });
      worst.sort((x, y) => y.used - x.used);
      if (worst.length > (o.show ?? 5)) worst.pop();
    }
  }
  const rel = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  const ok = used <= 1;
  const lines = worst.map(({ i, used: u }) => `  [${i}] got ${g[i]} ref ${r[i]} (${(u * 100).toFixed(1)}% of tolerance)`);
  const message = `${label}${ok ? "close" : `${bad} of ${g.length} elements outside`} atol=${atol} rtol=${rtol}: ${(used * 100).toFixed(1)}% of tolerance used, max |err| ${maxAbs.toExponential(3)}, rel ${rel.toExponential(3)}\n${lines.join("\n")}`;
  return { ok, toleranceUsed: used, maxAbsError: maxAbs, relativeError: rel, message };
}

/** Throws (with the worst elements listed) unless got is within tolerance of ref. */
export function expectClose(got: Tensor | ArrayLike<number>, ref: Tensor | ArrayLike<number>, o: CloseOptions = {}): CloseReport {
  const r = compareClose(got, ref, o);
  if (!r.ok) throw new Error(r.message);
  return r;
}
