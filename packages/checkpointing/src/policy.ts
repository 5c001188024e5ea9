// Activation checkpointing policies (DESIGN.md section 6, reference/lightseq.md: the checkpoint
// boundary). A policy says which of a decoder layer's saved tensors the forward keeps; the backward
// recomputes the rest from what was kept. The names are the layer's (llama-contract.md):
//   x      layer input                      rstd1, xn  attention RMSNorm (rstd f32 [T], xn [T, C])
//   q k v  after RoPE                       o, lse     attention output and its log-sum-exp
//   h      after the attention residual     rstd2, hn  MLP RMSNorm
//   gu     gate|up GEMM output [T, 2F]      a          SwiGLU output [T, F]
// What each policy recomputes in the backward:
//   none         nothing;
//   full         the whole layer from x: norm + QKV + RoPE, attention forward (and its communication),
//                o-proj + residual + MLP;
//   remat-aware  norm + QKV + RoPE and o-proj + residual + MLP from x, o and lse: attention forward
//                runs once per layer (LightSeq's boundary after the attention core).

export const SAVED_NAMES = ["x", "rstd1", "xn", "q", "k", "v", "o", "lse", "h", "rstd2", "hn", "gu", "a"] as const;
export type SavedName = (typeof SAVED_NAMES)[number];

export type CheckpointPolicy = { readonly kind: "none" } | { readonly kind: "full" } | { readonly kind: "remat-aware" };
export type PolicyKind = CheckpointPolicy["kind"];
export const POLICY_KINDS: readonly PolicyKind[] = ["none", "full", "remat-aware"];

/** The tensors of one layer that the forward keeps under `policy`. */
export function keptTensors(policy: CheckpointPolicy): readonly SavedName[] {
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

/** A policy from its name (command line, config); an unknown name is an error listing the known ones. */
export function parsePolicy(kind: string): CheckpointPolicy {
  switch (kind) {
    case "none":
    case "full":
    case "remat-aware":
      return { kind };
    default:
      throw new TypeError(`checkpoint policy: expected one of ${POLICY_KINDS.join(", ")}, got ${JSON.stringify(kind)}`);
  }
}
