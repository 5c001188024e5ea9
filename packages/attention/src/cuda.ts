// CUDA block attention: our flash-attention kernels (kernels/src/attention.cu) behind the block contract
// of block.ts, plus the lower-level calls DistAttn uses. Layouts: layout.ts. What each kernel computes
// and how it is built: the comments at the top of kernels/src/attention.cu and attention_kernels.cuh.
//
//   createCudaBackend({ kernels })            a backend running kernels "auto" | "mma" | "wgmma"
//   cudaBackend                               the same with kernels "auto" (H100/H200: wgmma)
//   backend.forward(q, k, v)                  bf16 q [Tq,Hq,D], k/v [Tk,Hkv,D] -> o bf16, lse [Hq,Tq] f32
//   backend.backward(q, k, v, o, lse, dO)     -> dq, dk, dv bf16 (summed in f32, rounded once; dq by
//                                             atomics, so `deterministic: true` is refused)
//   forwardInto(q, k, v, { o, lse })          the same into preallocated o (bf16, or f32 for partials)
//   backwardAccumulate(..., { dq, dk, dv })   f32 dq, dk, dv += this block's gradient (pieces add in fp32)
//   mergeIntoCuda(acc, part)                  acc (f32) <- merge(acc, part), merge.ts semantics
//   cudaAttentionKernels(device, kernels)     which kernel set a choice runs on a device
//
// The kernel set is an argument of every call (default "auto"), never read from the environment here
// (env.ts reads LIGHTSEQ_ATTN_KERNEL at the edge). A set the device cannot run is refused by the library
// without launching, and the code becomes an AttentionError saying which set, which device and what to do.
//
// Supported: bf16 q, k, v, o, dO on one CUDA device; D in FAST_HEAD_DIMS (64, 128); scale > 0; every
// tensor starting on a 16-byte boundary (allocations are; so is a narrow() view of whole rows). Anything
// else throws an AttentionError that says what and why before anything is launched: no silent fallback.
// Nothing here synchronises the host; temporaries are allocated and freed on the stream of the call.

import { ATTN_ERR, ATTN_KERNELS, checkLaunch, kernels as kernelsLib, type Stream } from "@lightseq/cuda";
import { cast, deviceName, empty, fill, fmtShape, sameDevice, type Tensor } from "@lightseq/tensor";
import {
  type AttentionBackend,
  type AttentionGrads,
  type AttentionOptions,
  type AttentionOutput,
  type AttentionPartial,
  type BackwardOptions,
  type CheckedCall,
  checkBackwardArgs,
  checkForwardArgs,
  type ForwardOptions,
} from "./block.ts";
import { checkGrads, checkOut, fail, inputsDevice, newForwardOutput, streamFor } from "./gpu-args.ts";
import { AttentionError, FAST_HEAD_DIMS } from "./layout.ts";

/**
 * Which of our kernel sets a call runs: "auto" (wgmma on compute capability 9.0, H100/H200; mma.sync
 * elsewhere), "wgmma" (compute capability 9.0 only) or "mma" (mma.sync, sm_80 and later; on sm_90 too,
 * for comparison). An argument of every call here and an option of the backend (createCudaBackend).
 */
export type KernelChoice = "auto" | "mma" | "wgmma";
export const KERNEL_CHOICES: readonly KernelChoice[] = ["auto", "mma", "wgmma"];

/** The kernel set that actually runs. */
export type AttentionKernels = "wgmma" | "mma.sync";

export interface KernelOptions {
  /** Default "auto". */
  kernels?: KernelChoice;
}

/** `kernels` checked (a JavaScript caller can pass anything); throws an AttentionError naming `who`. */
export function checkKernelChoice(who: string, kernels: unknown): KernelChoice {
  if (!KERNEL_CHOICES.includes(kernels as KernelChoice))
    throw new AttentionError(`${who}: kernels: expected one of ${KERNEL_CHOICES.join(", ")}, got ${JSON.stringify(kernels)}`);
  return kernels as KernelChoice;
}

/** Why a kernel set cannot run, for a code from ls_attn_kernel or a launch (attention.cuh); else undefined. */
function kernelsRefused(code: number, kernels: KernelChoice, device: number): string | undefined {
  if (code === ATTN_ERR.kernelsUnavailable)
    return `kernels "${kernels}": the wgmma kernels need a compute capability 9.0 GPU (H100, H200), and cuda:${device} is not one; choose "mma" or "auto" (the cuda backend's kernels option, or LIGHTSEQ_ATTN_KERNEL where the environment sets it)`;
  if (code === ATTN_ERR.kernelsUnknown) return `kernels ${JSON.stringify(kernels)}: the kernels library knows no such kernel set`;
  return undefined;
}

