import { describe, expect, test } from "bun:test";
import { fromArray, randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import type { AttentionPartial } from "./block.ts";
import { emptyPartial, merge, mergeInto } from "./merge.ts";

const NEG_INF = Number.NEGATIVE_INFINITY;

/** A partial [T, H, D] with the given lse values ([H, T] row-major) and random o. */
function partial(T: number, H: number, D: number, lse: number[], seed: number, dtype: "f32" | "bf16" = "f32"): AttentionPartial {
  return { o: randn([T, H, D], { seed, dtype }), lse: fromArray(lse, [H, T]) };
}

function dispose(...ps: AttentionPartial[]): void {
  for (const p of ps) for (const t of [p.o, p.lse] as Tensor[]) t.dispose();
}

/** log(e^a + e^b) by the textbook shift, in f64. */
function logAddExp(a: number, b: number): number {
  const m = Math.max(a, b);
  return m === NEG_INF ? NEG_INF : m + Math.log(Math.exp(a - m) + Math.exp(b - m));
}

describe("merge", () => {
  test("equals the definition on ordinary values, and is symmetric", () => {
    const [T, H, D] = [5, 2, 3];
    const a = partial(T, H, D, [0.1, -1, 2, 0.5, 3, 1, 1, 1, -2, 0], 1);
    const b = partial(T, H, D, [1, 0.3, -0.5, 0.5, 2, 4, -3, 1, 0, 7], 2, "bf16");
    const m = merge(a, b);
    const [la, lb, ao, bo] = [toFloat32Array(a.lse), toFloat32Array(b.lse), toFloat32Array(a.o), toFloat32Array(b.o)];
    const wantO = new Float64Array(T * H * D);
    const wantL = new Float64Array(H * T);
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < T; t++) {
        const [x, y] = [la[h * T + t] as number, lb[h * T + t] as number];
        const l = Math.log(Math.exp(x) + Math.exp(y));
        wantL[h * T + t] = l;
        for (let d = 0; d < D; d++) {
          const e = (t * H + h) * D + d;
          wantO[e] = Math.exp(x - l) * (ao[e] as number) + Math.exp(y - l) * (bo[e] as number);
        }
      }
    }
    // f32 results of an f64 computation: a few f32 ulps at most.
    expectClose(m.o, wantO, { atol: 1e-7, rtol: 1e-6, label: "o" });
    expectClose(m.lse, wantL, { atol: 1e-7, rtol: 1e-6, label: "lse" });
    expect(m.o.dtype).toBe("f32");
    const n = merge(b, a);
    expectClose(n.o, m.o, { atol: 1e-7, rtol: 1e-6, label: "o symmetric" });
    expectClose(n.lse, m.lse, { atol: 0, rtol: 0, label: "lse symmetric" });
    dispose(a, b, m, n);
  });

  test("stable when exp(lse) over- or underflows and when |lse1 - lse2| is huge", () => {
    // Rows (H = 1, T = 4): both ~800 (exp overflows in f64), both ~-800 (exp underflows), 1000 vs 0, 0 vs -1e30.
    const la = [800, -800, 1000, 0];
    const lb = [800.001, -800.5, 0, -1e30];
    const a = partial(4, 1, 2, la, 3);
    const b = partial(4, 1, 2, lb, 4);
    const m = merge(a, b);
    const o = toFloat32Array(m.o);
    expect(o.every(Number.isFinite)).toBe(true);
    la.splice(0, 4, ...toFloat32Array(a.lse)); // the stored (f32) values
    lb.splice(0, 4, ...toFloat32Array(b.lse));
    expectClose(
      m.lse,
      la.map((x, i) => logAddExp(x, lb[i] as number)),
      { atol: 0, rtol: 1e-7, label: "lse" },
    );
    const [ao, bo] = [toFloat32Array(a.o), toFloat32Array(b.o)];
    // Rows 0 and 1: weights e^(la - lse) and e^(lb - lse), computed by hand in shifted form.
    for (const row of [0, 1]) {
      const [x, y] = [la[row] as number, lb[row] as number];
      const wa = 1 / (1 + Math.exp(y - x));
      for (let d = 0; d < 2; d++) {
        const want = wa * (ao[row * 2 + d] as number) + (1 - wa) * (bo[row * 2 + d] as number);
        expect(Math.abs((o[row * 2 + d] as number) - want)).toBeLessThan(1e-6);
      }
    }
    // Rows 2 and 3: the small side's weight underflows to exactly 0; o is the big side's o exactly.
    expect(Array.from(o.subarray(4, 8))).toEqual(Array.from(ao.subarray(4, 8)));
    dispose(a, b, m);
  });

  test("-Infinity partials: an empty side contributes nothing (its o is never read), two empty give 0 / -Inf", () => {
    const a = partial(3, 1, 2, [NEG_INF, 0.5, NEG_INF], 5);
    const b = partial(3, 1, 2, [1.5, NEG_INF, NEG_INF], 6);
    // Garbage in the empty rows' o must not leak into the result.
    const ad = a.o.data() as Float32Array;
    const bd = b.o.data() as Float32Array;
    ad.fill(Number.NaN, 0, 2);
    bd.fill(Number.POSITIVE_INFINITY, 2, 4);
    ad.fill(Number.NaN, 4, 6);
    bd.fill(Number.NaN, 4, 6);
    const m = merge(a, b);
    expect(Array.from(toFloat32Array(m.lse))).toEqual([1.5, 0.5, NEG_INF]);
    expect(Array.from(toFloat32Array(m.o))).toEqual([bd[0], bd[1], ad[2], ad[3], 0, 0] as number[]);
    dispose(a, b, m);
  });
});

