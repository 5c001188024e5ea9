// What a rank runs with, chosen before anything is allocated: the checkpoint policy (`--policy auto`:
// the fastest that the memory estimator says fits), where the optimizer state lives (CPU ranks: their
// own memory; GPU ranks: `--optimizer device|host`, or `auto`: the device when a policy fits with the
// state there, else pinned host memory), whether the checkpoints spill to pinned host memory, and the
// MLP's tiling. Each choice comes with its reason, printed at start with the plan's memory numbers.
//
// The choice (GPU ranks): every setting (optimizer state on the device or the host, checkpoints all on
// the GPU or spilled to the host, the MLP whole or tiled) gets the fastest checkpoint policy that fits
// it (`bestMixed`: per layer, the cheap kind on the last layers), and the setting whose policy the
// step-time model (@lightseq/checkpointing stepCost: recompute, and the PCIe copies of spilled
// checkpoints and streamed optimizer state that cannot hide behind compute) calls fastest wins; on a
// tie, the earlier setting (no offload before spill, the device before the host, untiled before tiled).
// Layers kept whole (`none`) never spill: their copies are bound by PCIe (BENCHMARKS.md, issue 12).
// Tiling is tried only when local tokens exceed TILE_ABOVE (MLP_CHUNK-token chunks, DESIGN.md
// section 6); a tiled `none` layer recomputes gate|up, which the model counts.
//
// The estimator's "host" plan updates each layer as its gradients arrive and keeps no gradient
// buffer; this trainer keeps the fp32 gradient shards on the GPU until the global norm is known (an
// exact clip, and gradient accumulation over micro-batches) unless the update runs per layer (then a
// ring of shard buffers, zero.ts): trainerExtraBytes adds that and zero.ts's other buffers to the
// estimate, and its "optimizer stream buffers" (a whole layer's state) count as the few chunks
// StreamedAdamW holds. The estimator is given the GPU's usable bytes less those, so its spill split
// (how many layers keep their checkpoints on the GPU) leaves room for them.

import {
  bestMixed,
  type CheckpointPolicy,
  estimateMemory,
  fmtGiB,
  formatPolicy,
  type LayerKind,
  layerKinds,
  type MemoryEstimate,
  MemoryEstimateError,
  parsePolicy,
  type StepCost,
  skipPolicy,
  stepCost,
  type UniformKind,
} from "@lightseq/checkpointing";
import { defaultChunkTokens, type LlamaConfig, layerLayout } from "@lightseq/llama";
import type { OptimizerPlace, Policy } from "../config.ts";
import { paramCount } from "../metrics.ts";
import { slotBytes } from "../optim/streamed.ts";
import { bufferSpecs } from "./buffers.ts";
import { residentBuffers, type StatePlace } from "./state.ts";
import { gradientRing } from "./zero.ts";

/** Local tokens above which the MLP is tiled, and the tokens per tile. */
export const TILE_ABOVE = 16384;
export const MLP_CHUNK = 8192;

/** Where the checkpoints go: all on the GPU, or the GPU first and pinned host memory beyond. */
export type CheckpointOffload = "none" | "spill";

export interface RunPlan {
  policy: CheckpointPolicy;
  state: StatePlace;
  /** State on the host: layer 0's and the embedding's stays on the GPU (state.ts residentBuffers). */
  resident: boolean;
  offload: CheckpointOffload;
  /** Decoder layers whose checkpoints stay on the GPU (the last ones; every layer without offload). */
  deviceLayers: number;
  /** Tiled MLP: tokens per chunk; null: the MLP over all local tokens at once. */
  mlpChunkTokens: number | null;
  /** Tokens per chunk of the fused LM head + cross-entropy (the model's default for the vocabulary). */
  lossChunkTokens: number;
  /** The estimate's GPU peak with this trainer's buffers (GPU ranks), or the rank's peak (CPU ranks). */
  gpuBytes: number;
  /** Pinned host memory: the optimizer state (host state) and the spilled checkpoints. */
  hostStateBytes: number;
  hostCheckpointBytes: number;
  /** One line: the choices and why. */
  reason: string;
  /** One line: the numbers a user needs at long lengths (GPU estimate, host state, spilled checkpoints). */
  memory: string;
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
  /** Pinned host memory one rank may use (GPU ranks): the optimizer state and spilled checkpoints. */
  hostBytes: number;
  /** `--update per-layer`: no whole-model gradient (a ring of shard buffers, zero.ts). */
  perLayer: boolean;
}

