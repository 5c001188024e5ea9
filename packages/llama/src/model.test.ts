// The model on the CPU: gradients against finite differences, the checkpoint policies against each
// other (same bits, attention forward counted), tied embeddings, and the loss against its definition.

import { describe, expect, test } from "bun:test";
import { referenceBackend } from "@lightseq/attention";
import {
  type CheckpointPolicy,
  inputSource,
  keptTensors,
  keptTensorsOf,
  layerKinds,
  POLICY_KINDS,
  parsePolicy,
  type SavedName,
} from "@lightseq/checkpointing";
import type { Tensor } from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { namedTensors, seqTokens, TEST_STD, tinyConfig } from "./fixtures/tiny.ts";
import {
  LocalActivationStore,
  LocalGradientSink,
  LocalWeightSource,
  localAttention,
  type SavedValue,
  type WeightSource,
} from "./interfaces.ts";
import { LlamaModel, localModel, sequenceBatch } from "./model.ts";
import { initParams, type ModelParams, zeroParams } from "./weights.ts";

/** Records which names each layer's forward kept. */
class RecordingStore extends LocalActivationStore {
  readonly puts = new Map<number, SavedName[]>();
  override put<K extends SavedName>(layer: number, name: K, value: SavedValue<K>): void {
    this.puts.set(layer, [...(this.puts.get(layer) ?? []), name]);
    super.put(layer, name, value);
  }
}

/** Records the weight source calls in order: "p3" prefetch, "l3" layer, "r3" release. */
class RecordingWeights extends LocalWeightSource {
  readonly calls: string[] = [];
  override prefetch(i: number): void {
    this.calls.push(`p${i}`);
  }
  override async layer(i: number) {
    this.calls.push(`l${i}`);
    return super.layer(i);
  }
  override releaseLayer(i: number): void {
    this.calls.push(`r${i}`);
  }
}

async function gradsOf(params: ModelParams, policy: CheckpointPolicy, tokens: Int32Array, gradScale = 1, mlpChunkTokens?: number) {
  const store = new RecordingStore();
  const weights = new RecordingWeights(params);
  const model = new LlamaModel({
    config: params.config,
    weights: weights as WeightSource,
    attention: localAttention(referenceBackend),
    store,
    policy,
    mlpChunkTokens,
  });
  const grads = zeroParams(params.config);
  const sink = new LocalGradientSink(grads);
  const loss = await model.forwardBackward(sequenceBatch(tokens), sink, { gradScale });
  expect(store.bytes()).toBe(0); // every layer released its saved tensors
  return { loss, grads, counters: model.counters, puts: store.puts, weightCalls: weights.calls };
}

function bits(t: Tensor): Uint32Array {
  const d = t.data() as Float32Array;
  return new Uint32Array(d.buffer, d.byteOffset, d.length);
}

describe("finite differences on a whole tiny model (f32, CPU)", () => {
  // GQA (4 query heads, 2 K/V heads), untied head, 2 layers, 13 tokens.
  for (const tied of [false, true]) {
    test(`sampled parameters of every tensor${tied ? " (tied embeddings)" : ""}`, async () => {
      const cfg = tinyConfig({ dim: 16, heads: 4, kvHeads: 2, ffn: 24, vocab: 24, tied });
      const params = initParams(cfg, { seed: 7, std: TEST_STD });
      const tokens = seqTokens(13, cfg.vocab, 11);
      const batch = sequenceBatch(tokens);
      // The loss is the SUM over labels (gradScale 1), so gradients are O(0.1..1).
      const { grads } = await gradsOf(params, { kind: "none" }, tokens);
      const model = localModel(params, { policy: { kind: "none" }, backend: referenceBackend });
      const lossAt = async () => (await model.loss(batch)).lossSum;
      // Central differences with step h on f32 parameters: truncation ~ h^2 |f'''| / 6 ~ 1e-5 for
      // h = 1e-2 and O(1) third derivatives; rounding ~ (eps_f32 * |loss| * a few) / h ~ 40 * 6e-8 * 4 / 2e-2
      // ~ 5e-4. So |fd - g| <= 2e-3 + 2e-2 |g| leaves margin for both, while a missing or doubled term
      // (an error of the order of |g|) on the sampled elements, which include each tensor's largest
      // gradient, fails.
      const h = 1e-2;
      const gradsByName = new Map(namedTensors(grads));
      let checked = 0;
      for (const [name, p] of namedTensors(params)) {
        const g = gradsByName.get(name) as Tensor;
        const gd = g.data() as Float32Array;
        const pd = p.data() as Float32Array;
        let big = 0;
        for (let j = 1; j < gd.length; j++) if (Math.abs(gd[j] as number) > Math.abs(gd[big] as number)) big = j;
        const picks = [big, (big * 7 + 3) % gd.length, Math.floor(gd.length / 2)];
        for (const j of picks) {
          const x0 = pd[j] as number;
          pd[j] = x0 + h;
          const up = await lossAt();
          pd[j] = x0 - h;
          const down = await lossAt();
          pd[j] = x0;
          const fd = (up - down) / (2 * h);
          const got = gd[j] as number;
          if (Math.abs(fd - got) > 2e-3 + 2e-2 * Math.abs(got)) throw new Error(`${name}[${j}]: backward ${got}, finite difference ${fd}`);
          checked++;
        }
        p.dispose();
        g.dispose();
      }
      // Every tensor's largest gradient is of real size (the test is not comparing zeros).
      expect(checked).toBe(3 * (2 + (tied ? 0 : 1) + 9 * cfg.layers));
      params.dispose();
      grads.dispose();
    }, 60_000);
  }
});