/**
 * A non-zero code becomes an error: a kernel set that cannot run is an AttentionError saying why (from
 * the call's own arguments); any other cudaError_t a CudaError naming the call, the code, CUDA's message
 * and the sizes.
 */
function checkCode(who: string, code: number, call: string, c: CheckedCall, kernels: KernelChoice, device: number): void {
  const refused = kernelsRefused(code, kernels, device);
  if (refused !== undefined) fail(who, refused);
  checkLaunch(code, call, `${who}: Tq=${c.Tq} Tk=${c.Tk} Hq=${c.Hq} Hkv=${c.Hkv} D=${c.D} causal=${c.causal} scale=${c.scale}`);
}

const INT32_MAX = 2 ** 31 - 1;

/** What the kernels can take beyond the contract's checks (block.ts): refuses loudly, launches nothing. */
function requireSupported(who: string, c: CheckedCall, tensors: Record<string, Tensor>): number {
  const device = inputsDevice(who, tensors, "CUDA", "the kernels need 16-byte aligned tensors (vector loads)");
  if (c.dtype !== "bf16")
    fail(who, `q: the CUDA kernels take bf16 q, k, v (they accumulate in f32), got ${c.dtype}: cast to bf16 or use the reference backend`);
  if (!FAST_HEAD_DIMS.includes(c.D)) fail(who, `q: head dim D = ${c.D} has no CUDA kernel (built for D in ${FAST_HEAD_DIMS.join(", ")})`);
  if (!(c.scale > 0))
    fail(who, `opts.scale: the CUDA kernels need scale > 0 (the online softmax tracks the max of the raw scores), got ${c.scale}`);
  if (c.Tq > INT32_MAX || c.Tk > INT32_MAX) fail(who, `sequence lengths must fit in int32, got Tq = ${c.Tq}, Tk = ${c.Tk}`);
  return device;
}

/**
 * o, lse <- attention(q, k, v) into preallocated outputs: o [Tq, Hq, D] bf16 or f32 (f32 for DistAttn
 * partials that are merged in fp32), lse [Hq, Tq] f32. Enqueued on opts.stream (default: current).
 */
export function forwardInto(q: Tensor, k: Tensor, v: Tensor, out: AttentionOutput, opts: AttentionOptions & KernelOptions): void {
  const who = "cuda.forwardInto";
  const kernels = checkKernelChoice(who, opts.kernels ?? "auto");
  const c = checkForwardArgs(who, q, k, v, opts);
  const device = requireSupported(who, c, { q, k, v });
  checkOut(who, out.o, "out.o", ["bf16", "f32"], q.shape, device);
  checkOut(who, out.lse, "out.lse", ["f32"], [c.Hq, c.Tq], device, 4);
  launchForward(who, c, { q, k, v, o: out.o, lse: out.lse }, streamFor(device, opts.stream), kernels, device);
}

function launchForward(
  who: string,
  c: CheckedCall,
  t: { q: Tensor; k: Tensor; v: Tensor; o: Tensor; lse: Tensor },
  s: Stream,
  kernels: KernelChoice,
  device: number,
): void {
  const L = kernelsLib();
  const f32 = t.o.dtype === "f32";
  const fn = f32 ? L.ls_attn_fwd_bf16_f32out : L.ls_attn_fwd_bf16;
  const code = fn(
    t.q.ptr(),
    t.k.ptr(),
    t.v.ptr(),
    t.o.ptr(),
    t.lse.ptr(),
    c.Tq,
    c.Tk,
    c.Hq,
    c.Hkv,
    c.D,
    c.scale,
    c.causal ? 1 : 0,
    ATTN_KERNELS[kernels],
    s.handle,
  );
  checkCode(who, code, f32 ? "ls_attn_fwd_bf16_f32out" : "ls_attn_fwd_bf16", c, kernels, device);
}

/** Bytes of scratch one backward call needs (Delta = rowsum(dO * o), f32 [Hq, Tq]). */
export function backwardWorkspaceBytes(Tq: number, Hq: number, D: number): number {
  return Number(kernelsLib().ls_attn_bwd_workspace_bytes(Tq, Hq, D));
}

export interface AccumulateOptions extends AttentionOptions, KernelOptions {
  /** Scratch of at least backwardWorkspaceBytes(Tq, Hq, D) bytes on the device (default: allocated per call). */
  workspace?: Tensor;
}

