import { describe, expect, test } from "bun:test";
import { roundBf16 } from "./bf16.ts";
import * as T from "./index.ts";
import { expectClose } from "./testing.ts";

const vals = (t: T.Tensor) => Array.from(T.toFloat32Array(t));

describe("creation", () => {
  test("zeros, full, fromArray in every dtype", () => {
    for (const dtype of T.DTYPES) {
      expect(vals(T.zeros([2, 3], { dtype }))).toEqual([0, 0, 0, 0, 0, 0]);
      expect(vals(T.full([3], 7, { dtype }))).toEqual([7, 7, 7]);
      expect(vals(T.fromArray([1, -2, 3, 4], [2, 2], { dtype }))).toEqual([1, -2, 3, 4]);
    }
    expect(vals(T.full([2], 1.00390625, { dtype: "bf16" }))).toEqual([1, 1]); // rounded to bf16
    expect(vals(T.full([2], 2.9, { dtype: "i32" }))).toEqual([2, 2]);
    expect(T.empty([0, 4]).numel).toBe(0);
  });

  test("rand and randn: same seed same numbers, offset selects a window", () => {
    const a = T.randn([1000], { seed: 7 });
    const b = T.randn([1000], { seed: 7 });
    const c = T.randn([1000], { seed: 8 });
    expect(vals(a)).toEqual(vals(b));
    expect(vals(a)).not.toEqual(vals(c));
    const tail = T.randn([10], { seed: 7, offset: 990 });
    expect(vals(tail)).toEqual(vals(a).slice(990));
    const u = T.rand([4096], { seed: 3, lo: -2, hi: 5 });
    for (const v of vals(u)) expect(v >= -2 && v < 5).toBe(true);
    const h = T.randn([1000], { seed: 7, dtype: "bf16" });
    expect(vals(h)).toEqual(vals(a).map(roundBf16));
  });

  test("rand refuses i32 and bad seeds", () => {
    expect(() => T.rand([2], { seed: 1, dtype: "i32" })).toThrow(/random fills need f32 or bf16, got i32/);
    expect(() => T.randn([2], { seed: -1 })).toThrow(/seed: expected an integer in \[0, 2\^64\)/);
    expect(() => T.randn([2], { seed: 1, offset: 0.5 })).toThrow(/offset: expected a non-negative integer/);
  });

  test("bad shapes, dtypes and devices name the argument", () => {
    expect(() => T.zeros([2, -1])).toThrow(/shape: every size must be a non-negative integer, got \[2, -1\]/);
    expect(() => T.zeros([2.5])).toThrow(/shape/);
    expect(() => T.zeros([2], { dtype: "f16" as T.DType })).toThrow(/dtype: expected a dtype \("f32", "bf16" or "i32"\), got "f16"/);
    expect(() => T.zeros([2], { device: "gpu" })).toThrow(/device: expected "cpu" or "cuda:N", got "gpu"/);
    expect(() => T.fromArray([1, 2, 3], [2, 2])).toThrow(/values: expected 4 numbers for shape \[2, 2\], got 3/);
  });
});