/**
 * Share of a GPU's memory a plan may fill: the rest is kept for what no term counts exactly
 * (allocator fragmentation over many steps, library workspaces grown on first use). A step that
 * passes and a later one that runs out is the failure this avoids (issue 14).
 */
const GPU_USABLE = 0.95;

/** One point of the search: where the state and the checkpoints live, and the MLP tiling. */
export interface Setting {
  place: "device" | "host";
  /** State on the host: layer 0's and the embedding's stays on the GPU (state.ts residentBuffers). */
  resident: boolean;
  offload: CheckpointOffload;
  mlpChunkTokens: number | null;
  lossChunkTokens: number;
}

/** An estimate with this trainer's GPU buffers added (gpuBytes) and its fit against the usable bytes. */
export interface PlanEstimate {
  e: MemoryEstimate;
  gpuBytes: number;
  fits: boolean;
}

const usable = (i: PlanInput) => (i.gpu ? GPU_USABLE : 1) * i.deviceBytes;

/**
 * The estimate of one policy and setting. GPU ranks: the trainer's buffers (trainerExtraBytes) are
 * added, and the estimator's "optimizer stream buffers" (a whole layer's state in and out) replaced by
 * what StreamedAdamW holds (DEFAULT_SLOTS chunks of master, m, v: 288 MiB for 7B against 4.5 GiB).
 */
export function estimate(i: PlanInput, policy: CheckpointPolicy | CheckpointPolicy["kind"], s: Setting): PlanEstimate {
  const R = i.cp * i.dp;
  const pol = typeof policy === "string" ? parsePolicy(policy) : policy;
  let extra = i.gpu ? trainerExtraBytes(i.model, s.place, R, i.perLayer, s.resident) : 0;
  let e = estimateWith(i, pol, s, extra);
  const counted = e.gpu.filter((t) => t.name === "optimizer stream buffers").reduce((a, t) => a + t.bytes, 0);
  const held = i.gpu && s.place === "host" ? slotBytes(maxShardLen(i.model, R)) : counted;
  if (counted > held) {
    extra -= counted - held;
    e = estimateWith(i, pol, s, extra);
  }
  return { e, gpuBytes: e.gpuBytes + extra, fits: e.fits };
}

/** The largest buffer's shard: a layer, or the embedding / head (vocab x dim). */
function maxShardLen(m: LlamaConfig, ranks: number): number {
  return Math.ceil(Math.max(layerLayout(m).numel, m.vocab * m.dim) / ranks);
}

/** The estimator's plan with `extra` bytes of the GPU's usable memory taken by what its terms do not count. */
function estimateWith(i: PlanInput, policy: CheckpointPolicy, s: Setting, extra: number): MemoryEstimate {
  return estimateMemory({
    model: i.model,
    seqLen: i.seq,
    mesh: { cp: i.cp, dp: i.dp },
    policy,
    offload: s.offload,
    optimizer: s.place,
    deviceBytes: Math.max(1, Math.floor(usable(i) - extra)),
    // parallelize runs DistAttn on one rank too (its f32 accumulators: the estimator's one-rank term)
    attention: "distattn",
    lossChunkTokens: s.lossChunkTokens,
    ...(s.mlpChunkTokens === null ? {} : { mlpChunkTokens: s.mlpChunkTokens }),
    ...(i.gpu ? { hostBytes: i.hostBytes } : {}),
  });
}

/**
 * What this trainer holds on a GPU beyond the estimator's terms (which count, with the state on the
 * device, 16 B/param / R: master, m, v and an fp32 gradient shard; with the state on the host a bf16
 * weight shard and no gradient): with the state on the device the bf16 weight shard the AdamW kernel
 * writes (2 B/param / R); the gradient shards, kept whole until the norm is known (4 B/param / R, in
 * the estimator's 16 with the state on the device), or with the update per layer a ring of shard
 * buffers each the largest buffer's (zero.ts gradientRing: 1 with the state on the device, 3 with it
 * on the host); with the state on the host and `resident`, the fp32 master, m and v of the buffers that
 * stay on the GPU (residentBuffers: layer 0 and the embedding, 12 B/param / R); and zero.ts's third gathered layer, second layer-gradient buffer and the embedding's
 * and head's f32 gradients.
 */
