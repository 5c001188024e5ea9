// Memory estimator: the peak bytes one rank needs on its GPU and in host memory for a model shape,
// a sequence length, a mesh (cp sequence-parallel ranks x dp replicas), a checkpoint policy, where the
// kept tensors go (GPU, host, or GPU first then host) and where the optimizer state lives. Built from
// named terms a user can read (shared/reference/performance.md section 7 derives the same terms by hand
// for Llama-2-7B); `autoPolicy` picks the fastest plan that fits and says why, or refuses before any
// allocation with the terms that broke it.
//
// Assumptions, per rank with R = cp * dp ranks and T = ceil(seqLen / cp) local tokens:
// - ZeRO-3 over all R ranks (DESIGN.md section 4): each rank owns 1/R of every parameter as fp32
//   master + Adam m + v + an fp32 gradient shard = 16 B/param / R; a layer's bf16 weights exist only
//   gathered, two layers at a time (the current and the prefetched next), the embedding and head too.
//   With the optimizer in host memory the GPU keeps a bf16 weight shard (2 B/param / R, or none when
//   the weights stream from the host) and updates each layer as its gradients arrive, its state
//   streamed over PCIe: no whole-model gradient buffer (one micro-batch per step).
// - Optimizer "none" (forward and backward only: benchmarks, the local weight source and gradient
//   sink): every rank holds the whole model in bf16 and its whole f32 gradient, nothing gathered.
// - Activations in bf16, rstd and lse in f32. Every kept tensor is alive through the backward; on top
//   of them one phase at a time, and the peak is the largest phase: the loss (the LM head's chunk of
//   logits), a layer's MLP backward, or its attention backward (with the DistAttn buffers). A layer's
//   backward follows packages/llama/src/layer.ts: attention inputs recomputed first only when attention
//   itself is (full), then the MLP inputs, freed after the MLP backward, then the attention inputs.
//   (performance.md's table instead takes 1.5 x a layer's saved tensors and adds every term.)
// - Attention through DistAttn (MemoryPlan.attention; always with cp > 1, and the trainer's on one rank
//   too): its own buffers join the attention backward (cp > 1: the ring's; one rank: the f32 gradient
//   accumulators and one block's temporaries, distAttnOneRank) and a skip layer's re-forward.
// - A mixed policy (one kind per layer): the checkpoints are the sum of each layer's kept bytes; each
//   phase's working set is the largest over the kinds present; spill keeps the last layers on the GPU
//   by their own sizes, from the last layer down while they fit (at least two).
// - A skip layer (policy.ts) keeps nothing. Its backward first re-runs the forward of the layers
//   since the nearest kept x (a phase of its own: dy beside a forward that keeps nothing), then runs as
//   `full`'s with its recomputed input x alive too.
// - Runtime and allocator slack (CUDA context, cuBLAS workspace, NCCL buffers, fragmentation): 3 GiB.

import {
  bestMixed,
  type CheckpointPolicy,
  formatPolicy,
  inputSource,
  keptTensors,
  type LayerKind,
  layerKinds,
  type SavedName,
} from "./policy.ts";
import { distAttnOneRank, KiB, layerBackwardPhases, MLP_WIDE, type ModelShape, reforwardPhase, savedBytesPerToken } from "./working-set.ts";

/** Where the tensors a policy keeps go: the GPU, pinned host memory, or the GPU first and the host beyond. */
export type OffloadMode = "none" | "host" | "spill";

export interface MemoryPlan {
  readonly model: ModelShape;
  /** Tokens of one sequence (all cp ranks together). */
  readonly seqLen: number;
  readonly mesh: { readonly cp: number; readonly dp: number };
  readonly policy: CheckpointPolicy;
  readonly offload: OffloadMode;
  /**
   * fp32 master + Adam m, v: sharded on the GPUs, or in each rank's pinned host memory; "none": no
   * optimizer, whole bf16 weights and f32 gradients on every rank (forward/backward benchmarks).
   */
  readonly optimizer: "device" | "host" | "none";
  /** With the optimizer on the host: a bf16 weight shard stays on the GPU (default), or streams from the host. */
  readonly weights?: "device" | "host";
  /** Device memory one rank may use. */
  readonly deviceBytes: number;
  /** Host memory one rank may use (pinned); required when anything lives on the host. */
  readonly hostBytes?: number;
  /** Tokens per chunk of the fused LM head + cross-entropy (default 2048). */
  readonly lossChunkTokens?: number;
  /** Tiled MLP: the [T, ffn] intermediates exist for this many tokens at a time (default: untiled). */
  readonly mlpChunkTokens?: number;
  /** Runtime and allocator slack (default 3 GiB). */
  readonly runtimeBytes?: number;
  /**
   * How attention runs: "distattn" (DistAttn's zigzag schedule over the cp ranks, also over one rank:
   * the trainer's parallelize) or "local" (one backend call over the rows: localModel, one rank only).
   * Default: "distattn" with cp > 1, "local" with cp = 1.
   */
  readonly attention?: "distattn" | "local";
}