/**
 * dq [Tq,Hq,D], dk, dv [Tk,Hkv,D] (all f32) += the gradient of this block, given the FINAL (merged) o and
 * lse of the query rows (block.ts). The caller zeroes them for a fresh result. dq is summed with f32
 * atomics (not bitwise reproducible across runs); dk, dv have a single writer (reproducible).
 */
export function backwardAccumulate(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  dO: Tensor,
  grads: AttentionGrads,
  opts: AccumulateOptions,
): void {
  const who = "cuda.backwardAccumulate";
  const kernels = checkKernelChoice(who, opts.kernels ?? "auto");
  const c = checkBackwardArgs(who, q, k, v, o, lse, dO, opts);
  const device = requireSupported(who, c, { q, k, v, o, dO });
  if (lse.device.kind !== "cuda" || lse.device.index !== device)
    fail(who, `lse: expected device cuda:${device}, got ${deviceName(lse.device)}`);
  checkGrads(who, grads, "f32", { q, k, v }, device);
  const s = streamFor(device, opts.stream);
  const bytes = backwardWorkspaceBytes(c.Tq, c.Hq, c.D);
  let ws = opts.workspace;
  if (ws !== undefined) {
    if (ws.device.kind !== "cuda" || ws.device.index !== device)
      fail(who, `opts.workspace: expected device cuda:${device}, got ${deviceName(ws.device)}`);
    if (ws.bytes < bytes) fail(who, `opts.workspace: needs ${bytes} bytes for Tq = ${c.Tq}, Hq = ${c.Hq}, got ${ws.bytes}`);
    if (ws.numel > 0 && ws.ptr() % 16 !== 0) fail(who, "opts.workspace: expected a 16-byte aligned tensor");
  }
  const own = ws === undefined ? empty([Math.max(bytes, 16) / 4], { dtype: "f32", device: q.device, stream: s }) : undefined;
  ws ??= own as Tensor;
  try {
    const code = kernelsLib().ls_attn_bwd_bf16(
      q.ptr(),
      k.ptr(),
      v.ptr(),
      o.ptr(),
      lse.ptr(),
      dO.ptr(),
      grads.dq.ptr(),
      grads.dk.ptr(),
      grads.dv.ptr(),
      ws.ptr(),
      c.Tq,
      c.Tk,
      c.Hq,
      c.Hkv,
      c.D,
      c.scale,
      c.causal ? 1 : 0,
      ATTN_KERNELS[kernels],
      s.handle,
    );
    checkCode(who, code, "ls_attn_bwd_bf16", c, kernels, device);
  } finally {
    own?.dispose(); // stream-ordered free: after the kernels that read it
  }
}

/**
 * The kernel set (forward and backward) that `kernels` runs on CUDA device `device`: "wgmma" where the
 * device has compute capability 9.0 and `kernels` is auto or wgmma, else "mma.sync". A choice the
 * device cannot run (wgmma elsewhere) throws, naming it. Changes no state (not even the current device).
 */
export function cudaAttentionKernels(device: number, kernels: KernelChoice = "auto"): AttentionKernels {
  const who = "cudaAttentionKernels";
  const choice = checkKernelChoice(who, kernels);
  const r = kernelsLib().ls_attn_kernel(device, ATTN_KERNELS[choice]);
  if (r === 1) return "wgmma";
  if (r === 0) return "mma.sync";
  const refused = kernelsRefused(-r, choice, device);
  if (refused !== undefined) fail(who, refused);
  checkLaunch(-r, "ls_attn_kernel", `${who}: cuda:${device}`); // a failed device query: CUDA's own error
  return fail(who, `ls_attn_kernel returned ${r}`);
}

/**
 * acc <- merge(acc, part) in place (merge.ts): acc.o [T,H,D] f32, acc.lse [H,T] f32; part.o f32 or bf16.
 * An accumulator may start as (anything, lse = -Infinity): the empty side is never read into the sum.
 */