describe("checkpoint policies", () => {
  test("none, full and remat-aware give the same loss and gradients to the bit; attention forward runs L or 2L times", async () => {
    const cfg = tinyConfig({ layers: 3 });
    const params = initParams(cfg, { seed: 3, std: TEST_STD });
    const tokens = seqTokens(29, cfg.vocab, 5);
    const runs = new Map<string, Awaited<ReturnType<typeof gradsOf>>>();
    for (const kind of POLICY_KINDS) runs.set(kind, await gradsOf(params, { kind }, tokens, 1 / 28));
    const L = cfg.layers;
    const expected = { none: [L, 0, 0], full: [2 * L, L, L], "remat-aware": [L, L, L] } as const;
    for (const kind of POLICY_KINDS) {
      const r = runs.get(kind) as Awaited<ReturnType<typeof gradsOf>>;
      const [fwd, attnIn, mlpIn] = expected[kind];
      expect({
        kind,
        fwd: r.counters.attentionForward,
        bwd: r.counters.attentionBackward,
        attnIn: r.counters.recomputeAttnIn,
        mlpIn: r.counters.recomputeMlpIn,
      }).toEqual({
        kind,
        fwd,
        bwd: L,
        attnIn,
        mlpIn,
      });
      for (let i = 0; i < L; i++) expect(new Set(r.puts.get(i))).toEqual(new Set(keptTensors({ kind })));
    }
    const ref = runs.get("none") as Awaited<ReturnType<typeof gradsOf>>;
    expect(ref.loss.count).toBe(28);
    for (const kind of ["full", "remat-aware"]) {
      const r = runs.get(kind) as Awaited<ReturnType<typeof gradsOf>>;
      expect(r.loss).toEqual(ref.loss);
      const refT = ref.grads.all();
      r.grads.all().forEach((t, j) => {
        expect(bits(t)).toEqual(bits(refT[j] as Tensor));
      });
    }
    for (const r of runs.values()) r.grads.dispose();
    params.dispose();
  });

  test("mixed policies: each layer keeps and recomputes its own kind's tensors; the same loss and gradients as none to the bit", async () => {
    const cfg = tinyConfig({ layers: 4 });
    const L = cfg.layers;
    const params = initParams(cfg, { seed: 5, std: TEST_STD });
    const tokens = seqTokens(23, cfg.vocab, 8);
    const ref = await gradsOf(params, { kind: "none" }, tokens, 1 / 22);
    const refT = ref.grads.all();
    for (const spec of ["remat-aware*1,none*3", "full*2,remat-aware*2", "full*1,remat-aware*2,none*1", "none*1,full*2,none*1"]) {
      const policy = parsePolicy(spec, L);
      expect(policy.kind).toBe("mixed");
      const kinds = layerKinds(policy, L);
      const count = (k: string) => kinds.filter((x) => x === k).length;
      const r = await gradsOf(params, policy, tokens, 1 / 22);
      // attention forward runs once per layer and again for each full layer; A and C are recomputed
      // for every layer that is not none
      expect({
        spec,
        fwd: r.counters.attentionForward,
        bwd: r.counters.attentionBackward,
        attnIn: r.counters.recomputeAttnIn,
        mlpIn: r.counters.recomputeMlpIn,
      }).toEqual({ spec, fwd: L + count("full"), bwd: L, attnIn: L - count("none"), mlpIn: L - count("none") });
      for (let i = 0; i < L; i++)
        expect({ spec, i, kept: new Set(r.puts.get(i)) }).toEqual({ spec, i, kept: new Set(keptTensorsOf(policy, i, L)) });
      expect({ spec, loss: r.loss }).toEqual({ spec, loss: ref.loss });
      r.grads.all().forEach((t, j) => {
        expect({ spec, j, bits: bits(t) }).toEqual({ spec, j, bits: bits(refT[j] as Tensor) });
      });
      r.grads.dispose();
    }
    // a mix for another number of layers is refused when the model is made
    expect(() => localModel(params, { policy: parsePolicy("remat-aware*1,none*2"), backend: referenceBackend })).toThrow(
      "checkpoint policy remat-aware x1 + none x2 names 3 layers, the model has 4",
    );
    ref.grads.dispose();
    params.dispose();
  });

  test("skip layers keep nothing and re-run the previous layers' forward: the same loss and gradients as none to the bit", async () => {
    const cfg = tinyConfig({ layers: 4 });
    const L = cfg.layers;
    const params = initParams(cfg, { seed: 6, std: TEST_STD });
    const tokens = seqTokens(23, cfg.vocab, 9);
    const ref = await gradsOf(params, { kind: "none" }, tokens, 1 / 22);
    const refT = ref.grads.all();
    const cases = [
      // attention forward: 4 in the forward, 2 for full, 2 re-runs (layers 0 and 2), 2 for the skip layers' own recompute
      { spec: "full*1,skip*1,full*1,skip*1", reforward: 2, fwd: 10 },
      // layer 1 re-runs layer 0; layer 2 re-runs layers 0 and 1 (each intermediate x once per skip layer)
      { spec: "remat-aware*1,skip*2,none*1", reforward: 3, fwd: 9 },
    ];
    for (const c of cases) {
      const policy = parsePolicy(c.spec, L);
      const kinds = layerKinds(policy, L);
      const count = (k: string) => kinds.filter((x) => x === k).length;
      const r = await gradsOf(params, policy, tokens, 1 / 22);
      const reruns = kinds.reduce((n, _, i) => n + i - inputSource(kinds, i), 0);
      expect(reruns).toBe(c.reforward);
      expect({
        spec: c.spec,
        fwd: r.counters.attentionForward,
        bwd: r.counters.attentionBackward,
        attnIn: r.counters.recomputeAttnIn,
        mlpIn: r.counters.recomputeMlpIn,
        reforward: r.counters.reforward,
      }).toEqual({
        spec: c.spec,
        fwd: L + count("full") + count("skip") + reruns,
        bwd: L,
        attnIn: L - count("none"),
        mlpIn: L - count("none"),
        reforward: c.reforward,
      });
      expect(c.fwd).toBe(L + count("full") + count("skip") + reruns);
      for (let i = 0; i < L; i++)
        expect({ spec: c.spec, i, kept: new Set(r.puts.get(i)) }).toEqual({ spec: c.spec, i, kept: new Set(keptTensorsOf(policy, i, L)) });
      expect({ spec: c.spec, loss: r.loss }).toEqual({ spec: c.spec, loss: ref.loss });
      r.grads.all().forEach((t, j) => {
        expect({ spec: c.spec, j, bits: bits(t) }).toEqual({ spec: c.spec, j, bits: bits(refT[j] as Tensor) });
      });
      r.grads.dispose();
    }
    ref.grads.dispose();
    params.dispose();
  });

  test("skip: the backward asks for each layer's weights in the order it uses them, each prefetched just before", async () => {
    const cfg = tinyConfig({ layers: 4 });
    using params = initParams(cfg, { seed: 6, std: TEST_STD });
    const tokens = seqTokens(11, cfg.vocab, 2);
    const backwardCalls = async (spec: string) => {
      const r = await gradsOf(params, parsePolicy(spec, 4), tokens);
      r.grads.dispose();
      return r.weightCalls.slice(r.weightCalls.indexOf("r3") + 1).join(" ");
    };
    // after the forward (which ends with layer 3), per layer of the backward: the layers it re-runs
    // (a skip layer), then its own; "p" prefetch, "l" layer, "r" release
    expect(await backwardCalls("none*4")).toBe("p3 l3 p2 r3 l2 p1 r2 l1 p0 r1 l0 r0");
    // layer 3 re-runs 2 | layer 3 | layer 2 (still gathered) | layer 1 re-runs 0 | layer 1 | layer 0
    expect(await backwardCalls("(full, skip) x2")).toBe("p2 l2 p3 r2 l3 p2 r3 l2 p0 r2 l0 p1 r0 l1 p0 r1 l0 r0");
    // layer 3 | layer 2 re-runs 0 and 1 | layer 2 | layer 1 re-runs 0 | layer 1 | layer 0
    expect(await backwardCalls("remat-aware*1,skip*2,none*1")).toBe("p3 l3 p0 r3 l0 p1 r0 l1 p2 r1 l2 p0 r2 l0 p1 r0 l1 p0 r1 l0 r0");
  });
});