export interface MemoryTerm {
  readonly name: string;
  readonly bytes: number;
  /** How it is computed, in words and numbers. */
  readonly detail: string;
  /** Alive only during this phase of the step (the peak takes the largest phase); absent: always. */
  readonly phase?: Phase;
}

export type Phase = "loss" | "MLP backward" | "attention backward" | "skip re-forward";

export interface MemoryEstimate {
  readonly plan: MemoryPlan;
  readonly localTokens: number;
  readonly gpu: readonly MemoryTerm[];
  readonly host: readonly MemoryTerm[];
  /** The last this many layers keep their tensors on the GPU (OffloadOptions.deviceLayers): all, none (host) or the spill split. */
  readonly deviceLayers: number;
  /** The phase whose terms make the GPU peak. */
  readonly peakPhase: Phase;
  /** Always-alive GPU terms + the largest phase's. */
  readonly gpuBytes: number;
  readonly hostBytes: number;
  readonly fits: boolean;
  /** One line per budget exceeded, naming the largest terms; empty when it fits. */
  readonly overflows: readonly string[];
}

export class MemoryEstimateError extends Error {
  override name = "MemoryEstimateError";
}

const GiB = 2 ** 30;
export const DEFAULT_RUNTIME_BYTES = 3 * GiB;
export const DEFAULT_LOSS_CHUNK_TOKENS = 2048;

export function fmtGiB(bytes: number): string {
  return `${(bytes / GiB).toFixed(1)} GiB`;
}

/** Parameters of one decoder layer, of the embedding, and in total. */
export function paramCounts(m: ModelShape): { layer: number; embed: number; head: number; total: number } {
  const C = m.dim;
  const qo = 2 * m.heads * m.headDim * C;
  const kv = 2 * m.kvHeads * m.headDim * C;
  const layer = 2 * C + qo + kv + 3 * m.ffn * C;
  const embed = m.vocab * C;
  const head = m.tiedEmbeddings ? 0 : m.vocab * C;
  return { layer, embed, head, total: embed + head + C + m.layers * layer };
}

/** What a layer of kind k keeps; a tiled MLP never keeps gate|up and SwiGLU (they exist one chunk of tokens at a time: layer.ts). */
function keptNames(k: LayerKind, tiled: boolean): readonly SavedName[] {
  return keptTensors({ kind: k }).filter((n) => !(tiled && MLP_WIDE.includes(n)));
}

/** Kept bytes per local token of one layer of kind `k` (a tiled MLP keeps no gate|up or SwiGLU). */
export function keptBytesPerToken(m: ModelShape, k: LayerKind, tiled: boolean): number {
  return sumBytes(m, keptNames(k, tiled));
}

/** Bytes each layer keeps under `policy` for T local tokens (layer 0 first); the spill split and the checkpoint term sum these. */
export function keptLayerBytes(m: ModelShape, policy: CheckpointPolicy, T: number, mlpChunkTokens?: number): number[] {
  const tiled = mlpChunkTokens !== undefined && mlpChunkTokens < T;
  return layerKinds(policy, m.layers).map((k) => keptBytesPerToken(m, k, tiled) * T);
}

/** How many of the LAST layers fit in `deviceBytes`, taken from the last layer down while they fit. */
export function layersThatFit(layerBytes: readonly number[], deviceBytes: number): number {
  let used = 0;
  let n = 0;
  for (let i = layerBytes.length - 1; i >= 0; i--) {
    used += layerBytes[i] as number;
    if (used > deviceBytes) break;
    n++;
  }
  return n;
}

function sumBytes(m: ModelShape, names: readonly SavedName[]): number {
  return names.reduce((s, n) => s + savedBytesPerToken(m, n), 0);
}

function positiveInt(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v <= 0) throw new MemoryEstimateError(`memory plan: ${what} must be a positive integer, got ${v}`);
}

const term = (name: string, bytes: number, detail: string, phase?: Phase): MemoryTerm => ({
  name,
  bytes,
  detail,
  ...(phase === undefined ? {} : { phase }),
});

