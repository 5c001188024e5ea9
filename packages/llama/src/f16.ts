// IEEE half (f16) <-> f32 conversion, round to nearest even (as torch's .half() and __float2half_rn).
// Used by safetensors.ts to read F16 checkpoints as f32 or bf16 and to write F16. Values: sign 1 bit,
// exponent 5 bits (bias 15), mantissa 10 bits; subnormals m * 2^-24; 0x7c00 infinity.

const scratch = new ArrayBuffer(4);
const f32 = new Float32Array(scratch);
const u32 = new Uint32Array(scratch);

const TWO_POW_M24 = 2 ** -24;

/** The f32 value of f16 bits (exact: every f16 value is an f32 value). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * TWO_POW_M24;
  if (e === 31) return m === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
  u32[0] = ((h & 0x8000) << 16) | ((e + 112) << 23) | (m << 13);
  return f32[0] as number;
}

/** Rounds an f32 value (any JS number is first rounded to f32) to f16 bits, nearest-even. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0] as number;
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00; // NaN stays NaN, quiet
  if (abs >= 0x47800000) return sign | 0x7c00; // >= 65536 (and inf): beyond the largest f16 even after rounding
  if (abs < 0x38800000) {
    // below the smallest normal 2^-14: a subnormal count of 2^-24, rounded half to even (exact in f64)
    const v = Math.abs(f32[0] as number) / TWO_POW_M24;
    let n = Math.floor(v);
    const rest = v - n;
    if (rest > 0.5 || (rest === 0.5 && (n & 1) === 1)) n++;
    return sign | n; // n may reach 0x400, which is the encoding of the smallest normal
  }
  let h = ((((abs >>> 23) - 112) << 10) | ((abs >>> 13) & 0x3ff)) >>> 0;
  const rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // a carry runs into the exponent (65520 -> inf)
  return sign | h;
}

export function decodeF16(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  for (let i = 0; i < src.length; i++) out[i] = f16BitsToF32(src[i] as number);
  return out;
}

export function encodeF16(src: ArrayLike<number>, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) out[i] = f32ToF16Bits(src[i] as number);
  return out;
}