describe("tiled MLP", () => {
  test("chunks of 7 of 29 tokens: the same loss to the bit, the same gradients up to the chunked f32 accumulation, gu and a never kept", async () => {
    const cfg = tinyConfig();
    const params = initParams(cfg, { seed: 12, std: TEST_STD });
    const tokens = seqTokens(29, cfg.vocab, 13);
    const tiledRuns = [];
    for (const kind of POLICY_KINDS) {
      const whole = await gradsOf(params, { kind }, tokens, 1 / 28);
      const tiled = await gradsOf(params, { kind }, tokens, 1 / 28, 7);
      // Rows of a GEMM do not depend on the other rows: the forward is the same computation.
      expect(tiled.loss).toEqual(whole.loss);
      for (let i = 0; i < cfg.layers; i++) {
        expect(new Set(tiled.puts.get(i))).toEqual(new Set(keptTensors({ kind }).filter((n) => n !== "gu" && n !== "a")));
      }
      // Weight gradients of the MLP are f32 sums of 5 chunk GEMMs instead of one (f64-accumulated)
      // GEMM: a few f32 ulps of the largest term; every other gradient sees inputs that equal to ~1 ulp.
      const wholeT = whole.grads.all();
      tiled.grads.all().forEach((t, j) => {
        const ref = wholeT[j] as Tensor;
        const big = Math.max(...Array.from(ref.data() as Float32Array, Math.abs));
        const r = compareClose(t, ref, { atol: 1e-6 * big, rtol: 1e-5 });
        expect(r.ok, r.message).toBe(true);
      });
      tiledRuns.push(tiled);
      whole.grads.dispose();
    }
    // a skip layer re-runs the tiled forward of the layer before it
    tiledRuns.push(await gradsOf(params, parsePolicy("full*1,skip*1", cfg.layers), tokens, 1 / 28, 7));
    // Between policies, the tiled runs agree to the bit (the same chunked arithmetic, recomputed).
    const [ref, ...rest] = tiledRuns as [Awaited<ReturnType<typeof gradsOf>>, ...Awaited<ReturnType<typeof gradsOf>>[]];
    for (const r of rest) {
      const all = r.grads.all();
      for (let j = 0; j < all.length; j++) expect(bits(all[j] as Tensor)).toEqual(bits(ref.grads.all()[j] as Tensor));
    }
    for (const r of tiledRuns) r.grads.dispose();
    params.dispose();
  });

  test("a chunk size that is not a positive integer is refused, naming the option", async () => {
    const cfg = tinyConfig();
    using params = initParams(cfg, { seed: 1 });
    const model = localModel(params, { policy: { kind: "none" }, backend: referenceBackend, mlpChunkTokens: 0 });
    await expect(model.loss(sequenceBatch(seqTokens(9, cfg.vocab, 1)))).rejects.toThrow(
      "mlpChunkTokens must be a positive integer (tokens per MLP chunk), got 0",
    );
  });
});

