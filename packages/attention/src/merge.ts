// Merge of partial attention results over disjoint key sets (LightSeq section 1.6, natural-log form).
// o1, o2 [T, H, D] (f32 or bf16), lse1, lse2 [H, T] f32 -> o [T, H, D] f32, lse [H, T] f32:
//
//   lse = log(exp(lse1) + exp(lse2)) = max + log1p(exp(-|lse1 - lse2|))
//   o   = exp(lse1 - lse) * o1 + exp(lse2 - lse) * o2
//
// An empty partial (lse = -Infinity: no visible key) contributes nothing and its o is never read, so
// garbage there cannot turn into NaN; two empty partials give lse = -Infinity, o = 0. Results are kept
// in f32 (DESIGN.md: partials accumulate in fp32, never bf16); the CPU computes each element in f64.

import type { Stream } from "@lightseq/cuda";
import {
  assertTensor,
  cast,
  copy,
  type DeviceLike,
  deviceName,
  empty,
  fmtShape,
  full,
  sameDevice,
  type Tensor,
  toFloat32Array,
  zeros,
} from "@lightseq/tensor";
import type { AttentionPartial } from "./block.ts";
import { mergeIntoCuda } from "./cuda.ts";
import { AttentionError } from "./layout.ts";

export interface MergeOptions {
  /** CUDA: the stream to enqueue on. */
  stream?: Stream;
}

function fail(who: string, msg: string): never {
  throw new AttentionError(`${who}: ${msg}`);
}

/** Checks one partial, and its shape and device against a reference tensor when given. */
function checkPartial(
  who: string,
  p: AttentionPartial,
  name: string,
  ref?: { shape: readonly number[]; device: Tensor["device"]; refName: string },
): void {
  assertTensor(p.o, `${who}: ${name}.o`);
  assertTensor(p.lse, `${who}: ${name}.lse`);
  if (p.o.shape.length !== 3) fail(who, `${name}.o: expected rank 3 [T, H, D], got shape ${fmtShape(p.o.shape)}`);
  if (p.o.dtype !== "f32" && p.o.dtype !== "bf16") fail(who, `${name}.o: expected dtype f32 or bf16, got ${p.o.dtype}`);
  const [T, H] = p.o.shape as [number, number, number];
  if (p.lse.dtype !== "f32") fail(who, `${name}.lse: expected dtype f32 (lse is always f32), got ${p.lse.dtype}`);
  if (p.lse.shape.length !== 2 || p.lse.shape[0] !== H || p.lse.shape[1] !== T) {
    fail(who, `${name}.lse: expected shape [H, T] = [${H}, ${T}] (from ${name}.o ${fmtShape(p.o.shape)}), got ${fmtShape(p.lse.shape)}`);
  }
  if (!sameDevice(p.lse.device, p.o.device))
    fail(who, `${name}.lse: expected device ${deviceName(p.o.device)} (as ${name}.o), got ${deviceName(p.lse.device)}`);
  if (ref !== undefined) {
    if (!p.o.shape.every((d, i) => d === ref.shape[i]))
      fail(who, `${name}.o: expected shape ${fmtShape(ref.shape)} (as ${ref.refName}), got ${fmtShape(p.o.shape)}`);
    if (!sameDevice(p.o.device, ref.device))
      fail(who, `${name}.o: expected device ${deviceName(ref.device)} (as ${ref.refName}), got ${deviceName(p.o.device)}`);
  }
}

/** An empty accumulator for mergeInto: o = 0 (f32), lse = -Infinity. */
export function emptyPartial(T: number, H: number, D: number, o: { device?: DeviceLike; stream?: Stream } = {}): AttentionPartial {
  return { o: zeros([T, H, D], { dtype: "f32", ...o }), lse: full([H, T], Number.NEGATIVE_INFINITY, { dtype: "f32", ...o }) };
}

/** The merge of two partials over disjoint keys, as new f32 tensors. */
export function merge(a: AttentionPartial, b: AttentionPartial, opts: MergeOptions = {}): AttentionPartial {
  const who = "merge";
  checkPartial(who, a, "a");
  checkPartial(who, b, "b", { shape: a.o.shape, device: a.o.device, refName: "a.o" });
  switch (a.o.device.kind) {
    case "cpu": {
      const out: AttentionPartial = {
        o: empty(a.o.shape, { dtype: "f32", device: a.o.device, stream: opts.stream }),
        lse: empty(a.lse.shape, { dtype: "f32", device: a.o.device, stream: opts.stream }),
      };
      mergeCpu(a, b, out);
      return out;
    }
    case "cuda": {
      const out: AttentionPartial = {
        o: empty(a.o.shape, { dtype: "f32", device: a.o.device, stream: opts.stream }),
        lse: empty(a.lse.shape, { dtype: "f32", device: a.o.device, stream: opts.stream }),
      };
      cast(a.o, "f32", { out: out.o, stream: opts.stream }).dispose();
      copy(out.lse, a.lse, opts.stream);
      mergeIntoCuda(out, b, opts);
      return out;
    }
  }
}

/** acc <- merge(acc, part) in place; acc.o and acc.lse must be f32 (start from emptyPartial). */
export function mergeInto(acc: AttentionPartial, part: AttentionPartial, opts: MergeOptions = {}): void {
  const who = "mergeInto";
  checkPartial(who, acc, "acc");
  if (acc.o.dtype !== "f32") fail(who, `acc.o: expected dtype f32 (the accumulator is fp32), got ${acc.o.dtype}`);
  checkPartial(who, part, "part", { shape: acc.o.shape, device: acc.o.device, refName: "acc.o" });
  switch (acc.o.device.kind) {
    case "cpu":
      mergeCpu(acc, part, acc);
      return;
    case "cuda":
      mergeIntoCuda(acc, part, opts);
  }
}

/** out = merge(a, b) elementwise in f64, stored as f32; out may be a. */
function mergeCpu(a: AttentionPartial, b: AttentionPartial, out: AttentionPartial): void {
  const [T, H, D] = a.o.shape as [number, number, number];
  const ao = toFloat32Array(a.o); // copies (bf16 widened), so out may alias a
  const bo = toFloat32Array(b.o);
  const al = a.lse.data() as Float32Array;
  const bl = b.lse.data() as Float32Array;
  const oo = out.o.data() as Float32Array;
  const ol = out.lse.data() as Float32Array;
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < T; t++) {
      const la = al[h * T + t] as number;
      const lb = bl[h * T + t] as number;
      const m = Math.max(la, lb);
      const base = (t * H + h) * D;
      if (m === Number.NEGATIVE_INFINITY) {
        ol[h * T + t] = Number.NEGATIVE_INFINITY;
        oo.fill(0, base, base + D);
        continue;
      }
      // |la - lb| is +Inf when one side is empty: log1p(exp(-Inf)) = 0 and lse is the other side's.
      const lse = m + Math.log1p(Math.exp(-Math.abs(la - lb)));
      const wa = la === Number.NEGATIVE_INFINITY ? 0 : Math.exp(la - lse);
      const wb = lb === Number.NEGATIVE_INFINITY ? 0 : Math.exp(lb - lse);
      for (let d = 0; d < D; d++) {
        const x = wa === 0 ? 0 : wa * (ao[base + d] as number);
        const y = wb === 0 ? 0 : wb * (bo[base + d] as number);
        oo[base + d] = x + y;
      }
      ol[h * T + t] = lse;
    }
  }
}
