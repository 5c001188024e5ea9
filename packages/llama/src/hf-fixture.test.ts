import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { type LlamaConfig, llamaPreset } from "./config.ts";
import { tempDirs } from "./fixtures/temp-dirs.ts";
import { hfTensorEntries, hfTensorName, saveHfCheckpoint } from "./hf.ts";
import { fixtureTensor, type HfFixture, hfFixtureExists, IGNORE_LABEL, loadHfFixture } from "./hf-fixture.ts";
import { type TensorData, type TensorSpec, writeSafetensors } from "./safetensors-write.ts";

const { freshDir } = tempDirs("hf-fixture-test-");

/** Mean over valid targets of -log softmax(logits)[target], in f64: what transformers' loss is. */
function meanNll(fx: HfFixture): number {
  const V = fx.config.vocab;
  let sum = 0;
  for (let b = 0; b < fx.batch; b++) {
    for (let t = 0; t < fx.seqLen; t++) {
      const y = fx.targets[b]![t]!;
      if (y === IGNORE_LABEL) continue;
      const row = fx.logits[b]!.subarray(t * V, (t + 1) * V);
      let m = Number.NEGATIVE_INFINITY;
      for (const v of row) m = Math.max(m, v);
      let s = 0;
      for (const v of row) s += Math.exp(v - m);
      sum += m + Math.log(s) - row[y]!;
    }
  }
  return sum / fx.labelCount;
}

describe("loadHfFixture on a fixture built here", () => {
  const cfg: LlamaConfig = llamaPreset("tiny", { dim: 8, layers: 1, heads: 2, kvHeads: 1, ffn: 12, vocab: 11 });
  const [B, T] = [2, 5];
  const seq = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));

  async function build(dropGrad?: string): Promise<string> {
    const dir = freshDir();
    await saveHfCheckpoint(
      dir,
      cfg,
      (ref) =>
        seq(
          hfTensorEntries(cfg)
            .find((e) => e.name === hfTensorName(ref))!
            .shape.reduce((a, b) => a * b, 1),
          (i) => i,
        ),
      {
        dtype: "f32",
      },
    );
    const labels = new Int32Array([3, 4, 5, 6, 7, 1, IGNORE_LABEL, 2, IGNORE_LABEL, 9]);
    const logits = seq(B * T * cfg.vocab, (i) => Math.sin(i));
    const tensors: (TensorSpec & { data: TensorData })[] = [
      { name: "input_ids", dtype: "I32", shape: [B, T], data: new Int32Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) },
      { name: "labels", dtype: "I32", shape: [B, T], data: labels },
      { name: "logits", dtype: "F32", shape: [B, T, cfg.vocab], data: logits },
      { name: "loss", dtype: "F32", shape: [], data: new Float32Array([2.5]) },
      { name: "inv_freq", dtype: "F32", shape: [cfg.headDim / 2], data: seq(cfg.headDim / 2, (i) => 1 / (i + 1)) },
      { name: "hidden.0", dtype: "F32", shape: [B, T, cfg.dim], data: seq(B * T * cfg.dim, (i) => i) },
      { name: "hidden.1", dtype: "F32", shape: [B, T, cfg.dim], data: seq(B * T * cfg.dim, (i) => -i) },
    ];
    for (const e of hfTensorEntries(cfg)) {
      if (e.name === dropGrad) continue;
      tensors.push({
        name: e.name,
        dtype: "F32",
        shape: e.shape,
        data: seq(
          e.shape.reduce((a, b) => a * b, 1),
          (i) => 0.5 * i,
        ),
      });
    }
    writeSafetensors(join(dir, "expected.safetensors"), tensors);
    return dir;
  }

  test("tokens, shifted targets, label count, logits rows, hidden states, params and grads", async () => {
    const dir = await build();
    expect(hfFixtureExists(dir)).toBe(true);
    const fx = await loadHfFixture(dir);
    expect(fx.config).toEqual(cfg);
    expect([fx.batch, fx.seqLen]).toEqual([B, T]);
    expect([...fx.tokens[1]!]).toEqual([6, 7, 8, 9, 10]);
    expect([...fx.targets[0]!]).toEqual([4, 5, 6, 7, IGNORE_LABEL]);
    expect([...fx.targets[1]!]).toEqual([IGNORE_LABEL, 2, IGNORE_LABEL, 9, IGNORE_LABEL]);
    expect(fx.labelCount).toBe(6);
    expect(fx.loss).toBe(2.5);
    expect(fx.logits[1]![0]).toBe(Math.fround(Math.sin(T * cfg.vocab)));
    expect(fx.hidden.length).toBe(2);
    expect(fx.hidden[1]![1]![0]).toBe(-T * cfg.dim);
    expect(fx.params.length).toBe(hfTensorEntries(cfg).length);
    expect(fixtureTensor(fx.params, { layer: 0, field: "wk" })[3]).toBe(3);
    expect(fixtureTensor(fx.grads, { layer: null, field: "head" })[3]).toBe(1.5);
  });

  test("a missing gradient names the file and the tensor", async () => {
    const dir = await build("model.layers.0.mlp.up_proj.weight");
    await expect(loadHfFixture(dir)).rejects.toThrow(
      /expected\.safetensors: tensor "model\.layers\.0\.mlp\.up_proj\.weight": its gradient is missing/,
    );
  });
});

// The fixture transformers made (fixtures/make_hf_fixture.py, run on a machine with PyTorch). Skipped
// until it is committed.
describe("the committed transformers fixture", () => {
  test.skipIf(!hfFixtureExists())("loads; its loss is the mean NLL of its logits over the shifted labels", async () => {
    const fx = await loadHfFixture();
    expect(fx.config.kvHeads).toBeLessThan(fx.config.heads);
    expect(fx.config.ropeTheta).not.toBe(10000);
    expect(fx.config.ropeScaling?.type).toBe("llama3");
    expect(fx.labelCount).toBeLessThan(fx.batch * (fx.seqLen - 1)); // some labels are ignored
    // f64 recomputation from f32 logits: relative 1e-6 covers the f32 rounding of the logits and loss
    expect(Math.abs(meanNll(fx) - fx.loss) / fx.loss).toBeLessThan(1e-6);
  });
});
