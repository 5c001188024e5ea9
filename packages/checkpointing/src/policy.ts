// Activation checkpointing policies (DESIGN.md section 6, reference/lightseq.md: the checkpoint
// boundary). A policy says which of a decoder layer's saved tensors the forward keeps; the backward
// recomputes the rest from what was kept. The names are the layer's (llama-contract.md):
//   x      layer input                      rstd1, xn  attention RMSNorm (rstd f32 [T], xn [T, C])
//   q k v  after RoPE                       o, lse     attention output and its log-sum-exp
//   h      after the attention residual     rstd2, hn  MLP RMSNorm
//   gu     gate|up GEMM output [T, 2F]      a          SwiGLU output [T, F]
// What each uniform policy recomputes in the backward:
//   none         nothing;
//   full         the whole layer from x: norm + QKV + RoPE, attention forward (and its communication),
//                o-proj + residual + MLP;
//   remat-aware  norm + QKV + RoPE and o-proj + residual + MLP from x, o and lse: attention forward
//                runs once per layer (LightSeq's boundary after the attention core).
// One more kind exists per layer only: `skip` keeps nothing, not even x. Before its backward the model
// re-runs the forward of the layers from the nearest earlier layer that kept x (every other kind
// does) up to it, keeping nothing, to get its input back; then its backward recomputes as `full`
// does. So a skip layer's input x_i costs the forward of layer i-1 again (of each layer since the
// kept x, for a run of skips), attention and its communication included, and halves what `full`
// keeps when every other layer skips. Layer 0 never skips: its input is the embedding's output, which
// nothing keeps (the model does not re-run the embedding); so no uniform `skip` exists either.
// A mixed policy names one of these per layer, so a run skips recompute on as many layers as memory
// allows. The cheaper kind goes on the LAST layers (`mixedPolicy`): their tensors are the first the
// backward uses and frees, and with spill (offload.ts) they are the ones kept on the device.

export const SAVED_NAMES = ["x", "rstd1", "xn", "q", "k", "v", "o", "lse", "h", "rstd2", "hn", "gu", "a"] as const;
export type SavedName = (typeof SAVED_NAMES)[number];

/** One kind for every layer. */
export type UniformPolicy = { readonly kind: "none" } | { readonly kind: "full" } | { readonly kind: "remat-aware" };
export type UniformKind = UniformPolicy["kind"];
/** The kinds a whole-model policy can name. */
export type PolicyKind = UniformKind;
export const POLICY_KINDS: readonly UniformKind[] = ["none", "full", "remat-aware"];
/** What one layer runs: a uniform kind, or `skip` (keeps nothing; see the header). */
export type LayerPolicy = UniformPolicy | { readonly kind: "skip" };
export type LayerKind = LayerPolicy["kind"];
export const LAYER_KINDS: readonly LayerKind[] = [...POLICY_KINDS, "skip"];

/** `layers[i]` is layer i's kind; its length is the model's layer count; layers[0] is not `skip`. */
export interface MixedPolicy {
  readonly kind: "mixed";
  readonly layers: readonly LayerKind[];
}
export type CheckpointPolicy = UniformPolicy | MixedPolicy;

/** The tensors of one layer that the forward keeps under `policy`. */
export function keptTensors(policy: LayerPolicy): readonly SavedName[] {
  switch (policy.kind) {
    case "none":
      return SAVED_NAMES;
    case "full":
      return ["x"];
    case "remat-aware":
      return ["x", "o", "lse"];
    case "skip":
      return [];
    default:
      return unknownPolicy(policy);
  }
}

function unknownPolicy(p: never): never {
  throw new TypeError(`checkpoint policy: expected kind ${LAYER_KINDS.map((k) => `"${k}"`).join(", ")}, got ${JSON.stringify(p)}`);
}

const SKIP_UNIFORM =
  "skip cannot be every layer's kind: a skip layer re-runs the forward from an earlier layer's kept input, so other layers must keep theirs (e.g. (full, skip) x16)";
const SKIP_FIRST =
  "layer 0 cannot be skip: its input is the embedding's output, which no layer keeps and the model does not re-run; give layer 0 a kind that keeps x (none, full, remat-aware)";

function layerOf(kind: string): LayerPolicy {
  switch (kind) {
    case "none":
    case "full":
    case "remat-aware":
    case "skip":
      return { kind };
    default:
      throw new TypeError(`checkpoint policy: expected kind ${LAYER_KINDS.map((k) => `"${k}"`).join(", ")}, got ${JSON.stringify(kind)}`);
  }
}

