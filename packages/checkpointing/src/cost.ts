// A step-time model for choosing between plans that all fit (the memory estimator says what fits; this
// says what it costs): per layer, the forward and backward compute, what the checkpoint policy
// recomputes, and the PCIe copies that can hide behind that compute or not.
//
//   forward of layer i     f_i = (2 T N + A) / rate          N: the layer's parameters, T local tokens,
//   backward of layer i    b_i = (4 T N + 2.5 A) / rate      A: its causal attention forward FLOPs
//                          (the linear layers' backward is twice their forward; the attention's 2.5x:
//                          it runs five T x T products against the forward's two)
//   recompute              none 0 (tiled MLP: its gate|up GEMM, 4 T C F / rate, as tiles keep no
//                          [T, ffn] tensor); remat-aware 2 T N / rate (the linear layers); full f_i;
//                          skip f_i + the forward again of each layer from the nearest kept x to it,
//                          (i - j) f for the kept x of layer j (one layer for a lone skip)
//   checkpoint copies      c_i = kept bytes / pcie for a layer whose tensors live on the host, out
//                          during f_i, back during the backward of layer i+1 (one layer ahead)
//   optimizer streaming    s_i = 12 B x N / ranks / pcie each way (fp32 master, m, v in and out),
//                          during the backward of the layers below i (state on the host only)
//   exposed                sum over layers of max(0, c_i - h f_i) + max(0, h2d_i - h (b_i + r_i))
//                          with h2d_i = c_{i-1} + s_{i+1} (one direction of the link, shared), and
//                          layer 0's and the embedding's streaming after the last layer (none when
//                          their state stays on the GPU: tailResident)
// h = 0.8: copies hide behind at most 80% of the compute they overlap. Measured: at 128K a layer's
// 4 GiB of `none` checkpoints (345 ms at 50 GB/s) against a 352 ms forward cost 6% of the step, not 0.
//
// The rates are an H100/H200's (measured: a 7B layer's GEMMs and cuDNN attention at 32K run at
// 520-640 TFLOP/s; pinned copies at 50-55 GB/s each way, 98 GB/s both ways at once); a plan's choice
// depends on the ratios, not on the absolute numbers. Checked against measured rows in cost.test.ts.

import { keptBytesPerToken, paramCounts } from "./estimator.ts";
import { inputSource, type LayerKind } from "./policy.ts";
import type { ModelShape } from "./working-set.ts";

/** FLOP/s of the layer's compute and bytes/s of one direction of the host link. */
export interface Rates {
  readonly flops: number;
  readonly pcie: number;
}

export const DEFAULT_RATES: Rates = { flops: 550e12, pcie: 50e9 };

/** An attention backward's FLOPs over its forward's: QK^T again, dV, dP, dQ and dK against QK^T and PV (as @lightseq/attention's attentionCost counts them). */
export const ATTENTION_BACKWARD = 2.5;

/** Share of the overlapping compute that a copy can hide behind (see the header). */
export const HIDE_FRACTION = 0.8;

export interface CostInput {
  readonly model: ModelShape;
  /** Tokens of one sequence (all cp ranks together). */
  readonly seqLen: number;
  readonly cp: number;
  /** Ranks the optimizer state is sharded over. */
  readonly ranks: number;
  /** The checkpoint policy of each layer, layer 0 first. */
  readonly kinds: readonly LayerKind[];
  /** How many of the first layers keep their checkpoints in host memory (offload "host": all; "spill": the first L - deviceLayers). */
  readonly hostLayers: number;
  /** Tiled MLP: gate|up and SwiGLU are never kept. */
  readonly mlpTiled: boolean;
  readonly optimizer: "device" | "host";
  /**
   * State on the host: layer 0's and the embedding's state stay on the GPU (their gradients are final
   * last, after the backward), so nothing streams after the backward. Default false: they stream then.
   */
  readonly tailResident?: boolean;
  readonly rates?: Rates;
}

export interface StepCost {
  /** Forward + backward compute, nothing recomputed. */
  readonly computeS: number;
  readonly recomputeS: number;
  /** Checkpoint copies and optimizer streaming not hidden behind compute. */
  readonly exposedS: number;
  readonly totalS: number;
}

export function stepCost(i: CostInput): StepCost {
  const { model: m, kinds } = i;
  const L = m.layers;
  if (kinds.length !== L) throw new RangeError(`stepCost: ${kinds.length} layer policies for a ${L}-layer model`);
  if (!Number.isInteger(i.hostLayers) || i.hostLayers < 0 || i.hostLayers > L)
    throw new RangeError(`stepCost: hostLayers must be an integer in [0, ${L}], got ${i.hostLayers}`);
  const r = i.rates ?? DEFAULT_RATES;
  const T = Math.ceil(i.seqLen / i.cp);
  const N = paramCounts(m).layer;
  const attn = (4 * i.seqLen * i.seqLen * m.heads * m.headDim) / 2 / i.cp;
  const linear = (2 * T * N) / r.flops;
  const f = linear + attn / r.flops;
  const b = 2 * linear + (ATTENTION_BACKWARD * attn) / r.flops;
  const gateUp = i.mlpTiled ? (4 * T * m.dim * m.ffn) / r.flops : 0;
  const rec = (l: number): number => {
    const k = kinds[l] as LayerKind;
    switch (k) {
      case "none":
        return gateUp;
      case "remat-aware":
        return linear;
      case "full":
        return f;
      case "skip":
        return f + (l - inputSource(kinds, l)) * f;
      default:
        throw new RangeError(`stepCost: unknown layer kind ${JSON.stringify(k satisfies never)}`);
    }
  };
  const copy = (l: number) => (l < i.hostLayers ? (keptBytesPerToken(m, kinds[l] as LayerKind, i.mlpTiled) * T) / r.pcie : 0);
  const stream = i.optimizer === "host" ? (12 * N) / i.ranks / r.pcie : 0;
  let exposed = 0;
  let recompute = 0;
  for (let l = 0; l < L; l++) {
    recompute += rec(l);
    exposed += Math.max(0, copy(l) - HIDE_FRACTION * f);
    // while layer l runs its backward (with its recompute), layer l-1's checkpoints come back and
    // layer l+1's state streams (its gradients were reduced when l+1's backward ended)
    const h2d = (l > 0 ? copy(l - 1) : 0) + (l + 1 < L ? stream : 0);
    exposed += Math.max(0, h2d - HIDE_FRACTION * (b + rec(l)));
  }
  if (i.optimizer === "host" && i.tailResident !== true) {
    const p = paramCounts(m);
    // layer 0's and the embedding's state stream after the backward; the head's and final norm's during
    // it (their gradients are final right after the loss: GradientSink.headDone)
    exposed += stream + (12 * (p.embed + (p.head === 0 ? m.dim : 0))) / i.ranks / r.pcie;
  }
  const compute = L * (f + b);
  return { computeS: compute, recomputeS: recompute, exposedS: exposed, totalS: compute + recompute + exposed };
}
