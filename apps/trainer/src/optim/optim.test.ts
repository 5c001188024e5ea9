import { describe, expect, test } from "bun:test";
import { skipWithoutGpu } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import { type AdamWHyper, adamwCuda, adamwReference, adamwScalars } from "./adamw.ts";
import { clipCoefficient, globalNorm, sumSquares } from "./clip.ts";
import { lrAt } from "./schedule.ts";
import { decayed, flatLayout, ownedRange, ownerOf, SHARD_ALIGN, shardLayout, shardSegments } from "./shard.ts";

const H: AdamWHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
let seed = Number(process.env.LIGHTSEQ_TEST_SEED ?? Date.now() % 1_000_000);
const randn = (n: number, std = 1) => T.randn([n], { seed: seed++, std }).data() as Float32Array;

// The same update written the plain way, in f64: torch.optim.AdamW's documented algorithm.
function adamwF64(p: Float64Array, g: Float64Array, m: Float64Array, v: Float64Array, h: AdamWHyper, t: number, decay: boolean, gs = 1) {
  for (let i = 0; i < p.length; i++) {
    const gi = (g[i] as number) * gs;
    p[i] = (p[i] as number) * (1 - (decay ? h.lr * h.weightDecay : 0));
    m[i] = h.beta1 * (m[i] as number) + (1 - h.beta1) * gi;
    v[i] = h.beta2 * (v[i] as number) + (1 - h.beta2) * gi * gi;
    const mHat = (m[i] as number) / (1 - h.beta1 ** t);
    const vHat = (v[i] as number) / (1 - h.beta2 ** t);
    p[i] = (p[i] as number) - (h.lr * mHat) / (Math.sqrt(vHat) + h.eps);
  }
}

describe("AdamW reference", () => {
  test("step 1 from zero moments moves each weight by lr against its gradient's sign, after the decay", () => {
    const p = Float32Array.from([1, -2, 0.5, 3]);
    const g = Float32Array.from([0.3, -4, 1e-3, -0.01]);
    const m = new Float32Array(4);
    const v = new Float32Array(4);
    adamwReference(p, g, m, v, adamwScalars(H, 1, true));
    const expected = [1, -2, 0.5, 3].map((x, i) => x * (1 - H.lr * H.weightDecay) - H.lr * Math.sign(g[i] as number));
    for (let i = 0; i < 4; i++) expect(p[i]).toBeCloseTo(expected[i] as number, 6);
  });

  test("20 steps equal the f64 formula (f32 rounding only: 1e-5 relative)", () => {
    const n = 4096;
    const p32 = randn(n);
    const m32 = new Float32Array(n);
    const v32 = new Float32Array(n);
    const p = Float64Array.from(p32);
    const m = new Float64Array(n);
    const v = new Float64Array(n);
    for (let t = 1; t <= 20; t++) {
      const g32 = randn(n, 0.1 * t);
      const decay = t % 2 === 0;
      adamwReference(p32, g32, m32, v32, adamwScalars(H, t, decay, 0.5));
      adamwF64(p, Float64Array.from(g32), m, v, H, t, decay, 0.5);
    }
    let worst = 0;
    for (let i = 0; i < n; i++)
      worst = Math.max(worst, Math.abs((p32[i] as number) - (p[i] as number)) / (Math.abs(p[i] as number) + 1e-3));
    expect(worst).toBeLessThan(1e-5);
  });

  test("decay off leaves a zero gradient's weight unchanged; the bf16 copy is the rounded master", () => {
    const p = Float32Array.from([1.2345678, -7.654321]);
    const w = new Uint16Array(2);
    adamwReference(p, new Float32Array(2), new Float32Array(2), new Float32Array(2), adamwScalars(H, 3, false), w);
    expect([...p]).toEqual([Math.fround(1.2345678), Math.fround(-7.654321)]);
    expect([...w]).toEqual([T.f32ToBf16Bits(p[0] as number), T.f32ToBf16Bits(p[1] as number)]);
    expect(() => adamwScalars(H, 0, true)).toThrow(/step must be an integer >= 1/);
    expect(() => adamwReference(p, new Float32Array(3), new Float32Array(2), new Float32Array(2), adamwScalars(H, 1, true))).toThrow(
      /lengths differ/,
    );
  });
});

describe("clipping and schedule", () => {
  test("global norm from partial sums of squares equals the norm of the whole", () => {
    const a = randn(1000);
    const b = randn(777);
    const whole = new Float32Array([...a, ...b]);
    expect(globalNorm(sumSquares(a) + sumSquares(b))).toBeCloseTo(Math.sqrt(sumSquares(whole)), 9);
    expect(globalNorm(sumSquares(Float32Array.from([3, 4])))).toBe(5);
    expect(clipCoefficient(10, 1)).toBeCloseTo(0.1, 6);
    expect(clipCoefficient(0.5, 1)).toBe(1);
    expect(clipCoefficient(10, 0)).toBe(1);
    expect(() => clipCoefficient(Number.NaN, 1)).toThrow(/gradient norm is NaN/);
  });

  test("warmup then cosine to minLr, flat after", () => {
    const s = { lr: 1, minLr: 0.1, warmup: 4, decaySteps: 14 };
    expect([0, 1, 2, 3].map((t) => lrAt(t, s))).toEqual([0.25, 0.5, 0.75, 1]);
    expect(lrAt(4, s)).toBe(1);
    expect(lrAt(9, s)).toBeCloseTo(0.55, 12); // half way: (lr + minLr) / 2
    expect(lrAt(14, s)).toBeCloseTo(0.1, 12);
    expect(lrAt(100, s)).toBeCloseTo(0.1, 12);
    for (let t = 5; t < 14; t++) expect(lrAt(t, s)).toBeLessThan(lrAt(t - 1, s));
    expect(lrAt(3, { lr: 1, minLr: 0, warmup: 0, decaySteps: 0 })).toBe(1);
  });
});

