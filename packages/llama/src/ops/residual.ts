// Residual add: x[T,C] + r[T,C] -> [T,C] (o.out may be x: in place).
// Both devices go through @lightseq/tensor's add (CPU: exact f32 / bf16-rounded f32 add; CUDA: the
// 16-byte vectorized elementwise kernel of kernels/src/elementwise.cu, measured in bench/ops-bench.ts).

import type { Stream } from "@lightseq/cuda";
import { add, type Tensor } from "@lightseq/tensor";
import { type Cost, checkSameDevice, checkTensor } from "./common.ts";

/** Read x, r; write the sum (its backward passes the gradient to both inputs: no kernel). */
export function residualCost(s: { T: number; C: number; elemBytes?: number }): Cost {
  const n = s.T * s.C;
  return { flops: n, bytes: 3 * n * (s.elemBytes ?? 2) };
}

export function residualAdd(x: Tensor, r: Tensor, o: { stream?: Stream; out?: Tensor } = {}): Tensor {
  const op = "residualAdd";
  checkTensor(op, x, "x", ["f32", "bf16"], [-1, -1]);
  checkTensor(op, r, "r", [x.dtype], x.shape);
  checkSameDevice(op, x, "x", r, "r");
  if (o.out !== undefined) checkTensor(op, o.out, "out", [x.dtype], x.shape);
  return add(x, r, o);
}
