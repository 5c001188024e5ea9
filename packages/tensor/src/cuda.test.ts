// CUDA backend vs the CPU reference on fresh random inputs. Skipped (visibly) without a GPU.

import { describe, expect, test } from "bun:test";
import { CudaOutOfMemoryError, DeviceAllocator, Stream, skipWithoutGpu } from "@lightseq/cuda";
import * as T from "./index.ts";
import { expectClose } from "./testing.ts";

const noGpu = skipWithoutGpu();
const dev = "cuda:0";
// Sizes around the block and vector widths: 1, odd, not multiples of 4/8/256, and large.
const SIZES = [1, 7, 255, 1000, 4099, 65537, 1 << 20, (1 << 22) + 3];
let seed = Number(process.env.LIGHTSEQ_TEST_SEED ?? Date.now() % 1_000_000);
const fresh = () => seed++;

const bits = (t: T.Tensor): Uint16Array | Uint32Array => {
  const h = T.to(t, "cpu");
  const d = h.data();
  return d instanceof Uint16Array ? Uint16Array.from(d) : new Uint32Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
};
const expectSameBits = (got: T.Tensor, ref: T.Tensor, label: string) => {
  const g = bits(got);
  const r = bits(ref);
  expect(g.length).toBe(r.length);
  for (let i = 0; i < g.length; i++) {
    if (g[i] !== r[i])
      throw new Error(`${label}: element ${i} differs: gpu bits 0x${g[i]?.toString(16)}, cpu bits 0x${r[i]?.toString(16)} (seed ${seed})`);
  }
};
const onGpu = (t: T.Tensor) => T.to(t, dev);