function uniform(kind: string): UniformPolicy {
  const p = layerOf(kind);
  if (p.kind === "skip") throw new TypeError(`checkpoint policy: ${SKIP_UNIFORM}`);
  return p;
}

/** Layer i's kind under `p` for a model of `layers` layers; a mixed policy of another length is an error. */
export function layerPolicy(p: CheckpointPolicy, layer: number, layers: number): LayerPolicy {
  if (!Number.isSafeInteger(layer) || layer < 0 || layer >= layers)
    throw new RangeError(`checkpoint policy: layer must be an integer in [0, ${layers}), got ${layer}`);
  switch (p.kind) {
    case "none":
    case "full":
    case "remat-aware":
      return p;
    case "mixed":
      if (p.layers.length !== layers)
        throw new RangeError(`checkpoint policy ${formatPolicy(p)} names ${p.layers.length} layers, the model has ${layers}`);
      if (p.layers[0] === "skip") throw new TypeError(`checkpoint policy ${formatPolicy(p)}: ${SKIP_FIRST}`);
      return layerOf(p.layers[layer] as string);
    default:
      return unknownPolicy(p);
  }
}

/** Every layer's kind under `p` (layer 0 first). */
export function layerKinds(p: CheckpointPolicy, layers: number): LayerKind[] {
  return Array.from({ length: layers }, (_, i) => layerPolicy(p, i, layers).kind);
}

/** The tensors layer i keeps under `p`. */
export function keptTensorsOf(p: CheckpointPolicy, layer: number, layers: number): readonly SavedName[] {
  return keptTensors(layerPolicy(p, layer, layers));
}

/** A policy from per-layer kinds: uniform when they are all one kind; `skip` on layer 0 (or everywhere) is refused. */
export function policyOfKinds(kinds: readonly LayerKind[]): CheckpointPolicy {
  if (kinds.length === 0) throw new RangeError("checkpoint policy: a mixed policy needs at least one layer");
  for (const k of kinds) layerOf(k);
  if (kinds.every((k) => k === kinds[0])) return uniform(kinds[0] as string);
  if (kinds[0] === "skip") throw new TypeError(`checkpoint policy ${formatPolicy({ kind: "mixed", layers: kinds })}: ${SKIP_FIRST}`);
  return { kind: "mixed", layers: [...kinds] };
}

/** For a skip layer i, the nearest earlier layer that keeps its input x (the backward re-runs the forward from there); i itself otherwise. */
export function inputSource(kinds: readonly LayerKind[], i: number): number {
  let j = i;
  while (j >= 0 && kinds[j] === "skip") j--;
  if (j < 0) throw new TypeError(`checkpoint policy: ${SKIP_FIRST}`);
  return j;
}

/** `full` on every layer but skip on the odd layers 1, 3, ..., 2k - 1 (bestMixed's last family). */
export function skipPolicy(layers: number, k: number): CheckpointPolicy {
  if (!Number.isSafeInteger(k) || k < 0 || 2 * k > layers)
    throw new RangeError(`skipPolicy: k must be an integer in [0, ${Math.floor(layers / 2)}] (skip layers, on the odd ones), got ${k}`);
  return policyOfKinds(Array.from({ length: layers }, (_, i) => (i % 2 === 1 && i < 2 * k ? "skip" : "full")));
}

/**
 * `firstKind` for layers [0, layers - lastCount), `lastKind` for the last `lastCount`; uniform when
 * either part is empty (or both kinds are one).
 */
export function mixedPolicy(layers: number, lastKind: UniformKind, lastCount: number, firstKind: UniformKind): CheckpointPolicy {
  if (!Number.isSafeInteger(layers) || layers <= 0)
    throw new RangeError(`mixedPolicy: layers must be a positive integer (the model's decoder layers), got ${layers}`);
  if (!Number.isSafeInteger(lastCount) || lastCount < 0 || lastCount > layers)
    throw new RangeError(`mixedPolicy: lastCount must be an integer in [0, ${layers}], got ${lastCount}`);
  return policyOfKinds(Array.from({ length: layers }, (_, i) => (i >= layers - lastCount ? lastKind : firstKind)));
}

interface Run {
  kind: LayerKind;
  count: number;
}

