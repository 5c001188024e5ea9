// What a rank runs with, chosen before anything is allocated: the checkpoint policy (`--policy auto`:
// the fastest that the memory estimator says fits) and where the optimizer state lives (CPU ranks:
// their own memory; GPU ranks: `--optimizer device|host`, or `auto`: the device when a policy fits
// with the state there, else pinned host memory). Each choice comes with its reason, printed at start.
//
// The estimator's "host" plan updates each layer as its gradients arrive and keeps no gradient
// buffer; this trainer keeps the fp32 gradient shards on the GPU until the global norm is known (an
// exact clip, and gradient accumulation over micro-batches): trainerExtraBytes adds that and the
// other buffers of zero.ts to the estimate.

import {
  type CheckpointPolicy,
  estimateMemory,
  fmtGiB,
  type MemoryEstimate,
  MemoryEstimateError,
  parsePolicy,
  type UniformKind,
} from "@lightseq/checkpointing";
import { type LlamaConfig, layerLayout } from "@lightseq/llama";
import type { OptimizerPlace, Policy } from "../config.ts";
import { paramCount } from "../metrics.ts";
import type { StatePlace } from "./state.ts";

/** Fastest first (DESIGN.md section 6): nothing recomputed, then attention kept, then everything recomputed. */
const ORDER: readonly UniformKind[] = ["none", "remat-aware", "full"];

export interface RunPlan {
  policy: CheckpointPolicy;
  state: StatePlace;
  /** One line: the choices and why. */
  reason: string;
}

export interface PlanInput {
  model: LlamaConfig;
  seq: number;
  cp: number;
  dp: number;
  policy: Policy;
  optimizer: OptimizerPlace;
  gpu: boolean;
  /** Memory one rank may use: device memory on a GPU, the rank's share of host memory on the CPU. */
  deviceBytes: number;
  /** Pinned host memory one rank may use (GPU ranks). */
  hostBytes: number;
  /** `--update per-layer`: no whole-model gradient with the state on the device. */
  perLayer: boolean;
}

/**
 * Share of a GPU's memory a plan may fill: the rest is kept for what no term counts exactly
 * (allocator fragmentation over many steps, library workspaces grown on first use). A step that
 * passes and a later one that runs out is the failure this avoids (issue 14).
 */
const GPU_USABLE = 0.95;

function estimate(i: PlanInput, kind: UniformKind, optimizer: "device" | "host"): MemoryEstimate {
  const e = estimateMemory({
    model: i.model,
    seqLen: i.seq,
    mesh: { cp: i.cp, dp: i.dp },
    policy: parsePolicy(kind),
    offload: "none",
    optimizer,
    deviceBytes: i.deviceBytes,
    ...(optimizer === "host" ? { hostBytes: i.hostBytes } : {}),
  });
  if (!i.gpu) return e;
  const gpuBytes = e.gpuBytes + trainerExtraBytes(i.model, optimizer, i.cp * i.dp, i.perLayer);
  return { ...e, gpuBytes, fits: e.fits && gpuBytes <= GPU_USABLE * i.deviceBytes };
}

/**
 * What this trainer holds on a GPU beyond the estimator's terms (which count, with the state on the
 * device, 16 B/param / R: master, m, v and an fp32 gradient shard): the bf16 weight shard the AdamW
 * kernel writes (2 B/param / R); the gradient shards, kept whole until the norm is known unless the
 * update runs per layer with the state on the device (then one shard buffer, the largest buffer's,
 * is reused: 4 B/param / R less); and zero.ts's third gathered layer, second layer-gradient buffer
 * and the embedding's and head's f32 gradients.
 */
export function trainerExtraBytes(m: LlamaConfig, optimizer: "device" | "host", ranks: number, perLayer: boolean): number {
  const P = paramCount(m);
  const layer = layerLayout(m).numel;
  const embed = m.vocab * m.dim;
  const nonLayer = embed * (m.tiedEmbeddings ? 1 : 2);
  const own = 4 * (Math.max(layer, embed) / ranks);
  const states = optimizer === "device" ? (perLayer ? (2 * P) / ranks - (4 * P) / ranks + own : (2 * P) / ranks) : (4 * P) / ranks;
  return states + 2 * layer + 4 * layer + 4 * nonLayer;
}

function pickPolicy(i: PlanInput, optimizer: "device" | "host"): { kind: UniformKind; e: MemoryEstimate; tried: string[] } | null {
  const tried: string[] = [];
  for (const kind of i.policy === "auto" ? ORDER : [i.policy]) {
    const e = estimate(i, kind, optimizer);
    if (e.fits) return { kind, e, tried };
    tried.push(`${kind} needs ${fmtGiB(e.gpuBytes)}`);
  }
  return null;
}

export function planRun(i: PlanInput): RunPlan {
  const where = i.gpu ? "on the GPU" : "per CPU rank";
  const places: ("device" | "host")[] =
    !i.gpu || i.optimizer === "device" ? ["device"] : i.optimizer === "host" ? ["host"] : ["device", "host"];
  const notes: string[] = [];
  for (const place of places) {
    const p = pickPolicy(i, place);
    if (p === null) {
      notes.push(
        `with the optimizer state ${place === "host" ? "on the host" : "on the device"} no policy fits in ${fmtGiB((i.gpu ? GPU_USABLE : 1) * i.deviceBytes)}`,
      );
      continue;
    }
    const state: StatePlace = i.gpu ? place : "cpu";
    const why = [
      i.policy === "auto"
        ? p.tried.length === 0
          ? "the fastest policy fits"
          : `faster ones do not fit (${p.tried.join(", ")})`
        : "--policy",
      ...notes,
    ].join("; ");
    const opt = i.gpu ? `, optimizer state ${place === "host" ? "in pinned host memory (streamed)" : "on the device"}` : "";
    return {
      policy: parsePolicy(p.kind),
      state,
      reason: `${p.kind}${opt}: ${fmtGiB(p.e.gpuBytes)} of ${i.gpu ? `${fmtGiB(GPU_USABLE * i.deviceBytes)} usable (${fmtGiB(i.deviceBytes)})` : fmtGiB(i.deviceBytes)} ${where}; ${why}`,
    };
  }
  throw new MemoryEstimateError(
    `${i.model.layers}-layer model at ${i.seq} tokens on cp=${i.cp} x dp=${i.dp} does not fit (${notes.join("; ")}): ` +
      `use more ranks (--nprocs, --cp), a shorter --seq${i.gpu && i.optimizer === "device" ? ", or --optimizer host" : ""}`,
  );
}