const PHASES: readonly Phase[] = ["loss", "MLP backward", "attention backward", "skip re-forward"];

/** Always-alive terms plus the largest phase's terms. */
function peakOf(terms: readonly MemoryTerm[]): { bytes: number; phase: Phase } {
  const always = terms.filter((t) => t.phase === undefined).reduce((s, t) => s + t.bytes, 0);
  let best: { bytes: number; phase: Phase } = { bytes: -1, phase: "loss" };
  for (const phase of PHASES) {
    const b = terms.filter((t) => t.phase === phase).reduce((s, t) => s + t.bytes, 0);
    if (b > best.bytes) best = { bytes: b, phase };
  }
  return { bytes: always + best.bytes, phase: best.phase };
}

/** The estimate of one plan: every term on the GPU and the host, and whether it fits the budgets. */
export function estimateMemory(plan: MemoryPlan): MemoryEstimate {
  const { model: m, mesh, policy } = plan;
  positiveInt(plan.seqLen, "seqLen");
  positiveInt(mesh.cp, "mesh.cp");
  positiveInt(mesh.dp, "mesh.dp");
  positiveInt(plan.deviceBytes, "deviceBytes");
  const R = mesh.cp * mesh.dp;
  const T = Math.ceil(plan.seqLen / mesh.cp);
  const attention = plan.attention ?? (mesh.cp > 1 ? "distattn" : "local");
  if (attention !== "distattn" && attention !== "local")
    throw new MemoryEstimateError(`memory plan: attention must be "distattn" or "local", got ${JSON.stringify(attention)}`);
  if (attention === "local" && mesh.cp > 1)
    throw new MemoryEstimateError(`memory plan: attention "local" covers one rank's rows only; cp = ${mesh.cp} runs DistAttn`);
  const L = m.layers;
  const p = paramCounts(m);
  const weightsOnHost = plan.optimizer === "host" && plan.weights === "host";
  if (plan.weights === "host" && plan.optimizer !== "host") {
    throw new MemoryEstimateError(
      'memory plan: weights "host" streams the bf16 weights next to a host optimizer; use optimizer "host" too',
    );
  }
  const gpu: MemoryTerm[] = [];
  const host: MemoryTerm[] = [];

  // model states
  if (plan.optimizer === "none") {
    gpu.push(term("bf16 weights", 2 * p.total, `2 B x ${p.total} params, whole on every rank`));
    gpu.push(term("f32 gradients", 4 * p.total, `4 B x ${p.total} params, whole on every rank`));
  } else if (plan.optimizer === "device") {
    gpu.push(
      term("model states", (16 * p.total) / R, `fp32 master + Adam m, v + fp32 gradient shard: 16 B x ${p.total} params / ${R} ranks`),
    );
  } else {
    if (!weightsOnHost) gpu.push(term("bf16 weight shard", (2 * p.total) / R, `2 B x ${p.total} params / ${R} ranks`));
    gpu.push(
      term(
        "optimizer stream buffers",
        (2 * 12 * p.layer) / R,
        `one layer's fp32 master + m + v shard in and out: 2 x 12 B x ${p.layer} / ${R}`,
      ),
    );
    host.push(term("optimizer state", (12 * p.total) / R, `fp32 master + Adam m, v: 12 B x ${p.total} params / ${R} ranks, pinned`));
    if (weightsOnHost) {
      host.push(term("bf16 weights", (2 * p.total) / R, `2 B x ${p.total} params / ${R} ranks, pinned`));
      gpu.push(
        term("weight stream buffers", (2 * 2 * p.layer) / R, `one layer's bf16 shard, double-buffered: 2 x 2 B x ${p.layer} / ${R}`),
      );
    }
  }
  if (plan.optimizer !== "none") {
    gpu.push(
      term(
        "gathered weights",
        2 * (2 * p.layer) + 2 * (p.embed + p.head),
        `bf16 of two layers (current + prefetched) and of the embedding${m.tiedEmbeddings ? " (tied head)" : " and head"}`,
      ),
    );
    gpu.push(term("layer gradients", 4 * p.layer, `one layer's fp32 weight gradients before their reduce-scatter: 4 B x ${p.layer}`));
  }

  // activations: each layer keeps its own kind's tensors (a mixed policy names one kind per layer)
  const tile = plan.mlpChunkTokens;
  if (tile !== undefined) positiveInt(tile, "mlpChunkTokens");
  const tiled = tile !== undefined && tile < T;
  const kinds = layerKinds(policy, L);
  const present = [...new Set(kinds)]; // the kinds of the layers, layer 0's first
  const keptOf = (k: LayerKind) => keptNames(k, tiled);
  const layerBytes = keptLayerBytes(m, policy, T, tile);
  const keptTotal = layerBytes.reduce((a, b) => a + b, 0);
  const perToken = (k: LayerKind) => `${KiB(sumBytes(m, keptOf(k)))} per token (${keptOf(k).join(", ")})`;
  const keptLine =
    policy.kind === "mixed"
      ? `${formatPolicy(policy)}: ${present.map((k) => `${k} ${perToken(k)}`).join(", ")} per layer x ${T} tokens`
      : `${keptOf(policy.kind).join(", ")}: ${KiB(sumBytes(m, keptOf(policy.kind)))} per token per layer x ${T} tokens x ${L} layers`;
  let gpuKept = keptTotal;
  let hostKept = 0;
  let deviceLayers = L;
  if (plan.offload === "host") {
    // the layer being copied out or in, and the next: the largest two adjacent layers
    gpuKept = L === 1 ? keptTotal : Math.max(...layerBytes.slice(1).map((b, i) => b + (layerBytes[i] as number)));
    hostKept = keptTotal;
    deviceLayers = 0;
  }
  // (the spill split is decided once everything else on the GPU is known, below)

  // each phase's working set: the largest over the kinds present
  const phases = present.map((k) => ({ k, ...layerBackwardPhases(m, keptOf(k), T, tiled ? tile : T) }));
  const worst = (f: (p: (typeof phases)[number]) => { bytes: number; detail: string }) => {
    const w = phases.reduce((a, b) => (f(b).bytes > f(a).bytes ? b : a));
    return { bytes: f(w).bytes, detail: present.length > 1 ? `${w.k} layers: ${f(w).detail}` : f(w).detail };
  };
  const mlpPhase = worst((p) => p.mlp);
  const attnPhase = worst((p) => p.attention);
  gpu.push(term("working set (MLP backward)", mlpPhase.bytes, mlpPhase.detail, "MLP backward"));
  gpu.push(term("working set (attention backward)", attnPhase.bytes, attnPhase.detail, "attention backward"));
  const skipping = kinds.includes("skip");
  if (skipping) {
    // a run of skips re-runs the layers after the kept x too: their inputs are the re-run's own
    const ownInput = kinds.some((k, i) => k === "skip" && inputSource(kinds, i) < i - 1);
    const r = reforwardPhase(m, T, tiled ? tile : T, ownInput);
    gpu.push(term("working set (skip re-forward)", r.bytes, r.detail, "skip re-forward"));
  }
  if (mesh.cp > 1) {
    const q = m.heads * m.headDim;
    const kv = m.kvHeads * m.headDim;
    const perToken = 2 * 2 * kv * 2 + 2 * 2 * kv * 4 + q * 4;
    const detail = `K,V bf16 current + next, dK,dV f32 current + next, dQ f32: ${KiB(perToken)} per token`;
    gpu.push(term("DistAttn buffers", perToken * T, detail, "attention backward"));
    // the re-forward's attention communicates too; the backward's buffers bound what it needs
    if (skipping) gpu.push(term("DistAttn buffers (re-forward)", perToken * T, `at most the backward's: ${detail}`, "skip re-forward"));
  } else if (attention === "distattn") {
    const d = distAttnOneRank(m, T);
    gpu.push(
      term(
        "DistAttn buffers (one rank)",
        d.backward,
        `dq, dk, dv f32 accumulators, a ${Math.ceil(T / 2)}-row block's bf16 gradients and cuDNN dQ accumulator: ${KiB(d.backward / T)} per token beyond the layer's`,
        "attention backward",
      ),
    );
    if (skipping)
      gpu.push(
        term(
          "DistAttn buffers (one rank, re-forward)",
          d.forward,
          `f32 partial o, lse of both chunks and a block's: ${KiB(d.forward / T)} per token`,
          "skip re-forward",
        ),
      );
  }
  const chunk = Math.min(plan.lossChunkTokens ?? DEFAULT_LOSS_CHUNK_TOKENS, T);
  positiveInt(chunk, "lossChunkTokens");
  gpu.push(
    term(
      "loss chunk",
      8 * m.vocab * chunk + (3 * 2 * m.dim + 4) * T,
      `f32 logits + their gradient for ${chunk} tokens x ${m.vocab} vocab; the last layer's output, the final norm's output and its gradient [T, dim] bf16`,
      "loss",
    ),
  );
  gpu.push(
    term(
      "runtime and allocator slack",
      plan.runtimeBytes ?? DEFAULT_RUNTIME_BYTES,
      "CUDA context, cuBLAS workspace, NCCL buffers, fragmentation",
    ),
  );

  const otherGpu = peakOf(gpu).bytes;
  if (plan.offload === "spill") {
    // the last layers first (their backward comes first), each by its own size, at least two
    const free = Math.max(0, plan.deviceBytes - otherGpu);
    deviceLayers = Math.max(Math.min(L, 2), layersThatFit(layerBytes, free));
    gpuKept = layerBytes.slice(L - deviceLayers).reduce((a, b) => a + b, 0);
    hostKept = keptTotal - gpuKept;
    gpu.push(term("checkpoints", gpuKept, `the last ${deviceLayers} of ${L} layers on the GPU (spill: GPU first); ${keptLine}`));
  } else {
    gpu.push(term("checkpoints", gpuKept, plan.offload === "host" ? `two layers in flight to or from the host; ${keptLine}` : keptLine));
  }
  if (hostKept > 0)
    host.push(
      term(
        "offloaded checkpoints",
        hostKept,
        plan.offload === "spill" ? "the layers beyond the GPU's share, pinned" : `${keptLine}, pinned`,
      ),
    );

  const { bytes: gpuBytes, phase: peakPhase } = peakOf(gpu);
  const hostBytes = host.reduce((s, t) => s + t.bytes, 0);
  const overflows: string[] = [];
  const largest = (ts: MemoryTerm[]) =>
    [...ts]
      .sort((a, b) => b.bytes - a.bytes)
      .map((t) => `${t.name} ${fmtGiB(t.bytes)}`)
      .join(", ");
  if (gpuBytes > plan.deviceBytes) {
    const atPeak = gpu.filter((t) => t.phase === undefined || t.phase === peakPhase);
    overflows.push(`GPU: needs ${fmtGiB(gpuBytes)} of ${fmtGiB(plan.deviceBytes)} (${largest(atPeak)})`);
  }
  if (hostBytes > 0 && plan.hostBytes === undefined) {
    overflows.push(`host: needs ${fmtGiB(hostBytes)} but the plan gives no hostBytes (${largest(host)})`);
  } else if (plan.hostBytes !== undefined && hostBytes > plan.hostBytes) {
    overflows.push(`host: needs ${fmtGiB(hostBytes)} of ${fmtGiB(plan.hostBytes)} (${largest(host)})`);
  }
  return {
    plan,
    localTokens: T,
    gpu,
    host,
    peakPhase,
    gpuBytes,
    hostBytes,
    deviceLayers,
    fits: overflows.length === 0,
    overflows,
  };
}

