import { describe, expect, test } from "bun:test";
import { fromArray, toFloat32Array, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { ropeInvFreq, ropeQkvBackward, ropeQkvForward, ropeRotateF64, ropeTable } from "./rope.ts";
import { dot, numericGrad, pick, randomF64, sampleIndices } from "./testing.ts";

describe("rope (CPU reference)", () => {
  test("invFreq: theta^(-2j/D), by hand", () => {
    expectClose(ropeInvFreq({ headDim: 8, ropeTheta: 10000 }), [1, 0.1, 0.01, 0.001], { atol: 0, rtol: 1e-15 });
  });

  test("invFreq with Llama-3 scaling: kept, blended and divided bands, by hand", () => {
    // theta 500000, D 8: inv = [1, 500000^-1/4, 500000^-1/2, 500000^-3/4]; wavelengths 2 pi / inv =
    // [6.28, 167.1, 4442.9, 118142.8]; with originalMaxPositions 8192, low 1, high 4: keep below 2048,
    // divide by 8 above 8192, blend 4442.9 with s = (8192 / 4442.88 - 1) / 3 = 0.28128.
    const inv = ropeInvFreq({
      headDim: 8,
      ropeTheta: 500000,
      ropeScaling: { type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    });
    const f2 = 1 / Math.sqrt(500000);
    const s = (8192 / ((2 * Math.PI) / f2) - 1) / 3;
    expect(s).toBeCloseTo(0.28128, 4);
    expectClose(inv, [1, 500000 ** -0.25, ((1 - s) * f2) / 8 + s * f2, 500000 ** -0.75 / 8], { atol: 0, rtol: 1e-14 });
    // values from an independent computation of HF's formula (Python, f64)
    expectClose(inv, [1.0, 0.03760603093086393, 0.0005248461609929547, 6.647869871181236e-6], { atol: 0, rtol: 1e-12 });
    expect(() => ropeInvFreq({ headDim: 8, ropeTheta: 1e4, ropeScaling: { type: "yarn" } as never })).toThrow(
      /only "llama3" is implemented, got "yarn"/,
    );
  });

  test("table at global positions: cos/sin of pos * invFreq, f64 angles even at 512K", () => {
    const inv = ropeInvFreq({ headDim: 4, ropeTheta: 10000 });
    const pos = Int32Array.from([0, 1, 524287]);
    const { cos, sin } = ropeTable(inv, pos);
    expect(cos.shape).toEqual([3, 2]);
    const c = toFloat32Array(cos);
    const s = toFloat32Array(sin);
    expect([c[0], s[0], c[1], s[1]]).toEqual([1, 0, 1, 0]);
    expectClose([c[2], s[2], c[3], s[3]] as number[], [Math.cos(1), Math.sin(1), Math.cos(0.01), Math.sin(0.01)], { atol: 0, rtol: 1e-7 });
    // position 524287 * 1 rad: an f32 product would be exact here, but cos of the f32-rounded angle
    // 524287 * 0.01 (not representable) differs from the f64 one by ~1e-4.
    expectClose([c[4], s[4], c[5], s[5]] as number[], [Math.cos(524287), Math.sin(524287), Math.cos(5242.87), Math.sin(5242.87)], {
      atol: 1e-7,
      rtol: 0,
    });
    const f32Angle = Math.fround(524287 * Math.fround(0.01));
    expect(Math.abs(Math.cos(f32Angle) - Math.cos(5242.87))).toBeGreaterThan(1e-5);
  });

  test("forward: rotate-half on q and k by hand, v copied, split of the fused qkv", () => {
    // Hq = 1, Hkv = 1, D = 4; one token at angle (a0, a1) = (pi/2, 0) for j = 0, 1.
    const table = { cos: fromArray([0, 1], [1, 2]), sin: fromArray([1, 0], [1, 2]) };
    const qkv = fromArray([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 12]);
    const { q, k, v } = ropeQkvForward(qkv, table, { Hq: 1, Hkv: 1, D: 4 });
    // out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin with x1 = (1, 2), x2 = (3, 4): j=0 rotates by pi/2
    expect(Array.from(toFloat32Array(q))).toEqual([-3, 2, 1, 4]);
    expect(Array.from(toFloat32Array(k))).toEqual([-7, 6, 5, 8]);
    expect(Array.from(toFloat32Array(v))).toEqual([9, 10, 11, 12]);
    expect(q.shape).toEqual([1, 1, 4]);
  });

  test("backward (f64) against finite differences; GQA dims; tensor path matches", () => {
    const [T, Hq, Hkv, D] = [3, 4, 2, 8];
    const W = (Hq + 2 * Hkv) * D;
    const inv = ropeInvFreq({ headDim: D, ropeTheta: 10000 });
    const table = ropeTable(inv, Int32Array.from([5, 1000, 70000]));
    const c = toFloat32Array(table.cos);
    const s = toFloat32Array(table.sin);
    const x = randomF64(T * W, 1);
    const gq = randomF64(T * Hq * D, 2);
    const gk = randomF64(T * Hkv * D, 3);
    const gv = randomF64(T * Hkv * D, 4);
    const loss = (xx: Float64Array) => {
      const q = ropeRotateF64(xx, W, 0, c, s, T, Hq, D, 1);
      const k = ropeRotateF64(xx, W, Hq * D, c, s, T, Hkv, D, 1);
      let l = dot(q, gq) + dot(k, gk);
      for (let t = 0; t < T; t++)
        for (let i = 0; i < Hkv * D; i++) l += (xx[t * W + (Hq + Hkv) * D + i] as number) * (gv[t * Hkv * D + i] as number);
      return l;
    };
    const dqkv = ropeQkvBackward(fromArray(gq, [T, Hq, D]), fromArray(gk, [T, Hkv, D]), fromArray(gv, [T, Hkv, D]), table, { Hq, Hkv, D });
    const ix = sampleIndices(T * W, 60);
    // f32 inputs and output: ~1e-7 relative
    expectClose(pick(toFloat32Array(dqkv), ix), numericGrad(loss, x, ix), { atol: 1e-6, rtol: 1e-5 });
    // forward then backward is the identity (the rotation is orthogonal)
    const { q, k, v } = ropeQkvForward(fromArray(x, [T, W]), table, { Hq, Hkv, D });
    expectClose(ropeQkvBackward(q, k, v, table, { Hq, Hkv, D }), x, { atol: 1e-6, rtol: 1e-6 });
  });

  test("bad arguments", () => {
    const table = ropeTable(ropeInvFreq({ headDim: 4, ropeTheta: 1e4 }), Int32Array.from([0, 1]));
    expect(() => ropeQkvForward(zeros([2, 11]), table, { Hq: 1, Hkv: 1, D: 4 })).toThrow(
      /ropeQkvForward: qkv: expected shape \[\*, 12\], got \[2, 11\]/,
    );
    expect(() => ropeQkvForward(zeros([3, 12]), table, { Hq: 1, Hkv: 1, D: 4 })).toThrow(
      /table.cos: expected shape \[3, 2\], got \[2, 2\]/,
    );
    expect(() => ropeInvFreq({ headDim: 5, ropeTheta: 1e4 })).toThrow(/headDim: expected a positive even integer, got 5/);
  });
});