export function trainerExtraBytes(
  m: LlamaConfig,
  optimizer: "device" | "host",
  ranks: number,
  perLayer: boolean,
  resident = false,
): number {
  const P = paramCount(m);
  const residentState = optimizer === "host" && resident ? (12 * residentParams(m)) / ranks : 0;
  const layer = layerLayout(m).numel;
  const embed = m.vocab * m.dim;
  const nonLayer = embed * (m.tiedEmbeddings ? 1 : 2);
  const ring = gradientRing(optimizer) * 4 * maxShardLen(m, ranks);
  const wholeGradient = (4 * P) / ranks;
  const gradients = perLayer ? ring : wholeGradient;
  const states = optimizer === "device" ? (2 * P) / ranks - wholeGradient + gradients : gradients;
  return states + residentState + 2 * layer + 4 * layer + 4 * nonLayer;
}

/** Parameters of the buffers whose fp32 state stays on the GPU with the state on the host (state.ts residentBuffers). */
export function residentParams(m: LlamaConfig): number {
  const specs = bufferSpecs(m);
  const resident = new Set(residentBuffers(specs));
  return specs.filter((s) => resident.has(s.name)).reduce((a, s) => a + s.params.reduce((n, p) => n + p.numel, 0), 0);
}

export interface PolicyChoice {
  policy: CheckpointPolicy;
  est: PlanEstimate;
  cost: StepCost;
}

/** Whether a policy may be used with a setting: layers kept whole (`none`) never spill (see the header). */
function allowed(i: PlanInput, s: Setting, p: CheckpointPolicy): boolean {
  return s.offload === "none" || !layerKinds(p, i.model.layers).includes("none");
}

/** The step-time model's cost of a policy with a setting (GPU and CPU ranks alike: it ranks, it does not promise). */
function costOf(i: PlanInput, s: Setting, p: CheckpointPolicy, e: MemoryEstimate): StepCost {
  const L = i.model.layers;
  return stepCost({
    model: i.model,
    seqLen: i.seq,
    cp: i.cp,
    ranks: i.cp * i.dp,
    kinds: layerKinds(p, L),
    hostLayers: s.offload === "spill" ? L - e.deviceLayers : 0,
    mlpTiled: s.mlpChunkTokens !== null,
    optimizer: s.place,
    // layer 0's and the embedding's state on the GPU: nothing streams after the backward
    tailResident: s.resident,
  });
}

/**
 * The checkpoint policy for one setting: with `--policy auto` the fastest that fits (bestMixed), else
 * the one asked for if it fits. `tried` says what the faster uniform policies need; `smallest` is the
 * estimate a refusal quotes (the policy that keeps least).
 */
export function pickPolicy(i: PlanInput, s: Setting): { found: PolicyChoice | null; tried: string[]; smallest: PlanEstimate | null } {
  const L = i.model.layers;
  const tried: string[] = [];
  const fits = (p: CheckpointPolicy) => allowed(i, s, p) && estimate(i, p, s).fits;
  const wanted = i.policy === "auto" ? null : parsePolicy(i.policy, L);
  const found = wanted === null ? bestMixed(L, fits) : fits(wanted) ? wanted : null;
  if (wanted === null) {
    // the uniform policies faster than what was found (all of them when nothing fits)
    const uniform: UniformKind[] = ["none", "remat-aware", "full"];
    const kinds = found === null ? [] : layerKinds(found, L);
    // skip (per layer only) is slower than every uniform kind
    const rank = (k: LayerKind) => (k === "skip" ? uniform.length : uniform.indexOf(k));
    const cheapest = found === null ? uniform.length : Math.min(...kinds.map(rank));
    const faster = found === null ? uniform : uniform.slice(0, cheapest + (kinds.every((k) => k === uniform[cheapest]) ? 0 : 1));
    for (const kind of faster) if (allowed(i, s, { kind })) tried.push(`${kind} needs ${needs(i, estimate(i, kind, s))}`);
  }
  // what keeps least: full with every odd layer skipping (full on one layer)
  const last = wanted ?? (L >= 2 ? skipPolicy(L, Math.floor(L / 2)) : { kind: "full" as const });
  const smallest = found === null && allowed(i, s, last) ? estimate(i, last, s) : null;
  if (found === null) {
    if (wanted !== null)
      tried.push(
        `${formatPolicy(wanted)} ${allowed(i, s, wanted) ? `needs ${needs(i, estimate(i, wanted, s))}` : "keeps layers whole, which never spill"}`,
      );
    return { found: null, tried, smallest };
  }
  const est = estimate(i, found, s);
  return { found: { policy: found, est, cost: costOf(i, s, found, est.e) }, tried, smallest };
}