/** A readable table of an estimate's terms. */
export function formatEstimate(e: MemoryEstimate): string {
  const lines = [
    `memory per rank (${formatPolicy(e.plan.policy)}, offload ${e.plan.offload}, optimizer on ${e.plan.optimizer}, ${e.localTokens} local tokens):`,
  ];
  for (const [where, terms, total] of [
    ["GPU", e.gpu, e.gpuBytes],
    ["host", e.host, e.hostBytes],
  ] as const) {
    if (terms.length === 0) continue;
    for (const t of terms) {
      const when = t.phase === undefined ? "" : `[${t.phase}${t.phase === e.peakPhase ? ", the peak" : ""}] `;
      lines.push(`  ${where.padEnd(4)} ${t.name.padEnd(32)} ${fmtGiB(t.bytes).padStart(10)}  ${when}${t.detail}`);
    }
    const how = where === "GPU" ? ` (always-alive terms + the ${e.peakPhase} phase)` : "";
    lines.push(`  ${where.padEnd(4)} ${"peak".padEnd(32)} ${fmtGiB(total).padStart(10)}${how}`);
  }
  for (const o of e.overflows) lines.push(`  does not fit: ${o}`);
  return lines.join("\n");
}

/**
 * The offload modes tried for a policy, GPU first: a policy with a `none` layer is never offloaded
 * (its ~130 KiB per token per layer each way per step would bound the step by PCIe); the others may
 * spill their first layers to the host when there is a host budget (the copies overlap compute).
 */
