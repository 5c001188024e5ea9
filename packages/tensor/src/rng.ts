// Counter-based RNG: Threefry-2x32-20 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11; Random123's constants) plus uniform and normal transforms written so that this CPU version
// and kernels/src/rng.cu give IDENTICAL bits.
//
// Stream layout: element i of a fill uses counter e = offset + i (64-bit) and key = seed (64-bit):
//   (x0, x1) = threefry2x32_20(counter = (e lo32, e hi32), key = (seed lo32, seed hi32))
// so any slice [offset, offset + n) of a stream can be generated on its own, on either device.
//
// Bit-identity rules (mirrored one for one in rng.cu):
// - Every float value is an f32 and every +, -, *, /, sqrt is rounded to f32 (nearest-even) after
//   each single operation: Math.fround here, __fadd_rn/__fsub_rn/__fmul_rn/__fdiv_rn/__fsqrt_rn
//   there. No fused multiply-add anywhere. Computing one op in f64 then rounding to f32 equals the
//   correctly rounded f32 op for + - * / sqrt (53 >= 2*24 + 2), so Math.fround(a op b) is exact IEEE.
// - log and cos are our own polynomials (below), never Math.log/Math.cos or CUDA's logf/cosf, whose
//   last bits differ between libraries.
// - Polynomial constants are written as 9-significant-digit decimals, which name one f32 exactly; the
//   same literals appear in rng.cu (rng.test.ts checks both lists agree).

const f32 = Math.fround;

// Bit casts through one explicit ArrayBuffer (see ecosystem.md on small typed arrays).
const castBuf = new ArrayBuffer(4);
const castF32 = new Float32Array(castBuf);
const castU32 = new Uint32Array(castBuf);

/** The f32 constants of the log/cos kernels, by their names in kernels/src/rng.cu (for the cross-check test). */
export const RNG_F32_CONSTANTS = {
  // log1p(f) = 2 atanh(s), s = f / (2 + f): 2s + s * w * (P1 + w * (P2 + w * (P3 + w * P4))), w = s^2
  kLogP1: f32(0.666666687), // 2/3
  kLogP2: f32(0.400000006), // 2/5
  kLogP3: f32(0.285714298), // 2/7
  kLogP4: f32(0.222222224), // 2/9
  kLn2Hi: f32(0.693138123), // ln 2 with 7 trailing zero bits: e * kLn2Hi is exact for |e| < 128
  kLn2Lo: f32(0.00000905800152), // ln 2 - kLn2Hi
  // sin x = x + x * w * (S1 + w * (S2 + w * (S3 + w * S4))), w = x^2 (Taylor; |x| <= pi/4)
  kSinS1: f32(-0.166666672), // -1/3!
  kSinS2: f32(0.00833333377), // 1/5!
  kSinS3: f32(-0.000198412701), // -1/7!
  kSinS4: f32(0.00000275573188), // 1/9!
  // cos x = 1 + w * (C1 + w * (C2 + w * (C3 + w * (C4 + w * C5))))
  kCosC1: f32(-0.5), // -1/2!
  kCosC2: f32(0.0416666679), // 1/4!
  kCosC3: f32(-0.00138888892), // -1/6!
  kCosC4: f32(0.0000248015876), // 1/8!
  kCosC5: f32(-2.755732e-7), // -1/10!
  // f32(pi/2) * 2^-22: turns a quarter-turn remainder counted in 2^-22 turns into radians
  kPio2Over2p22: f32(3.74507039e-7),
} as const;

const C = RNG_F32_CONSTANTS;
const TWO_POW_M24 = 2 ** -24;
const TWO_POW_32 = 2 ** 32;

// ---------------------------------------------------------------------------------------------------
// Threefry-2x32, 20 rounds

const ROT = [13, 15, 26, 6, 17, 29, 16, 24] as const; // Random123 R_32x2
const SKEIN_PARITY32 = 0x1bd11bda;

// Result of the last threefryCore call; module-level so the hot loops allocate nothing.
let tf0 = 0;
let tf1 = 0;

function rotl32(x: number, r: number): number {
  return ((x << r) | (x >>> (32 - r))) >>> 0;
}

