// `--profile`: where a step's time goes, from one run. The step loop and the ZeRO hooks mark points of
// the step (its start, each layer's forward start and end, the loss, each layer's backward start and
// end, each sequence's end, the settle after the backward, the step's end); at each point a rank
// takes the host clock and, on a GPU, records a timing event on the compute stream. The events are
// read after the step's final synchronize, so profiling adds no host synchronization inside the step.
// `breakdown` turns one step's marks into phases (pure: the tests give it timestamps); `StepProfiler`
// records them (rank 0), prints one block per step and appends one JSON object to DIR/profile.jsonl.
//
// What an interval means is decided by the mark it starts at:
//   step start      -> setup: the label-count all-gather, the non-layer weights, the embedding
//   forward i       -> layer i's forward (from the moment its weights are in on the compute stream)
//   forward end i   -> the wait for the next layer's weights (the gather or host stream not hidden)
//   loss            -> the final norm, LM head + cross-entropy and their backward, the last layer's weights
//   backward i      -> layer i's backward, recompute included
//   backward end i  -> the wait for the next layer's weights; after layer 0: the embedding backward and
//                      the last hand-overs (backward-rest)
//   sequence end    -> tail: the compute stream waits for the comm stream's reduce-scatters and the
//                      per-layer updates (grads.settle); with micro-batches, first the next sequence's setup
//   settled         -> optimizer: the gradient norm, the after-backward update, the step's end; split
//                      by two marks inside it: normed (the sums of squares read back) and combined (the
//                      step's numbers all-gathered over the ranks), shown as the phase's three parts
// With a GPU clock, an interval whose host time is much longer than its GPU time is one in which the
// GPU ran ahead and then waited for the host (`gaps`; an interval holding a host synchronize shows the
// same while the GPU drains earlier work, so read it with the lags). The step starts with an idle GPU
// (the previous step ended with a synchronize), so the two clocks start together, and a mark's GPU
// time minus its host time is how far the GPU ran behind: near 0, it had caught up and waited.

import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { LayerKind } from "@lightseq/checkpointing";
import { Event, type Stream } from "@lightseq/cuda";

/** A point of the step (see the header). */
export type Mark =
  | { at: "step" }
  | { at: "forward"; layer: number }
  | { at: "forward-end"; layer: number }
  | { at: "loss" }
  | { at: "backward"; layer: number }
  | { at: "backward-end"; layer: number }
  | { at: "sequence-end" }
  | { at: "settled" }
  | { at: "normed" }
  | { at: "combined" }
  | { at: "end" };

export const PHASES = ["setup", "forward", "loss", "backward", "backward-rest", "tail", "optimizer"] as const;
export type Phase = (typeof PHASES)[number];

/** One interval between consecutive marks: its phase, the layer it belongs to and whether it waited for weights. */
export interface Interval {
  phase: Phase;
  layer: number | null;
  part: "compute" | "wait";
  hostMs: number;
  gpuMs: number | null;
}

export interface Stats {
  layers: number;
  sumMs: number;
  minMs: number;
  medianMs: number;
  maxMs: number;
}

export interface KindStats {
  kind: LayerKind;
  forward: Stats;
  backward: Stats;
}

export interface Gap {
  interval: string;
  hostMs: number;
  gpuMs: number;
  /** hostMs - gpuMs: how long the GPU waited for the host in this interval, at least. */
  excessMs: number;
}

export interface Breakdown {
  step: number;
  clock: "gpu" | "host";
  phases: Record<Phase, { hostMs: number; gpuMs: number | null }>;
  /** Per layer, summed over the step's sequences, on the breakdown's clock: compute, and the wait for its weights. */
  forwardMs: number[];
  forwardWaitMs: number[];
  backwardMs: number[];
  backwardWaitMs: number[];
  forward: Stats;
  backward: Stats;
  /** Per checkpoint kind, when the plan mixes kinds; else empty. */
  kinds: KindStats[];
  totalHostMs: number;
  totalGpuMs: number | null;
  gaps: Gap[];
  /**
   * GPU clock: how far the GPU ran behind the host at the phase boundaries, and the mark where it was
   * least behind (the step starts with an idle GPU, so both clocks start together: a lag near 0 means
   * the GPU had done everything the host had given it, and waited for more). Empty on the host clock.
   */
  lags: { mark: string; lagMs: number }[];
  leastLag: { mark: string; lagMs: number } | null;
  /** The optimizer phase's parts when its marks are there: settled -> normed -> combined -> end. */
  optimizerParts: { name: string; hostMs: number; gpuMs: number | null }[];
}