describe.skipIf(noGpu)("cuda backend equals the CPU reference", () => {
  test("generator: identical bits on CPU and GPU (uniform, normal; f32, bf16; offsets)", () => {
    for (const n of SIZES) {
      for (const dtype of ["f32", "bf16"] as const) {
        const s = fresh();
        const off = n % 3 === 0 ? 12345 : 0;
        expectSameBits(
          T.randn([n], { seed: s, offset: off, dtype, device: dev }),
          T.randn([n], { seed: s, offset: off, dtype }),
          `randn ${dtype} n=${n}`,
        );
        expectSameBits(
          T.rand([n], { seed: s, dtype, device: dev, lo: -3, hi: 2 }),
          T.rand([n], { seed: s, dtype, lo: -3, hi: 2 }),
          `rand ${dtype} n=${n}`,
        );
      }
    }
    // A seed above 2^32 exercises the high key word.
    expectSameBits(T.randn([999], { seed: 0x1234_5678_9abcn, device: dev }), T.randn([999], { seed: 0x1234_5678_9abcn }), "randn big seed");
  }, 120_000);

  test("elementwise ops and fills are bit-identical in every dtype", () => {
    for (const n of SIZES) {
      for (const dtype of ["f32", "bf16"] as const) {
        const a = T.randn([n], { seed: fresh(), dtype });
        const b = T.randn([n], { seed: fresh(), dtype, std: 3 });
        const ga = onGpu(a);
        const gb = onGpu(b);
        expectSameBits(T.add(ga, gb), T.add(a, b), `add ${dtype} n=${n}`);
        expectSameBits(T.mul(ga, gb), T.mul(a, b), `mul ${dtype} n=${n}`);
        expectSameBits(T.scale(ga, 0.7), T.scale(a, 0.7), `scale ${dtype} n=${n}`);
        const y = T.randn([n], { seed: fresh(), dtype });
        const gy = onGpu(y);
        T.axpy(-1.3, ga, gy);
        T.axpy(-1.3, a, y);
        expectSameBits(gy, y, `axpy ${dtype} n=${n}`);
        expectSameBits(T.full([n], 1.1, { dtype, device: dev }), T.full([n], 1.1, { dtype }), `full ${dtype} n=${n}`);
        expectSameBits(T.cast(ga, dtype === "f32" ? "bf16" : "f32"), T.cast(a, dtype === "f32" ? "bf16" : "f32"), `cast ${dtype} n=${n}`);
      }
      const ia = T.fromArray(
        Array.from({ length: n }, (_, i) => (i * 2654435761) | 0),
        [n],
        { dtype: "i32" },
      );
      const ib = T.fromArray(
        Array.from({ length: n }, (_, i) => (i * 40503 + 7) | 0),
        [n],
        { dtype: "i32" },
      );
      expectSameBits(T.add(onGpu(ia), onGpu(ib)), T.add(ia, ib), `add i32 n=${n}`);
      expectSameBits(T.mul(onGpu(ia), onGpu(ib)), T.mul(ia, ib), `mul i32 n=${n}`);
      expectSameBits(T.full([n], -7, { dtype: "i32", device: dev }), T.full([n], -7, { dtype: "i32" }), `full i32 n=${n}`);
    }
  }, 120_000);

  test("bf16 edge cases: NaN, Inf, ties and subnormals cast like the CPU", () => {
    const edge = new Float32Array([
      Number.NaN,
      Number.POSITIVE_INFINITY,
      Number.NEGATIVE_INFINITY,
      1 + 2 ** -8,
      1 + 3 * 2 ** -8,
      1e-40,
      -1e-41,
      3.4028234663852886e38,
      0,
      -0,
    ]);
    const a = T.fromArray(edge, [edge.length]);
    const got = T.toFloat32Array(T.cast(onGpu(a), "bf16"));
    const ref = T.toFloat32Array(T.cast(a, "bf16"));
    for (let i = 0; i < edge.length; i++) expect(Object.is(got[i], ref[i]) || (Number.isNaN(got[i]) && Number.isNaN(ref[i]))).toBe(true);
  });

  test("sumOfSquares within f32 rounding of the f64 reference", () => {
    for (const n of SIZES) {
      for (const dtype of ["f32", "bf16"] as const) {
        const a = T.randn([n], { seed: fresh(), dtype });
        // Both accumulate in f64 in different orders, then round to f32: at most 1 ulp apart.
        expectClose(T.sumOfSquares(onGpu(a)), T.sumOfSquares(a), { rtol: 2 ** -23, atol: 0, label: `sumsq ${dtype} n=${n}` });
      }
    }
  });

  test("matmul (cuBLASLt) matches the f64-accumulating reference: transposes, batches, odd sizes", () => {
    const cases: [number, number, number, number][] = [
      [1, 1, 1, 1],
      [17, 33, 9, 1],
      [64, 128, 96, 3],
      [130, 257, 65, 2],
      [256, 512, 384, 1],
    ];
    for (const [m, k, n, batch] of cases) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          for (const dtype of ["f32", "bf16"] as const) {
            const a = T.randn(batch > 1 ? (transA ? [batch, k, m] : [batch, m, k]) : transA ? [k, m] : [m, k], { seed: fresh(), dtype });
            const b = T.randn(transB ? [n, k] : [k, n], { seed: fresh(), dtype });
            const ref = T.matmul(a, b, { transA, transB });
            const got = T.matmul(onGpu(a), onGpu(b), { transA, transB });
            // bf16 output: one rounding (2^-9 relative) plus f32-vs-f64 accumulation; f32: sqrt(k) ulp-scale.
            const tol = dtype === "bf16" ? { rtol: 1e-2, atol: 1e-2 } : { rtol: 1e-5, atol: 1e-5 * Math.sqrt(k) };
            expectClose(got, ref, { ...tol, label: `matmul ${dtype} ${m}x${k}x${n} b${batch} tA=${transA} tB=${transB}` });
          }
        }
      }
    }
    // alpha/beta accumulate into out.
    const a = T.randn([40, 50], { seed: fresh() });
    const b = T.randn([50, 30], { seed: fresh() });
    const c = T.randn([40, 30], { seed: fresh() });
    const gc = onGpu(c);
    T.matmul(onGpu(a), onGpu(b), { out: gc, alpha: 0.5, beta: -2 }).dispose();
    T.matmul(a, b, { out: c, alpha: 0.5, beta: -2 }).dispose();
    expectClose(gc, c, { rtol: 1e-5, atol: 1e-4 });
  }, 120_000);

  test("matmul: bf16 operands into an f32 output (unrounded), beta = 1 accumulates, transposes and odd sizes", () => {
    for (const [m, k, n] of [
      [1, 1, 1],
      [17, 33, 9],
      [130, 257, 65],
    ] as const) {
      for (const transA of [false, true]) {
        const a = T.randn(transA ? [k, m] : [m, k], { seed: fresh(), dtype: "bf16" });
        const b = T.randn([n, k], { seed: fresh(), dtype: "bf16" });
        const c0 = T.randn([m, n], { seed: fresh() });
        const ref = T.to(c0, "cpu");
        const got = onGpu(c0);
        T.matmul(a, b, { transA, transB: true, out: ref, beta: 1 }).dispose();
        T.matmul(onGpu(a), onGpu(b), { transA, transB: true, out: got, beta: 1 }).dispose();
        // f32 output: f32-vs-f64 accumulation only (a bf16 output would be off by ~2^-9 relative)
        expectClose(got, ref, { rtol: 1e-5, atol: 1e-5 * Math.sqrt(k), label: `bf16->f32 ${m}x${k}x${n} tA=${transA}` });
        const fresh32 = T.matmul(onGpu(a), onGpu(b), { transA, transB: true, outDtype: "f32" });
        expect(fresh32.dtype).toBe("f32");
        expectClose(fresh32, T.matmul(a, b, { transA, transB: true, outDtype: "f32" }), { rtol: 1e-5, atol: 1e-5 * Math.sqrt(k) });
      }
    }
  });

  test("after warm-up no allocation reaches the driver", () => {
    const alloc = DeviceAllocator.forDevice(0);
    const step = () => {
      const a = T.randn([1 << 20], { seed: 1, device: dev });
      const b = T.add(a, a);
      using a2 = a.reshape([1024, 1024]);
      using b2 = b.reshape([1024, 1024]);
      const c = T.matmul(a2, b2);
      const s = T.sumOfSquares(c);
      for (const t of [a, b, c, s]) t.dispose();
    };
    for (let i = 0; i < 3; i++) step();
    T.currentStream(0).synchronize();
    const before = alloc.report();
    for (let i = 0; i < 200; i++) step();
    T.currentStream(0).synchronize();
    const after = alloc.report();
    expect(after.allocs - before.allocs).toBe(200 * 4); // a, b, c and s: all served from the pool
    expect(after.reserved).toBe(before.reserved);
    expect(after.reservedPeak).toBe(before.reservedPeak);
    expect(after.inUse).toBe(before.inUse);
  });

  test("out of memory throws the typed error and the process continues", () => {
    const s = Stream.create(0);
    const before = DeviceAllocator.forDevice(0).report();
    let err: unknown;
    try {
      T.empty([2 ** 46], { dtype: "f32", device: dev, stream: s });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CudaOutOfMemoryError);
    expect(String((err as Error).message)).toMatch(
      /cudaMallocAsync failed: cudaErrorMemoryAllocation \(2\).*requested 256\.00 TiB on cuda:0/,
    );
    // The device still works.
    const t = T.randn([1000], { seed: 5, device: dev, stream: s });
    expectSameBits(t, T.randn([1000], { seed: 5 }), "after OOM");
    expect(DeviceAllocator.forDevice(0).report().inUse).toBe(before.inUse + 4000);
    t.dispose();
    s.synchronize();
  });

  test("device mismatches are refused with both devices named", () => {
    const a = T.zeros([4], { device: dev });
    expect(() => T.add(a, T.zeros([4]))).toThrow(/add: b: expected device cuda:0 \(as add: a\), got cpu/);
  });
});

test.skipIf(!noGpu)("without a GPU, cuda tensors fail with the reason", () => {
  expect(() => T.zeros([2], { device: "cuda:0" })).toThrow(/no CUDA device available: /);
});
