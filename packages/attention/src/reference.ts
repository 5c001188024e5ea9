// Reference block attention: the oracle of every attention test. Plain loops, CPU only.
// q[Tq,Hq,D], k/v[Tk,Hkv,D] -> o[Tq,Hq,D], lse[Hq,Tq] f32; backward -> dq, dk, dv (layouts: layout.ts).
//
// Inputs are widened to f64 once; scores, max, sum, o, lse and every gradient accumulate in f64 and are
// rounded once at the end (to f32, or to bf16 via f32 for bf16 inputs, as a kernel's f32 epilogue does).
// The f64 cores are exported so that tests can run the very same code in f64 (finite differences).

import { bf16BitsToF32, fromArray, type Tensor } from "@lightseq/tensor";
import {
  type AttentionBackend,
  type AttentionGrads,
  type AttentionOutput,
  type BackwardOptions,
  checkBackwardArgs,
  checkForwardArgs,
  type ForwardOptions,
} from "./block.ts";
import { type AttentionDims, AttentionError, kvHeadOf, visibleKeys } from "./layout.ts";

export interface F64Output {
  o: Float64Array;
  lse: Float64Array;
}

export interface F64Grads {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/** Forward in f64 on row-major arrays in the layouts of layout.ts. */
export function forwardF64(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  dims: AttentionDims,
  causal: boolean,
  scale: number,
): F64Output {
  const { Tq, Tk, Hq, Hkv, D } = dims;
  const o = new Float64Array(Tq * Hq * D);
  const lse = new Float64Array(Hq * Tq);
  const s = new Float64Array(Tk);
  for (let h = 0; h < Hq; h++) {
    const g = kvHeadOf(h, Hq, Hkv);
    for (let i = 0; i < Tq; i++) {
      const n = visibleKeys(i, Tq, Tk, causal);
      if (n === 0) {
        lse[h * Tq + i] = Number.NEGATIVE_INFINITY; // o stays 0
        continue;
      }
      const qi = (i * Hq + h) * D;
      let m = Number.NEGATIVE_INFINITY;
      for (let j = 0; j < n; j++) {
        const kj = (j * Hkv + g) * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += (q[qi + d] as number) * (k[kj + d] as number);
        const x = scale * dot;
        s[j] = x;
        if (x > m) m = x;
      }
      let l = 0;
      for (let j = 0; j < n; j++) {
        const p = Math.exp((s[j] as number) - m);
        l += p;
        const vj = (j * Hkv + g) * D;
        for (let d = 0; d < D; d++) o[qi + d] = (o[qi + d] as number) + p * (v[vj + d] as number);
      }
      for (let d = 0; d < D; d++) o[qi + d] = (o[qi + d] as number) / l;
      lse[h * Tq + i] = m + Math.log(l);
    }
  }
  return { o, lse };
}

/**
 * Backward in f64. o and lse are the global values of the query rows (block.ts): P = exp(S - lse),
 * Delta = rowsum(dO * o), dS = P * (dP - Delta); dq = scale dS K, dk = scale dS^T Q, dv = P^T dO.
 */
export function backwardF64(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  o: ArrayLike<number>,
  lse: ArrayLike<number>,
  dO: Float64Array,
  dims: AttentionDims,
  causal: boolean,
  scale: number,
): F64Grads {
  const { Tq, Tk, Hq, Hkv, D } = dims;
  const dq = new Float64Array(Tq * Hq * D);
  const dk = new Float64Array(Tk * Hkv * D);
  const dv = new Float64Array(Tk * Hkv * D);
  for (let h = 0; h < Hq; h++) {
    const g = kvHeadOf(h, Hq, Hkv);
    for (let i = 0; i < Tq; i++) {
      const L = lse[h * Tq + i] as number;
      // lse = -Inf: the row attends to nothing anywhere, so it has no gradient (and exp(S - L) would be Inf).
      if (L === Number.NEGATIVE_INFINITY) continue;
      const n = visibleKeys(i, Tq, Tk, causal);
      const qi = (i * Hq + h) * D;
      let delta = 0;
      for (let d = 0; d < D; d++) delta += (dO[qi + d] as number) * (o[qi + d] as number);
      for (let j = 0; j < n; j++) {
        const kvj = (j * Hkv + g) * D; // row j of k, v, dk and dv
        let dot = 0;
        let dp = 0;
        for (let d = 0; d < D; d++) {
          dot += (q[qi + d] as number) * (k[kvj + d] as number);
          dp += (dO[qi + d] as number) * (v[kvj + d] as number);
        }
        const p = Math.exp(scale * dot - L);
        const ds = scale * p * (dp - delta);
        for (let d = 0; d < D; d++) {
          dq[qi + d] = (dq[qi + d] as number) + ds * (k[kvj + d] as number);
          dk[kvj + d] = (dk[kvj + d] as number) + ds * (q[qi + d] as number);
          dv[kvj + d] = (dv[kvj + d] as number) + p * (dO[qi + d] as number);
        }
      }
    }
  }
  return { dq, dk, dv };
}

function requireCpu(who: string, ts: Record<string, Tensor>): void {
  for (const [name, t] of Object.entries(ts)) {
    if (t.device.kind !== "cpu")
      throw new AttentionError(
        `${who}: ${name}: the reference runs on the cpu, got a tensor on cuda:${t.device.index} (copy it with to(x, "cpu"))`,
      );
  }
}

/** The elements of a CPU f32 or bf16 tensor as f64. */
export function widenF64(t: Tensor): Float64Array {
  const d = t.data();
  const out = new Float64Array(t.numel);
  if (t.dtype === "bf16") for (let i = 0; i < out.length; i++) out[i] = bf16BitsToF32(d[i] as number);
  else for (let i = 0; i < out.length; i++) out[i] = d[i] as number;
  return out;
}

/** acc (f32, cpu) += x, each sum done in f64 and rounded once to f32. */
function addF64Into(acc: Tensor, x: Float64Array): void {
  const d = acc.data() as Float32Array;
  for (let i = 0; i < d.length; i++) d[i] = (d[i] as number) + (x[i] as number);
}

export const referenceBackend: AttentionBackend = {
  name: "reference",

  forward(q: Tensor, k: Tensor, v: Tensor, opts: ForwardOptions): AttentionOutput {
    const c = checkForwardArgs("reference.forward", q, k, v, opts);
    requireCpu("reference.forward", { q, k, v });
    const r = forwardF64(widenF64(q), widenF64(k), widenF64(v), c, c.causal, c.scale);
    return { o: fromArray(r.o, q.shape, { dtype: c.outDtype }), lse: fromArray(r.lse, [c.Hq, c.Tq]) };
  },

  backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dO: Tensor, opts: BackwardOptions): AttentionGrads {
    const c = checkBackwardArgs("reference.backward", q, k, v, o, lse, dO, opts);
    requireCpu("reference.backward", { q, k, v, o, lse, dO });
    const r = backwardF64(
      widenF64(q),
      widenF64(k),
      widenF64(v),
      widenF64(o),
      lse.data() as Float32Array,
      widenF64(dO),
      c,
      c.causal,
      c.scale,
    );
    const acc = opts.accumulate;
    if (acc !== undefined) {
      requireCpu("reference.backward", { "accumulate.dq": acc.dq, "accumulate.dk": acc.dk, "accumulate.dv": acc.dv });
      addF64Into(acc.dq, r.dq);
      addF64Into(acc.dk, r.dk);
      addF64Into(acc.dv, r.dv);
      return acc;
    }
    return {
      dq: fromArray(r.dq, q.shape, { dtype: c.dtype }),
      dk: fromArray(r.dk, k.shape, { dtype: c.dtype }),
      dv: fromArray(r.dv, v.shape, { dtype: c.dtype }),
    };
  },
};