const OPTIMIZER_PARTS: readonly { from: Mark["at"]; to: Mark["at"]; name: string }[] = [
  { from: "settled", to: "normed", name: "sums of squares read" },
  { from: "normed", to: "combined", name: "step numbers all-gathered" },
  { from: "combined", to: "end", name: "update, step end" },
];

function optimizerParts(marks: readonly Mark[], hostMs: readonly number[], gpuMs: readonly number[] | null): Breakdown["optimizerParts"] {
  const at = (a: Mark["at"]) => marks.findIndex((m) => m.at === a);
  if (OPTIMIZER_PARTS.some((p) => at(p.from) < 0 || at(p.to) < 0)) return [];
  return OPTIMIZER_PARTS.map((p) => {
    const [i, j] = [at(p.from), at(p.to)];
    return {
      name: p.name,
      hostMs: (hostMs[j] as number) - (hostMs[i] as number),
      gpuMs: gpuMs ? (gpuMs[j] as number) - (gpuMs[i] as number) : null,
    };
  });
}

export function markName(m: Mark): string {
  return "layer" in m ? `${m.at} L${m.layer}` : m.at;
}

function classify(a: Mark, b: Mark): Omit<Interval, "hostMs" | "gpuMs"> {
  const bad = () => new Error(`profile: unexpected marks ${markName(a)} -> ${markName(b)} (a hook fired out of order)`);
  switch (a.at) {
    case "step":
      return { phase: "setup", layer: null, part: "compute" };
    case "forward":
      if (b.at !== "forward-end" || b.layer !== a.layer) throw bad();
      return { phase: "forward", layer: a.layer, part: "compute" };
    case "forward-end":
      if (b.at === "forward") return { phase: "forward", layer: b.layer, part: "wait" };
      if (b.at === "loss") return { phase: "loss", layer: null, part: "compute" };
      throw bad();
    case "loss":
      return { phase: "loss", layer: null, part: "compute" };
    case "backward":
      if (b.at !== "backward-end" || b.layer !== a.layer) throw bad();
      return { phase: "backward", layer: a.layer, part: "compute" };
    case "backward-end":
      if (b.at === "backward") return { phase: "backward", layer: b.layer, part: "wait" };
      if (b.at === "sequence-end") return { phase: "backward-rest", layer: null, part: "compute" };
      throw bad();
    case "sequence-end":
      if (b.at === "forward") return { phase: "setup", layer: null, part: "compute" };
      if (b.at === "settled") return { phase: "tail", layer: null, part: "compute" };
      throw bad();
    case "settled":
    case "normed":
    case "combined":
      if (b.at !== "normed" && b.at !== "combined" && b.at !== "end") throw bad();
      return { phase: "optimizer", layer: null, part: "compute" };
    case "end":
      throw bad();
    default:
      throw new Error(`profile: unknown mark ${JSON.stringify(a satisfies never)}`);
  }
}

/** The intervals between consecutive marks; hostMs / gpuMs are each mark's time since the step's start. */
export function intervals(marks: readonly Mark[], hostMs: readonly number[], gpuMs: readonly number[] | null): Interval[] {
  if (hostMs.length !== marks.length || (gpuMs && gpuMs.length !== marks.length))
    throw new Error(`profile: ${marks.length} marks but ${hostMs.length} host and ${gpuMs?.length ?? 0} GPU times`);
  const out: Interval[] = [];
  for (let k = 0; k + 1 < marks.length; k++) {
    const c = classify(marks[k] as Mark, marks[k + 1] as Mark);
    const d = (t: readonly number[]) => (t[k + 1] as number) - (t[k] as number);
    out.push({ ...c, hostMs: d(hostMs), gpuMs: gpuMs ? d(gpuMs) : null });
  }
  return out;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 === 1 ? (s[h] as number) : ((s[h - 1] as number) + (s[h] as number)) / 2;
}

export function stats(xs: readonly number[]): Stats {
  return {
    layers: xs.length,
    sumMs: xs.reduce((a, x) => a + x, 0),
    minMs: xs.length ? Math.min(...xs) : 0,
    medianMs: median(xs),
    maxMs: xs.length ? Math.max(...xs) : 0,
  };
}

function intervalName(iv: Interval): string {
  if (iv.layer === null) return iv.phase;
  return `${iv.phase}${iv.part === "wait" ? " wait" : ""} L${iv.layer}`;
}