function offloadsFor(p: CheckpointPolicy, layers: number, hostBudget: boolean): readonly OffloadMode[] {
  return hostBudget && !layerKinds(p, layers).includes("none") ? ["none", "spill"] : ["none"];
}

export interface AutoChoice {
  readonly policy: CheckpointPolicy;
  readonly offload: OffloadMode;
  readonly estimate: MemoryEstimate;
  readonly reason: string;
}

const planName = (c: { policy: CheckpointPolicy; offload: OffloadMode }) =>
  c.offload === "none" ? formatPolicy(c.policy) : `${formatPolicy(c.policy)} + ${c.offload} offload`;

/**
 * The family of a mix bestMixed tries and how far it is from fitting (the smaller, the nearer): a
 * two-kind mix by its kinds and the size of its cheap (last) part; full with skip layers by the layers
 * that do not skip. Null for a uniform policy.
 */
function mixShape(p: CheckpointPolicy): { family: string; distance: number } | null {
  if (p.kind !== "mixed") return null;
  const skips = p.layers.filter((k) => k === "skip").length;
  if (skips > 0) return { family: "skip", distance: p.layers.length - skips };
  const first = p.layers[0] as LayerKind;
  const last = p.layers[p.layers.length - 1] as LayerKind;
  return { family: `${first}/${last}`, distance: p.layers.length - p.layers.indexOf(last) };
}

