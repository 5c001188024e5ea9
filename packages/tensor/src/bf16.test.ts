import { describe, expect, test } from "bun:test";
import { bf16BitsToF32, decodeBf16, encodeBf16, f32ToBf16Bits, roundBf16 } from "./bf16.ts";

const bitsOf = (x: number) => {
  const f = new Float32Array([x]);
  return new Uint32Array(f.buffer)[0] as number;
};
const fromBits = (u: number) => new Float32Array(new Uint32Array([u]).buffer)[0] as number;

describe("bf16 round-to-nearest-even", () => {
  test("exact values pass through", () => {
    for (const x of [0, 1, -1, 2, 0.5, 1.5, -3.25, 65280, 1 / 1024]) expect(roundBf16(x)).toBe(x);
  });

  test("ties round to even", () => {
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: even mantissa (1) wins.
    expect(roundBf16(1 + 2 ** -8)).toBe(1);
    // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
    expect(roundBf16(1 + 3 * 2 ** -8)).toBe(1 + 2 ** -6);
    // Just above the tie rounds up.
    expect(roundBf16(fromBits(0x3f808001))).toBe(1 + 2 ** -7);
    expect(f32ToBf16Bits(fromBits(0x3f808000))).toBe(0x3f80);
    expect(f32ToBf16Bits(fromBits(0x3f818000))).toBe(0x3f82);
  });

  // JS numbers canonicalise NaN payloads and signs, so only NaN-ness is observable here.
  test("NaN stays NaN (quiet), never becomes Inf", () => {
    expect(f32ToBf16Bits(Number.NaN) & 0x7fc0).toBe(0x7fc0);
    // A signalling NaN whose payload lives only in the low bits must not round to Inf.
    const snan = fromBits(0x7f800001);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(snan)))).toBe(true);
  });

  test("infinities and overflow", () => {
    expect(f32ToBf16Bits(Number.POSITIVE_INFINITY)).toBe(0x7f80);
    expect(f32ToBf16Bits(Number.NEGATIVE_INFINITY)).toBe(0xff80);
    // The largest finite f32 rounds up to Inf in bf16 (beyond the largest bf16 + half ulp).
    expect(bf16BitsToF32(f32ToBf16Bits(3.4028234663852886e38))).toBe(Number.POSITIVE_INFINITY);
    // The largest bf16 stays finite.
    expect(bf16BitsToF32(0x7f7f)).toBe(3.3895313892515355e38);
  });

  test("subnormals round like normals, signed zero kept", () => {
    const tiny = fromBits(0x00010000); // a bf16-exact subnormal
    expect(roundBf16(tiny)).toBe(tiny);
    expect(f32ToBf16Bits(fromBits(0x00008000))).toBe(0x0000); // tie to even (0)
    expect(f32ToBf16Bits(fromBits(0x00018000))).toBe(0x0002); // tie to even (2)
    expect(f32ToBf16Bits(fromBits(0x00008001))).toBe(0x0001);
    expect(f32ToBf16Bits(-0)).toBe(0x8000);
    expect(Object.is(bf16BitsToF32(0x8000), -0)).toBe(true);
  });

  test("rounding carries into the exponent", () => {
    expect(roundBf16(fromBits(0x3fffffff))).toBe(2);
  });

  test("encode/decode round trip every bf16 bit pattern", () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    const back = encodeBf16(decodeBf16(all));
    for (let i = 0; i < 65536; i++) {
      const isNan = (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0;
      if (isNan) expect(Number.isNaN(bf16BitsToF32(back[i] as number))).toBe(true);
      else if (back[i] !== i) throw new Error(`bits 0x${i.toString(16)} came back as 0x${back[i]?.toString(16)}`);
    }
    expect(bitsOf(bf16BitsToF32(0x3f80))).toBe(0x3f800000);
  });
});
