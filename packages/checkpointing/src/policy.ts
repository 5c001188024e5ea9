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
// A mixed policy names one of these per layer, so a run skips recompute on as many layers as memory
// allows. The cheaper kind goes on the LAST layers (`mixedPolicy`): their tensors are the first the
// backward uses and frees, and with spill (offload.ts) they are the ones kept on the device.

export const SAVED_NAMES = ["x", "rstd1", "xn", "q", "k", "v", "o", "lse", "h", "rstd2", "hn", "gu", "a"] as const;
export type SavedName = (typeof SAVED_NAMES)[number];

/** One kind for every layer. */
export type UniformPolicy = { readonly kind: "none" } | { readonly kind: "full" } | { readonly kind: "remat-aware" };
export type UniformKind = UniformPolicy["kind"];
/** The kinds a layer can run (a mixed policy lists one per layer). */
export type PolicyKind = UniformKind;
export const POLICY_KINDS: readonly UniformKind[] = ["none", "full", "remat-aware"];

/** `layers[i]` is layer i's kind; its length is the model's layer count. */
export interface MixedPolicy {
  readonly kind: "mixed";
  readonly layers: readonly UniformKind[];
}
export type CheckpointPolicy = UniformPolicy | MixedPolicy;

/** The tensors of one layer that the forward keeps under `policy`. */
export function keptTensors(policy: UniformPolicy): readonly SavedName[] {
  switch (policy.kind) {
    case "none":
      return SAVED_NAMES;
    case "full":
      return ["x"];
    case "remat-aware":
      return ["x", "o", "lse"];
    default:
      return unknownPolicy(policy);
  }
}

function unknownPolicy(p: never): never {
  throw new TypeError(`checkpoint policy: expected kind ${POLICY_KINDS.map((k) => `"${k}"`).join(", ")}, got ${JSON.stringify(p)}`);
}

function uniform(kind: string): UniformPolicy {
  switch (kind) {
    case "none":
    case "full":
    case "remat-aware":
      return { kind };
    default:
      throw new TypeError(`checkpoint policy: expected kind ${POLICY_KINDS.map((k) => `"${k}"`).join(", ")}, got ${JSON.stringify(kind)}`);
  }
}

/** Layer i's kind under `p` for a model of `layers` layers; a mixed policy of another length is an error. */
export function layerPolicy(p: CheckpointPolicy, layer: number, layers: number): UniformPolicy {
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
      return uniform(p.layers[layer] as string);
    default:
      return unknownPolicy(p);
  }
}

/** Every layer's kind under `p` (layer 0 first). */
export function layerKinds(p: CheckpointPolicy, layers: number): UniformKind[] {
  return Array.from({ length: layers }, (_, i) => layerPolicy(p, i, layers).kind);
}

/** The tensors layer i keeps under `p`. */
export function keptTensorsOf(p: CheckpointPolicy, layer: number, layers: number): readonly SavedName[] {
  return keptTensors(layerPolicy(p, layer, layers));
}

/** A policy from per-layer kinds: uniform when they are all one kind. */
export function policyOfKinds(kinds: readonly UniformKind[]): CheckpointPolicy {
  if (kinds.length === 0) throw new RangeError("checkpoint policy: a mixed policy needs at least one layer");
  const first = uniform(kinds[0] as string);
  for (const k of kinds) uniform(k);
  return kinds.every((k) => k === first.kind) ? first : { kind: "mixed", layers: [...kinds] };
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

/** Runs of equal kinds, layer 0 first. */
function runs(kinds: readonly UniformKind[]): { kind: UniformKind; count: number }[] {
  const out: { kind: UniformKind; count: number }[] = [];
  for (const kind of kinds) {
    const last = out[out.length - 1];
    if (last?.kind === kind) last.count++;
    else out.push({ kind, count: 1 });
  }
  return out;
}

/** The short form: "none", or "remat-aware x8 + none x24" (layer 0 first); parsePolicy reads it back. */
export function formatPolicy(p: CheckpointPolicy): string {
  switch (p.kind) {
    case "none":
    case "full":
    case "remat-aware":
      return p.kind;
    case "mixed":
      return runs(p.layers)
        .map((r) => `${r.kind} x${r.count}`)
        .join(" + ");
    default:
      return unknownPolicy(p);
  }
}

const MIX_EXAMPLE = "remat-aware*8,none*24";
/** One part of a mixed spec: `kind*count` (command line) or `kind xcount` (formatPolicy's form). */
const PART = /^([^\s*]+)\s*(?:\*|\s+x)\s*(\S+)$/;
/** More than any model has: a bound before a spec is expanded to one entry per layer. */
const MAX_LAYERS = 1 << 16;

/**
 * A policy from its name (command line, config): `none`, `full`, `remat-aware`, or a per-layer mix
 * from layer 0 on, `remat-aware*8,none*24` (formatPolicy's `remat-aware x8 + none x24` too). With
 * `layers` (the model's), a mix must cover exactly that many. Errors name the bad part.
 */
export function parsePolicy(spec: string, layers?: number): CheckpointPolicy {
  const s = spec.trim();
  if ((POLICY_KINDS as readonly string[]).includes(s)) return uniform(s);
  if (!/[*,+]|\sx/.test(s))
    throw new TypeError(
      `checkpoint policy: expected one of ${POLICY_KINDS.join(", ")}, or a per-layer mix such as ${MIX_EXAMPLE}, got ${JSON.stringify(spec)}`,
    );
  const parts: { kind: UniformKind; count: number }[] = [];
  for (const raw of s.split(/[,+]/)) {
    const part = raw.trim();
    const m = PART.exec(part);
    const bad = (why: string) => new TypeError(`checkpoint policy ${JSON.stringify(spec)}: part ${JSON.stringify(part)}: ${why}`);
    if (m === null) throw bad(`expected kind*count, e.g. ${MIX_EXAMPLE}`);
    const [, kind, count] = m as unknown as [string, string, string];
    if (!(POLICY_KINDS as readonly string[]).includes(kind)) throw bad(`expected a kind of ${POLICY_KINDS.join(", ")}, got "${kind}"`);
    if (!/^[1-9]\d{0,8}$/.test(count)) throw bad(`the layer count must be a positive integer, got "${count}"`);
    parts.push({ kind: kind as UniformKind, count: Number(count) });
  }
  const total = parts.reduce((n, p) => n + p.count, 0);
  if (layers !== undefined && total !== layers)
    throw new RangeError(`checkpoint policy ${JSON.stringify(spec)}: its counts add up to ${total} layers, the model has ${layers}`);
  if (total > MAX_LAYERS) throw new RangeError(`checkpoint policy ${JSON.stringify(spec)}: ${total} layers (at most ${MAX_LAYERS})`);
  const kinds: UniformKind[] = parts.flatMap((p) => new Array<UniformKind>(p.count).fill(p.kind));
  return policyOfKinds(kinds);
}

/**
 * The fastest policy for which `fits` holds, trying, fastest first: none; remat-aware with the largest
 * number k of last layers under none; remat-aware; full with the largest k of last layers under
 * remat-aware; full. Null when nothing fits; otherwise the very object `fits` accepted. Memory must not decrease as k grows (each layer moved to
 * the cheaper kind keeps more): k is found by binary search, about log2(layers) calls per mix.
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
  return null;
}