/** "X GiB" on the GPU, and "+ Y of Z GiB on the host" when the host is over its budget. */
function needs(i: PlanInput, est: PlanEstimate): string {
  const host = i.gpu && est.e.hostBytes > i.hostBytes ? ` + ${fmtGiB(est.e.hostBytes)} of ${fmtGiB(i.hostBytes)} on the host` : "";
  return `${fmtGiB(est.gpuBytes)}${host}`;
}

/** Bytes of the estimate's host term `name` (0 when absent). */
const hostTerm = (e: MemoryEstimate, name: string) => e.host.filter((t) => t.name === name).reduce((a, t) => a + t.bytes, 0);

const placeName = (p: "device" | "host") => (p === "host" ? "on the host" : "on the device");
/** The resident buffers of a host state, as the reason line and the alternatives word them. */
const RESIDENT = "layer 0's and the embedding's on the GPU";
const isResident = (s: Setting) => s.place === "host" && s.resident;

export function planRun(i: PlanInput): RunPlan {
  const where = i.gpu ? "on the GPU" : "per CPU rank";
  const T = Math.ceil(i.seq / i.cp);
  const tilings: (number | null)[] = T > TILE_ABOVE ? [null, MLP_CHUNK] : [null];
  const lossChunkTokens = defaultChunkTokens(i.model.vocab, i.gpu ? "cuda" : "cpu");
  const onDevice = { place: "device", resident: false } as const;
  // with the state on the host: layer 0's and the embedding's on the GPU first (no streaming after the
  // backward, ~80 ms of a 7B step), all of it streamed when that does not fit or costs more
  const onHost = [
    { place: "host", resident: true },
    { place: "host", resident: false },
  ] as const;
  const places: readonly { place: "device" | "host"; resident: boolean }[] =
    !i.gpu || i.optimizer === "device" ? [onDevice] : i.optimizer === "host" ? onHost : [onDevice, ...onHost];
  // CPU ranks: the checkpoints are already in host memory.
  const offloads: CheckpointOffload[] = i.gpu ? ["none", "spill"] : ["none"];
  const notes: string[] = [];
  let smallest: { s: Setting; est: PlanEstimate } | null = null;
  let best: { s: Setting; p: PolicyChoice; tried: string[] } | null = null;
  const others: { line: string; s: number }[] = [];
  for (const offload of offloads)
    for (const { place, resident } of places)
      for (const mlpChunkTokens of tilings) {
        const s: Setting = { place, resident, offload, mlpChunkTokens, lossChunkTokens };
        const p = pickPolicy(i, s);
        if (p.smallest) smallest = { s, est: p.smallest };
        if (p.found === null) {
          if (mlpChunkTokens === tilings[tilings.length - 1] && !resident)
            notes.push(
              `with the optimizer state ${placeName(place)}${offload === "spill" ? ", checkpoints spilled to the host," : ""} nothing fits in ${fmtGiB(usable(i))} (${p.tried.join(", ")})`,
            );
          continue;
        }
        if (best === null || p.found.cost.totalS < best.p.cost.totalS) {
          if (best) others.push({ line: settingLine(best.s, best.p), s: best.p.cost.totalS });
          best = { s, p: p.found, tried: p.tried };
        } else others.push({ line: settingLine(s, p.found), s: p.found.cost.totalS });
      }
  // the reason names the two runners-up
  const next = others.sort((a, b) => a.s - b.s).map((o) => o.line);
  if (best !== null) return describe(i, best.s, best.p, best.tried, i.gpu ? next.slice(0, 2) : [], where);
  const last =
    smallest === null
      ? ""
      : `; the smallest, ${formatPolicy(smallest.est.e.plan.policy)}${smallest.s.offload === "spill" ? " + spill" : ""} with the state ${placeName(smallest.s.place)}, ` +
        `needs ${fmtGiB(smallest.est.gpuBytes)} of ${fmtGiB(usable(i))} ${where}` +
        (i.gpu ? ` and ${fmtGiB(smallest.est.e.hostBytes)} of ${fmtGiB(i.hostBytes)} pinned host memory` : "");
  throw new MemoryEstimateError(
    `${i.model.layers}-layer model at ${i.seq} tokens on cp=${i.cp} x dp=${i.dp} does not fit (${notes.join("; ")}${last}): ` +
      `use more ranks (--nprocs, --cp), a shorter --seq${i.gpu && i.optimizer === "device" ? ", or --optimizer host" : ""}`,
  );
}