describe("mergeInto", () => {
  test("accumulating into emptyPartial equals the pairwise merges exactly (f32 and bf16 parts)", () => {
    const [T, H, D] = [6, 3, 4];
    const lse = (seed: number) => Array.from(toFloat32Array(randn([H * T], { seed, std: 3 })));
    const l2 = lse(12);
    l2[4] = NEG_INF; // one empty row in one part
    const parts = [partial(T, H, D, lse(11), 1), partial(T, H, D, l2, 2, "bf16"), partial(T, H, D, lse(13), 3)];
    const acc = emptyPartial(T, H, D);
    for (const p of parts) mergeInto(acc, p);
    const ab = merge(parts[0] as AttentionPartial, parts[1] as AttentionPartial);
    const abc = merge(ab, parts[2] as AttentionPartial);
    expectClose(acc.o, abc.o, { atol: 0, rtol: 0, label: "o" });
    expectClose(acc.lse, abc.lse, { atol: 0, rtol: 0, label: "lse" });
    dispose(acc, ab, abc, ...parts);
  });

  test("an empty accumulator merged with a part is that part", () => {
    const p = partial(2, 2, 3, [0.25, NEG_INF, -7, 40], 9);
    const acc = emptyPartial(2, 2, 3);
    mergeInto(acc, p);
    expect(Array.from(toFloat32Array(acc.lse))).toEqual(Array.from(toFloat32Array(p.lse)));
    const want = toFloat32Array(p.o);
    want.fill(0, 6, 9); // lse[head 0, token 1] = -Inf: o[token 1, head 0] stays 0
    expect(Array.from(toFloat32Array(acc.o))).toEqual(Array.from(want));
    dispose(p, acc);
  });
});

/**
 * Merging a partial with an equal one over as many keys doubles its weight: o unchanged, lse + ln 2.
 * With lse as large as +-800 (exp overflows f64 past 709, f32 past 88) only the max-shifted form gets
 * it: log(exp(a) + exp(b)) computed directly gives Infinity or -Infinity, and the weights 0 or NaN.
 */
function expectDoubledWeight(merged: AttentionPartial, part: AttentionPartial, label: string): void {
  const want = Array.from(toFloat32Array(part.lse), (l) => l + Math.LN2);
  expectClose(merged.lse, want, { atol: 0, rtol: 1e-7, label: `${label} lse` });
  expectClose(merged.o, part.o, { atol: 0, rtol: 1e-6, label: `${label} o` });
}

const HUGE_LSE = [800, -800, 100, -100, 88.5, 0.5];

describe("merge keeps the max shift", () => {
  test("doubling a partial with |lse| up to 800: o unchanged, lse + ln 2 (merge and mergeInto)", () => {
    const [T, H, D] = [3, 2, 4];
    const p = partial(T, H, D, HUGE_LSE, 21);
    const twin = { o: p.o, lse: p.lse };
    const m = merge(p, twin);
    expectDoubledWeight(m, p, "merge");
    const acc = emptyPartial(T, H, D);
    mergeInto(acc, p);
    mergeInto(acc, twin);
    expectDoubledWeight(acc, p, "mergeInto");
    dispose(m, acc, p);
  });
});

describe("merge argument checks", () => {
  test("messages name the argument, what was expected and what came", () => {
    const a = partial(4, 2, 3, new Array(8).fill(0), 1);
    const b = partial(4, 2, 3, new Array(8).fill(0), 2);
    const wrong = { o: randn([4, 2, 3], { seed: 3 }), lse: fromArray(new Array(8).fill(0), [4, 2]) };
    expect(() => merge(a, wrong)).toThrow("merge: b.lse: expected shape [H, T] = [2, 4] (from b.o [4, 2, 3]), got [4, 2]");
    const short = partial(3, 2, 3, new Array(6).fill(0), 4);
    expect(() => merge(a, short)).toThrow("merge: b.o: expected shape [4, 2, 3] (as a.o), got [3, 2, 3]");
    const bfLse = { o: a.o, lse: randn([2, 4], { seed: 5, dtype: "bf16" }) };
    expect(() => merge(bfLse, b)).toThrow("merge: a.lse: expected dtype f32 (lse is always f32), got bf16");
    const bfAcc = { o: randn([4, 2, 3], { seed: 6, dtype: "bf16" }), lse: a.lse };
    expect(() => mergeInto(bfAcc, b)).toThrow("mergeInto: acc.o: expected dtype f32 (the accumulator is fp32), got bf16");
    const flat = { o: randn([8, 3], { seed: 7 }), lse: a.lse };
    expect(() => mergeInto(a, flat)).toThrow("mergeInto: part.o: expected rank 3 [T, H, D], got shape [8, 3]");
    dispose(a, b, wrong, short, bfLse, bfAcc, flat);
  });
});