describe("ZeRO-3 shards", () => {
  test("equal aligned shards cover the buffer; ownership is consistent", () => {
    for (const [numel, ranks] of [
      [0, 3],
      [1, 1],
      [7, 4],
      [1000, 3],
      [4096 * 3 + 5, 8],
    ] as const) {
      const l = shardLayout(numel, ranks);
      expect(l.shardLen % SHARD_ALIGN).toBe(0);
      expect(l.padded).toBeGreaterThanOrEqual(numel);
      expect(l.padded - numel).toBeLessThan(ranks * SHARD_ALIGN + ranks);
      let covered = 0;
      for (let r = 0; r < ranks; r++) {
        const { start, len } = ownedRange(l, r);
        expect(start).toBe(r * l.shardLen);
        for (const i of [start, start + len - 1]) if (len > 0) expect(ownerOf(l, i)).toBe(r);
        covered += len;
      }
      expect(covered).toBe(numel);
    }
    expect(shardLayout(1000, 3)).toEqual({ numel: 1000, ranks: 3, shardLen: 336, padded: 1008 });
    expect(ownedRange(shardLayout(1000, 3), 2)).toEqual({ start: 672, len: 328 });
    expect(ownedRange(shardLayout(7, 4), 3)).toEqual({ start: 24, len: 0 });
    expect(() => ownedRange(shardLayout(7, 4), 4)).toThrow(/rank 4 outside \[0, 4\)/);
  });

  test("a shard's segments split at parameter borders and carry the decay mask", () => {
    const params = flatLayout([
      { name: "attnNorm", numel: 8 },
      { name: "wq", numel: 64 },
      { name: "mlpNorm", numel: 8 },
      { name: "wDown", numel: 40 },
    ]);
    expect(params.map((p) => [p.name, p.start, p.decay])).toEqual([
      ["attnNorm", 0, false],
      ["wq", 8, true],
      ["mlpNorm", 72, false],
      ["wDown", 80, true],
    ]);
    const l = shardLayout(120, 2); // shards of 64
    expect(shardSegments(l, params, 0)).toEqual([
      { offset: 0, len: 8, decay: false, name: "attnNorm" },
      { offset: 8, len: 56, decay: true, name: "wq" },
    ]);
    expect(shardSegments(l, params, 1)).toEqual([
      { offset: 0, len: 8, decay: true, name: "wq" },
      { offset: 8, len: 8, decay: false, name: "mlpNorm" },
      { offset: 16, len: 40, decay: true, name: "wDown" },
    ]);
    expect(["embed", "finalNorm", "head", "wGate"].map(decayed)).toEqual([false, false, true, true]);
  });
});

describe.skipIf(skipWithoutGpu())("AdamW kernel equals the reference bit for bit", () => {
  test("random shards, aligned and not, with and without the bf16 copy, several steps", () => {
    const stream = T.currentStream(0);
    for (const n of [1, 3, 1000, 4099, 65537, (1 << 20) + 5]) {
      for (const shift of [0, 1]) {
        const p = randn(n);
        const m = new Float32Array(n);
        const v = new Float32Array(n);
        const dp = T.to(T.fromArray(p, [n]), "cuda:0");
        const dm = T.zeros([n], { device: "cuda:0" });
        const dv = T.zeros([n], { device: "cuda:0" });
        const dw = T.empty([n], { dtype: "bf16", device: "cuda:0" });
        const w = new Uint16Array(n);
        // shift 1: every pointer 4 bytes past a 16-byte boundary (the scalar path), and no bf16 copy.
        const k = n - shift;
        const withW = shift === 0;
        for (let t = 1; t <= 3; t++) {
          const g = randn(n, 0.01 * t);
          const dg = T.to(T.fromArray(g, [n]), "cuda:0");
          const s = adamwScalars(H, t, t !== 2, 0.7);
          adamwReference(p.subarray(shift), g.subarray(shift), m.subarray(shift), v.subarray(shift), s, withW ? w : undefined);
          const off = 4 * shift;
          adamwCuda(
            { p: dp.ptr() + off, g: dg.ptr() + off, m: dm.ptr() + off, v: dv.ptr() + off, w: withW ? dw.ptr() : 0, n: k },
            s,
            stream,
          );
        }
        const got = {
          p: T.to(dp, "cpu").data() as Float32Array,
          m: T.to(dm, "cpu").data() as Float32Array,
          v: T.to(dv, "cpu").data() as Float32Array,
          w: T.to(dw, "cpu").data() as Uint16Array,
        };
        const ref = { p, m, v, w };
        for (const key of withW ? (["p", "m", "v", "w"] as const) : (["p", "m", "v"] as const)) {
          const bitsOf = (x: Float32Array | Uint16Array) =>
            x instanceof Uint16Array ? x : new Uint32Array(x.buffer, x.byteOffset, x.length);
          const a = bitsOf(got[key].subarray(shift));
          const b = bitsOf(ref[key].subarray(shift));
          for (let i = 0; i < k; i++)
            if (a[i] !== b[i])
              throw new Error(`n=${n} shift=${shift} ${key}[${i}]: gpu ${got[key][i + shift]}, cpu ${ref[key][i + shift]} (seed ${seed})`);
        }
      }
    }
  }, 120_000);
});
