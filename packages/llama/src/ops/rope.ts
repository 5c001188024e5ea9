// RoPE fused with the QKV split: qkv[T, (Hq + 2 Hkv) D] (columns q | k | v, head-major inside each)
// -> q[T,Hq,D], k[T,Hkv,D] rotated, v[T,Hkv,D] copied. Hugging Face's rotate-half layout: with
// x1 = x[..., :D/2], x2 = x[..., D/2:] and (cos, sin) of angle pos * invFreq[j] for j < D/2,
//   out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin.
// Backward is the rotation by the negative angle: d1 = g1 cos + g2 sin, d2 = g2 cos - g1 sin; dv = gv.
// Positions are GLOBAL token positions (a rank's chunk at offset 100000 rotates by 100000 + i).
//
// How angles are computed: on the host in f64 (ropeHostTable; the model keeps the last table while the
// positions stay the same, so a training run computes it once): invFreq in f64 (with the
// Llama-3 scaling), angle = pos * invFreq[j] in f64 (exact to ~1e-16 relative), cos and sin in f64,
// stored as f32 [T, D/2] tables that every layer reuses. The kernels only read the tables. Why not in
// f32 as Hugging Face does (pos * inv_freq as an f32 product): at position 512K an f32 angle of ~5e5
// rad has an ulp of 0.03 rad, so HF's highest-frequency rotations are off by up to ~0.016 rad there;
// the f64 angle keeps every cos/sin within an f32 rounding (6e-8) of the exact value at any position.
// The price is a table read (D/2 * 8 bytes per token, shared by all heads, so L2-resident) instead of
// sincos in the kernel, and a difference from HF that is below bf16 resolution for positions < ~2000
// (f32 angle error <= pos * 2^-24) and grows with the position (where HF is the one that is off).
//
// CPU: the f64 core below on the f32 tables, rounded once. CUDA: kernels/src/llama_rope.cu (f32 math,
// one rounding; 16-byte loads when D/2 % 8 == 0).

import type { Stream } from "@lightseq/cuda";
import { type DeviceLike, fromArray, parseDevice, type Tensor } from "@lightseq/tensor";
import {
  type Cost,
  checkCudaDType,
  checkSameDevice,
  checkTensor,
  f64Of,
  fail,
  kernels,
  launch,
  output,
  store,
  streamFor,
} from "./common.ts";

/** Llama-3 frequency scaling (rope_scaling / rope_parameters with rope_type "llama3"). */
export interface Llama3Scaling {
  readonly type: "llama3";
  readonly factor: number;
  readonly lowFreqFactor: number;
  readonly highFreqFactor: number;
  /** original_max_position_embeddings */
  readonly originalMaxPositions: number;
}

export interface RopeConfig {
  readonly headDim: number;
  readonly ropeTheta: number;
  readonly ropeScaling?: Llama3Scaling | null;
}

export interface RopeDims {
  Hq: number;
  Hkv: number;
  D: number;
}

export interface RopeTable {
  /** f32 [T, D/2] */
  cos: Tensor;
  /** f32 [T, D/2] */
  sin: Tensor;
}

/** invFreq[j] = theta^(-2j/D) for j < D/2, in f64, with the Llama-3 scaling applied when configured. */
export function ropeInvFreq(cfg: RopeConfig): Float64Array {
  const D = cfg.headDim;
  if (!Number.isSafeInteger(D) || D <= 0 || D % 2 !== 0) fail("ropeInvFreq", `headDim: expected a positive even integer, got ${D}`);
  if (!(cfg.ropeTheta > 0)) fail("ropeInvFreq", `ropeTheta: expected a positive number, got ${cfg.ropeTheta}`);
  const inv = new Float64Array(D / 2);
  for (let j = 0; j < D / 2; j++) inv[j] = 1 / cfg.ropeTheta ** ((2 * j) / D);
  const sc = cfg.ropeScaling;
  if (sc === undefined || sc === null) return inv;
  if (sc.type !== "llama3") fail("ropeInvFreq", `ropeScaling.type: only "llama3" is implemented, got ${JSON.stringify(sc.type)}`);
  const { factor, lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositions: old } = sc;
  if (!(factor > 0) || !(lo > 0) || !(hi > lo) || !(old > 0)) {
    fail(
      "ropeInvFreq",
      `ropeScaling: expected factor > 0, 0 < lowFreqFactor < highFreqFactor, originalMaxPositions > 0; got ${JSON.stringify(sc)}`,
    );
  }
  const lowFreqWavelen = old / lo; // longer wavelengths than this are divided by factor
  const highFreqWavelen = old / hi; // shorter ones are kept
  for (let j = 0; j < inv.length; j++) {
    const f = inv[j] as number;
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) continue;
    if (wavelen > lowFreqWavelen) inv[j] = f / factor;
    else {
      const s = (old / wavelen - lo) / (hi - lo);
      inv[j] = ((1 - s) * f) / factor + s * f;
    }
  }
  return inv;
}