/** The `n` intervals whose host time exceeds their GPU time most (only those exceeding it by more than minMs). */
export function largestGaps(ivs: readonly Interval[], n = 3, minMs = 0.05): Gap[] {
  const gaps: Gap[] = [];
  for (const iv of ivs) {
    if (iv.gpuMs === null) continue;
    const excessMs = iv.hostMs - iv.gpuMs;
    if (excessMs > minMs) gaps.push({ interval: intervalName(iv), hostMs: iv.hostMs, gpuMs: iv.gpuMs, excessMs });
  }
  return gaps.sort((a, b) => b.excessMs - a.excessMs).slice(0, n);
}

/** One step's phases, per-layer times (by checkpoint kind when `kinds` mixes them) and largest host-vs-GPU gaps. */
export function breakdown(
  step: number,
  marks: readonly Mark[],
  hostMs: readonly number[],
  gpuMs: readonly number[] | null,
  kinds: readonly LayerKind[],
): Breakdown {
  const ivs = intervals(marks, hostMs, gpuMs);
  const L = kinds.length;
  const phases = Object.fromEntries(PHASES.map((p) => [p, { hostMs: 0, gpuMs: gpuMs ? 0 : null }])) as Breakdown["phases"];
  const per = { forward: new Array(L).fill(0), backward: new Array(L).fill(0) };
  const wait = { forward: new Array(L).fill(0), backward: new Array(L).fill(0) };
  for (const iv of ivs) {
    const p = phases[iv.phase];
    p.hostMs += iv.hostMs;
    if (p.gpuMs !== null) p.gpuMs += iv.gpuMs as number;
    if (iv.layer === null || (iv.phase !== "forward" && iv.phase !== "backward")) continue;
    if (iv.layer < 0 || iv.layer >= L) throw new Error(`profile: layer ${iv.layer} outside the model's ${L} layers`);
    (iv.part === "wait" ? wait : per)[iv.phase][iv.layer] += iv.gpuMs ?? iv.hostMs;
  }
  const distinct = [...new Set(kinds)];
  const pick = (xs: number[], k: LayerKind) => xs.filter((_, i) => kinds[i] === k);
  const t = (ts: readonly number[] | null) => (ts ? (ts[ts.length - 1] as number) - (ts[0] as number) : null);
  return {
    step,
    clock: gpuMs ? "gpu" : "host",
    phases,
    forwardMs: per.forward,
    forwardWaitMs: wait.forward,
    backwardMs: per.backward,
    backwardWaitMs: wait.backward,
    forward: stats(per.forward),
    backward: stats(per.backward),
    kinds:
      distinct.length > 1
        ? distinct.map((k) => ({ kind: k, forward: stats(pick(per.forward, k)), backward: stats(pick(per.backward, k)) }))
        : [],
    totalHostMs: t(hostMs) as number,
    totalGpuMs: t(gpuMs),
    gaps: largestGaps(ivs),
    ...lagsOf(marks, hostMs, gpuMs),
    optimizerParts: optimizerParts(marks, hostMs, gpuMs),
  };
}

const LAG_AT: readonly Mark["at"][] = ["loss", "sequence-end", "settled"];

function lagsOf(marks: readonly Mark[], hostMs: readonly number[], gpuMs: readonly number[] | null): Pick<Breakdown, "lags" | "leastLag"> {
  if (!gpuMs) return { lags: [], leastLag: null };
  const lag = (k: number) => ({ mark: markName(marks[k] as Mark), lagMs: (gpuMs[k] as number) - (hostMs[k] as number) });
  const lags = LAG_AT.map((at) => marks.findIndex((m) => m.at === at))
    .filter((k) => k >= 0)
    .map(lag);
  // The end mark's host time is taken after the synchronize: not a lag.
  let leastLag: Breakdown["leastLag"] = null;
  for (let k = 1; k + 1 < marks.length; k++) {
    const l = lag(k);
    if (!leastLag || l.lagMs < leastLag.lagMs) leastLag = l;
  }
  return { lags, leastLag };
}

const ms = (x: number) => x.toFixed(1);
const spread = (s: Stats) => `${s.layers} layers ${ms(s.minMs)}/${ms(s.medianMs)}/${ms(s.maxMs)} min/med/max`;
const WHAT: Record<Phase, string> = {
  setup: "label count, non-layer weights, embedding",
  forward: "",
  loss: "LM head + cross-entropy + backward",
  backward: "",
  "backward-rest": "embedding backward, last hand-overs",
  tail: "backward end -> settle: exposed reduce-scatters and updates",
  optimizer: "norm, clip, update, step end",
};