export function mergeIntoCuda(acc: AttentionPartial, part: AttentionPartial, opts: { stream?: Stream } = {}): void {
  const who = "cuda.mergeInto";
  const [T, H, D] = acc.o.shape as [number, number, number];
  if (acc.o.shape.length !== 3) fail(who, `acc.o: expected rank 3 [T, H, D], got shape ${fmtShape(acc.o.shape)}`);
  if (acc.o.device.kind !== "cuda") fail(who, `acc.o: expected a cuda tensor, got ${acc.o.describe()}`);
  const device = acc.o.device.index;
  // Any alignment: the merge kernel takes 16-byte vectors when it can and single elements otherwise.
  checkOut(who, acc.o, "acc.o", ["f32"], [T, H, D], device, 1);
  checkOut(who, acc.lse, "acc.lse", ["f32"], [H, T], device, 1);
  checkOut(who, part.o, "part.o", ["f32", "bf16"], [T, H, D], device, 1);
  checkOut(who, part.lse, "part.lse", ["f32"], [H, T], device, 1);
  for (const [name, t] of [
    ["acc.o", acc.o],
    ["acc.lse", acc.lse],
    ["part.o", part.o],
    ["part.lse", part.lse],
  ] as const) {
    if (!sameDevice(t.device, acc.o.device)) fail(who, `${name}: expected device ${deviceName(acc.o.device)}, got ${deviceName(t.device)}`);
  }
  const s = streamFor(device, opts.stream);
  const L = kernelsLib();
  const fn = part.o.dtype === "f32" ? L.ls_attn_merge_f32 : L.ls_attn_merge_bf16;
  const code = fn(acc.o.ptr(), acc.lse.ptr(), part.o.ptr(), part.lse.ptr(), T, H, D, s.handle);
  checkLaunch(code, `ls_attn_merge_${part.o.dtype}`, `${who}: T=${T} H=${H} D=${D}`);
}

/** Why our backward refuses `deterministic: true` (and the trainer's --deterministic refuses --attention cuda). */
export const DQ_ATOMICS =
  "opts.deterministic: our flash-attention kernels sum dq with f32 atomics (kernels/src/attention_kernels.cuh), so their backward is not deterministic; use the cudnn backend (createCudnnBackend({ deterministic: true }))";

/** Our kernels behind the block contract, with the kernel set they run. */
export interface CudaBackend extends AttentionBackend {
  readonly kernels: KernelChoice;
}

/** A CUDA backend running `kernels` (default "auto"); an unknown choice throws here, on any device. */
export function createCudaBackend(o: KernelOptions = {}): CudaBackend {
  const kernels = checkKernelChoice("createCudaBackend", o.kernels ?? "auto");
  return {
    name: "cuda",
    kernels,

    forward(q: Tensor, k: Tensor, v: Tensor, opts: ForwardOptions): AttentionOutput {
      const who = "cuda.forward";
      const c = checkForwardArgs(who, q, k, v, opts);
      const device = requireSupported(who, c, { q, k, v });
      const s = streamFor(device, opts.stream);
      // outDtype "f32": the kernel writes the partial unrounded (DistAttn merges it in fp32).
      return newForwardOutput(q, c, s, (out) => launchForward(who, c, { q, k, v, ...out }, s, kernels, device));
    },

    backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dO: Tensor, opts: BackwardOptions): AttentionGrads {
      const who = "cuda.backward";
      const c = checkBackwardArgs(who, q, k, v, o, lse, dO, opts);
      if (opts.deterministic === true) fail(who, DQ_ATOMICS);
      const device = requireSupported(who, c, { q, k, v, o, dO });
      const s = streamFor(device, opts.stream);
      if (opts.accumulate !== undefined) {
        // The kernels add into f32 gradients natively: no temporaries.
        backwardAccumulate(q, k, v, o, lse, dO, opts.accumulate, { ...opts, stream: s, kernels });
        return opts.accumulate;
      }
      // f32 accumulators, zeroed, then one rounding to bf16 (dq like q, dk/dv like k/v).
      const acc: AttentionGrads = {
        dq: empty(q.shape, { dtype: "f32", device: q.device, stream: s }),
        dk: empty(k.shape, { dtype: "f32", device: q.device, stream: s }),
        dv: empty(v.shape, { dtype: "f32", device: q.device, stream: s }),
      };
      try {
        for (const t of [acc.dq, acc.dk, acc.dv]) fill(t, 0, s);
        backwardAccumulate(q, k, v, o, lse, dO, acc, { ...opts, stream: s, kernels });
        return {
          dq: cast(acc.dq, "bf16", { stream: s }),
          dk: cast(acc.dk, "bf16", { stream: s }),
          dv: cast(acc.dv, "bf16", { stream: s }),
        };
      } finally {
        acc.dq.dispose();
        acc.dk.dispose();
        acc.dv.dispose();
      }
    },
  };
}

/** The default CUDA backend: kernels "auto" (what existing callers get). */
export const cudaBackend: CudaBackend = createCudaBackend();
