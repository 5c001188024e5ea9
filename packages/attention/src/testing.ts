// One test suite for the block contract, run by every backend (reference on the cpu here; CUDA and
// cuDNN on a GPU machine): `attentionBackendSuite(backend, { device: "cuda:0", headDim: 128 })`.
// It checks the backend against the reference on fresh random inputs and checks the identities DistAttn
// relies on with the backend alone: GQA = repeated K/V, attention over concatenated K/V = merge of the
// parts (forward) and sum of the parts (backward), bottom-right causal semantics, empty rows, huge scores,
// and the argument errors. Partials are merged on the cpu, so the suite needs no CUDA merge kernel.

import { describe, expect, test } from "bun:test";
import { type DeviceLike, fromArray, parseDevice, randn, type Tensor, to, toFloat32Array, zeros } from "@lightseq/tensor";
import { type CloseOptions, expectClose } from "@lightseq/tensor/testing";
import type { AttentionBackend, AttentionOptions, AttentionPartial, ForwardOptions } from "./block.ts";
import { kvHeadOf } from "./layout.ts";
import { emptyPartial, mergeInto } from "./merge.ts";
import { referenceBackend } from "./reference.ts";

/** Disposes every tensor added to it: `using pool = new TensorPool()`. */
export class TensorPool implements Disposable {
  #tensors: Tensor[] = [];

  add<T extends Tensor>(t: T): T {
    this.#tensors.push(t);
    return t;
  }

  /** Adds every tensor of a result object ({ o, lse }, { dq, dk, dv }) and returns it. */
  addAll<R extends object>(r: R): R {
    for (const t of Object.values(r)) this.add(t as Tensor);
    return r;
  }

  [Symbol.dispose](): void {
    for (const t of this.#tensors) t.dispose();
    this.#tensors = [];
  }
}

/** k [Tk, Hkv, D] -> [Tk, Hq, D] with kv head g repeated for its query heads (materialised; tests only). */
export function repeatKv(k: Tensor, Hq: number): Tensor {
  const [Tk, Hkv, D] = k.shape as [number, number, number];
  const src = toFloat32Array(k);
  const out = new Float32Array(Tk * Hq * D);
  for (let j = 0; j < Tk; j++) {
    for (let h = 0; h < Hq; h++) {
      const from = (j * Hkv + kvHeadOf(h, Hq, Hkv)) * D;
      out.set(src.subarray(from, from + D), (j * Hq + h) * D);
    }
  }
  return onDevice(fromArray(out, [Tk, Hq, D], { dtype: k.dtype }), k.device);
}

/** dk of the repeated-heads version [Tk, Hq, D] summed back onto kv heads: [Tk, Hkv, D] values. */
export function sumRepeatedHeads(dkRepeated: Tensor, Hkv: number): Float64Array {
  const [Tk, Hq, D] = dkRepeated.shape as [number, number, number];
  const src = toFloat32Array(dkRepeated);
  const out = new Float64Array(Tk * Hkv * D);
  for (let j = 0; j < Tk; j++) {
    for (let h = 0; h < Hq; h++) {
      const to = (j * Hkv + kvHeadOf(h, Hq, Hkv)) * D;
      for (let d = 0; d < D; d++) out[to + d] = (out[to + d] as number) + (src[(j * Hq + h) * D + d] as number);
    }
  }
  return out;
}

/** Columns [start, start + len) of lse [H, T], as a new f32 tensor on lse's device. */
export function lseColumns(lse: Tensor, start: number, len: number): Tensor {
  const [H, T] = lse.shape as [number, number];
  const src = toFloat32Array(lse);
  const out = new Float32Array(H * len);
  for (let h = 0; h < H; h++) out.set(src.subarray(h * T + start, h * T + start + len), h * len);
  return onDevice(fromArray(out, [H, len]), lse.device);
}

/** acc[offset + i] += t[i] (partial gradients summed in f64). */
function addInto(acc: Float64Array, t: Tensor, offset = 0): void {
  const x = toFloat32Array(t);
  for (let i = 0; i < x.length; i++) acc[offset + i] = (acc[offset + i] as number) + (x[i] as number);
}

function onDevice(t: Tensor, device: DeviceLike): Tensor {
  const d = parseDevice(device);
  if (d.kind === "cpu") return t;
  const moved = to(t, d);
  t.dispose();
  return moved;
}

/** A copy on the cpu (merging partials here keeps the suite independent of a CUDA merge kernel). */
function cpuCopy(pool: TensorPool, t: Tensor): Tensor {
  return pool.add(t.device.kind === "cpu" ? t.view() : to(t, "cpu"));
}

export interface SuiteTolerances {
  f32: CloseOptions;
  bf16: CloseOptions;
}

export interface SuiteOptions {
  /** default "cpu" */
  device?: DeviceLike;
  /** default ["f32", "bf16"] */
  dtypes?: readonly ("f32" | "bf16")[];
  /** default 8 (fast paths: 64 or 128) */
  headDim?: number;
  /** Every sequence length in the suite is multiplied by this (default 1), e.g. to span several kernel tiles. */
  seqMultiple?: number;
  /**
   * For both "equals the reference" and the identities. Defaults: f32 1e-5 (the reference rounds f64
   * once to f32, 2^-24 relative, and an identity combines a few such values); bf16 2e-2 (one bf16 ulp is
   * 2^-8 = 0.4%, identities combine several rounded values, and a kernel rounds P to bf16 before P@V).
   */
  tolerance?: Partial<SuiteTolerances>;
}

const DEFAULT_TOLERANCE: SuiteTolerances = { f32: { atol: 1e-5, rtol: 1e-5 }, bf16: { atol: 2e-2, rtol: 2e-2 } };

interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dO: Tensor;
}

