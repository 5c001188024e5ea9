// Linear layer without bias, weights as HF stores them: x[T,in], W[out,in] -> y[T,out] = x @ W^T.
//   input gradient:  dx[T,in]  = dy @ W
//   weight gradient: dW[out,in] += dy^T @ x, ACCUMULATED in place in f32 (bf16 operands on the GPU:
//                    cuBLASLt with an f32 C/D and beta = 1, so the sum over micro-steps and chunks is
//                    never rounded to bf16)
// All three are @lightseq/tensor's matmul (CPU: f64-accumulating reference; CUDA: cuBLASLt).

import type { Stream } from "@lightseq/cuda";
import { matmul, type Tensor } from "@lightseq/tensor";
import { type Cost, checkSameDevice, checkSameDType, checkTensor } from "./common.ts";

/** One GEMM of 2 T in out FLOPs; the weight gradient reads and writes its f32 accumulator. */
export function linearCost(
  s: { T: number; in: number; out: number; elemBytes?: number },
  pass: "forward" | "backwardInput" | "backwardWeight" = "forward",
): Cost {
  const e = s.elemBytes ?? 2;
  const act = (s.T * s.in + s.T * s.out) * e;
  return { flops: 2 * s.T * s.in * s.out, bytes: act + (pass === "backwardWeight" ? 2 * s.in * s.out * 4 : s.in * s.out * e) };
}

export function linearForward(x: Tensor, W: Tensor, o: { stream?: Stream; out?: Tensor } = {}): Tensor {
  const op = "linearForward";
  checkTensor(op, x, "x", ["f32", "bf16"], [-1, -1]);
  checkTensor(op, W, "W", [x.dtype], [-1, x.shape[1] as number]);
  checkSameDevice(op, x, "x", W, "W");
  return matmul(x, W, { transB: true, ...o });
}

export function linearBackwardInput(dy: Tensor, W: Tensor, o: { stream?: Stream; out?: Tensor } = {}): Tensor {
  const op = "linearBackwardInput";
  checkTensor(op, dy, "dy", ["f32", "bf16"], [-1, -1]);
  checkTensor(op, W, "W", [dy.dtype], [dy.shape[1] as number, -1]);
  checkSameDevice(op, dy, "dy", W, "W");
  return matmul(dy, W, o);
}

/** dW (f32 [out,in]) += dy^T @ x. */
export function linearBackwardWeight(dy: Tensor, x: Tensor, dW: Tensor, o: { stream?: Stream } = {}): void {
  const op = "linearBackwardWeight";
  checkTensor(op, dy, "dy", ["f32", "bf16"], [-1, -1]);
  const [T, out] = dy.shape as [number, number];
  checkTensor(op, x, "x", [dy.dtype], [T, -1]);
  checkSameDType(op, dy, "dy", x, "x");
  checkTensor(op, dW, "dW", ["f32"], [out, x.shape[1] as number]);
  checkSameDevice(op, dy, "dy", x, "x");
  checkSameDevice(op, dy, "dy", dW, "dW");
  matmul(dy, x, { transA: true, out: dW, beta: 1, outDtype: "f32", stream: o.stream }).dispose();
}
