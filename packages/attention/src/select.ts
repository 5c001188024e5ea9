// Which block-attention backend a run uses: named by the user, or "auto". Auto takes cuDNN's fused
// attention when it is present (measured faster on H100: 566 vs 275 TFLOP/s fwd+bwd at 32K, see
// BENCHMARKS.md), else our own CUDA kernels, and the reference on the CPU. The choice and the reason
// are returned for the log. Once chosen, a backend refuses shapes it cannot run (with the reason);
// nothing is routed elsewhere behind the caller's back. Which of our kernel sets the cuda backend runs
// is `opts.kernels`, else LIGHTSEQ_ATTN_KERNEL (env.ts), checked here on every device.
// `opts.deterministic` asks for a backward equal to the bit from run to run: cuDNN's deterministic graph
// (createCudnnBackend), never our kernels (their dq is summed with f32 atomics: "cuda" is refused, and
// "auto" needs cuDNN); the reference is deterministic already.

import { probeGpus } from "@lightseq/cuda";
import { type DeviceLike, parseDevice } from "@lightseq/tensor";
import type { AttentionBackend } from "./block.ts";
import { checkKernelChoice, createCudaBackend, cudaAttentionKernels, type KernelOptions } from "./cuda.ts";
import { createCudnnBackend, cudnnAvailable, cudnnBackend } from "./cudnn/index.ts";
import { attentionEnv } from "./env.ts";
import { AttentionError } from "./layout.ts";
import { referenceBackend } from "./reference.ts";

export type BackendChoice = "auto" | "reference" | "cuda" | "cudnn";
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "reference", "cuda", "cudnn"];

export interface Selected {
  backend: AttentionBackend;
  /** One line for the log: which backend and why. */
  reason: string;
}

export interface SelectOptions extends KernelOptions {
  /** A deterministic backward (top of this file); default false. */
  deterministic?: boolean;
}

/** The backend for `choice` on `device`; throws an AttentionError saying why a named one cannot run. */
export function selectAttentionBackend(choice: BackendChoice, device: DeviceLike, opts: SelectOptions = {}): Selected {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new AttentionError(`attention backend: expected one of ${BACKEND_CHOICES.join(", ")}, got ${JSON.stringify(choice)}`);
  }
  const deterministic = opts.deterministic ?? false;
  if (typeof deterministic !== "boolean")
    throw new AttentionError(`selectAttentionBackend: deterministic: expected true or false, got ${String(opts.deterministic)}`);
  const kernels = opts.kernels === undefined ? attentionEnv().kernels : checkKernelChoice("selectAttentionBackend", opts.kernels);
  const d = parseDevice(device);
  if (d.kind === "cpu") {
    if (choice === "cuda" || choice === "cudnn") throw new AttentionError(`attention backend "${choice}" needs a cuda device, got cpu`);
    const det = deterministic ? "; deterministic: its backward is deterministic already" : "";
    return { backend: referenceBackend, reason: `attention backend: reference (cpu${det})` };
  }
  if (choice === "reference")
    throw new AttentionError('attention backend "reference" runs on the cpu only; use "cuda" or "cudnn" on a GPU');
  if (choice === "cuda" && deterministic)
    throw new AttentionError(
      'attention backend "cuda" has no deterministic backward: our flash-attention kernels sum dq with f32 atomics (kernels/src/attention_kernels.cuh); use "cudnn"',
    );
  const gpus = probeGpus();
  if (gpus.count === 0) throw new AttentionError(`attention backend "${choice}": no CUDA device (${gpus.reason})`);
  const cudnn = cudnnAvailable();
  const cudnnChosen = (why: string): Selected =>
    deterministic
      ? { backend: createCudnnBackend({ deterministic: true }), reason: `attention backend: cudnn, deterministic backward (${why})` }
      : { backend: cudnnBackend, reason: `attention backend: cudnn (${why})` };
  if (choice === "cudnn") {
    if (!cudnn.ok) throw new AttentionError(`attention backend "cudnn" is not available: ${cudnn.reason}`);
    return cudnnChosen(cudnn.reason);
  }
  const ours = () => `our flash-attention kernels, ${cudaAttentionKernels(d.index, kernels)}`;
  if (choice === "cuda") return { backend: createCudaBackend({ kernels }), reason: `attention backend: cuda (${ours()}, as requested)` };
  if (deterministic) {
    if (!cudnn.ok)
      throw new AttentionError(
        `attention backend "auto" with a deterministic backward needs cuDNN (our kernels sum dq with f32 atomics), which is not available: ${cudnn.reason}`,
      );
    return cudnnChosen(`auto: the deterministic backward; ${cudnn.reason}`);
  }
  return cudnn.ok
    ? { backend: cudnnBackend, reason: `attention backend: cudnn (auto: present and faster; ${cudnn.reason})` }
    : {
        backend: createCudaBackend({ kernels }),
        reason: `attention backend: cuda (${ours()}; auto: cuDNN not available: ${cudnn.reason})`,
      };
}
