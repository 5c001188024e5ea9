// The SDPA graphs' structure without cuDNN: buildForward/buildBackward run against a recording stand-in
// for GraphBuilder (same methods, no descriptors), so the deterministic backward's difference from the
// default one is checked on any machine. Also the plan cache key, which must tell the two apart.

import { expect, test } from "bun:test";
import { CUDNN_ABI as C } from "./abi.ts";
import type { GraphBuilder, TensorRef } from "./graph.ts";
import { getPlan, planKey } from "./plans.ts";
import { buildBackward, type PlanShape, UID } from "./sdpa.ts";

interface Op {
  kind: "pointwise" | "matmul" | "reduction" | "reshape";
  name: string;
  /** uid of the operation's output */
  out: number;
}

/** Records tensors (uid -> dtype, kind) and operations in order. */
class Recorder {
  readonly ops: Op[] = [];
  readonly tensors = new Map<number, { dtype: number; kind: string }>();
  #next = 1000;
  tensor(uid: number, dims: readonly number[], strides: readonly number[], dtype: number, kind: string): TensorRef {
    if (this.tensors.has(uid)) throw new Error(`uid ${uid} declared twice`);
    this.tensors.set(uid, { dtype, kind });
    return { desc: 0, uid, dims, strides };
  }
  virtual(dims: readonly number[], strides: readonly number[], dtype: number): TensorRef {
    return this.tensor(this.#next++, dims, strides, dtype, "virtual");
  }
  scalar(uid: number, dtype: number): TensorRef {
    return this.tensor(uid, [1, 1, 1, 1], [1, 1, 1, 1], dtype, "by-value");
  }
  pointwise(name: string, _mode: number, x: TensorRef, o: { y?: TensorRef; yType?: number } = {}): TensorRef {
    const y = o.y ?? this.virtual(x.dims, x.strides, o.yType ?? C.CUDNN_DATA_FLOAT);
    this.ops.push({ kind: "pointwise", name, out: y.uid });
    return y;
  }
  matmul(name: string, _a: TensorRef, _b: TensorRef, c: TensorRef): TensorRef {
    this.ops.push({ kind: "matmul", name, out: c.uid });
    return c;
  }
  reduction(name: string, _op: number, _x: TensorRef, y: TensorRef): TensorRef {
    this.ops.push({ kind: "reduction", name, out: y.uid });
    return y;
  }
  reshape(name: string, _x: TensorRef, y: TensorRef): TensorRef {
    this.ops.push({ kind: "reshape", name, out: y.uid });
    return y;
  }
}

const record = (build: (g: GraphBuilder, s: PlanShape) => number[], s: PlanShape) => {
  const r = new Recorder();
  const uids = build(r as unknown as GraphBuilder, s);
  return { r, uids };
};

const base: PlanShape = { Tq: 96, Tk: 160, Hq: 8, Hkv: 2, D: 64, causal: true, deterministic: false };

test("the deterministic backward writes dQ = dS K straight into dq: no f32 accumulator, everything else the same", () => {
  for (const shape of [base, { ...base, Tk: 96, Hkv: 8, causal: false }]) {
    const fast = record(buildBackward, shape);
    const det = record(buildBackward, { ...shape, deterministic: true });
    // Default graph: dQacc (f32, real) = dS K, then dq = identity(dQacc).
    expect(fast.r.tensors.get(UID.dqAccum)).toEqual({ dtype: C.CUDNN_DATA_FLOAT, kind: "real" });
    expect(fast.r.ops.slice(-2)).toEqual([
      { kind: "matmul", name: "dQacc = dS K", out: UID.dqAccum },
      { kind: "pointwise", name: "dQ = dQacc", out: UID.dq },
    ]);
    expect(fast.uids).toContain(UID.dqAccum);
    // Deterministic graph: the matmul's output is dq (bf16, real); no accumulator tensor, op or binding.
    expect(det.r.tensors.has(UID.dqAccum)).toBe(false);
    expect(det.r.tensors.get(UID.dq)).toEqual({ dtype: C.CUDNN_DATA_BFLOAT16, kind: "real" });
    expect(det.r.ops.at(-1)).toEqual({ kind: "matmul", name: "dQ = dS K", out: UID.dq });
    expect(det.uids).toEqual(fast.uids.filter((u) => u !== UID.dqAccum));
    expect(det.r.ops.slice(0, -1)).toEqual(fast.r.ops.slice(0, -2));
  }
});

test("the plan cache key tells deterministic plans apart; a deterministic forward plan is an internal error", () => {
  const fast = planKey(0, "backward", base);
  const det = planKey(0, "backward", { ...base, deterministic: true });
  expect(fast).toBe("cuda:0 backward Tq=96 Tk=160 Hq=8 Hkv=2 D=64 causal=true deterministic=false");
  expect(det).toBe("cuda:0 backward Tq=96 Tk=160 Hq=8 Hkv=2 D=64 causal=true deterministic=true");
  expect(new Set([fast, det, planKey(1, "backward", base), planKey(0, "forward", base)]).size).toBe(4);
  // Refused before any handle or library is touched (so this runs without a GPU).
  expect(() => getPlan(0, "forward", { ...base, deterministic: true })).toThrow(
    "cudnn: internal error: the forward has no deterministic variant",
  );
});