/** Runs of equal kinds, layer 0 first. */
function runs(kinds: readonly LayerKind[]): Run[] {
  const out: Run[] = [];
  for (const kind of kinds) {
    const last = out[out.length - 1];
    if (last?.kind === kind) last.count++;
    else out.push({ kind, count: 1 });
  }
  return out;
}

/** Longest group of runs that formatPolicy writes as one repeated "(a, b) xN". */
const MAX_GROUP = 4;

/** How many times runs[at, at + q) repeats back to back from `at`. */
function repeats(rs: readonly Run[], at: number, q: number): number {
  let r = 1;
  const same = (a: Run | undefined, b: Run | undefined) => a !== undefined && b !== undefined && a.kind === b.kind && a.count === b.count;
  for (;;) {
    const next = at + r * q;
    if (next + q > rs.length) return r;
    for (let j = 0; j < q; j++) if (!same(rs[at + j], rs[next + j])) return r;
    r++;
  }
}

/**
 * The short form: "none", "remat-aware x8 + none x24" (layer 0 first), and a repeated group of runs as
 * one part: "(full, skip) x12 + full x8" (an element's count is written when it is not 1). parsePolicy
 * reads it back.
 */
export function formatPolicy(p: CheckpointPolicy): string {
  switch (p.kind) {
    case "none":
    case "full":
    case "remat-aware":
      return p.kind;
    case "mixed": {
      const rs = runs(p.layers);
      const parts: string[] = [];
      for (let at = 0; at < rs.length; ) {
        // the group covering the most runs by repeating (the shorter on a tie)
        let best = { q: 1, r: 1 };
        for (let q = 2; q <= MAX_GROUP; q++) {
          const r = repeats(rs, at, q);
          if (r >= 2 && q * r > best.q * best.r) best = { q, r };
        }
        if (best.q === 1) {
          const run = rs[at] as Run;
          parts.push(`${run.kind} x${run.count}`);
        } else {
          const group = rs.slice(at, at + best.q).map((g) => (g.count === 1 ? g.kind : `${g.kind} x${g.count}`));
          parts.push(`(${group.join(", ")}) x${best.r}`);
        }
        at += best.q * best.r;
      }
      return parts.join(" + ");
    }
    default:
      return unknownPolicy(p);
  }
}

const MIX_EXAMPLE = "remat-aware*8,none*24";
/** One part of a mixed spec: `kind*count` (command line) or `kind xcount` (formatPolicy's form). */
const PART = /^([^\s*(),]+)\s*(?:\*|\s+x)\s*(\S+)$/;
/** A repeated group: `(kind*count, kind, ...)*count` or `(kind xcount, kind, ...) xcount`; an element's count may be left out (1). */
const GROUP = /^\(([^()]*)\)\s*(?:\*|x)\s*(\S+)$/;
const ELEMENT = /^([^\s*(),]+)(?:\s*(?:\*|\s+x)\s*(\S+))?$/;
/** More than any model has: a bound before a spec is expanded to one entry per layer. */
const MAX_LAYERS = 1 << 16;

/** The top-level parts of a spec: split at `,` and `+` outside parentheses. */
function topParts(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (depth === 0 && (c === "," || c === "+")) {
      out.push(s.slice(from, i));
      from = i + 1;
    }
  }
  out.push(s.slice(from));
  return out;
}

/**
 * A policy from its name (command line, config): `none`, `full`, `remat-aware`, or a per-layer mix
 * from layer 0 on, `remat-aware*8,none*24` (formatPolicy's `remat-aware x8 + none x24` too), with
 * repeated groups `(full, skip)*16` / `(full, skip) x16` and the per-layer kind `skip` (never on
 * layer 0, never uniform). With `layers` (the model's), a mix must cover exactly that many. Errors
 * name the bad part.
 */