/** cos/sin f32 [T, D/2] of pos * invFreq, computed in f64 (see the top of this file). */
export function ropeTable(
  invFreq: Float64Array,
  positions: Int32Array,
  device: DeviceLike = "cpu",
  o: { stream?: Stream } = {},
): RopeTable {
  return uploadRopeTable(ropeHostTable(invFreq, positions), [positions.length, invFreq.length], device, o);
}

/** cos and sin of ropeTable as host arrays [T * half] (the part that costs: ~100 ms at 32K positions in JS). */
export function ropeHostTable(invFreq: Float64Array, positions: Int32Array): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const T = positions.length;
  const c = new Float32Array(T * half);
  const s = new Float32Array(T * half);
  for (let t = 0; t < T; t++) {
    const p = positions[t] as number;
    if (p < 0) fail("ropeTable", `positions[${t}] = ${p}: positions are non-negative`);
    for (let j = 0; j < half; j++) {
      const a = p * (invFreq[j] as number);
      c[t * half + j] = Math.cos(a);
      s[t * half + j] = Math.sin(a);
    }
  }
  return { cos: c, sin: s };
}

/** A host table of ropeHostTable on `device` as f32 tensors of `shape` [T, half]. */
export function uploadRopeTable(
  host: { cos: Float32Array; sin: Float32Array },
  shape: [number, number],
  device: DeviceLike = "cpu",
  o: { stream?: Stream } = {},
): RopeTable {
  const dev = parseDevice(device);
  return {
    cos: fromArray(host.cos, shape, { device: dev, stream: o.stream }),
    sin: fromArray(host.sin, shape, { device: dev, stream: o.stream }),
  };
}

/** Either pass: read qkv (or dq, dk, dv), write the other side, read the tables once per token. */
export function ropeCost(s: { T: number } & RopeDims & { elemBytes?: number }): Cost {
  const e = s.elemBytes ?? 2;
  const cols = (s.Hq + 2 * s.Hkv) * s.D;
  return { flops: 3 * s.T * (s.Hq + s.Hkv) * s.D, bytes: 2 * s.T * cols * e + s.T * s.D * 4 };
}

// --- f64 reference core ---

/**
 * Rotates heads [T, H, D] read from `src` (row stride `srcStride`, first head at column `srcCol`) into
 * dst [T, H, D]; sign = +1 forward, -1 the inverse rotation (backward).
 */
export function ropeRotateF64(
  src: Float64Array,
  srcStride: number,
  srcCol: number,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  T: number,
  H: number,
  D: number,
  sign: 1 | -1,
): Float64Array {
  const half = D / 2;
  const dst = new Float64Array(T * H * D);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const si = t * srcStride + srcCol + h * D;
      const di = (t * H + h) * D;
      for (let j = 0; j < half; j++) {
        const c = cos[t * half + j] as number;
        const s = sign * (sin[t * half + j] as number);
        const x1 = src[si + j] as number;
        const x2 = src[si + half + j] as number;
        dst[di + j] = x1 * c - x2 * s;
        dst[di + half + j] = x2 * c + x1 * s;
      }
    }
  return dst;
}

function checkDims(op: string, dims: RopeDims): void {
  for (const k of ["Hq", "Hkv", "D"] as const) {
    const v = dims[k];
    if (!Number.isSafeInteger(v) || v <= 0) fail(op, `dims.${k}: expected a positive integer, got ${v}`);
  }
  if (dims.D % 2 !== 0) fail(op, `dims.D: rotate-half needs an even head dim, got ${dims.D}`);
}

function checkTable(op: string, table: RopeTable, T: number, D: number, like: Tensor): void {
  if (table === null || typeof table !== "object") fail(op, "table: expected { cos, sin } from ropeTable");
  checkTensor(op, table.cos, "table.cos", ["f32"], [T, D / 2]);
  checkTensor(op, table.sin, "table.sin", ["f32"], [T, D / 2]);
  checkSameDevice(op, like, "qkv", table.cos, "table.cos");
  checkSameDevice(op, like, "qkv", table.sin, "table.sin");
}

export interface RopeForwardOptions {
  stream?: Stream;
  qOut?: Tensor;
  kOut?: Tensor;
  vOut?: Tensor;
}