test("the loss is the sum of -log softmax(logits)[label] over valid labels", async () => {
  const cfg = tinyConfig();
  const params = initParams(cfg, { seed: 1, std: TEST_STD });
  const model = localModel(params, { policy: { kind: "none" }, backend: referenceBackend });
  const batch = sequenceBatch(seqTokens(17, cfg.vocab, 2));
  batch.labels[4] = -100;
  using logits = await model.logits(batch);
  const z = logits.data() as Float32Array;
  let want = 0;
  let count = 0;
  for (let t = 0; t < 17; t++) {
    const label = batch.labels[t] as number;
    if (label === -100) continue;
    const row = z.subarray(t * cfg.vocab, (t + 1) * cfg.vocab);
    const m = Math.max(...row);
    let s = 0;
    for (const v of row) s += Math.exp(v - m);
    want += m + Math.log(s) - (row[label] as number);
    count++;
  }
  const got = await model.loss(batch);
  expect(got.count).toBe(count);
  expect(count).toBe(15); // the last token and position 4 carry no label
  expect(Math.abs(got.lossSum - want)).toBeLessThan(1e-5 * want);
  params.dispose();
});

test("tied embeddings: the embedding's gradient is the lookup's plus the head's", async () => {
  // Untied model whose head equals its embedding: its two gradients must add up to the tied model's.
  const tiedCfg = tinyConfig({ tied: true });
  const untiedCfg = tinyConfig({ tied: false });
  const tied = initParams(tiedCfg, { seed: 9, std: TEST_STD });
  const untiedInit = initParams(untiedCfg, { seed: 9, std: TEST_STD });
  (untiedInit.head as Tensor).data().set(tied.embed.data() as Float32Array);
  const tokens = seqTokens(21, tiedCfg.vocab, 4);
  const a = await gradsOf(tied, { kind: "none" }, tokens);
  const b = await gradsOf(untiedInit, { kind: "none" }, tokens);
  expect(a.loss.lossSum).toBeCloseTo(b.loss.lossSum, 10);
  const sum = Float32Array.from(b.grads.embed.data() as Float32Array, (x, i) => x + ((b.grads.head as Tensor).data()[i] as number));
  const got = a.grads.embed.data() as Float32Array;
  let worst = 0;
  for (let i = 0; i < sum.length; i++) worst = Math.max(worst, Math.abs((got[i] as number) - (sum[i] as number)));
  // Same f32 terms added in another order (head first, then lookup): a few ulp of the gradient size.
  expect(worst).toBeLessThan(1e-6);
  expect(Math.max(...Array.from(got, Math.abs))).toBeGreaterThan(1e-2);
  for (const p of [tied, untiedInit, a.grads, b.grads]) p.dispose();
});

