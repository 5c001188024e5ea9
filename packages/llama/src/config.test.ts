import { describe, expect, test } from "bun:test";
import { LLAMA_PRESETS, llamaParamCount, llamaPreset, makeLlamaConfig } from "./config.ts";

describe("presets", () => {
  test("parameter counts equal the published ones", () => {
    // Hugging Face model cards / sum of tensor sizes in the published safetensors.
    expect(llamaParamCount(llamaPreset("llama2-7b")).total).toBe(6_738_415_616);
    expect(llamaParamCount(llamaPreset("llama3-8b")).total).toBe(8_030_261_248);
    expect(llamaParamCount(llamaPreset("llama3.2-1b")).total).toBe(1_235_814_400);
    expect(llamaParamCount(llamaPreset("llama3.2-3b")).total).toBe(3_212_749_824);
    expect(llamaParamCount(llamaPreset("tinyllama-1.1b")).total).toBe(1_100_048_384);
  });

  test("every preset resolves; tiny is GQA with the Llama-2 vocabulary", () => {
    for (const name of LLAMA_PRESETS) expect(llamaPreset(name).layers).toBeGreaterThan(0);
    const t = llamaPreset("tiny");
    expect(t.vocab).toBe(32000);
    expect(t.kvHeads).toBeLessThan(t.heads);
    expect(t.headDim).toBe(t.dim / t.heads);
  });

  test("llama3-8b has the Llama-3 scaling", () => {
    const c = llamaPreset("llama3-8b");
    expect(c.ropeTheta).toBe(500000);
    expect(c.ropeScaling).toEqual({ type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });
    expect(c.headDim).toBe(128);
  });

  test("overrides re-derive headDim; unknown preset and unknown override are errors", () => {
    const c = llamaPreset("tiny", { dim: 512 });
    expect(c.headDim).toBe(128);
    expect(() => llamaPreset("llama-9b")).toThrow(/unknown Llama preset "llama-9b"; the presets are tiny/);
    expect(() => llamaPreset("tiny", { hidden: 3 } as never)).toThrow(/unknown field "hidden"/);
  });
});

describe("validation", () => {
  const base = llamaPreset("tiny");
  const bad: [string, object, RegExp][] = [
    ["kvHeads not dividing heads", { kvHeads: 3 }, /kvHeads \(3\) must divide heads \(4\)/],
    ["heads not dividing dim", { dim: 250 }, /heads \(4\) must divide dim \(250\)/],
    ["odd headDim", { headDim: 33 }, /headDim must be even/],
    ["zero layers", { layers: 0 }, /layers must be a positive integer, got 0/],
    ["fractional ffn", { ffn: 10.5 }, /ffn must be a positive integer/],
    ["negative eps", { normEps: -1 }, /normEps must be a positive finite number/],
    ["eos beyond vocab", { eosIds: [32000] }, /eosIds must be a token id in \[0, 32000\)/],
    [
      "scaling low >= high",
      { ropeScaling: { type: "llama3", factor: 8, lowFreqFactor: 4, highFreqFactor: 4, originalMaxPositions: 8192 } },
      /highFreqFactor must exceed ropeScaling.lowFreqFactor \(4\)/,
    ],
    ["scaling of another type", { ropeScaling: { type: "yarn" } }, /ropeScaling must be null or \{ type: "llama3"/],
  ];
  for (const [what, patch, re] of bad) {
    test(what, () => {
      const { headDim: _, ...rest } = base;
      expect(() => makeLlamaConfig({ ...rest, ...patch } as never)).toThrow(re);
    });
  }
  test("explicit headDim need not equal dim / heads", () => {
    const { headDim: _, ...rest } = base;
    expect(makeLlamaConfig({ ...rest, headDim: 64 }).headDim).toBe(64);
  });
});
