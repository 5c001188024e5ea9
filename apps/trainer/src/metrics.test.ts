import { describe, expect, test } from "bun:test";
import { appendFileSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  attentionForwardFlops,
  formatStepLine,
  type LlamaShape,
  MetricsLog,
  paramCount,
  peakMemoryBytes,
  type StepRecord,
  stepRecord,
  trainingFlopsPerSequence,
} from "./metrics.ts";

const llama2_7b: LlamaShape = {
  dim: 4096,
  layers: 32,
  heads: 32,
  kvHeads: 32,
  headDim: 128,
  ffn: 11008,
  vocab: 32000,
  tiedEmbeddings: false,
};
const llama3_8b: LlamaShape = {
  dim: 4096,
  layers: 32,
  heads: 32,
  kvHeads: 8,
  headDim: 128,
  ffn: 14336,
  vocab: 128256,
  tiedEmbeddings: false,
};

describe("FLOPs and MFU", () => {
  test("parameter counts of Llama-2-7B and Llama-3-8B", () => {
    expect(paramCount(llama2_7b)).toBe(6_738_415_616); // performance.md section 5
    expect(paramCount(llama3_8b)).toBe(8_030_261_248); // Meta-Llama-3-8B's safetensors
    expect(paramCount({ ...llama2_7b, tiedEmbeddings: true })).toBe(6_738_415_616 - 32000 * 4096);
  });

  test("attention is causal-halved; DESIGN.md's PyTorch row comes out at its MFU", () => {
    expect(attentionForwardFlops(llama2_7b, 32768) / 1e15).toBeCloseTo(0.2815, 3); // performance.md: 0.28 PFLOP at 32K
    // DESIGN.md section 9: FSDP2 + full checkpointing on one H200 at 32K, 5,872 tok/s = 39.3% MFU.
    const r = stepRecord({
      step: 1,
      loss: 2,
      lr: 1e-4,
      gradNorm: 1,
      sequences: 1,
      seq: 32768,
      seconds: 32768 / 5872,
      ranks: 1,
      shape: llama2_7b,
      peakMemBytes: 109 * 2 ** 30,
    });
    expect(r.mfu).toBeCloseTo(0.393, 3);
    expect(r.tokens_per_s).toBeCloseTo(5872, 6);
    expect(trainingFlopsPerSequence(llama2_7b, 32768) / 32768 / 1e9).toBeCloseTo(66.2, 1);
    // Two ranks doing the same work in the same time: half the TFLOP/s per GPU.
    const two = stepRecord({
      ...r,
      step: 1,
      gradNorm: 1,
      sequences: 1,
      seq: 32768,
      seconds: 32768 / 5872,
      ranks: 2,
      shape: llama2_7b,
      peakMemBytes: 0,
    });
    expect(two.tflops_per_gpu).toBeCloseTo(r.tflops_per_gpu / 2, 9);
  });

  test("peak memory of a CPU rank is its peak resident set", () => {
    const before = peakMemoryBytes("cpu");
    expect(before).toBeGreaterThan(process.memoryUsage().rss / 2);
    const big = new Float64Array(32 << 20).fill(1); // 256 MiB touched
    expect(peakMemoryBytes("cpu")).toBeGreaterThanOrEqual(before);
    expect(peakMemoryBytes("cpu")).toBeGreaterThan(big.byteLength);
  });

  test("the step line has every field", () => {
    const r: StepRecord = {
      step: 12,
      loss: 6.23456,
      lr: 3e-4,
      grad_norm: 1.2345,
      tokens: 32768,
      step_s: 2.654,
      tokens_per_s: 12345.6,
      tflops_per_gpu: 123.44,
      mfu: 0.4123,
      peak_mem_bytes: 98.1 * 2 ** 30,
    };
    expect(formatStepLine(r, 200)).toBe(
      "step  12/200 | loss 6.2346 | lr 3.00e-4 | grad 1.234 | 12,346 tok/s | 123.4 TFLOP/s/GPU | MFU 41.2% | mem 98.1 GiB | 2.65 s",
    );
    expect(formatStepLine({ ...r, tflops_per_gpu: 0.0123, mfu: 0.0000124, peak_mem_bytes: 300 * 2 ** 20 }, 9)).toContain(
      "0.012 TFLOP/s/GPU | MFU 0.001% | mem 300 MiB",
    );
  });
});

describe("metrics.jsonl", () => {
  const rec = (step: number): StepRecord => ({
    step,
    loss: 10 - step,
    lr: 1e-3,
    grad_norm: 1,
    tokens: 256,
    step_s: 0.5,
    tokens_per_s: 512,
    tflops_per_gpu: 0.001,
    mfu: 1e-6,
    peak_mem_bytes: 1,
  });

  test("one JSON object per line with the required keys; resume drops what came after the snapshot", () => {
    const dir = mkdtempSync(join(tmpdir(), "trainer-metrics-"));
    const log = MetricsLog.create(dir);
    for (let s = 1; s <= 5; s++) log.append(rec(s));
    const lines = readFileSync(join(dir, "metrics.jsonl"), "utf8").trimEnd().split("\n");
    expect(lines).toHaveLength(5);
    for (const k of ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"]) expect(JSON.parse(lines[0]!)).toHaveProperty(k);
    appendFileSync(join(dir, "metrics.jsonl"), '{"step": 6, "lo'); // killed mid-append
    expect(log.read().map((r) => r.step)).toEqual([1, 2, 3, 4, 5]);
    const resumed = MetricsLog.resume(dir, 3);
    resumed.append(rec(4));
    expect(resumed.read().map((r) => r.step)).toEqual([1, 2, 3, 4]);
  });
});

test("GPU ranks: the step line and the record carry the peak host memory; CPU ranks do not", () => {
  const shape = { dim: 64, layers: 2, heads: 4, kvHeads: 4, headDim: 16, ffn: 128, vocab: 100, tiedEmbeddings: false };
  const base = { step: 1, loss: 2, lr: 1e-3, gradNorm: 1, sequences: 1, seq: 64, seconds: 1, ranks: 1, shape, peakMemBytes: 2 ** 31 };
  const gpu = stepRecord({ ...base, hostMemBytes: 80.5 * 2 ** 30 });
  expect(gpu.host_mem_bytes).toBe(80.5 * 2 ** 30);
  expect(formatStepLine(gpu, 10)).toContain("| mem 2.0 GiB (host 80.5 GiB) |");
  const cpu = stepRecord(base);
  expect("host_mem_bytes" in cpu).toBe(false);
  expect(formatStepLine(cpu, 10)).toContain("| mem 2.0 GiB |");
});