export function ropeQkvForward(
  qkv: Tensor,
  table: RopeTable,
  dims: RopeDims,
  o: RopeForwardOptions = {},
): { q: Tensor; k: Tensor; v: Tensor } {
  const op = "ropeQkvForward";
  checkDims(op, dims);
  const { Hq, Hkv, D } = dims;
  const W = (Hq + 2 * Hkv) * D;
  checkTensor(op, qkv, "qkv", ["f32", "bf16"], [-1, W]);
  const T = qkv.shape[0] as number;
  checkTable(op, table, T, D, qkv);
  const q = output(op, qkv, qkv.dtype, [T, Hq, D], o.qOut, o.stream, "qOut");
  const k = output(op, qkv, qkv.dtype, [T, Hkv, D], o.kOut, o.stream, "kOut");
  const v = output(op, qkv, qkv.dtype, [T, Hkv, D], o.vOut, o.stream, "vOut");
  if (qkv.device.kind === "cpu") {
    const x = f64Of(qkv);
    const c = table.cos.data() as Float32Array;
    const s = table.sin.data() as Float32Array;
    store(q, ropeRotateF64(x, W, 0, c, s, T, Hq, D, 1));
    store(k, ropeRotateF64(x, W, Hq * D, c, s, T, Hkv, D, 1));
    const vv = new Float64Array(T * Hkv * D);
    for (let t = 0; t < T; t++) vv.set(x.subarray(t * W + (Hq + Hkv) * D, (t + 1) * W), t * Hkv * D);
    store(v, vv);
    return { q, k, v };
  }
  checkCudaDType(op, qkv, "qkv", "bf16");
  const st = streamFor(qkv, o.stream);
  launch(
    kernels().ls_llama_rope_qkv_fwd_bf16(qkv.ptr(), table.cos.ptr(), table.sin.ptr(), q.ptr(), k.ptr(), v.ptr(), T, Hq, Hkv, D, st.handle),
    "ls_llama_rope_qkv_fwd_bf16",
    `T=${T} Hq=${Hq} Hkv=${Hkv} D=${D}`,
  );
  return { q, k, v };
}

/** dqkv[T, (Hq+2Hkv)D] from the gradients of the rotated q, k and of v. */
export function ropeQkvBackward(
  dq: Tensor,
  dk: Tensor,
  dv: Tensor,
  table: RopeTable,
  dims: RopeDims,
  o: { stream?: Stream; out?: Tensor } = {},
): Tensor {
  const op = "ropeQkvBackward";
  checkDims(op, dims);
  const { Hq, Hkv, D } = dims;
  const W = (Hq + 2 * Hkv) * D;
  checkTensor(op, dq, "dq", ["f32", "bf16"], [-1, Hq, D]);
  const T = dq.shape[0] as number;
  checkTensor(op, dk, "dk", [dq.dtype], [T, Hkv, D]);
  checkTensor(op, dv, "dv", [dq.dtype], [T, Hkv, D]);
  checkSameDevice(op, dq, "dq", dk, "dk");
  checkSameDevice(op, dq, "dq", dv, "dv");
  checkTable(op, table, T, D, dq);
  const out = output(op, dq, dq.dtype, [T, W], o.out, o.stream);
  if (dq.device.kind === "cpu") {
    const c = table.cos.data() as Float32Array;
    const s = table.sin.data() as Float32Array;
    const gq = ropeRotateF64(f64Of(dq), Hq * D, 0, c, s, T, Hq, D, -1);
    const gk = ropeRotateF64(f64Of(dk), Hkv * D, 0, c, s, T, Hkv, D, -1);
    const gv = f64Of(dv);
    const r = new Float64Array(T * W);
    for (let t = 0; t < T; t++) {
      r.set(gq.subarray(t * Hq * D, (t + 1) * Hq * D), t * W);
      r.set(gk.subarray(t * Hkv * D, (t + 1) * Hkv * D), t * W + Hq * D);
      r.set(gv.subarray(t * Hkv * D, (t + 1) * Hkv * D), t * W + (Hq + Hkv) * D);
    }
    store(out, r);
    return out;
  }
  checkCudaDType(op, dq, "dq", "bf16");
  const st = streamFor(dq, o.stream);
  launch(
    kernels().ls_llama_rope_qkv_bwd_bf16(
      dq.ptr(),
      dk.ptr(),
      dv.ptr(),
      table.cos.ptr(),
      table.sin.ptr(),
      out.ptr(),
      T,
      Hq,
      Hkv,
      D,
      st.handle,
    ),
    "ls_llama_rope_qkv_bwd_bf16",
    `T=${T} Hq=${Hq} Hkv=${Hkv} D=${D}`,
  );
  return out;
}