function threefryCore(c0: number, c1: number, k0: number, k1: number): void {
  const k2 = (SKEIN_PARITY32 ^ k0 ^ k1) >>> 0;
  let x0 = (c0 + k0) >>> 0;
  let x1 = (c1 + k1) >>> 0;
  // Key injection after every 4 rounds: injection i adds ks[i % 3], ks[(i + 1) % 3] + i.
  for (let i = 1; i <= 5; i++) {
    const rot = (i & 1) === 1 ? 0 : 4; // rounds 4i-4..4i-1 use ROT[0..3] or ROT[4..7]
    for (let j = 0; j < 4; j++) {
      x0 = (x0 + x1) >>> 0;
      x1 = rotl32(x1, ROT[rot + j]!);
      x1 = (x1 ^ x0) >>> 0;
    }
    const m = i % 3;
    const ka = m === 0 ? k0 : m === 1 ? k1 : k2;
    const kb = m === 0 ? k1 : m === 1 ? k2 : k0;
    x0 = (x0 + ka) >>> 0;
    x1 = (x1 + kb + i) >>> 0;
  }
  tf0 = x0;
  tf1 = x1;
}

/** Threefry-2x32-20 of counter (c0, c1) under key (k0, k1); all words are u32. */
export function threefry2x32(c0: number, c1: number, k0: number, k1: number): [number, number] {
  threefryCore(c0 >>> 0, c1 >>> 0, k0 >>> 0, k1 >>> 0);
  return [tf0, tf1];
}

// ---------------------------------------------------------------------------------------------------
// f32 log and cos(2 pi t) built from rounded +, -, *, /, sqrt and exact bit manipulation

const SQRT2_MANTISSA = 0x3504f3; // mantissa field of f32(sqrt 2)

/**
 * Natural log of a positive, normal, finite f32 (other inputs give meaningless results).
 * x = 2^e * m with m in [sqrt(1/2), sqrt(2)); f = m - 1 (exact); s = f / (2 + f);
 * log x = e * ln2_hi + (2s + (s * w * P(w) + e * ln2_lo)), w = s^2.
 * Max error measured by rng.test.ts: a few ulp (the test states the bound).
 */
export function logF32(x: number): number {
  castF32[0] = x;
  const bits = castU32[0]!;
  let e = ((bits >>> 23) & 0xff) - 127;
  const mant = bits & 0x7fffff;
  if (mant > SQRT2_MANTISSA) {
    e += 1;
    castU32[0] = mant | 0x3f000000; // m / 2, in [sqrt(1/2), 1)
  } else {
    castU32[0] = mant | 0x3f800000; // m in [1, sqrt 2]
  }
  const f = f32(castF32[0]! - 1);
  const s = f32(f / f32(2 + f));
  const w = f32(s * s);
  let p = C.kLogP4;
  p = f32(f32(p * w) + C.kLogP3);
  p = f32(f32(p * w) + C.kLogP2);
  p = f32(f32(p * w) + C.kLogP1);
  const tail = f32(f32(s * w) * p);
  const r = f32(f32(2 * s) + f32(f32(e * C.kLn2Lo) + tail));
  return f32(f32(e * C.kLn2Hi) + r);
}

/**
 * cos(2 pi k / 2^24) for an integer k in [0, 2^24): the angle is split exactly into the nearest
 * quarter turn n = round(4t) and a remainder d in [-1/8, 1/8) turn, x = d * 2pi in [-pi/4, pi/4];
 * then cos(n pi/2 + x) = cos x, -sin x, -cos x, sin x for n mod 4 = 0, 1, 2, 3.
 */
export function cos2piU24(k: number): number {
  const n = (k + 0x200000) >>> 22; // round(k / 2^22), half up; 0..4
  const d = k - n * 0x400000; // exact integer in [-2^21, 2^21)
  const x = f32(d * C.kPio2Over2p22);
  const w = f32(x * x);
  let v: number;
  if ((n & 1) === 1) {
    let p = C.kSinS4;
    p = f32(f32(p * w) + C.kSinS3);
    p = f32(f32(p * w) + C.kSinS2);
    p = f32(f32(p * w) + C.kSinS1);
    v = f32(x + f32(f32(x * w) * p));
  } else {
    let p = C.kCosC5;
    p = f32(f32(p * w) + C.kCosC4);
    p = f32(f32(p * w) + C.kCosC3);
    p = f32(f32(p * w) + C.kCosC2);
    p = f32(f32(p * w) + C.kCosC1);
    v = f32(1 + f32(w * p));
  }
  return ((n + 1) & 2) !== 0 ? -v : v; // negate in quadrants 1 and 2
}