export function attentionBackendSuite(backend: AttentionBackend, options: SuiteOptions = {}): void {
  const device = parseDevice(options.device ?? "cpu");
  const dtypes = options.dtypes ?? ["f32", "bf16"];
  const D = options.headDim ?? 8;
  const M = options.seqMultiple ?? 1;
  const isReference = backend === referenceBackend;

  /** q, k, v, dO from seeds seed .. seed + 3 (each test names its own seed, so a test run alone sees the same data). */
  function inputs(pool: TensorPool, seed: number, dtype: "f32" | "bf16", Tq: number, Tk: number, Hq: number, Hkv: number, std = 1): Inputs {
    const p = { dtype, device, std };
    return {
      q: pool.add(randn([Tq, Hq, D], { ...p, seed })),
      k: pool.add(randn([Tk, Hkv, D], { ...p, seed: seed + 1 })),
      v: pool.add(randn([Tk, Hkv, D], { ...p, seed: seed + 2 })),
      dO: pool.add(randn([Tq, Hq, D], { ...p, seed: seed + 3 })),
    };
  }

  function fwd(pool: TensorPool, x: Inputs, opts: ForwardOptions, k = x.k, v = x.v, q = x.q) {
    return pool.addAll(backend.forward(q, k, v, opts));
  }

  describe(`attention backend "${backend.name}" on ${device.kind === "cpu" ? "cpu" : `cuda:${device.index}`}, D = ${D}`, () => {
    for (const dtype of dtypes) {
      const tol = { ...DEFAULT_TOLERANCE, ...options.tolerance }[dtype];
      const close = (got: Tensor | ArrayLike<number>, ref: Tensor | ArrayLike<number>, label: string) =>
        expectClose(got, ref, { ...tol, label });

      describe(dtype, () => {
        test.skipIf(isReference)("equals the reference (causal or not, MHA/GQA, Tq == Tk and Tq != Tk)", () => {
          for (const [Tq, Tk, Hq, Hkv, causal] of [
            [9 * M, 9 * M, 4, 4, true],
            [9 * M, 9 * M, 4, 2, false],
            [5 * M, 11 * M, 4, 1, true],
            [11 * M, 5 * M, 2, 2, true],
          ] as const) {
            using pool = new TensorPool();
            const x = inputs(pool, 100, dtype, Tq, Tk, Hq, Hkv);
            const opts = { causal };
            const got = fwd(pool, x, opts);
            const cpu = { q: cpuCopy(pool, x.q), k: cpuCopy(pool, x.k), v: cpuCopy(pool, x.v), dO: cpuCopy(pool, x.dO) };
            const ref = pool.addAll(referenceBackend.forward(cpu.q, cpu.k, cpu.v, opts));
            const what = `Tq=${Tq} Tk=${Tk} Hq=${Hq} Hkv=${Hkv} causal=${causal}`;
            close(got.o, ref.o, `o ${what}`);
            close(got.lse, ref.lse, `lse ${what}`);
            // Both backwards take the reference's o and lse, so only the backward itself is compared.
            const o = pool.add(to(ref.o, device));
            const lse = pool.add(to(ref.lse, device));
            const g = pool.addAll(backend.backward(x.q, x.k, x.v, o, lse, x.dO, opts));
            const r = pool.addAll(referenceBackend.backward(cpu.q, cpu.k, cpu.v, ref.o, ref.lse, cpu.dO, opts));
            close(g.dq, r.dq, `dq ${what}`);
            close(g.dk, r.dk, `dk ${what}`);
            close(g.dv, r.dv, `dv ${what}`);
          }
        });

        test("GQA and MQA equal MHA with K/V heads repeated (dk, dv summed over the repeats)", () => {
          for (const [Hq, Hkv, causal] of [
            [6, 3, true],
            [6, 2, false],
            [4, 1, true],
          ] as const) {
            using pool = new TensorPool();
            const T = 7 * M;
            const x = inputs(pool, 200, dtype, T, T, Hq, Hkv);
            const kr = pool.add(repeatKv(x.k, Hq));
            const vr = pool.add(repeatKv(x.v, Hq));
            const opts = { causal };
            const gqa = fwd(pool, x, opts);
            const mha = fwd(pool, x, opts, kr, vr);
            const what = `Hq=${Hq} Hkv=${Hkv} causal=${causal}`;
            close(gqa.o, mha.o, `o ${what}`);
            close(gqa.lse, mha.lse, `lse ${what}`);
            const g = pool.addAll(backend.backward(x.q, x.k, x.v, gqa.o, gqa.lse, x.dO, opts));
            const r = pool.addAll(backend.backward(x.q, kr, vr, gqa.o, gqa.lse, x.dO, opts));
            close(g.dq, r.dq, `dq ${what}`);
            close(g.dk, sumRepeatedHeads(r.dk, Hkv), `dk ${what}`);
            close(g.dv, sumRepeatedHeads(r.dv, Hkv), `dv ${what}`);
          }
        });

        test("attention over concatenated K/V = merge of the parts; gradients = sum / slices of the parts", () => {
          using pool = new TensorPool();
          const [Tq, Hq, Hkv] = [10 * M, 4, 2];
          const parts = [7 * M, 5 * M, 8 * M];
          const Tk = parts.reduce((a, b) => a + b, 0);
          const x = inputs(pool, 300, dtype, Tq, Tk, Hq, Hkv);
          const opts = { causal: false };
          const full = fwd(pool, x, opts);
          const grads = pool.addAll(backend.backward(x.q, x.k, x.v, full.o, full.lse, x.dO, opts));
          const acc = pool.addAll(emptyPartial(Tq, Hq, D));
          const dq = new Float64Array(x.q.numel);
          let start = 0;
          for (const [n, len] of parts.entries()) {
            const k = pool.add(x.k.narrow(start, len));
            const v = pool.add(x.v.narrow(start, len));
            const part = fwd(pool, x, opts, k, v);
            mergeInto(acc, { o: cpuCopy(pool, part.o), lse: cpuCopy(pool, part.lse) });
            const g = pool.addAll(backend.backward(x.q, k, v, full.o, full.lse, x.dO, opts));
            addInto(dq, g.dq);
            const rows = [start * Hkv * D, (start + len) * Hkv * D] as const;
            close(g.dk, toFloat32Array(grads.dk).subarray(...rows), `dk of part ${n}`);
            close(g.dv, toFloat32Array(grads.dv).subarray(...rows), `dv of part ${n}`);
            start += len;
          }
          close(acc.o, full.o, "merged o");
          close(acc.lse, full.lse, "merged lse");
          close(dq, grads.dq, "sum of the parts' dq");
        });

        test("DistAttn blocks (diagonal causal, off-diagonal full; f32 partials, f32 gradient accumulation) rebuild causal attention", () => {
          using pool = new TensorPool();
          const [P, c, Hq, Hkv] = [3, 6 * M, 4, 2];
          const N = P * c;
          const x = inputs(pool, 400, dtype, N, N, Hq, Hkv);
          const full = fwd(pool, x, { causal: true });
          const grads = pool.addAll(backend.backward(x.q, x.k, x.v, full.o, full.lse, x.dO, { causal: true }));
          const chunk = (t: Tensor, i: number) => pool.add(t.narrow(i * c, c));
          // As DistAttn holds them: one f32 accumulator per chunk, on the backend's device.
          const f32Zeros = (shape: number[]) => pool.add(zeros(shape, { dtype: "f32", device }));
          const dk = Array.from({ length: P }, () => f32Zeros([c, Hkv, D]));
          const dv = Array.from({ length: P }, () => f32Zeros([c, Hkv, D]));
          for (let i = 0; i < P; i++) {
            const [qi, oi, dOi] = [chunk(x.q, i), chunk(full.o, i), chunk(x.dO, i)];
            const lsei = pool.add(lseColumns(full.lse, i * c, c));
            const acc: AttentionPartial = pool.addAll(emptyPartial(c, Hq, D));
            const dq = f32Zeros([c, Hq, D]);
            for (let j = 0; j <= i; j++) {
              const causal = j === i;
              const [kj, vj] = [chunk(x.k, j), chunk(x.v, j)];
              const part = fwd(pool, x, { causal, outDtype: "f32" }, kj, vj, qi);
              expect(part.o.dtype).toBe("f32");
              mergeInto(acc, { o: cpuCopy(pool, part.o), lse: cpuCopy(pool, part.lse) });
              const into = { dq, dk: dk[j] as Tensor, dv: dv[j] as Tensor };
              const g = backend.backward(qi, kj, vj, oi, lsei, dOi, { causal, accumulate: into });
              expect(g.dq === dq && g.dk === into.dk && g.dv === into.dv).toBe(true);
            }
            close(acc.o, oi, `merged o of chunk ${i}`);
            close(acc.lse, lsei, `merged lse of chunk ${i}`);
            close(dq, chunk(grads.dq, i), `dq of chunk ${i}`);
            // Bottom-right causal: chunk i against the keys of chunks 0..i in one call is the same thing.
            const prefix = fwd(pool, x, { causal: true }, pool.add(x.k.narrow(0, (i + 1) * c)), pool.add(x.v.narrow(0, (i + 1) * c)), qi);
            close(prefix.o, oi, `o of chunk ${i} against the key prefix`);
            close(prefix.lse, lsei, `lse of chunk ${i} against the key prefix`);
          }
          for (let j = 0; j < P; j++) {
            close(dk[j] as Tensor, chunk(grads.dk, j), `dk of chunk ${j} summed over query chunks`);
            close(dv[j] as Tensor, chunk(grads.dv, j), `dv of chunk ${j} summed over query chunks`);
          }
        });

        test("outDtype f32 gives the same o unrounded; accumulate adds into what is there", () => {
          using pool = new TensorPool();
          const [Tq, Tk, Hq, Hkv] = [5 * M, 7 * M, 4, 2];
          const x = inputs(pool, 450, dtype, Tq, Tk, Hq, Hkv);
          const out = fwd(pool, x, { causal: true });
          const wide = fwd(pool, x, { causal: true, outDtype: "f32" });
          expect([out.o.dtype, wide.o.dtype, wide.lse.dtype]).toEqual([dtype, "f32", "f32"]);
          close(wide.o, out.o, "o in f32 against o in the input dtype");
          close(wide.lse, out.lse, "lse");
          const g = pool.addAll(backend.backward(x.q, x.k, x.v, out.o, out.lse, x.dO, { causal: true }));
          const ones = (like: Tensor) => pool.add(fromArray(new Float32Array(like.numel).fill(1), like.shape, { device }));
          const into = { dq: ones(x.q), dk: ones(x.k), dv: ones(x.v) };
          backend.backward(x.q, x.k, x.v, out.o, out.lse, x.dO, { causal: true, accumulate: into });
          for (const name of ["dq", "dk", "dv"] as const) {
            close(
              into[name],
              Array.from(toFloat32Array(g[name]), (e) => e + 1),
              `1 + ${name}`,
            );
          }
        });

        test("causal with Tq < Tk: query i sees keys 0 .. i + Tk - Tq", () => {
          using pool = new TensorPool();
          const [Tq, Tk, Hq] = [4 * M, 9 * M, 2];
          const x = inputs(pool, 500, dtype, Tq, Tk, Hq, Hq);
          const full = fwd(pool, x, { causal: true });
          const grads = pool.addAll(backend.backward(x.q, x.k, x.v, full.o, full.lse, x.dO, { causal: true }));
          // Spot rows: first, last and one in between (each checked against a non-causal prefix call).
          for (const i of new Set([0, Math.floor(Tq / 2), Tq - 1])) {
            const n = i + Tk - Tq + 1;
            const row = (t: Tensor) => pool.add(t.narrow(i, 1));
            const [k, v] = [pool.add(x.k.narrow(0, n)), pool.add(x.v.narrow(0, n))];
            const one = fwd(pool, x, { causal: false }, k, v, row(x.q));
            close(one.o, row(full.o), `o row ${i}`);
            close(one.lse, pool.add(lseColumns(full.lse, i, 1)), `lse row ${i}`);
            const g = pool.addAll(
              backend.backward(row(x.q), k, v, row(full.o), pool.add(lseColumns(full.lse, i, 1)), row(x.dO), { causal: false }),
            );
            close(g.dq, row(grads.dq), `dq row ${i}`);
          }
        });

        test("causal with Tq > Tk: the first Tq - Tk rows see no key (o 0, lse -Inf, no gradient, no NaN)", () => {
          using pool = new TensorPool();
          const [Tq, Tk, Hq, Hkv] = [9 * M, 4 * M, 4, 2];
          const empty = Tq - Tk;
          const x = inputs(pool, 600, dtype, Tq, Tk, Hq, Hkv);
          const full = fwd(pool, x, { causal: true });
          const grads = pool.addAll(backend.backward(x.q, x.k, x.v, full.o, full.lse, x.dO, { causal: true }));
          const o = toFloat32Array(full.o);
          const lse = toFloat32Array(full.lse);
          expect(o.subarray(0, empty * Hq * D).every((e) => e === 0)).toBe(true);
          for (let h = 0; h < Hq; h++) for (let i = 0; i < Tq; i++) expect(lse[h * Tq + i] === Number.NEGATIVE_INFINITY).toBe(i < empty);
          expect(
            toFloat32Array(grads.dq)
              .subarray(0, empty * Hq * D)
              .every((e) => e === 0),
          ).toBe(true);
          for (const t of [full.o, full.lse, grads.dq, grads.dk, grads.dv]) expect(toFloat32Array(t).some(Number.isNaN)).toBe(false);
          // The other rows are square causal attention of the last Tk queries.
          const tail = (t: Tensor) => pool.add(t.narrow(empty, Tk));
          const sq = fwd(pool, x, { causal: true }, x.k, x.v, tail(x.q));
          close(tail(full.o), sq.o, "o of the rows that see keys");
          close(pool.add(lseColumns(full.lse, empty, Tk)), sq.lse, "lse of the rows that see keys");
          const g = pool.addAll(backend.backward(tail(x.q), x.k, x.v, sq.o, sq.lse, tail(x.dO), { causal: true }));
          close(tail(grads.dq), g.dq, "dq of the rows that see keys");
          close(grads.dk, g.dk, "dk (empty rows add nothing)");
          close(grads.dv, g.dv, "dv (empty rows add nothing)");
        });

        test("scores around 1e4 give finite outputs; o is a convex combination of v rows", () => {
          using pool = new TensorPool();
          const [T, Hq] = [8 * M, 2];
          const x = inputs(pool, 700, dtype, T, T, Hq, Hq, 100); // |scale * q.k| ~ 100^2
          for (const causal of [true, false]) {
            const out = fwd(pool, x, { causal });
            const g = pool.addAll(backend.backward(x.q, x.k, x.v, out.o, out.lse, x.dO, { causal }));
            for (const [name, t] of Object.entries({ ...out, ...g })) {
              expect({ name, finite: toFloat32Array(t).every(Number.isFinite) }).toEqual({ name, finite: true });
            }
            const o = toFloat32Array(out.o);
            const v = toFloat32Array(x.v);
            for (let h = 0; h < Hq; h++) {
              for (let d = 0; d < D; d++) {
                let [lo, hi] = [Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
                for (let j = 0; j < T; j++) {
                  lo = Math.min(lo, v[(j * Hq + h) * D + d] as number);
                  hi = Math.max(hi, v[(j * Hq + h) * D + d] as number);
                }
                const slack = (tol.atol ?? 0) + (tol.rtol ?? 0) * Math.max(Math.abs(lo), Math.abs(hi));
                for (let i = 0; i < T; i++) {
                  const e = o[(i * Hq + h) * D + d] as number;
                  expect(e >= lo - slack && e <= hi + slack).toBe(true);
                }
              }
            }
          }
        });
      });
    }

    describe("argument checks name the argument, what was expected and what came", () => {
      const dtype = dtypes[0] ?? "f32";
      const make = (pool: TensorPool, shape: number[], dt: "f32" | "bf16" | "i32" = dtype) =>
        pool.add(dt === "i32" ? zeros(shape, { dtype: dt, device }) : randn(shape, { seed: 7, dtype: dt, device }));

      test("forward", () => {
        using pool = new TensorPool();
        const q = make(pool, [4, 6, D]);
        const k = make(pool, [5, 3, D]);
        const v = make(pool, [5, 3, D]);
        const call =
          (qq: Tensor, kk: Tensor, vv: Tensor, opts: AttentionOptions = { causal: true }) =>
          () =>
            backend.forward(qq, kk, vv, opts);
        expect(call(q, make(pool, [5, 4, D]), make(pool, [5, 4, D]))).toThrow(
          /k: expected a kv head count Hkv dividing Hq = 6 .*got Hkv = 4/,
        );
        expect(call(q, make(pool, [5, 3, D + 1]), make(pool, [5, 3, D + 1]))).toThrow(
          new RegExp(`k: expected head dim D = ${D} .*got ${D + 1}`),
        );
        expect(call(q, k, make(pool, [6, 3, D]))).toThrow(
          new RegExp(`v: expected shape \\[5, 3, ${D}\\] \\(as k\\), got \\[6, 3, ${D}\\]`),
        );
        expect(call(make(pool, [4, 6 * D]), k, v)).toThrow(new RegExp(`q: expected rank 3 \\[Tq, Hq, D\\], got shape \\[4, ${6 * D}\\]`));
        expect(call(q, make(pool, [5, 3, D, 1]), v)).toThrow(/k: expected rank 3 \[Tk, Hkv, D\]/);
        const other = dtype === "f32" ? "bf16" : "f32";
        expect(call(q, make(pool, [5, 3, D], other), v)).toThrow(`k: expected dtype ${dtype} (as q), got ${other}`);
        expect(call(make(pool, [4, 6, D], "i32"), k, v)).toThrow("q: expected dtype f32 or bf16, got i32");
        expect(call(q, k, v, { causal: undefined as unknown as boolean })).toThrow("opts.causal: expected true or false, got undefined");
        expect(call(q, k, v, { causal: false, scale: Number.NaN })).toThrow("opts.scale: expected a finite number, got NaN");
        if (dtype === "f32") {
          expect(() => backend.forward(q, k, v, { causal: true, outDtype: "bf16" })).toThrow(
            "opts.outDtype: expected f32 (as q), got bf16",
          );
        }
        pool.addAll(backend.forward(q, k, v, { causal: true })); // and the good call passes
      });

      test("backward", () => {
        using pool = new TensorPool();
        const q = make(pool, [4, 2, D]);
        const k = make(pool, [5, 1, D]);
        const v = make(pool, [5, 1, D]);
        const { o, lse } = pool.addAll(backend.forward(q, k, v, { causal: false }));
        const dO = make(pool, [4, 2, D]);
        const call = (oo: Tensor, ll: Tensor, dd: Tensor) => () => backend.backward(q, k, v, oo, ll, dd, { causal: false });
        expect(call(o, make(pool, [4, 2], "f32"), dO)).toThrow("lse: expected shape [Hq, Tq] = [2, 4]");
        expect(call(o, make(pool, [2, 4], "bf16"), dO)).toThrow("lse: expected dtype f32 (lse is always f32), got bf16");
        expect(call(o, make(pool, [2, 4, 1], "f32"), dO)).toThrow("lse: expected rank 2 [Hq, Tq]");
        expect(call(make(pool, [4, 1, D]), lse, dO)).toThrow(`o: expected shape [4, 2, ${D}] (as q), got [4, 1, ${D}]`);
        const other = dtype === "f32" ? "bf16" : "f32";
        expect(call(o, lse, make(pool, [4, 2, D], other))).toThrow(`dO: expected dtype ${dtype} (as q), got ${other}`);
        const f32 = (shape: number[]) => pool.add(zeros(shape, { dtype: "f32", device }));
        const accumulate = (dq: Tensor, dk: Tensor) => () =>
          backend.backward(q, k, v, o, lse, dO, { causal: false, accumulate: { dq, dk, dv: f32([5, 1, D]) } });
        expect(accumulate(f32([4, 2, D]), make(pool, [5, 1, D], "bf16"))).toThrow(
          "accumulate.dk: expected dtype f32 (gradients accumulate in fp32), got bf16",
        );
        expect(accumulate(f32([4, 1, D]), f32([5, 1, D]))).toThrow(`accumulate.dq: expected shape [4, 2, ${D}] (as q), got [4, 1, ${D}]`);
        pool.addAll(backend.backward(q, k, v, o, lse, dO, { causal: false })); // and the good call passes
      });
    });
  });
}
