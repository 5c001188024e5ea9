// The attention package's environment variables, parsed in one place and read only at the edge: the
// benchmarks, the test entry points and selectAttentionBackend call attentionEnv() once and hand the
// values on as arguments (the kernels library reads no environment).
//
//   LIGHTSEQ_ATTN_KERNEL   auto | mma | wgmma; unset or empty = auto   which of our kernel sets runs (cuda.ts)
//
// An unknown value is an AttentionError on every device, the CPU included.

import { checkKernelChoice, type KernelChoice } from "./cuda.ts";
import { AttentionError } from "./layout.ts";

export interface AttentionEnv {
  kernels: KernelChoice;
}

/** The attention settings of `env` (default: this process's environment), checked. */
export function attentionEnv(env: Readonly<Record<string, string | undefined>> = process.env): AttentionEnv {
  const raw = env.LIGHTSEQ_ATTN_KERNEL;
  const value = raw === undefined || raw === "" ? "auto" : raw;
  try {
    return { kernels: checkKernelChoice("LIGHTSEQ_ATTN_KERNEL", value) };
  } catch {
    throw new AttentionError(`LIGHTSEQ_ATTN_KERNEL=${JSON.stringify(raw)}: expected auto, mma or wgmma (or unset)`);
  }
}
