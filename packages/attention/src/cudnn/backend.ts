// cuDNN 9 fused attention behind the block contract of block.ts (the graphs: sdpa.ts; their plans:
// plans.ts; loading: library.ts). Layouts: layout.ts.
//
//   cudnnBackend.forward(q, k, v)              bf16 q [Tq,Hq,D], k/v [Tk,Hkv,D] -> o bf16, lse [Hq,Tq] f32 (natural log)
//   cudnnBackend.backward(q, k, v, o, lse, dO) -> dq, dk, dv bf16
//   cudnnForwardInto / cudnnBackwardInto        the same into preallocated outputs (benchmarks, DistAttn)
//   createCudnnBackend({ deterministic: true })  a backend whose backward is deterministic unless a call
//                                                says `deterministic: false` (cudnnBackend: the fastest,
//                                                dQ accumulated by cuDNN with f32 atomics)
//
// Deterministic backward (`opts.deterministic`): the graph cudnn-frontend builds for
// set_deterministic_algorithm(true) (sdpa.ts), on an engine not noted NONDETERMINISTIC (plans.ts); its
// own plan (the key says so), no dQ accumulator scratch. Refused on compute capability 10.x, where the
// frontend also forces an engine and knobs that we do not (plans.ts).
//
// What cuDNN cannot do, we refuse or reshape, never route elsewhere:
// - causal with Tq > Tk: cuDNN's bottom-right mask needs Tq <= Tk. The first Tq - Tk query rows see no
//   key (o = 0, lse = -inf, dq = 0, by the contract); we write those and run cuDNN on the last Tk rows,
//   which is square causal attention. Their lse columns are not a contiguous view of lse [Hq, Tq], so
//   they go through a [Hq, Tk] temporary and a 2D copy (Hq*Tk*4 bytes; DistAttn never takes this path).
// - o in f32 (`outDtype: "f32"`): cuDNN writes o in the input dtype, so the f32 o is the bf16 o widened
//   (one extra cast pass; the partial then merges in f32 as usual, but carries bf16 rounding).
// - `accumulate` (f32 dq, dk, dv += this block): cuDNN writes bf16 gradients, so they land in bf16
//   temporaries, are cast to f32 and added with axpy. Extra cost per gradient element: a bf16 and an f32
//   temporary (6 bytes) and about 10 bytes of extra traffic (cast reads 2 and writes 4, axpy reads 4
//   more) on top of the accumulator's own read and write; and each block's gradient is rounded to bf16
//   once before it is summed in f32 (the CUDA backend adds unrounded f32).
// - Tq = 0 or Tk = 0 never reach cuDNN (zero-sized tensors): outputs are filled per the contract.
// - bf16 only, D in FAST_HEAD_DIMS, scale > 0, 16-byte aligned tensors on one device, compute
//   capability >= 8.0, cuDNN 9.x built for the same CUDA major version as the runtime.
// Workspace and scratch are allocated from the stream-ordered pool per call and freed on the same stream.

import { memcpy2dAsync, memsetAsync, probeGpus, type Stream } from "@lightseq/cuda";
import { axpy, cast, empty, fill, type Tensor } from "@lightseq/tensor";
import {
  type AttentionBackend,
  type AttentionGrads,
  type AttentionOptions,
  type AttentionOutput,
  type BackwardOptions,
  type CheckedCall,
  checkBackwardArgs,
  checkForwardArgs,
  type ForwardOptions,
} from "../block.ts";
import { checkGrads, checkOut as checkOutput, fail, inputsDevice, newForwardOutput, streamFor } from "../gpu-args.ts";
import { AttentionError, FAST_HEAD_DIMS } from "../layout.ts";
import { CudnnError, fmtCuda, fmtVersion, type Library, lib } from "./library.ts";
import { execute, getPlan, handleFor } from "./plans.ts";

// ---- argument checks ---------------------------------------------------------------------------------------

/** cuDNN's reason for the alignment, in the input and output checks' messages. */
const CUDNN_ALIGN = "cuDNN's tensors are declared 16-byte aligned";