// ---------------------------------------------------------------------------------------------------
// Transforms of one Threefry output

// uniform: u = (x0 >> 8) * 2^-24 in [0, 1); value = fl(lo + fl(fl(hi - lo) * u)).
// With lo, hi of very different magnitudes the final rounding can give exactly hi.
function uniformOf(x0: number, lo: number, span: number): number {
  return f32(lo + f32(span * ((x0 >>> 8) * TWO_POW_M24)));
}

// normal (Box-Muller, one output per counter): u1 = ((x0 >> 8) + 1) * 2^-24 in (0, 1],
// z = fl(sqrt(fl(-2 * log u1)) * cos(2 pi (x1 >> 8) * 2^-24)); value = fl(mean + fl(std * z)).
function normalOf(x0: number, x1: number, mean: number, std: number): number {
  const u1 = ((x0 >>> 8) + 1) * TWO_POW_M24;
  const r = f32(Math.sqrt(f32(-2 * logF32(u1))));
  const z = f32(r * cos2piU24(x1 >>> 8));
  return f32(mean + f32(std * z));
}

/** f32 -> bf16 bits, round to nearest even; NaN -> quiet NaN with the sign kept. */
function bf16Bits(x: number): number {
  castF32[0] = x;
  const bits = castU32[0]!;
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0 | ((bits >>> 16) & 0x8000);
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---------------------------------------------------------------------------------------------------
// Fills

function seedWords(seed: bigint): [number, number] {
  if (seed < 0n || seed >= 1n << 64n) throw new RangeError(`rng seed must be in [0, 2^64), got ${seed}`);
  return [Number(seed & 0xffffffffn), Number(seed >> 32n)];
}

function checkOffset(offset: number, n: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + n > Number.MAX_SAFE_INTEGER) {
    throw new RangeError(`rng offset must be an integer with 0 <= offset and offset + n < 2^53, got ${offset} (n = ${n})`);
  }
}

type Emit = (i: number, x0: number, x1: number) => void;

// Runs Threefry over counters offset .. offset + n - 1 and hands each output to emit.
function forEachCounter(n: number, seed: bigint, offset: number, emit: Emit): void {
  checkOffset(offset, n);
  const [k0, k1] = seedWords(seed);
  let c0 = offset % TWO_POW_32;
  let c1 = Math.floor(offset / TWO_POW_32);
  for (let i = 0; i < n; i++) {
    threefryCore(c0, c1, k0, k1);
    emit(i, tf0, tf1);
    c0 += 1;
    if (c0 === TWO_POW_32) {
      c0 = 0;
      c1 += 1;
    }
  }
}

/** out[i] = uniform f32 in [lo, hi) from counter offset + i (see uniformOf for the exact rounding). */
export function fillUniformF32(out: Float32Array, seed: bigint, offset: number, lo: number, hi: number): void {
  const lo32 = f32(lo);
  const span = f32(f32(hi) - lo32);
  forEachCounter(out.length, seed, offset, (i, x0) => {
    out[i] = uniformOf(x0, lo32, span);
  });
}

/** out[i] = normal f32 (Box-Muller) from counter offset + i. */
export function fillNormalF32(out: Float32Array, seed: bigint, offset: number, mean: number, std: number): void {
  const mean32 = f32(mean);
  const std32 = f32(std);
  forEachCounter(out.length, seed, offset, (i, x0, x1) => {
    out[i] = normalOf(x0, x1, mean32, std32);
  });
}

/** bf16 bits of fillUniformF32's values, rounded to nearest even. */
export function fillUniformBf16(out: Uint16Array, seed: bigint, offset: number, lo: number, hi: number): void {
  const lo32 = f32(lo);
  const span = f32(f32(hi) - lo32);
  forEachCounter(out.length, seed, offset, (i, x0) => {
    out[i] = bf16Bits(uniformOf(x0, lo32, span));
  });
}

/** bf16 bits of fillNormalF32's values, rounded to nearest even. */
export function fillNormalBf16(out: Uint16Array, seed: bigint, offset: number, mean: number, std: number): void {
  const mean32 = f32(mean);
  const std32 = f32(std);
  forEachCounter(out.length, seed, offset, (i, x0, x1) => {
    out[i] = bf16Bits(normalOf(x0, x1, mean32, std32));
  });
}