/** The block printed after a profiled step's line: one row per phase, then the gaps. */
export function formatBreakdown(b: Breakdown): string {
  const gpu = b.clock === "gpu";
  const val = (p: { hostMs: number; gpuMs: number | null }) => (gpu ? `${ms(p.gpuMs as number)} [host ${ms(p.hostMs)}]` : ms(p.hostMs));
  const rows: string[] = [
    `profile step ${b.step} (${gpu ? "GPU clock, host in brackets" : "host clock only"}): total ${
      gpu ? `GPU ${ms(b.totalGpuMs as number)} ms vs host ${ms(b.totalHostMs)} ms` : `${ms(b.totalHostMs)} ms`
    }`,
  ];
  const w = Math.max(...PHASES.map((p) => val(b.phases[p]).length));
  for (const p of PHASES) {
    let what = WHAT[p];
    if (p === "forward" || p === "backward") {
      const s = p === "forward" ? b.forward : b.backward;
      const waits = (p === "forward" ? b.forwardWaitMs : b.backwardWaitMs).reduce((a, x) => a + x, 0);
      const byKind = b.kinds.map((k) => {
        const ks = p === "forward" ? k.forward : k.backward;
        return `${k.kind} x${ks.layers} ${ms(ks.sumMs)} (${ms(ks.minMs)}/${ms(ks.medianMs)}/${ms(ks.maxMs)})`;
      });
      what = [spread(s), ...byKind, `weight waits ${ms(waits)}`].join("; ");
    }
    if (p === "optimizer" && b.optimizerParts.length > 0) what += `: ${b.optimizerParts.map((o) => `${o.name} ${val(o)}`).join(", ")}`;
    rows.push(`  ${p.padEnd(13)} ${val(b.phases[p]).padStart(w)} ms  ${what}`);
  }
  rows.push(
    !gpu
      ? "  gaps: none measured (host clock only)"
      : b.gaps.length === 0
        ? "  gaps (host - GPU): none"
        : `  gaps (host - GPU): ${b.gaps.map((g) => `${g.interval} +${ms(g.excessMs)} (host ${ms(g.hostMs)}, GPU ${ms(g.gpuMs)})`).join("; ")}`,
  );
  if (gpu && b.leastLag)
    rows.push(
      `  GPU behind the host: ${b.lags.map((l) => `${l.mark} ${ms(l.lagMs)}`).join(", ")}; least at ${b.leastLag.mark} ${b.leastLag.lagMs.toFixed(2)} ms (near 0: the GPU waited for the host)`,
    );
  return rows.join("\n");
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;
const roundStats = (s: Stats) => ({
  layers: s.layers,
  sum_ms: r3(s.sumMs),
  min_ms: r3(s.minMs),
  median_ms: r3(s.medianMs),
  max_ms: r3(s.maxMs),
});

/** DIR/profile.jsonl's object of one step: the breakdown and every mark with its times. */
export function profileRecord(b: Breakdown, marks: readonly Mark[], hostMs: readonly number[], gpuMs: readonly number[] | null) {
  const arr = (xs: readonly number[]) => xs.map(r3);
  return {
    step: b.step,
    clock: b.clock,
    total_host_ms: r3(b.totalHostMs),
    total_gpu_ms: b.totalGpuMs === null ? null : r3(b.totalGpuMs),
    phases: Object.fromEntries(
      PHASES.map((p) => [p, { host_ms: r3(b.phases[p].hostMs), gpu_ms: b.phases[p].gpuMs === null ? null : r3(b.phases[p].gpuMs) }]),
    ),
    forward_ms: arr(b.forwardMs),
    forward_wait_ms: arr(b.forwardWaitMs),
    backward_ms: arr(b.backwardMs),
    backward_wait_ms: arr(b.backwardWaitMs),
    kinds: b.kinds.map((k) => ({ kind: k.kind, forward: roundStats(k.forward), backward: roundStats(k.backward) })),
    lags: b.lags.map((l) => ({ mark: l.mark, lag_ms: r3(l.lagMs) })),
    least_lag: b.leastLag && { mark: b.leastLag.mark, lag_ms: r3(b.leastLag.lagMs) },
    gaps: b.gaps.map((g) => ({ interval: g.interval, host_ms: r3(g.hostMs), gpu_ms: r3(g.gpuMs), excess_ms: r3(g.excessMs) })),
    optimizer_parts: b.optimizerParts.map((o) => ({ part: o.name, host_ms: r3(o.hostMs), gpu_ms: o.gpuMs === null ? null : r3(o.gpuMs) })),
    marks: marks.map((m, k) => ({ mark: markName(m), host_ms: r3(hostMs[k] as number), gpu_ms: gpuMs ? r3(gpuMs[k] as number) : null })),
  };
}

/**
 * Records one step's marks (rank 0 of a --profile run). The ZeRO hooks call layer / released / loss /
 * layerDone; the loop calls begin, sequenceEnd, settled, normed, combined, end (before its synchronize) and finish
 * (after it). GPU: one timing event per mark position, created the first time a step reaches it and
 * reused by every later step.
 */
export class StepProfiler implements Disposable {
  readonly #marks: Mark[] = [];
  readonly #host: number[] = [];
  readonly #events: Event[] = [];
  #active = false;
  #backward = false;
  #t0 = 0;
  readonly #seen: Uint8Array;
  readonly path: string;

  constructor(
    readonly kinds: readonly LayerKind[],
    readonly stream: Stream | null,
    dir: string,
    o: { resume: boolean },
  ) {
    this.#seen = new Uint8Array(kinds.length);
    mkdirSync(dir, { recursive: true });
    this.path = join(dir, "profile.jsonl");
    if (!o.resume) writeFileSync(this.path, "");
  }

  #mark(m: Mark): void {
    if (!this.#active) return;
    if (this.stream) {
      const k = this.#marks.length;
      if (k === this.#events.length) this.#events.push(Event.create(0, { timing: true }));
      (this.#events[k] as Event).record(this.stream);
    }
    this.#marks.push(m);
    this.#host.push(performance.now() - this.#t0);
  }

  begin(): void {
    this.#marks.length = 0;
    this.#host.length = 0;
    this.#t0 = performance.now();
    this.#active = true;
    this.#startSequence();
    this.#mark({ at: "step" });
  }

  #startSequence(): void {
    this.#backward = false;
    this.#seen.fill(0);
  }

  /** weights.onLayer: the forward asks for each layer once, the backward (after the loss) again. */
  layer(layer: number): void {
    if (!this.#backward) {
      this.#mark({ at: "forward", layer });
    } else if (!this.#seen[layer]) {
      this.#seen[layer] = 1;
      this.#mark({ at: "backward", layer });
    }
  }

  /** weights.onRelease: the end of a layer's forward (the backward's releases are not marks). */
  released(layer: number): void {
    if (!this.#backward) this.#mark({ at: "forward-end", layer });
  }

  /** grads.onNonLayer: the trunk is done, the loss begins. */
  loss(): void {
    this.#mark({ at: "loss" });
    this.#backward = true;
  }

  /** grads.onLayerDone. */
  layerDone(layer: number): void {
    this.#mark({ at: "backward-end", layer });
  }

  sequenceEnd(): void {
    this.#mark({ at: "sequence-end" });
    this.#startSequence();
  }

  settled(): void {
    this.#mark({ at: "settled" });
  }

  /** The sums of squares are read back (the host knows the gradient norm's parts). */
  normed(): void {
    this.#mark({ at: "normed" });
  }

  /** The step's numbers are all-gathered over the ranks. */
  combined(): void {
    this.#mark({ at: "combined" });
  }

  /** Before the step's final synchronize: the end event (GPU). */
  end(): void {
    this.#mark({ at: "end" });
    this.#active = false;
  }

  /** After the step's final synchronize: the end mark's host time, every event read, the block printed and logged. */
  finish(step: number): string {
    const last = this.#host.length - 1;
    if (last < 0 || this.#marks[last]?.at !== "end")
      throw new Error("profile: finish() without end() (call it after the step's synchronize)");
    this.#host[last] = performance.now() - this.#t0;
    let gpu: number[] | null = null;
    if (this.stream) {
      const first = this.#events[0] as Event;
      gpu = this.#marks.map((_, k) => (k === 0 ? 0 : first.elapsedMs(this.#events[k] as Event)));
    }
    // A mark order the breakdown does not know (a model that asks for weights differently) must not
    // end a run: the raw marks are still logged, and the block says what was wrong.
    let b: Breakdown;
    try {
      b = breakdown(step, this.#marks, this.#host, gpu, this.kinds);
    } catch (e) {
      const marks = this.#marks.map((m, k) => ({
        mark: markName(m),
        host_ms: r3(this.#host[k] as number),
        gpu_ms: gpu ? r3(gpu[k] as number) : null,
      }));
      appendFileSync(this.path, `${JSON.stringify({ step, error: (e as Error).message, marks })}\n`);
      return `profile step ${step}: ${(e as Error).message.replace(/^profile: /, "")}; raw marks in ${this.path}`;
    }
    appendFileSync(this.path, `${JSON.stringify(profileRecord(b, this.#marks, this.#host, gpu))}\n`);
    return formatBreakdown(b);
  }

  [Symbol.dispose](): void {
    for (const e of this.#events) e.dispose();
    this.#events.length = 0;
  }
}
