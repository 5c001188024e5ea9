// bf16 <-> f32 conversion with round-to-nearest-even, bit-identical to __float2bfloat16_rn.
// The scratch views share one explicit ArrayBuffer (never a small FastTypedArray, see ecosystem.md 1.4).

const scratch = new ArrayBuffer(4);
const f32 = new Float32Array(scratch);
const u32 = new Uint32Array(scratch);

/** Rounds an f32 value (any JS number is first rounded to f32) to bf16 bits, nearest-even. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0] as number;
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) & 0x8000) | 0x7fc0; // NaN stays NaN, quiet
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0] as number;
}

/** The value x takes once stored as bf16. */
export function roundBf16(x: number): number {
  return bf16BitsToF32(f32ToBf16Bits(x));
}

export function encodeBf16(src: ArrayLike<number>, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) out[i] = f32ToBf16Bits(src[i] as number);
  return out;
}

export function decodeBf16(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const wide = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) wide[i] = (src[i] as number) << 16;
  return out;
}
