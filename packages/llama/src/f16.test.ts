import { describe, expect, test } from "bun:test";
import { f16BitsToF32, f32ToF16Bits } from "./f16.ts";

describe("f16", () => {
  test("every non-NaN f16 survives f16 -> f32 -> f16", () => {
    for (let h = 0; h < 0x10000; h++) {
      const e = (h >>> 10) & 0x1f;
      if (e === 31 && (h & 0x3ff) !== 0) continue; // NaN payloads are not kept
      if (f32ToF16Bits(f16BitsToF32(h)) !== h)
        throw new Error(`0x${h.toString(16)} -> ${f16BitsToF32(h)} -> 0x${f32ToF16Bits(f16BitsToF32(h)).toString(16)}`);
    }
  });

  test("known values", () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x7bff)).toBe(65504);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x0400)).toBe(2 ** -14);
    expect(f16BitsToF32(0x7c00)).toBe(Number.POSITIVE_INFINITY);
    expect(Number.isNaN(f16BitsToF32(0x7e00))).toBe(true);
    expect(f32ToF16Bits(Number.NaN)).toBe(0x7e00);
    expect(f32ToF16Bits(-0)).toBe(0x8000);
  });

  test("round to nearest even, overflow and underflow", () => {
    // 1 + 2^-11 is half way between 1 and 1 + 2^-10: ties to the even mantissa (1).
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00);
    // 1 + 3 * 2^-11 is half way between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToF16Bits(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01);
    expect(f32ToF16Bits(65519)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // the tie above 65504 rounds to infinity
    expect(f32ToF16Bits(2 ** -25)).toBe(0); // tie between 0 and the smallest subnormal: even (0)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(2); // tie between subnormals 1 and 2: even
    expect(f32ToF16Bits(2 ** -14 - 2 ** -25)).toBe(0x0400); // the largest subnormal rounds up into the normals
    expect(f32ToF16Bits(-1e6)).toBe(0xfc00);
  });
});
