// What a step costs and what it did: the FLOP count MFU is measured against (DESIGN.md section 9), the
// step line, and DIR/metrics.jsonl (one JSON object per step).
//
// FLOPs per sequence of S tokens: 6 * params * S + 3 * F_att, with F_att = 4 * S^2 * (heads * headDim)
// * layers / 2 the causal attention forward (QK^T and PV, half the square). params counts every weight,
// the embedding included (as DESIGN.md's PyTorch reference numbers do). Recomputation is not counted:
// MFU is model FLOPs over the peak, whatever the checkpointing policy runs again.

import { appendFileSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { memoryReport } from "@lightseq/tensor";

/**
 * The step line's peak memory of this rank: on a GPU the allocator's peak of live allocations (what
 * torch.cuda.max_memory_allocated reports), on the CPU the process's peak resident set.
 */
export function peakMemoryBytes(device: "cpu" | `cuda:${number}`): number {
  if (device === "cpu") return process.resourceUsage().maxRSS * 1024; // maxRSS is in KiB
  return memoryReport(device).peak;
}

/** Dense bf16 peak of an H100/H200 SXM (DESIGN.md section 9). */
export const PEAK_BF16_FLOPS = 989e12;

/** The shape numbers the FLOP count needs (@lightseq/llama's config maps onto this). */
export interface LlamaShape {
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
  tiedEmbeddings: boolean;
}

/** Every parameter: embedding, per layer 2 norms + q/k/v/o + gate/up/down, final norm, head unless tied. */
export function paramCount(s: LlamaShape): number {
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const layer = s.dim * q + 2 * s.dim * kv + q * s.dim + 3 * s.dim * s.ffn + 2 * s.dim;
  return s.vocab * s.dim * (s.tiedEmbeddings ? 1 : 2) + s.layers * layer + s.dim;
}

/** Causal attention forward FLOPs of one sequence of `seq` tokens, all layers. */
export function attentionForwardFlops(s: LlamaShape, seq: number): number {
  return (4 * seq * seq * s.heads * s.headDim * s.layers) / 2;
}

/** Model FLOPs of training on one sequence (forward + backward). */
export function trainingFlopsPerSequence(s: LlamaShape, seq: number): number {
  return 6 * paramCount(s) * seq + 3 * attentionForwardFlops(s, seq);
}

export interface StepRecord {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  /** Tokens of the global batch. */
  tokens: number;
  step_s: number;
  tokens_per_s: number;
  tflops_per_gpu: number;
  mfu: number;
  /** Peak memory of the busiest rank (device memory on a GPU, resident set on the CPU). */
  peak_mem_bytes: number;
  /** GPU ranks: the largest peak resident set of a rank's process (its pinned optimizer state and spilled checkpoints included). */
  host_mem_bytes?: number;
}

export interface StepInput {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  /** Sequences of the global batch and their length. */
  sequences: number;
  seq: number;
  seconds: number;
  /** Ranks sharing the work (GPUs, or CPU processes). */
  ranks: number;
  shape: LlamaShape;
  peakMemBytes: number;
  /** GPU ranks: peak resident host memory of the busiest rank. */
  hostMemBytes?: number;
  peakFlops?: number;
}

/** Throughput and MFU of a step. */
export function stepRecord(i: StepInput): StepRecord {
  const tokens = i.sequences * i.seq;
  const flops = i.sequences * trainingFlopsPerSequence(i.shape, i.seq);
  const perRank = flops / i.seconds / i.ranks;
  return {
    step: i.step,
    loss: i.loss,
    lr: i.lr,
    grad_norm: i.gradNorm,
    tokens,
    step_s: i.seconds,
    tokens_per_s: tokens / i.seconds,
    tflops_per_gpu: perRank / 1e12,
    mfu: perRank / (i.peakFlops ?? PEAK_BF16_FLOPS),
    peak_mem_bytes: i.peakMemBytes,
    ...(i.hostMemBytes === undefined ? {} : { host_mem_bytes: i.hostMemBytes }),
  };
}

function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  return `${(n / 2 ** 20).toFixed(0)} MiB`;
}

/** "step   12/200 | loss 6.2345 | lr 3.00e-4 | grad 1.234 | 12,345 tok/s | 123.4 TFLOP/s/GPU | MFU 41.2% | mem 98.1 GiB | 2.65 s" */
export function formatStepLine(r: StepRecord, totalSteps: number): string {
  const w = String(totalSteps).length;
  return [
    `step ${String(r.step).padStart(w)}/${totalSteps}`,
    `loss ${r.loss.toFixed(4)}`,
    `lr ${r.lr.toExponential(2)}`,
    `grad ${r.grad_norm.toFixed(3)}`,
    `${Math.round(r.tokens_per_s).toLocaleString("en-US")} tok/s`,
    `${r.tflops_per_gpu.toFixed(r.tflops_per_gpu < 1 ? 3 : 1)} TFLOP/s/GPU`,
    `MFU ${(100 * r.mfu).toFixed(r.mfu < 0.01 ? 3 : 1)}%`,
    `mem ${fmtBytes(r.peak_mem_bytes)}${r.host_mem_bytes === undefined ? "" : ` (host ${fmtBytes(r.host_mem_bytes)})`}`,
    `${r.step_s.toFixed(2)} s`,
  ].join(" | ");
}

/** DIR/metrics.jsonl: one record per line, appended as steps finish. */
export class MetricsLog {
  readonly path: string;

  private constructor(dir: string) {
    mkdirSync(dir, { recursive: true });
    this.path = join(dir, "metrics.jsonl");
  }

  /** A fresh log (any old file replaced). */
  static create(dir: string): MetricsLog {
    const log = new MetricsLog(dir);
    writeFileSync(log.path, "");
    return log;
  }

  /**
   * The log of a run resumed after `step`: records past it (written after the snapshot by the run that
   * was interrupted) are dropped, atomically, so the file reads as one uninterrupted run.
   */
  static resume(dir: string, step: number): MetricsLog {
    const log = new MetricsLog(dir);
    const kept = log.read().filter((r) => r.step <= step);
    const tmp = `${log.path}.tmp-${process.pid}`;
    writeFileSync(tmp, kept.map((r) => `${JSON.stringify(r)}\n`).join(""));
    const fd = openSync(tmp, "r");
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, log.path);
    return log;
  }

  append(r: StepRecord): void {
    appendFileSync(this.path, `${JSON.stringify(r)}\n`);
  }

  /** Every record; a torn last line (a crash mid-append) is ignored. */
  read(): StepRecord[] {
    if (!existsSync(this.path)) return [];
    const lines = readFileSync(this.path, "utf8").split("\n");
    const out: StepRecord[] = [];
    for (const [i, line] of lines.entries()) {
      if (line === "") continue;
      try {
        out.push(JSON.parse(line) as StepRecord);
      } catch (e) {
        if (i < lines.length - 1 && lines.slice(i + 1).some((l) => l !== ""))
          throw new Error(`${this.path}:${i + 1}: not JSON (${(e as Error).message})`);
      }
    }
    return out;
  }
}