/** "policy, state on the host, spill, tiled: ~4.41 s" for the alternatives the reason lists. */
function settingLine(s: Setting, p: PolicyChoice): string {
  const spill = s.offload === "spill" ? " + spill" : "";
  const tile = s.mlpChunkTokens === null ? "" : ", tiled MLP";
  const resident = isResident(s) ? ` (${RESIDENT})` : "";
  return `${formatPolicy(p.policy)}${spill}${tile} with the state ${placeName(s.place)}${resident} ~${p.cost.totalS.toFixed(2)} s`;
}

function describe(i: PlanInput, s: Setting, p: PolicyChoice, tried: string[], others: string[], where: string): RunPlan {
  const { e, gpuBytes } = p.est;
  const L = i.model.layers;
  const deviceLayers = s.offload === "spill" ? e.deviceLayers : L;
  const hostStateBytes = hostTerm(e, "optimizer state");
  const hostCheckpointBytes = hostTerm(e, "offloaded checkpoints");
  const why = [
    i.policy !== "auto" ? "--policy" : tried.length > 0 ? `faster ones do not fit (${tried.join(", ")})` : "the fastest policy fits",
    ...(others.length > 0 ? [`model step ~${p.cost.totalS.toFixed(2)} s against ${others.join(", ")}`] : []),
  ].join("; ");
  const spill =
    s.offload === "spill" ? ` + spill (checkpoints of ${deviceLayers} of ${L} layers on the GPU, the rest pinned on the host)` : "";
  const tile = s.mlpChunkTokens === null ? "" : `, tiled MLP (${s.mlpChunkTokens}-token chunks)`;
  const opt = i.gpu
    ? `, optimizer state ${s.place === "host" ? `in pinned host memory (streamed${isResident(s) ? `; ${RESIDENT}` : ""})` : "on the device"}`
    : "";
  const budget = i.gpu ? `${fmtGiB(usable(i))} usable (${fmtGiB(i.deviceBytes)})` : fmtGiB(i.deviceBytes);
  const hostLine = i.gpu
    ? `; host ${fmtGiB(hostStateBytes)} optimizer state + ${fmtGiB(hostCheckpointBytes)} spilled checkpoints = ${fmtGiB(e.hostBytes)} of ${fmtGiB(i.hostBytes)} pinned`
    : "";
  return {
    policy: p.policy,
    state: i.gpu ? s.place : "cpu",
    resident: i.gpu && s.place === "host" && s.resident,
    offload: s.offload,
    deviceLayers,
    mlpChunkTokens: s.mlpChunkTokens,
    lossChunkTokens: s.lossChunkTokens,
    gpuBytes,
    hostStateBytes,
    hostCheckpointBytes,
    reason: `${formatPolicy(p.policy)}${spill}${tile}${opt}: ${fmtGiB(gpuBytes)} of ${budget} ${where}; ${why}`,
    memory: `memory: ${i.gpu ? "GPU" : "rank"} ${fmtGiB(gpuBytes)} of ${budget} at the ${e.peakPhase} peak (${e.localTokens} local tokens)${hostLine}`,
  };
}