/** What cuDNN can take beyond the contract's checks: refuses loudly, launches nothing. Returns the device. */
function requireSupported(who: string, c: CheckedCall, tensors: Record<string, Tensor>): number {
  const device = inputsDevice(who, tensors, "cuDNN", CUDNN_ALIGN);
  if (c.dtype !== "bf16")
    fail(
      who,
      `q: the cuDNN backend takes bf16 q, k, v (its fused attention runs on bf16 tensor cores), got ${c.dtype}: cast to bf16 or use the reference backend`,
    );
  if (!FAST_HEAD_DIMS.includes(c.D))
    fail(who, `q: head dim D = ${c.D} is not supported by the cuDNN backend (D in ${FAST_HEAD_DIMS.join(", ")})`);
  if (!(c.scale > 0)) fail(who, `opts.scale: the cuDNN backend is validated for scale > 0 only, got ${c.scale}`);
  let L: Library;
  try {
    L = lib();
    handleFor(device);
  } catch (e) {
    return fail(who, `cuDNN is not available: ${(e as Error).message}`);
  }
  const v = L.version;
  if (v === 91000 || v === 91001)
    fail(who, `cuDNN ${fmtVersion(v)} has known SDPA forward bugs (cudnn-frontend refuses it too): install 9.10.2 or newer`);
  if (c.causal && c.Tq < c.Tk && v < 90600 && (c.Tq % 64 !== 0 || c.Tk % 64 !== 0)) {
    fail(
      who,
      `causal attention with Tq (${c.Tq}) < Tk (${c.Tk}) needs the bottom-right mask, which cuDNN ${fmtVersion(v)} supports only for Tq and Tk multiples of 64 (9.6.0 lifts this)`,
    );
  }
  return device;
}

/** checkOut (gpu-args.ts) with cuDNN's reason for the alignment. */
function checkOut(who: string, t: Tensor, name: string, dtypes: readonly string[], shape: readonly number[], device: number): void {
  checkOutput(who, t, name, dtypes, shape, device, 16, CUDNN_ALIGN);
}

const dims = (c: CheckedCall) => `Tq=${c.Tq} Tk=${c.Tk} Hq=${c.Hq} Hkv=${c.Hkv} D=${c.D} causal=${c.causal} scale=${c.scale}`;

// ---- forward -----------------------------------------------------------------------------------------------

function runForward(who: string, c: CheckedCall, device: number, s: Stream, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor): void {
  if (c.Tq === 0) return;
  if (c.Tk === 0) {
    fill(o, 0, s);
    fill(lse, Number.NEGATIVE_INFINITY, s);
    return;
  }
  // Causal Tq > Tk: the first Tq - Tk rows see no key (top of this file).
  const skip = c.causal ? Math.max(0, c.Tq - c.Tk) : 0;
  const rows = c.Tq - skip;
  const temps: Tensor[] = [];
  const keep = <T extends Tensor>(t: T): T => {
    temps.push(t);
    return t;
  };
  try {
    let qRows = q;
    let oRows = o;
    let lseRows = lse;
    if (skip > 0) {
      fill(keep(o.narrow(0, skip)), 0, s);
      fill(lse, Number.NEGATIVE_INFINITY, s);
      qRows = keep(q.narrow(skip, rows));
      oRows = keep(o.narrow(skip, rows));
      lseRows = keep(empty([c.Hq, rows], { dtype: "f32", device: q.device, stream: s }));
    }
    const oBf16 = oRows.dtype === "bf16" ? oRows : keep(empty([rows, c.Hq, c.D], { dtype: "bf16", device: q.device, stream: s }));
    const plan = getPlan(device, "forward", { Tq: rows, Tk: c.Tk, Hq: c.Hq, Hkv: c.Hkv, D: c.D, causal: c.causal, deterministic: false });
    const ws =
      plan.workspaceBytes > 0 ? keep(empty([Math.ceil(plan.workspaceBytes / 4)], { dtype: "f32", device: q.device, stream: s })) : null;
    try {
      execute(plan, s, { q: qRows.ptr(), k: k.ptr(), v: v.ptr(), o: oBf16.ptr(), stats: lseRows.ptr() }, ws ? ws.ptr() : 0, c.scale);
    } catch (e) {
      if (e instanceof CudnnError) throw new CudnnError(e.call, e.status, e.statusName, e.libraryMessage, `${who}: ${dims(c)}`);
      throw e;
    }
    if (oBf16 !== oRows) keep(cast(oBf16, "f32", { out: oRows, stream: s }));
    if (lseRows !== lse) memcpy2dAsync(lse.ptr() + skip * 4, c.Tq * 4, lseRows.ptr(), rows * 4, rows * 4, c.Hq, s);
  } finally {
    for (const t of temps) t.dispose(); // stream-ordered frees, after the work that uses them
  }
}