test("localModel uses the activation store it is given", async () => {
  const cfg = tinyConfig();
  using params = initParams(cfg, { seed: 2, std: TEST_STD });
  using grads = zeroParams(cfg);
  const store = new RecordingStore();
  const model = localModel(params, { policy: { kind: "remat-aware" }, backend: referenceBackend, store });
  await model.forwardBackward(sequenceBatch(seqTokens(11, cfg.vocab, 3)), new LocalGradientSink(grads), { gradScale: 1 });
  expect([...store.puts.keys()]).toEqual([0, 1]);
  expect(new Set(store.puts.get(1))).toEqual(new Set(["x", "o", "lse"]));
  expect(store.bytes()).toBe(0);
});

test("the RoPE table the model keeps between calls follows the positions: other positions, other loss, as from a fresh model", async () => {
  const cfg = tinyConfig();
  const params = initParams(cfg, { seed: 3, std: TEST_STD });
  const make = () => localModel(params, { policy: { kind: "none" }, backend: referenceBackend });
  const a = sequenceBatch(seqTokens(13, cfg.vocab, 5));
  // the same tokens at positions shifted by 1000 (as a later cp chunk of a long sequence would be)
  const b = { ...a, positions: a.positions.map((p) => p + 1000) };
  const model = make();
  const first = await model.loss(a);
  const shifted = await model.loss(b);
  const again = await model.loss(a);
  expect(shifted.lossSum).not.toBe(first.lossSum);
  expect(shifted.lossSum).toBe((await make().loss(b)).lossSum);
  expect(again.lossSum).toBe(first.lossSum);
  params.dispose();
});