describe("elementwise ops", () => {
  test("add and mul in f32 are exact IEEE single precision", () => {
    const a = T.randn([257], { seed: 1 });
    const b = T.randn([257], { seed: 2 });
    const x = T.toFloat32Array(a);
    const y = T.toFloat32Array(b);
    expect(vals(T.add(a, b))).toEqual(Array.from(x, (v, i) => Math.fround(v + (y[i] as number))));
    expect(vals(T.mul(a, b))).toEqual(Array.from(x, (v, i) => Math.fround(v * (y[i] as number))));
  });

  test("bf16 ops compute in f32 and round once", () => {
    const a = T.randn([301], { seed: 3, dtype: "bf16" });
    const b = T.randn([301], { seed: 4, dtype: "bf16" });
    const x = T.toFloat32Array(a);
    const y = T.toFloat32Array(b);
    expect(vals(T.add(a, b))).toEqual(Array.from(x, (v, i) => roundBf16(Math.fround(v + (y[i] as number)))));
    expect(vals(T.mul(a, b))).toEqual(Array.from(x, (v, i) => roundBf16(Math.fround(v * (y[i] as number)))));
    expect(vals(T.scale(a, 0.3))).toEqual(Array.from(x, (v) => roundBf16(Math.fround(Math.fround(0.3) * v))));
  });

  test("i32 add and mul wrap like int32", () => {
    const a = T.fromArray([2147483647, -5, 65536, 3], [4], { dtype: "i32" });
    const b = T.fromArray([1, 7, 65536, -4], [4], { dtype: "i32" });
    expect(Array.from(T.add(a, b).data())).toEqual([-2147483648, 2, 131072, -1]);
    expect(Array.from(T.mul(a, b).data())).toEqual([2147483647, -35, 0, -12]);
  });

  test("scale and axpy (f32 and bf16), axpy in place", () => {
    for (const dtype of ["f32", "bf16"] as const) {
      const x = T.fromArray([1, 2, 3], [3], { dtype });
      const y = T.fromArray([10, 20, 30], [3], { dtype });
      T.axpy(0.5, x, y);
      expect(vals(y)).toEqual([10.5, 21, 31.5]);
      expect(vals(T.scale(x, -2))).toEqual([-2, -4, -6]);
    }
    expect(() => T.scale(T.zeros([2], { dtype: "i32" }), 2)).toThrow(/scale: x: expected dtype f32 or bf16, got i32/);
  });

  test("NaN and Inf propagate", () => {
    const a = T.fromArray([Number.NaN, Number.POSITIVE_INFINITY, 1], [3], { dtype: "bf16" });
    const b = T.fromArray([1, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY], [3], { dtype: "bf16" });
    const s = vals(T.add(a, b));
    expect(Number.isNaN(s[0])).toBe(true);
    expect(Number.isNaN(s[1])).toBe(true);
    expect(s[2]).toBe(Number.POSITIVE_INFINITY);
  });

  test("out= writes in place and is checked", () => {
    const a = T.fromArray([1, 2], [2]);
    const out = T.zeros([2]);
    T.add(a, a, { out }).dispose();
    expect(vals(out)).toEqual([2, 4]);
    expect(() => T.add(a, a, { out: T.zeros([3]) })).toThrow(/add: out: expected shape \[2\], got \[3\]/);
    expect(() => T.add(a, a, { out: T.zeros([2], { dtype: "bf16" }) })).toThrow(/add: out: expected dtype f32, got bf16/);
  });

  test("mismatches name both arguments", () => {
    const a = T.zeros([2, 3]);
    expect(() => T.add(a, T.zeros([3, 2]))).toThrow(/add: b: expected shape \[2, 3\] \(as add: a\), got \[3, 2\]/);
    expect(() => T.mul(a, T.zeros([2, 3], { dtype: "bf16" }))).toThrow(/mul: b: expected dtype f32 \(as mul: a\), got bf16/);
    expect(() => T.axpy(1, T.zeros([2]), T.zeros([3]))).toThrow(/axpy: x: expected shape \[3\]/);
  });
});

describe("reductions and casts", () => {
  test("sumOfSquares accumulates in f64 and rounds once", () => {
    const a = T.randn([10001], { seed: 9 });
    let ref = 0;
    for (const v of T.toFloat32Array(a)) ref += v * v;
    expect(T.item(T.sumOfSquares(a))).toBe(Math.fround(ref));
    const b = T.cast(a, "bf16");
    let refb = 0;
    for (const v of T.toFloat32Array(b)) refb += v * v;
    expect(T.item(T.sumOfSquares(b))).toBe(Math.fround(refb));
    expect(T.item(T.sumOfSquares(T.zeros([0])))).toBe(0);
  });

  test("cast between every pair of dtypes", () => {
    const a = T.fromArray([1.5, -2.75, 3.00390625, 1e10, Number.NaN], [5]);
    expect(vals(T.cast(a, "bf16")).slice(0, 4)).toEqual([1.5, -2.75, 3, roundBf16(1e10)]);
    expect(Array.from(T.cast(a, "i32").data())).toEqual([1, -2, 3, 2147483647, 0]);
    expect(vals(T.cast(T.fromArray([7, -8], [2], { dtype: "i32" }), "bf16"))).toEqual([7, -8]);
    expect(vals(T.cast(T.cast(a, "bf16"), "f32")).slice(0, 2)).toEqual([1.5, -2.75]);
  });

  test("cast f32 -> bf16 rounds to nearest, ties to even (not truncation)", () => {
    const ulp = 2 ** -7; // bf16's spacing in [1, 2)
    const a = T.fromArray([1 + 0.75 * ulp, -(1 + 0.75 * ulp), 1 + 0.25 * ulp, 1 + 0.5 * ulp, 1 + 1.5 * ulp, 3 + 3 * 2 ** -7], [6]);
    expect(vals(T.cast(a, "bf16"))).toEqual([
      1 + ulp, // above the halfway point: up (truncation would give 1)
      -(1 + ulp),
      1, // below it: down
      1, // halfway between 1 (even) and 1 + ulp (odd): to even
      1 + 2 * ulp, // halfway between 1 + ulp (odd) and 1 + 2 ulp (even): to even, up
      3 + 4 * 2 ** -7, // halfway in [2, 4) (spacing 2^-6) between odd 3 + 2^-6 and even 3 + 2^-5: up
    ]);
  });
});