/**
 * o, lse <- attention(q, k, v) into preallocated outputs: o [Tq, Hq, D] bf16 (or f32: the bf16 result
 * widened), lse [Hq, Tq] f32. Enqueued on opts.stream (default: the device's current stream).
 */
export function cudnnForwardInto(q: Tensor, k: Tensor, v: Tensor, out: AttentionOutput, opts: AttentionOptions): void {
  const who = "cudnn.forwardInto";
  const c = checkForwardArgs(who, q, k, v, opts);
  const device = requireSupported(who, c, { q, k, v });
  checkOut(who, out.o, "out.o", ["bf16", "f32"], q.shape, device);
  checkOut(who, out.lse, "out.lse", ["f32"], [c.Hq, c.Tq], device);
  runForward(who, c, device, streamFor(device, opts.stream), q, k, v, out.o, out.lse);
}

// ---- backward ----------------------------------------------------------------------------------------------

const align256 = (n: number) => Math.ceil(n / 256) * 256;

function runBackward(
  who: string,
  c: CheckedCall,
  device: number,
  s: Stream,
  t: { q: Tensor; k: Tensor; v: Tensor; o: Tensor; lse: Tensor; dO: Tensor },
  g: AttentionGrads,
  deterministic: boolean,
): void {
  if (c.Tq === 0 || c.Tk === 0) {
    for (const x of [g.dq, g.dk, g.dv]) fill(x, 0, s);
    return;
  }
  const skip = c.causal ? Math.max(0, c.Tq - c.Tk) : 0;
  const rows = c.Tq - skip;
  const temps: Tensor[] = [];
  const keep = <T extends Tensor>(x: T): T => {
    temps.push(x);
    return x;
  };
  try {
    const view = (x: Tensor) => (skip > 0 ? keep(x.narrow(skip, rows)) : x);
    let lseRows = t.lse;
    if (skip > 0) {
      fill(keep(g.dq.narrow(0, skip)), 0, s);
      lseRows = keep(empty([c.Hq, rows], { dtype: "f32", device: t.q.device, stream: s }));
      memcpy2dAsync(lseRows.ptr(), rows * 4, t.lse.ptr() + skip * 4, c.Tq * 4, rows * 4, c.Hq, s);
    }
    const shape = { Tq: rows, Tk: c.Tk, Hq: c.Hq, Hkv: c.Hkv, D: c.D, causal: c.causal, deterministic };
    const plan = getPlan(device, "backward", shape);
    // One scratch allocation: [plan workspace | Delta f32 Hq*rows | dQacc f32 Hq*rows*D (not deterministic)],
    // 256-byte aligned parts.
    const deltaAt = align256(plan.workspaceBytes);
    const dqAccAt = deltaAt + align256(c.Hq * rows * 4);
    const dqAccBytes = deterministic ? 0 : c.Hq * rows * c.D * 4;
    const scratch = keep(empty([(dqAccAt + dqAccBytes) / 4], { dtype: "f32", device: t.q.device, stream: s }));
    const base = scratch.ptr();
    // Before 9.6 the engine expects a zeroed dQ accumulator (cudnn-frontend memsets it); later ones zero it themselves.
    if (dqAccBytes > 0 && lib().version < 90600) memsetAsync(base + dqAccAt, 0, dqAccBytes, s);
    try {
      execute(
        plan,
        s,
        {
          q: view(t.q).ptr(),
          k: t.k.ptr(),
          v: t.v.ptr(),
          o: view(t.o).ptr(),
          dO: view(t.dO).ptr(),
          stats: lseRows.ptr(),
          dq: view(g.dq).ptr(),
          dk: g.dk.ptr(),
          dv: g.dv.ptr(),
          delta: base + deltaAt,
          ...(deterministic ? {} : { dqAccum: base + dqAccAt }),
        },
        plan.workspaceBytes > 0 ? base : 0,
        c.scale,
      );
    } catch (e) {
      if (e instanceof CudnnError) throw new CudnnError(e.call, e.status, e.statusName, e.libraryMessage, `${who}: ${dims(c)}`);
      throw e;
    }
  } finally {
    for (const x of temps) x.dispose();
  }
}

/**
 * dq [Tq,Hq,D], dk, dv [Tk,Hkv,D] (bf16, overwritten) <- the gradient of this block, given the FINAL
 * (merged) o and lse of the query rows (block.ts). Enqueued on opts.stream; `opts.deterministic`: the
 * deterministic graph (top of this file).
 */
