import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  cos2piU24,
  fillNormalBf16,
  fillNormalF32,
  fillUniformBf16,
  fillUniformF32,
  logF32,
  RNG_F32_CONSTANTS,
  threefry2x32,
} from "./rng.ts";

const hex = (x: number) => `0x${(x >>> 0).toString(16).padStart(8, "0")}`;
const bitsOf = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length), hex);

// Size of one unit in the last place of the f32 nearest to x (x != 0).
function ulpF32(x: number): number {
  const e = Math.floor(Math.log2(Math.abs(Math.fround(x))));
  return 2 ** Math.max(e - 23, -149);
}

// Reference f32 -> bf16 (round to nearest even), written independently of rng.ts.
function bf16Ref(x: number): number {
  const v = new DataView(new ArrayBuffer(4));
  v.setFloat32(0, x);
  const bits = v.getUint32(0);
  if (Number.isNaN(x)) return 0x7fc0 | ((bits >>> 16) & 0x8000);
  const upper = bits >>> 16;
  const lower = bits & 0xffff;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) return (upper + 1) & 0xffff;
  return upper;
}

function moments(x: Float32Array): { mean: number; variance: number; skew: number; exKurt: number } {
  let s = 0;
  for (const v of x) s += v;
  const mean = s / x.length;
  let m2 = 0;
  let m3 = 0;
  let m4 = 0;
  for (const v of x) {
    const d = v - mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= x.length;
  m3 /= x.length;
  m4 /= x.length;
  return { mean, variance: m2, skew: m3 / m2 ** 1.5, exKurt: m4 / (m2 * m2) - 3 };
}

describe("threefry2x32_20", () => {
  // Random123's known-answer vectors (kat_vectors, threefry2x32 with 20 rounds).
  const vectors = [
    { counter: [0, 0], key: [0, 0], out: [0x6b200159, 0x99ba4efe] },
    { counter: [0xffffffff, 0xffffffff], key: [0xffffffff, 0xffffffff], out: [0x1cb996fc, 0xbb002be7] },
    { counter: [0x243f6a88, 0x85a308d3], key: [0x13198a2e, 0x03707344], out: [0xc4923a9c, 0x483df7a0] },
  ];
  for (const { counter, key, out } of vectors) {
    test(`counter (${counter.map(hex).join(", ")}), key (${key.map(hex).join(", ")})`, () => {
      expect(threefry2x32(counter[0]!, counter[1]!, key[0]!, key[1]!).map(hex)).toEqual(out.map(hex));
    });
  }
});

describe("streams", () => {
  test("same seed gives the same numbers; other seeds (low or high word) differ", () => {
    const a = new Float32Array(1000);
    const b = new Float32Array(1000);
    fillNormalF32(a, 7n, 0, 0, 1);
    fillNormalF32(b, 7n, 0, 0, 1);
    expect(bitsOf(b)).toEqual(bitsOf(a));
    for (const other of [8n, 7n + (1n << 32n)]) {
      fillNormalF32(b, other, 0, 0, 1);
      let same = 0;
      for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
      expect(same).toBeLessThan(5);
    }
  });

  test("filling [offset, offset + n) equals the tail of a longer fill", () => {
    const whole = new Float32Array(300);
    const part = new Float32Array(100);
    fillUniformF32(whole, 123n, 1000, -2, 3);
    fillUniformF32(part, 123n, 1200, -2, 3);
    expect(bitsOf(part)).toEqual(bitsOf(whole.subarray(200)));
    const wholeN = new Uint16Array(300);
    const partN = new Uint16Array(100);
    fillNormalBf16(wholeN, 5n, 0, 0, 1);
    fillNormalBf16(partN, 5n, 200, 0, 1);
    expect(Array.from(partN)).toEqual(Array.from(wholeN.subarray(200)));
  });

  test("counters carry into the high word at 2^32", () => {
    const start = 2 ** 32 - 8;
    const run = new Float32Array(16);
    fillUniformF32(run, 9n, start, 0, 1);
    const one = new Float32Array(1);
    for (let i = 0; i < run.length; i++) {
      fillUniformF32(one, 9n, start + i, 0, 1);
      expect(hex(new Uint32Array(one.buffer)[0]!)).toBe(hex(new Uint32Array(run.buffer)[i]!));
    }
    // element 8 is counter (0, 1): u = (x0 >> 8) * 2^-24 with x0 from threefry(0, 1, seed words)
    const [x0] = threefry2x32(0, 1, 9, 0);
    expect(run[8]).toBe((x0 >>> 8) * 2 ** -24);
  });

  test("bad seeds and offsets are refused", () => {
    const out = new Float32Array(4);
    expect(() => fillUniformF32(out, -1n, 0, 0, 1)).toThrow(RangeError);
    expect(() => fillUniformF32(out, 1n << 64n, 0, 0, 1)).toThrow(RangeError);
    expect(() => fillUniformF32(out, 0n, -1, 0, 1)).toThrow(RangeError);
    expect(() => fillUniformF32(out, 0n, 0.5, 0, 1)).toThrow(RangeError);
    expect(() => fillUniformF32(out, 0n, 2 ** 53, 0, 1)).toThrow(RangeError);
    fillUniformF32(out, (1n << 64n) - 1n, 2 ** 53 - 5, 0, 1); // the extremes are fine
  });
});

describe("distributions (10^6 samples; tolerances are 5 standard errors)", () => {
  const n = 1_000_000;

  test("uniform: in [lo, hi), mean (lo+hi)/2, variance (hi-lo)^2/12", () => {
    const x = new Float32Array(n);
    fillUniformF32(x, 2024n, 0, -1, 3);
    let lo = Number.POSITIVE_INFINITY;
    let hi = Number.NEGATIVE_INFINITY;
    for (const v of x) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect(lo).toBeGreaterThanOrEqual(-1);
    expect(hi).toBeLessThan(3);
    expect(lo).toBeLessThan(-1 + 1e-4);
    expect(hi).toBeGreaterThan(3 - 1e-4);
    const m = moments(x);
    // U(-1, 3): mean 1, variance 16/12; SE(mean) = sqrt(16/12/n) = 1.2e-3, SE(var) = 16 * 7.5e-5
    expect(Math.abs(m.mean - 1)).toBeLessThan(5 * 1.2e-3);
    expect(Math.abs(m.variance - 16 / 12)).toBeLessThan(5 * 16 * 7.5e-5);
  });

  test("normal: mean, std, skew, kurtosis and the 1/2/3-sigma fractions", () => {
    const x = new Float32Array(n);
    fillNormalF32(x, 99n, 0, 0, 1);
    const m = moments(x);
    expect(Math.abs(m.mean)).toBeLessThan(5 * Math.sqrt(1 / n)); // SE 1e-3
    expect(Math.abs(Math.sqrt(m.variance) - 1)).toBeLessThan(5 * Math.sqrt(1 / (2 * n))); // SE 7.1e-4
    expect(Math.abs(m.skew)).toBeLessThan(5 * Math.sqrt(6 / n)); // SE 2.4e-3
    expect(Math.abs(m.exKurt)).toBeLessThan(5 * Math.sqrt(24 / n)); // SE 4.9e-3
    const expected = [0.6826894921, 0.9544997361, 0.9973002039];
    for (let k = 1; k <= 3; k++) {
      let inside = 0;
      for (const v of x) if (Math.abs(v) < k) inside++;
      const p = expected[k - 1]!;
      expect(Math.abs(inside / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    }
    let finite = true;
    for (const v of x) finite &&= Number.isFinite(v);
    expect(finite).toBe(true);
  });

  test("mean and std are applied as fl(mean + fl(std * z))", () => {
    const z = new Float32Array(1000);
    const y = new Float32Array(1000);
    fillNormalF32(z, 11n, 50, 0, 1);
    fillNormalF32(y, 11n, 50, 0.25, 0.02);
    const mean = Math.fround(0.25);
    const std = Math.fround(0.02);
    for (let i = 0; i < z.length; i++) expect(y[i]).toBe(Math.fround(mean + Math.fround(std * z[i]!)));
  });
});

describe("f32 log and cos against Math.log / Math.cos", () => {
  test("logF32: at most 2 ulp on every generator input k * 2^-24 and on spread-out normal floats", () => {
    let worst = 0;
    for (let k = 1; k <= 1 << 24; k++) {
      const x = k * 2 ** -24;
      const ref = Math.log(x);
      if (ref === 0) {
        expect(logF32(x)).toBe(0);
        continue;
      }
      worst = Math.max(worst, Math.abs(logF32(x) - ref) / ulpF32(ref));
    }
    // every 4099th positive normal f32 bit pattern
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let bits = 0x00800000; bits < 0x7f800000; bits += 4099) {
      u[0] = bits;
      const ref = Math.log(f[0]!);
      if (ref !== 0) worst = Math.max(worst, Math.abs(logF32(f[0]!) - ref) / ulpF32(ref));
    }
    // measured when written: 1.81 ulp
    expect(worst).toBeLessThan(2);
  });

  test("cos2piU24: absolute error below 1e-7 and at most 2 ulp where |cos| > 1e-3, for every k < 2^24", () => {
    let worstAbs = 0;
    let worstUlp = 0;
    for (let k = 0; k < 1 << 24; k++) {
      const ref = Math.cos((2 * Math.PI * k) / 2 ** 24);
      const err = Math.abs(cos2piU24(k) - ref);
      worstAbs = Math.max(worstAbs, err);
      if (Math.abs(ref) > 1e-3) worstUlp = Math.max(worstUlp, err / ulpF32(ref));
    }
    // measured when written: 9.8e-8 absolute, 1.93 ulp
    expect(worstAbs).toBeLessThan(1e-7);
    expect(worstUlp).toBeLessThan(2);
    expect(cos2piU24(0)).toBe(1);
    expect(cos2piU24(1 << 23)).toBe(-1);
  });
});

describe("bf16 variants", () => {
  test("equal round-to-nearest-even of the f32 variants", () => {
    const n = 100_000;
    const f = new Float32Array(n);
    const h = new Uint16Array(n);
    fillUniformF32(f, 3n, 77, -0.5, 0.5);
    fillUniformBf16(h, 3n, 77, -0.5, 0.5);
    for (let i = 0; i < n; i++) if (h[i] !== bf16Ref(f[i]!)) expect(h[i]).toBe(bf16Ref(f[i]!));
    fillNormalF32(f, 4n, 0, 0, 0.02);
    fillNormalBf16(h, 4n, 0, 0, 0.02);
    for (let i = 0; i < n; i++) if (h[i] !== bf16Ref(f[i]!)) expect(h[i]).toBe(bf16Ref(f[i]!));
  });
});

describe("golden values", () => {
  test("first 8 of fillNormalF32(seed 42, offset 0, N(0, 1))", () => {
    // Generated once by this implementation after the known-answer tests passed (2026-11-26); the
    // CUDA kernel must give the same bits. A change here changes every initialization: do it on purpose.
    const out = new Float32Array(8);
    fillNormalF32(out, 42n, 0, 0, 1);
    expect(bitsOf(out)).toEqual([
      "0xbe488676",
      "0x3ff8cb44",
      "0x3f658d3b",
      "0x3f8891ab",
      "0x3f710d79",
      "0x3f5d0f34",
      "0xbee6518e",
      "0x3e9d5780",
    ]);
  });
});

const rngCu = join(import.meta.dir, "../../../kernels/src/rng.cu");

describe("CUDA twin", () => {
  test.skipIf(!existsSync(rngCu))("kernels/src/rng.cu has the same f32 constants, bit for bit", () => {
    const source = readFileSync(rngCu, "utf8");
    const cuda: Record<string, number> = {};
    for (const m of source.matchAll(/constexpr float (k\w+) = ([-+0-9.eE]+)f;/g)) {
      cuda[m[1]!] = Math.fround(Number(m[2]));
    }
    const f32Bits = (x: number | undefined) => (x === undefined ? "missing" : hex(new Uint32Array(new Float32Array([x]).buffer)[0]!));
    expect(cuda.kTwoPowM24).toBe(2 ** -24); // rng.cu's own exact power of two
    delete cuda.kTwoPowM24;
    expect(Object.keys(cuda).sort()).toEqual(Object.keys(RNG_F32_CONSTANTS).sort());
    for (const [name, value] of Object.entries(RNG_F32_CONSTANTS)) {
      expect(`${name} ${f32Bits(cuda[name])}`).toBe(`${name} ${f32Bits(value)}`);
    }
  });
});