describe("matmul", () => {
  const naive = (A: Float32Array, B: Float32Array, m: number, k: number, n: number) => {
    const out = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += (A[i * k + p] as number) * (B[p * n + j] as number);
        out[i * n + j] = s;
      }
    return out;
  };
  const transpose = (x: Float32Array, r: number, c: number) => {
    const out = new Float32Array(r * c);
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = x[i * c + j] as number;
    return out;
  };

  test("all transposes, batched and shared operands", () => {
    const [m, k, n, batch] = [5, 7, 3, 2];
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const a = T.randn(transA ? [batch, k, m] : [batch, m, k], { seed: 1 });
        const b = T.randn(transB ? [n, k] : [k, n], { seed: 2 });
        const c = T.matmul(a, b, { transA, transB });
        expect(c.shape).toEqual([batch, m, n]);
        const A = T.toFloat32Array(a);
        const B = T.toFloat32Array(b);
        const Bn = transB ? transpose(B, n, k) : B;
        for (let bt = 0; bt < batch; bt++) {
          const Ab = A.subarray(bt * m * k, (bt + 1) * m * k);
          const ref = naive(transA ? transpose(Ab, k, m) : Ab, Bn, m, k, n);
          expectClose(T.toFloat32Array(c).subarray(bt * m * n, (bt + 1) * m * n), ref, { atol: 1e-6, rtol: 1e-6 });
        }
      }
    }
  });

  test("alpha, beta accumulate into out; bf16 output rounded once", () => {
    const a = T.fromArray([1, 2, 3, 4], [2, 2]);
    const b = T.fromArray([1, 0, 0, 1], [2, 2]);
    const out = T.fromArray([10, 10, 10, 10], [2, 2]);
    T.matmul(a, b, { out, alpha: 2, beta: 0.5 }).dispose();
    expect(vals(out)).toEqual([7, 9, 11, 13]);
    const h = T.matmul(T.cast(a, "bf16"), T.cast(b, "bf16"));
    expect(h.dtype).toBe("bf16");
    expect(vals(h)).toEqual([1, 2, 3, 4]);
  });

  test("bf16 operands into an f32 output: unrounded, and beta = 1 accumulates", () => {
    const a = T.fromArray([1, 1 / 3, 2, 3], [2, 2], { dtype: "bf16" });
    const b = T.fromArray([1, 0, 0, 1], [2, 2], { dtype: "bf16" });
    const c = T.matmul(a, b, { outDtype: "f32" });
    expect(c.dtype).toBe("f32");
    expect(vals(c)).toEqual(vals(a)); // bf16(1/3) = 0.333984375 exactly, no second rounding
    const acc = T.full([2, 2], 1 / 1024);
    T.matmul(a, b, { out: acc, beta: 1 }).dispose(); // outDtype follows out
    expect(vals(acc)).toEqual(vals(a).map((v) => Math.fround(v + 1 / 1024)));
    expect(() => T.matmul(T.zeros([2, 2]), T.zeros([2, 2]), { outDtype: "bf16" })).toThrow(
      /matmul: outDtype: f32 operands give a f32 output, got bf16/,
    );
  });

  test("shape errors say which sizes disagree", () => {
    expect(() => T.matmul(T.zeros([2, 3]), T.zeros([4, 5]))).toThrow(/matmul: inner sizes differ: a \[2, 3\] has k=3, b \[4, 5\] has k=4/);
    expect(() => T.matmul(T.zeros([3]), T.zeros([3, 3]))).toThrow(/matmul: a: expected rank 2 or 3, got \[3\]/);
    expect(() => T.matmul(T.zeros([2, 2]), T.zeros([2, 2]), { beta: 1 })).toThrow(/beta != 0 needs an `out` tensor/);
    expect(() => T.matmul(T.zeros([2, 2], { dtype: "i32" }), T.zeros([2, 2], { dtype: "i32" }))).toThrow(
      /expected dtype f32 or bf16, got i32/,
    );
    expect(() => T.matmul(T.zeros([2, 2, 2]), T.zeros([3, 2, 2]))).toThrow(/b: expected batch 2 \(as a\), got 3/);
  });
});

describe("views and lifetimes", () => {
  test("reshape and narrow share storage", () => {
    const a = T.fromArray([0, 1, 2, 3, 4, 5], [3, 2]);
    const r = a.reshape([2, -1]);
    expect(r.shape).toEqual([2, 3]);
    const row = a.narrow(1, 2);
    expect(vals(row)).toEqual([2, 3, 4, 5]);
    T.fill(row, 9);
    expect(vals(a)).toEqual([0, 1, 9, 9, 9, 9]);
    expect(() => a.reshape([4, 2])).toThrow(/reshape: \[3, 2\] \(6 elements\) cannot become \[4, 2\]/);
    expect(() => a.narrow(2, 2)).toThrow(/narrow: rows \[2, 4\) out of range for \[3, 2\]/);
  });

  test("use after dispose is a clear error; views keep storage alive", () => {
    const a = T.fromArray([1, 2, 3], [3]);
    const v = a.view();
    a.dispose();
    expect(vals(v)).toEqual([1, 2, 3]);
    expect(() => T.add(a, v)).toThrow(/add: a: use after dispose \(Tensor\(\[3\], f32, cpu, disposed\)\)/);
    {
      using w = v.reshape([1, 3]);
      expect(w.shape).toEqual([1, 3]);
    }
    v.dispose();
    expect(v.isDisposed).toBe(true);
  });

  test("a CPU tensor refuses ptr(), and cuda devices fail clearly without a GPU", () => {
    expect(() => T.zeros([1]).ptr("x")).toThrow(/x: expected a cuda tensor, got Tensor\(\[1\], f32, cpu\)/);
  });
});