export function cudnnBackwardInto(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  dO: Tensor,
  grads: AttentionGrads,
  opts: AttentionOptions & Pick<BackwardOptions, "deterministic">,
): void {
  const who = "cudnn.backwardInto";
  const c = checkBackwardArgs(who, q, k, v, o, lse, dO, opts);
  const device = requireSupported(who, c, { q, k, v, o, dO });
  checkOut(who, lse, "lse", ["f32"], [c.Hq, c.Tq], device);
  checkGrads(who, grads, "bf16", { q, k, v }, device, CUDNN_ALIGN);
  runBackward(who, c, device, streamFor(device, opts.stream), { q, k, v, o, lse, dO }, grads, opts.deterministic ?? false);
}

// ---- the backend -------------------------------------------------------------------------------------------

let availability: { ok: boolean; reason: string } | null = null;

/**
 * Whether the cuDNN backend can run here (on cuda:0), and why not: no GPU, no cuDNN, a cuDNN that is not
 * 9.x or not built for this CUDA major version, or a GPU older than compute capability 8.0. Never throws.
 */
export function cudnnAvailable(): { ok: boolean; reason: string } {
  if (availability) return availability;
  const gpus = probeGpus();
  if (gpus.count === 0) return (availability = { ok: false, reason: `no CUDA device: ${gpus.reason}` });
  try {
    const L = lib();
    handleFor(0);
    const missing = L.notPreloaded.length ? `; not preloaded: ${L.notPreloaded.join("; ")}` : "";
    availability = {
      ok: true,
      reason: `cuDNN ${fmtVersion(L.version)} (built for CUDA ${fmtCuda(L.cudaVersion)}) at ${L.path}; preloaded ${L.preloaded.length} libraries${missing}`,
    };
  } catch (e) {
    availability = { ok: false, reason: (e as Error).message };
  }
  return availability;
}

export interface CudnnBackendOptions {
  /** The backward's default for `opts.deterministic` (default false: the fastest engine, dQ by atomics). */
  deterministic?: boolean;
}

/** cuDNN's fused attention behind the block contract, with its default backward determinism. */
export interface CudnnBackend extends AttentionBackend {
  readonly deterministic: boolean;
}

/** A cuDNN backend whose backward is deterministic by default when `o.deterministic` (a call's own option wins). */
export function createCudnnBackend(o: CudnnBackendOptions = {}): CudnnBackend {
  const deterministic = o.deterministic ?? false;
  if (typeof deterministic !== "boolean")
    throw new AttentionError(`createCudnnBackend: deterministic: expected true or false, got ${String(o.deterministic)}`);
  return {
    name: "cudnn",
    deterministic,

    forward(q: Tensor, k: Tensor, v: Tensor, opts: ForwardOptions): AttentionOutput {
      const who = "cudnn.forward";
      const c = checkForwardArgs(who, q, k, v, opts);
      const device = requireSupported(who, c, { q, k, v });
      const s = streamFor(device, opts.stream);
      return newForwardOutput(q, c, s, (out) => runForward(who, c, device, s, q, k, v, out.o, out.lse));
    },

    backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dO: Tensor, opts: BackwardOptions): AttentionGrads {
      const who = "cudnn.backward";
      const c = checkBackwardArgs(who, q, k, v, o, lse, dO, opts);
      const device = requireSupported(who, c, { q, k, v, o, dO });
      checkOut(who, lse, "lse", ["f32"], [c.Hq, c.Tq], device);
      const s = streamFor(device, opts.stream);
      const p = { dtype: "bf16" as const, device: q.device, stream: s };
      const grads: AttentionGrads = { dq: empty(q.shape, p), dk: empty(k.shape, p), dv: empty(v.shape, p) };
      const acc = opts.accumulate;
      try {
        runBackward(who, c, device, s, { q, k, v, o, lse, dO }, grads, opts.deterministic ?? deterministic);
        if (acc === undefined) return grads;
        // f32 accumulation: widen this block's bf16 gradient and add it (cost: top of this file).
        for (const name of ["dq", "dk", "dv"] as const) {
          using wide = cast(grads[name], "f32", { stream: s });
          axpy(1, wide, acc[name], { stream: s });
        }
        for (const t of Object.values(grads)) t.dispose();
        return acc;
      } catch (e) {
        for (const t of Object.values(grads)) t.dispose();
        throw e;
      }
    },
  };
}

/** The default cuDNN backend: the fastest backward, not deterministic (what existing callers get). */
export const cudnnBackend: CudnnBackend = createCudnnBackend();
