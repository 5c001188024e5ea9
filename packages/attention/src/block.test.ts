import { describe, expect, test } from "bun:test";
import { randn } from "@lightseq/tensor";
import { attentionCost, checkForwardArgs, visiblePairs } from "./block.ts";
import { AttentionError, visibleKeys } from "./layout.ts";
import { referenceBackend } from "./reference.ts";
import { attentionBackendSuite } from "./testing.ts";

describe("attentionCost", () => {
  test("forward is 4 Tq Tk Hq D, halved when causal with Tq == Tk; backward is 2.5x", () => {
    const s = { Tq: 1024, Tk: 1024, Hq: 32, D: 128 };
    expect(attentionCost({ ...s, causal: false }).flops).toBe(4 * 1024 * 1024 * 32 * 128);
    expect(attentionCost({ ...s, causal: true }).flops).toBe(2 * 1024 * 1024 * 32 * 128);
    expect(attentionCost({ ...s, causal: true }, "backward").flops).toBe(2.5 * 2 * 1024 * 1024 * 32 * 128);
    expect(attentionCost({ ...s, causal: true }, "forward+backward").flops).toBe(3.5 * 2 * 1024 * 1024 * 32 * 128);
  });

  test("DESIGN.md's per-layer count: causal fwd = 4 S^2 d_model / 2 (Llama-2-7B, 32K tokens)", () => {
    const S = 32768;
    expect(attentionCost({ Tq: S, Tk: S, Hq: 32, D: 128, causal: true }).flops).toBe((4 * S * S * 4096) / 2);
  });

  test("causal Tq != Tk counts the area under the bottom-right mask; blocks of a causal sequence add up", () => {
    expect(visiblePairs(4, 12, true)).toBe(4 * 12 - 8);
    expect(visiblePairs(12, 4, true)).toBe(8);
    // Query chunk i of P against the key prefix 0..i: the chunks' counts sum to the whole causal count.
    const [P, c] = [4, 256];
    let sum = 0;
    for (let i = 0; i < P; i++) sum += visiblePairs(c, (i + 1) * c, true);
    expect(sum).toBe(visiblePairs(P * c, P * c, true));
    // The exact count differs from the convention only by the diagonal's half.
    let exact = 0;
    for (let i = 0; i < c; i++) exact += visibleKeys(i, c, c, true);
    expect(exact - visiblePairs(c, c, true)).toBe(c / 2);
  });

  test("bytes: every input read once, every output written once (bf16 default; lse f32)", () => {
    const s = { Tq: 8, Tk: 16, Hq: 4, Hkv: 2, D: 64, causal: true };
    const q = 8 * 4 * 64;
    const kv = 16 * 2 * 64;
    const lse = 4 * 8 * 4;
    expect(attentionCost(s).bytes).toBe(2 * (2 * q + 2 * kv) + lse);
    expect(attentionCost(s, "backward").bytes).toBe(2 * (4 * q + 4 * kv) + lse);
    expect(attentionCost({ ...s, dtype: "f32" }).bytes).toBe(4 * (2 * q + 2 * kv) + lse);
  });
});

describe("argument checks", () => {
  test("a disposed tensor or a non-tensor is named", () => {
    const q = randn([2, 2, 4], { seed: 1 });
    const k = randn([2, 2, 4], { seed: 2 });
    q.dispose();
    expect(() => checkForwardArgs("f", q, k, k, { causal: true })).toThrow("f: q: use after dispose");
    expect(() => referenceBackend.forward(k, {} as never, k, { causal: true })).toThrow(
      "reference.forward: k: expected a Tensor [Tk, Hkv, D], got object",
    );
    expect(() => referenceBackend.forward(k, k, k, undefined as never)).toThrow(AttentionError);
    k.dispose();
  });
});

// The suite's "equals the reference" path, exercised with a backend object that is not the reference
// itself, over longer sequences (x3) and a wider head.
const { forward, backward } = referenceBackend;
attentionBackendSuite({ name: "reference (through the comparison path)", forward, backward }, { headDim: 16, seqMultiple: 3 });
