import { describe, expect, test } from "bun:test";
import {
  embeddingCost,
  linearCost,
  lmHeadLossCost,
  residualCost,
  residualRmsnormCost,
  rmsnormCost,
  ropeCost,
  swigluCost,
} from "./index.ts";

// Hand counts at small shapes (bf16 activations, 2 bytes; f32 statistics and gradients, 4).
describe("op costs", () => {
  test("memory-bound ops count each tensor read or written once", () => {
    expect(rmsnormCost({ T: 2, C: 4 })).toEqual({ flops: 32, bytes: 2 * 8 * 2 + 2 * 4 + 4 * 2 });
    expect(rmsnormCost({ T: 2, C: 4 }, "backward").bytes).toBe(3 * 8 * 2 + 2 * 4 + 4 * 10);
    expect(residualRmsnormCost({ T: 2, C: 4 }).bytes).toBe(4 * 8 * 2 + 2 * 4 + 4 * 2);
    expect(residualCost({ T: 2, C: 4 })).toEqual({ flops: 8, bytes: 48 });
    expect(swigluCost({ T: 3, F: 5 }, "backward")).toEqual({ flops: 150, bytes: 5 * 15 * 2 });
    // qkv [1, (2 + 2) * 8] read, q/k/v written, cos+sin [1, 4] f32 read
    expect(ropeCost({ T: 1, Hq: 2, Hkv: 1, D: 8 }).bytes).toBe(2 * 32 * 2 + 8 * 4);
    expect(embeddingCost({ T: 4, V: 10, C: 3 }, "forward").bytes).toBe(16 + 2 * 12 * 2);
    expect(embeddingCost({ T: 4, V: 10, C: 3, distinct: 2 }, "backward").bytes).toBe(32 + 24 + 2 * 3 * 8);
  });

  test("GEMM ops count 2 m n k per product", () => {
    expect(linearCost({ T: 4, in: 3, out: 5 }).flops).toBe(120);
    expect(linearCost({ T: 4, in: 3, out: 5 }, "backwardWeight").bytes).toBe((12 + 20) * 2 + 2 * 15 * 4);
    expect(lmHeadLossCost({ T: 2, C: 3, V: 7 }).flops).toBe(3 * 2 * 2 * 7 * 3 + 6 * 14);
    expect(lmHeadLossCost({ T: 2, C: 3, V: 7 }, "forward").flops).toBe(2 * 2 * 7 * 3 + 6 * 14);
  });
});
