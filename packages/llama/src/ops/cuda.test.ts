// Every CUDA op against its CPU reference, forward and backward, on fresh random inputs (the seed is
// printed on failure; LIGHTSEQ_TEST_SEED fixes it) at sizes around the block and vector widths: T in
// {1, 7, 300, 4099}, widths that are multiples of 8 (16-byte path), not (scalar path), and above the
// vector path's register limit. Skipped visibly without a GPU; LIGHTSEQ_REQUIRE_GPU=1 makes that an error.
//
// The CPU reference runs on the same bf16 inputs (widened exactly) in f64 and rounds to bf16 at the same
// points as the kernels (HF's order), so a bf16 output differs by the f32-vs-f64 arithmetic only (~1e-7
// relative before rounding): at most one bf16 step, which is up to 2^-7 of the value (8 significant
// bits), so rtol 2^-7, plus an atol for results that cancel. RMSNorm's y has a second rounding
// (n = bf16(x rstd) before the weight multiply): a flip of n moves y by up to two steps, rtol 2^-6.

import { describe, expect, test } from "bun:test";
import { skipWithoutGpu } from "@lightseq/cuda";
import { fromArray, randn, type Tensor, to, toFloat32Array, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { embeddingBackward, embeddingForward, embeddingPlan } from "./embedding.ts";
import { linearBackwardInput, linearBackwardWeight, linearForward } from "./linear.ts";
import { lmHeadLoss } from "./lm-head-loss.ts";
import { residualAdd } from "./residual.ts";
import { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "./rmsnorm.ts";
import { ropeInvFreq, ropeQkvBackward, ropeQkvForward, ropeTable } from "./rope.ts";
import { swigluBackward, swigluForward } from "./swiglu.ts";

const noGpu = skipWithoutGpu();
const dev = "cuda:0";
let seed = Number(process.env.LIGHTSEQ_TEST_SEED ?? Date.now() % 1_000_000);
const fresh = () => seed++;
const BF16_TWICE = { atol: 1e-5, rtol: 2 ** -6 };

/** A bf16 normal tensor on the CPU and its copy on the GPU. */
function pair(shape: number[], std = 1): { cpu: Tensor; gpu: Tensor } {
  const cpu = randn(shape, { seed: fresh(), std, dtype: "bf16" });
  return { cpu, gpu: to(cpu, dev) };
}

const bits = (t: Tensor) => {
  const h = to(t, "cpu");
  const d = h.data();
  return new Uint32Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
};

function expectSameBits(got: Tensor, ref: Tensor, label: string): void {
  const g = bits(got);
  const r = bits(ref);
  expect(g.length).toBe(r.length);
  for (let i = 0; i < g.length; i++) if (g[i] !== r[i]) throw new Error(`${label}: word ${i} differs (seed ${seed})`);
}

describe.skipIf(noGpu)("llama ops: CUDA equals the CPU reference", () => {
  test("rmsnorm forward/backward and fused residual + norm", () => {
    // C: 64 (P=1, 32 threads), 4096 (P=2), 8192 (P=4), 4100 and 8200 (scalar paths)
    for (const [T, C] of [
      [1, 64],
      [7, 4100],
      [300, 4096],
      [33, 8192],
      [5, 8200],
      [4099, 64],
      [1024, 4096],
    ] as const) {
      const label = `T=${T} C=${C} seed=${seed}`;
      const x = pair([T, C]);
      const w = pair([C], 0.5);
      const r = pair([T, C]);
      const dy = pair([T, C]);
      const res = pair([T, C]);
      const eps = 1e-5;
      const cpuF = rmsnormForward(x.cpu, w.cpu, eps);
      const gpuF = rmsnormForward(x.gpu, w.gpu, eps);
      // rstd: f32 sum of squares and rsqrtf against f64: ~1e-6 relative
      expectClose(gpuF.rstd, cpuF.rstd, { atol: 0, rtol: 1e-5, label: `rstd ${label}` });
      expectClose(gpuF.y, cpuF.y, { ...BF16_TWICE, label: `y ${label}` });
      const cpuR = residualRmsnormForward(x.cpu, r.cpu, w.cpu, eps);
      const gpuR = residualRmsnormForward(x.gpu, r.gpu, w.gpu, eps);
      expectSameBits(gpuR.h, cpuR.h, `h ${label}`); // one f32 add rounded to bf16: exact on both
      expectClose(gpuR.y, cpuR.y, { ...BF16_TWICE, label: `fused y ${label}` });
      expectClose(gpuR.rstd, cpuR.rstd, { atol: 0, rtol: 1e-5, label: `fused rstd ${label}` });
      // backward from the CPU's rstd on both sides, so only the backward's arithmetic differs
      const rstdGpu = to(cpuF.rstd, dev);
      const dwCpu = fromArray(new Float32Array(C).fill(0.5), [C]);
      const dwGpu = to(dwCpu, dev);
      const dxCpu = rmsnormBackward(x.cpu, w.cpu, cpuF.rstd, dy.cpu, dwCpu, { residual: res.cpu });
      const dxGpu = rmsnormBackward(x.gpu, w.gpu, rstdGpu, dy.gpu, dwGpu, { residual: res.gpu });
      // dx = rstd (g - n mean(g n)) + res: terms of size ~1, so an atol of 1e-3 covers the f32 cancellation
      expectClose(dxGpu, dxCpu, { atol: 1e-3, rtol: 2 ** -7, label: `dx ${label}` });
      // dw: f32 sums over T rows (per block, then over 512 partials in a fixed tree) against f64, and products with
      // n = bf16(x rstd) where a flip of n changes a term by 2^-8: bound by 1e-4 * sum |dy n| + 2^-7 rel
      const n = toFloat32Array(x.cpu);
      const d = toFloat32Array(dy.cpu);
      const rs = toFloat32Array(cpuF.rstd);
      let maxAbsSum = 0;
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let t = 0; t < T; t++) s += Math.abs((d[t * C + c] as number) * (n[t * C + c] as number) * (rs[t] as number));
        maxAbsSum = Math.max(maxAbsSum, s);
      }
      expectClose(dwGpu, dwCpu, { atol: 1e-4 * maxAbsSum + 1e-6, rtol: 2 ** -7, label: `dw ${label}` });
      const dx2 = rmsnormBackward(x.gpu, w.gpu, rstdGpu, dy.gpu, zeros([C], { device: dev }));
      const dx2Cpu = rmsnormBackward(x.cpu, w.cpu, cpuF.rstd, dy.cpu, zeros([C]));
      expectClose(dx2, dx2Cpu, { atol: 1e-3, rtol: 2 ** -7, label: `dx (no residual) ${label}` });
    }
  }, 120_000);

  test("rope + qkv split forward/backward at global positions, MHA/GQA, vector and scalar paths", () => {
    for (const T of [1, 7, 300, 4099]) {
      for (const dims of [
        { Hq: 4, Hkv: 4, D: 128 },
        { Hq: 6, Hkv: 2, D: 64 },
        { Hq: 2, Hkv: 1, D: 12 }, // D/2 = 6: scalar path
      ]) {
        const label = `T=${T} ${JSON.stringify(dims)} seed=${seed}`;
        const W = (dims.Hq + 2 * dims.Hkv) * dims.D;
        const inv = ropeInvFreq({
          headDim: dims.D,
          ropeTheta: 500000,
          ropeScaling: { type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
        });
        const positions = Int32Array.from({ length: T }, (_, i) => 500000 + 3 * i);
        const tc = ropeTable(inv, positions);
        const tg = ropeTable(inv, positions, dev);
        const qkv = pair([T, W]);
        const c = ropeQkvForward(qkv.cpu, tc, dims);
        const g = ropeQkvForward(qkv.gpu, tg, dims);
        // rotations by |cos|, |sin| <= 1 of unit inputs: a 1e-6 atol for the f32 sums that cancel
        expectClose(g.q, c.q, { atol: 1e-6, rtol: 2 ** -7, label: `q ${label}` });
        expectClose(g.k, c.k, { atol: 1e-6, rtol: 2 ** -7, label: `k ${label}` });
        expectSameBits(g.v, c.v, `v ${label}`);
        const dq = pair([T, dims.Hq, dims.D]);
        const dk = pair([T, dims.Hkv, dims.D]);
        const dv = pair([T, dims.Hkv, dims.D]);
        const bc = ropeQkvBackward(dq.cpu, dk.cpu, dv.cpu, tc, dims);
        const bg = ropeQkvBackward(dq.gpu, dk.gpu, dv.gpu, tg, dims);
        expectClose(bg, bc, { atol: 1e-6, rtol: 2 ** -7, label: `dqkv ${label}` });
      }
    }
  }, 120_000);

  test("swiglu forward/backward", () => {
    for (const [T, F] of [
      [1, 64],
      [7, 1001],
      [300, 1000],
      [4099, 64],
      [3, 11008],
    ] as const) {
      const label = `T=${T} F=${F} seed=${seed}`;
      const gu = pair([T, 2 * F], 2);
      const da = pair([T, F]);
      // __expf in the sigmoid: ~2 f32 ulps, then one bf16 rounding
      expectClose(swigluForward(gu.gpu), swigluForward(gu.cpu), { atol: 1e-6, rtol: 2 ** -7, label: `a ${label}` });
      expectClose(swigluBackward(gu.gpu, da.gpu), swigluBackward(gu.cpu, da.cpu), { atol: 1e-6, rtol: 2 ** -7, label: `dgu ${label}` });
    }
  }, 120_000);

  test("embedding forward (exact) and backward with repeated tokens: same bits as the CPU, and run to run", () => {
    const V = 600; // tokens below use 53 values up to 572
    for (const T of [1, 7, 300, 4099]) {
      for (const C of [64, 4100]) {
        const label = `T=${T} C=${C} seed=${seed}`;
        const s = fresh();
        // tokens from a small range so that most repeat (and some rows of dTable are never touched)
        const tok = Int32Array.from({ length: T }, (_, i) => ((i * 7919 + s) % 53) * 11);
        const tokCpu = fromArray(tok, [T], { dtype: "i32" });
        const tokGpu = to(tokCpu, dev);
        const table = pair([V, C]);
        expectSameBits(embeddingForward(tokGpu, table.gpu), embeddingForward(tokCpu, table.cpu), `x ${label}`);
        const dx = pair([T, C]);
        const start = randn([V, C], { seed: fresh() });
        const dCpu = to(start, "cpu");
        embeddingBackward(tokCpu, dx.cpu, dCpu);
        const dGpu1 = to(start, dev);
        embeddingBackward(tokGpu, dx.gpu, dGpu1); // downloads the tokens
        const dGpu2 = to(start, dev);
        embeddingBackward(tokGpu, dx.gpu, dGpu2, { plan: embeddingPlan(tok, V, dev) });
        expectSameBits(dGpu1, dCpu, `dTable vs CPU ${label}`);
        expectSameBits(dGpu2, dGpu1, `dTable run to run ${label}`);
      }
    }
  }, 120_000);

  test("embedding forward: a token outside the vocabulary gives a NaN row on the GPU (no sync to report it)", () => {
    const table = pair([5, 16]);
    const x = toFloat32Array(embeddingForward(fromArray([1, 5, -1, 4], [4], { dtype: "i32", device: dev }), table.gpu));
    const ref = toFloat32Array(table.cpu);
    for (let c = 0; c < 16; c++) {
      expect(x[c]).toBe(ref[16 + c] as number);
      expect(x[16 + c]).toBeNaN();
      expect(x[32 + c]).toBeNaN();
      expect(x[48 + c]).toBe(ref[64 + c] as number);
    }
  });

  test("residual add and linear (bf16 operands, f32 dW accumulated)", () => {
    for (const [T, I, O] of [
      [7, 64, 96],
      [300, 136, 72],
    ] as const) {
      const label = `T=${T} in=${I} out=${O} seed=${seed}`;
      const x = pair([T, I]);
      const w = pair([O, I], 0.1);
      const dy = pair([T, O]);
      const r = pair([T, I]);
      expectSameBits(residualAdd(x.gpu, r.gpu), residualAdd(x.cpu, r.cpu), `residual ${label}`);
      // bf16 GEMMs with f32 accumulation against f64: ~1e-6 relative before the bf16 rounding
      expectClose(linearForward(x.gpu, w.gpu), linearForward(x.cpu, w.cpu), { atol: 1e-4, rtol: 2 ** -7, label: `y ${label}` });
      expectClose(linearBackwardInput(dy.gpu, w.gpu), linearBackwardInput(dy.cpu, w.cpu), {
        atol: 1e-4,
        rtol: 2 ** -7,
        label: `dx ${label}`,
      });
      const dW0 = randn([O, I], { seed: fresh() });
      const dWc = to(dW0, "cpu");
      const dWg = to(dW0, dev);
      linearBackwardWeight(dy.cpu, x.cpu, dWc);
      linearBackwardWeight(dy.gpu, x.gpu, dWg);
      linearBackwardWeight(dy.cpu, x.cpu, dWc);
      linearBackwardWeight(dy.gpu, x.gpu, dWg);
      // f32 result (no bf16 rounding): only the f32-vs-f64 accumulation over T products differs
      expectClose(dWg, dWc, { atol: 1e-4, rtol: 1e-5, label: `dW ${label}` });
    }
  }, 120_000);

  test("lmHeadLoss: loss sum, count, dh, dW against the CPU chunked reference; ignored labels; chunks that do not divide T", () => {
    for (const [T, C, V, chunk] of [
      [1, 64, 128, 64],
      [7, 64, 1001, 3], // V % 8 != 0: scalar row kernel
      [300, 128, 1000, 128],
      [4099, 32, 264, 1000],
      [5, 16, 33000, 2], // a vocabulary above 32768 (Llama-3's is 128256)
    ] as const) {
      const label = `T=${T} C=${C} V=${V} chunk=${chunk} seed=${seed}`;
      const h = pair([T, C]);
      const w = pair([V, C], 0.2);
      const s = fresh();
      const lab = Int32Array.from({ length: T }, (_, i) => (((i * 2654435761 + s) >>> 0) % 7 === 0 ? -100 : ((i * 40503 + s) >>> 0) % V));
      const labCpu = fromArray(lab, [T], { dtype: "i32" });
      const count = lab.filter((l) => l !== -100).length;
      const gradScale = 1 / Math.max(count, 1);
      const dW0 = randn([V, C], { seed: fresh(), std: 0.1 * gradScale }); // += onto values of the gradient's size
      const dWc = to(dW0, "cpu");
      const dWg = to(dW0, dev);
      const rc = lmHeadLoss(h.cpu, w.cpu, labCpu, { gradScale, chunkTokens: chunk, dW: dWc });
      const rg = lmHeadLoss(h.gpu, w.gpu, to(labCpu, dev), { gradScale, chunkTokens: chunk, dW: dWg });
      expect(rg.count).toBe(count);
      expect(rc.count).toBe(count);
      // logits from f32-accumulated bf16 GEMMs (~1e-6 relative), __expf in the row kernel (~1e-7): the
      // mean loss agrees to ~1e-5 relative
      expect(Math.abs(rg.lossSum - rc.lossSum)).toBeLessThan(1e-5 * Math.abs(rc.lossSum) + 1e-6);
      // dlogits are bf16 on both sides, rounded from f32 values ~1e-6 apart, so a rare entry lands one
      // step (2^-7 relative) apart; at a label entry (~gradScale) that moves dh by 2^-7 gradScale |W|
      // and dW by 2^-7 gradScale |h| (|W|, |h| up to ~1): atol 1e-2 * gradScale, against values of
      // ~0.2 gradScale (dh) and ~gradScale (dW) that a wrong term would change by their whole size.
      // Otherwise GEMMs with f32 accumulation and, for dh, one bf16 rounding: rtol 2^-7.
      expectClose(rg.dh as Tensor, rc.dh as Tensor, { atol: 1e-2 * gradScale, rtol: 2 ** -7, label: `dh ${label}` });
      expectClose(dWg, dWc, { atol: 1e-2 * gradScale, rtol: 2 ** -7, label: `dW ${label}` });
      const fwd = lmHeadLoss(h.gpu, w.gpu, to(labCpu, dev), { gradScale, chunkTokens: chunk });
      expect(fwd.dh).toBeUndefined();
      expect(Math.abs(fwd.lossSum - rg.lossSum)).toBeLessThan(1e-9 * Math.abs(rg.lossSum) + 1e-9);
    }
  }, 120_000);
});