/**
 * The fastest plan that fits, with the reason (what it needs, and which faster ones did not fit).
 * Fastest first (bestMixed): none; remat-aware with as many last layers under none as fit;
 * remat-aware, on the GPU then spilled; full with as many last layers under remat-aware as fit, on
 * the GPU then spilled; full, on the GPU then spilled; full with as few odd layers skipping as fit. A policy is tried with each of its offload
 * modes (offloadsFor), the GPU first. Throws MemoryEstimateError when nothing fits, with the terms of
 * the smallest candidate.
 */
export function autoPolicy(base: Omit<MemoryPlan, "policy" | "offload">): AutoChoice {
  const L = base.model.layers;
  const failed: { policy: CheckpointPolicy; line: string }[] = [];
  const fitted = new Map<CheckpointPolicy, { offload: OffloadMode; estimate: MemoryEstimate }>();
  let last: MemoryEstimate | null = null;
  const best = bestMixed(L, (policy) => {
    for (const offload of offloadsFor(policy, L, base.hostBytes !== undefined)) {
      const e = estimateMemory({ ...base, policy, offload });
      last = e;
      if (e.fits) {
        fitted.set(policy, { offload, estimate: e });
        return true;
      }
      failed.push({ policy, line: `${planName({ policy, offload })} needs ${e.overflows.map((o) => o.split(" (")[0]).join(", ")}` });
    }
    return false;
  });
  const chosen = best === null ? undefined : fitted.get(best);
  if (best !== null && chosen !== undefined) {
    const { offload, estimate: e } = chosen;
    // of each mix tried, the one nearest to fitting (the fewest cheap layers, the most skips) says what did not fit
    const nearest = new Map<string, number>();
    for (const f of failed) {
      const s = mixShape(f.policy);
      if (s !== null) nearest.set(s.family, Math.min(nearest.get(s.family) ?? L, s.distance));
    }
    const tried = failed
      .filter((f) => {
        const s = mixShape(f.policy);
        return s === null || nearest.get(s.family) === s.distance;
      })
      .map((f) => f.line);
    const why = tried.length === 0 ? "the fastest policy fits" : `faster ones do not fit: ${tried.join("; ")}`;
    const c = { policy: best, offload };
    return {
      ...c,
      estimate: e,
      reason: `${planName(c)}: ${fmtGiB(e.gpuBytes)} of ${fmtGiB(base.deviceBytes)} on the GPU${e.hostBytes > 0 ? `, ${fmtGiB(e.hostBytes)} on the host` : ""}; ${why}`,
    };
  }
  const smallest = last as MemoryEstimate | null;
  const hints = ["more sequence-parallel ranks (cp)"];
  if (base.optimizer === "device") hints.push('the optimizer on the host (optimizer "host")');
  if (base.hostBytes === undefined) hints.push("a host budget (hostBytes) so checkpoints can spill");
  if (base.mlpChunkTokens === undefined) hints.push("a tiled MLP (mlpChunkTokens)");
  throw new MemoryEstimateError(
    `no checkpoint policy fits ${base.seqLen} tokens on cp=${base.mesh.cp} x dp=${base.mesh.dp} ranks: ` +
      `the smallest, ${smallest === null ? "?" : planName(smallest.plan)}, overflows ${smallest?.overflows.join("; ")}. Try ${hints.join(", or ")}`,
  );
}