export function parsePolicy(spec: string, layers?: number): CheckpointPolicy {
  const s = spec.trim();
  if ((LAYER_KINDS as readonly string[]).includes(s)) return uniform(s);
  if (!/[*,+(]|\sx/.test(s))
    throw new TypeError(
      `checkpoint policy: expected one of ${POLICY_KINDS.join(", ")}, or a per-layer mix such as ${MIX_EXAMPLE}, got ${JSON.stringify(spec)}`,
    );
  const kinds: LayerKind[] = [];
  let total = 0;
  const bound = () => {
    if (total > MAX_LAYERS) throw new RangeError(`checkpoint policy ${JSON.stringify(spec)}: ${total} layers (at most ${MAX_LAYERS})`);
  };
  for (const raw of topParts(s)) {
    const part = raw.trim();
    const bad = (why: string) => new TypeError(`checkpoint policy ${JSON.stringify(spec)}: part ${JSON.stringify(part)}: ${why}`);
    const countOf = (c: string) => {
      if (!/^[1-9]\d{0,8}$/.test(c)) throw bad(`the layer count must be a positive integer, got "${c}"`);
      return Number(c);
    };
    const kindOf = (k: string) => {
      if (!(LAYER_KINDS as readonly string[]).includes(k)) throw bad(`expected a kind of ${LAYER_KINDS.join(", ")}, got "${k}"`);
      return k as LayerKind;
    };
    const g = GROUP.exec(part);
    let group: { kind: LayerKind; count: number }[];
    let times: number;
    if (g !== null) {
      const [, inner, count] = g as unknown as [string, string, string];
      group = inner.split(",").map((e) => {
        const m = ELEMENT.exec(e.trim());
        if (m === null) throw bad(`expected (kind*count, kind, ...)*count, e.g. (full, skip)*16`);
        return { kind: kindOf(m[1] as string), count: m[2] === undefined ? 1 : countOf(m[2]) };
      });
      times = countOf(count);
    } else {
      const m = PART.exec(part);
      if (m === null) throw bad(`expected kind*count, e.g. ${MIX_EXAMPLE}`);
      const [, kind, count] = m as unknown as [string, string, string];
      group = [{ kind: kindOf(kind), count: countOf(count) }];
      times = 1;
    }
    total += times * group.reduce((n, e) => n + e.count, 0);
    bound();
    for (let t = 0; t < times; t++) for (const e of group) for (let c = 0; c < e.count; c++) kinds.push(e.kind);
  }
  if (layers !== undefined && total !== layers)
    throw new RangeError(`checkpoint policy ${JSON.stringify(spec)}: its counts add up to ${total} layers, the model has ${layers}`);
  try {
    return policyOfKinds(kinds);
  } catch (e) {
    throw new TypeError(`checkpoint policy ${JSON.stringify(spec)}: ${(e as Error).message.replace(/^checkpoint policy[^:]*: /, "")}`);
  }
}

/**
 * The fastest policy for which `fits` holds, trying, fastest first: none; remat-aware with the largest
 * number k of last layers under none; remat-aware; full with the largest k of last layers under
 * remat-aware; full; then full with skip on the first k odd layers (skipPolicy), the smallest k that
 * fits (each skip re-runs a layer's forward). Null when nothing fits; otherwise the very object `fits`
 * accepted. Memory must not increase as a layer moves to the kind that keeps less: each k is found by
 * binary search, about log2(layers) calls per mix.
 */
export function bestMixed(layers: number, fits: (p: CheckpointPolicy) => boolean): CheckpointPolicy | null {
  if (!Number.isSafeInteger(layers) || layers <= 0)
    throw new RangeError(`bestMixed: layers must be a positive integer (the model's decoder layers), got ${layers}`);
  const stages: [cheap: UniformKind, costly: UniformKind][] = [
    ["none", "remat-aware"],
    ["remat-aware", "full"],
  ];
  const none: UniformPolicy = { kind: "none" };
  if (fits(none)) return none;
  for (const [cheap, costly] of stages) {
    // fits(k = layers) is false (the uniform cheap kind, just tried): the largest k that fits
    let lo = 0;
    let hi = layers;
    let found: CheckpointPolicy | null = null;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      const p = mixedPolicy(layers, cheap, mid, costly);
      if (fits(p)) {
        lo = mid;
        found = p;
      } else hi = mid;
    }
    if (found !== null) return found;
    const p = uniform(costly);
    if (fits(p)) return p;
  }
  // fits(k = 0) is false (full, just tried): the smallest k that fits, if the most skips fit
  const most = Math.floor(layers / 2);
  if (most === 0) return null;
  let found = skipPolicy(layers, most);
  if (!fits(found)) return null;
  let lo = 0;
  let hi = most;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    const p = skipPolicy(layers, mid);
    if (fits(p)) {
      hi = mid;
      found = p;
    } else lo = mid;
  }
  return found;
}
