import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { UniformKind } from "@lightseq/checkpointing";
import { breakdown, formatBreakdown, intervals, largestGaps, type Mark, median, StepProfiler, stats } from "./profile.ts";

const dir = mkdtempSync(join(tmpdir(), "profile-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The marks of one step of `sequences` sequences through L layers, in the order the hooks fire. */
function stepMarks(L: number, sequences = 1): Mark[] {
  const m: Mark[] = [{ at: "step" }];
  for (let s = 0; s < sequences; s++) {
    for (let i = 0; i < L; i++) m.push({ at: "forward", layer: i }, { at: "forward-end", layer: i });
    m.push({ at: "loss" });
    for (let i = L - 1; i >= 0; i--) m.push({ at: "backward", layer: i }, { at: "backward-end", layer: i });
    m.push({ at: "sequence-end" });
  }
  m.push({ at: "settled" }, { at: "end" });
  return m;
}

/** Timestamps from each interval's duration (the first mark at 0). */
function times(durations: number[]): number[] {
  const t = [0];
  for (const d of durations) t.push((t[t.length - 1] as number) + d);
  return t;
}

describe("breakdown", () => {
  // 3 layers, one sequence. Interval durations, in mark order:
  //   setup 5 | fwd L0 10, wait 1, fwd L1 20, wait 2, fwd L2 30, ->loss 0 | loss 7 |
  //   bwd L2 60, wait 3, bwd L1 40, wait 4, bwd L0 50 | rest 6 | tail 100 | optimizer 8
  const gpuD = [5, 10, 1, 20, 2, 30, 0, 7, 60, 3, 40, 4, 50, 6, 100, 8];
  // The host: the same, except that it took 50 ms longer over the tail and 2 ms longer in layer 1's forward.
  const hostD = gpuD.map((d, k) => d + (k === 14 ? 50 : k === 3 ? 2 : 0));
  const marks = stepMarks(3);
  const kinds: UniformKind[] = ["remat-aware", "none", "none"];

  test("phases sum the intervals; per-layer compute and waits; totals on both clocks", () => {
    const b = breakdown(7, marks, times(hostD), times(gpuD), kinds);
    expect(b.step).toBe(7);
    expect(b.clock).toBe("gpu");
    expect(b.phases.setup).toEqual({ hostMs: 5, gpuMs: 5 });
    expect(b.phases.forward).toEqual({ hostMs: 65, gpuMs: 63 });
    expect(b.phases.loss).toEqual({ hostMs: 7, gpuMs: 7 });
    expect(b.phases.backward).toEqual({ hostMs: 157, gpuMs: 157 });
    expect(b.phases["backward-rest"]).toEqual({ hostMs: 6, gpuMs: 6 });
    expect(b.phases.tail).toEqual({ hostMs: 150, gpuMs: 100 });
    expect(b.phases.optimizer).toEqual({ hostMs: 8, gpuMs: 8 });
    expect(b.forwardMs).toEqual([10, 20, 30]);
    expect(b.forwardWaitMs).toEqual([0, 1, 2]);
    expect(b.backwardMs).toEqual([50, 40, 60]);
    expect(b.backwardWaitMs).toEqual([4, 3, 0]);
    expect(b.forward).toEqual({ layers: 3, sumMs: 60, minMs: 10, medianMs: 20, maxMs: 30 });
    expect(b.backward).toEqual({ layers: 3, sumMs: 150, minMs: 40, medianMs: 50, maxMs: 60 });
    expect(b.totalGpuMs).toBe(346);
    expect(b.totalHostMs).toBe(398);
    const phaseSum = Object.values(b.phases).reduce((a, p) => a + (p.gpuMs as number), 0);
    expect(phaseSum).toBe(b.totalGpuMs as number);
  });

  test("by checkpoint kind when the plan mixes them, nothing when it does not", () => {
    const b = breakdown(1, marks, times(hostD), times(gpuD), kinds);
    expect(b.kinds.map((k) => [k.kind, k.forward.sumMs, k.backward.sumMs, k.backward.medianMs])).toEqual([
      ["remat-aware", 10, 50, 50],
      ["none", 50, 100, 50],
    ]);
    expect(breakdown(1, marks, times(hostD), times(gpuD), ["none", "none", "none"]).kinds).toEqual([]);
  });

  test("the gap finder names the intervals where the host took longer than the GPU, largest first", () => {
    const b = breakdown(1, marks, times(hostD), times(gpuD), kinds);
    expect(b.gaps).toEqual([
      { interval: "tail", hostMs: 150, gpuMs: 100, excessMs: 50 },
      { interval: "forward L1", hostMs: 22, gpuMs: 20, excessMs: 2 },
    ]);
    const ivs = intervals(marks, times(hostD), times(gpuD));
    expect(largestGaps(ivs, 1).map((g) => g.interval)).toEqual(["tail"]);
    // A host ahead of the GPU (negative excess) is no gap.
    expect(largestGaps(intervals(marks, times(gpuD), times(hostD)))).toEqual([]);
  });

  test("the GPU's lag behind the host at the phase boundaries, and where it was least", () => {
    // The GPU 2 ms behind after layer 1's forward, 52 ms behind at the settle; level with the host before.
    const b = breakdown(1, marks, times(gpuD), times(hostD), kinds);
    expect(b.lags).toEqual([
      { mark: "loss", lagMs: 2 },
      { mark: "sequence-end", lagMs: 2 },
      { mark: "settled", lagMs: 52 },
    ]);
    expect(b.leastLag).toEqual({ mark: "forward L0", lagMs: 0 });
    expect(breakdown(1, marks, times(hostD), null, kinds).leastLag).toBeNull();
  });

  test("host clock only: per-layer numbers from the host, no gaps", () => {
    const b = breakdown(1, marks, times(hostD), null, kinds);
    expect(b.clock).toBe("host");
    expect(b.forwardMs).toEqual([10, 22, 30]);
    expect(b.phases.tail).toEqual({ hostMs: 150, gpuMs: null });
    expect(b.totalGpuMs).toBeNull();
    expect(b.gaps).toEqual([]);
  });

  test("two sequences: per-layer times add up over them; the second sequence's setup counts as setup", () => {
    const m = stepMarks(2, 2);
    const h = times(m.slice(1).map(() => 1));
    const b = breakdown(1, m, h, null, ["none", "none"]);
    expect(b.forwardMs).toEqual([2, 2]);
    expect(b.backwardMs).toEqual([2, 2]);
    expect(b.phases.setup.hostMs).toBe(2);
    expect(b.phases.tail.hostMs).toBe(1);
    expect(b.totalHostMs).toBe(m.length - 1);
  });

  test("the optimizer phase's three parts when the loop marks them (normed, combined), on both clocks", () => {
    const m = stepMarks(1);
    m.splice(m.length - 1, 0, { at: "normed" }, { at: "combined" });
    // setup 1 | fwd 2 | ->loss 0 | loss 3 | bwd 4 | rest 5 | tail 6 | read 7, all-gather 8, rest 9
    const g = [1, 2, 0, 3, 4, 5, 6, 7, 8, 9];
    const h = g.map((d, k) => d + (k === 8 ? 40 : 0)); // the host 40 ms longer in the all-gather
    const b = breakdown(1, m, times(h), times(g), ["none"]);
    expect(b.phases.optimizer).toEqual({ hostMs: 64, gpuMs: 24 });
    expect(b.optimizerParts).toEqual([
      { name: "sums of squares read", hostMs: 7, gpuMs: 7 },
      { name: "step numbers all-gathered", hostMs: 48, gpuMs: 8 },
      { name: "update, step end", hostMs: 9, gpuMs: 9 },
    ]);
    expect(formatBreakdown(b)).toMatch(
      /optimizer +24\.0 \[host 64\.0\] ms {2}norm, clip, update, step end: sums of squares read 7\.0 \[host 7\.0\], step numbers all-gathered 8\.0 \[host 48\.0\], update, step end 9\.0 \[host 9\.0\]/,
    );
    // without them (a loop that does not mark them): no parts
    expect(breakdown(1, stepMarks(1), times([1, 2, 0, 3, 4, 5, 6, 7]), null, ["none"]).optimizerParts).toEqual([]);
    // a mark after settled that is none of them is out of order
    expect(() =>
      breakdown(1, [...stepMarks(1).slice(0, -1), { at: "loss" }, { at: "end" }], times(new Array(9).fill(1)), null, ["none"]),
    ).toThrow(/unexpected marks settled -> loss/);
  });

  test("marks out of order are an error naming them", () => {
    const m = stepMarks(2);
    const bad = [...m.slice(0, 2), { at: "forward", layer: 1 } as Mark, ...m.slice(3)];
    expect(() => breakdown(1, bad, times(bad.slice(1).map(() => 1)), null, ["none", "none"])).toThrow(
      "profile: unexpected marks forward L0 -> forward L1",
    );
    expect(() => breakdown(1, m, [0, 1], null, ["none", "none"])).toThrow(/marks but 2 host/);
  });

  test("the printed block: a row per phase, the per-layer spread by kind, the gaps", () => {
    const text = formatBreakdown(breakdown(3, marks, times(hostD), times(gpuD), kinds));
    const lines = text.split("\n");
    expect(lines[0]).toBe("profile step 3 (GPU clock, host in brackets): total GPU 346.0 ms vs host 398.0 ms");
    expect(lines).toHaveLength(10);
    expect(text).toMatch(
      /^ {2}forward +63\.0 \[host 65\.0\] ms {2}3 layers 10\.0\/20\.0\/30\.0 min\/med\/max; remat-aware x1 10\.0 \(10\.0\/10\.0\/10\.0\); none x2 50\.0 \(20\.0\/25\.0\/30\.0\); weight waits 3\.0$/m,
    );
    expect(text).toMatch(/^ {2}tail +100\.0 \[host 150\.0\] ms {2}backward end -> settle/m);
    expect(lines[8]).toBe("  gaps (host - GPU): tail +50.0 (host 150.0, GPU 100.0); forward L1 +2.0 (host 22.0, GPU 20.0)");
    expect(lines[9]).toBe(
      "  GPU behind the host: loss -2.0, sequence-end -2.0, settled -52.0; least at settled -52.00 ms (near 0: the GPU waited for the host)",
    );
    const cpu = formatBreakdown(breakdown(3, marks, times(hostD), null, ["none", "none", "none"]));
    expect(cpu.split("\n")[0]).toBe("profile step 3 (host clock only): total 398.0 ms");
    expect(cpu).not.toMatch(/GPU behind/);
    expect(cpu).toMatch(/^ {2}backward +157\.0 ms {2}3 layers 40\.0\/50\.0\/60\.0 min\/med\/max; weight waits 7\.0$/m);
  });
});

test("median and stats", () => {
  expect(median([3, 1, 2])).toBe(2);
  expect(median([4, 1, 3, 2])).toBe(2.5);
  expect(stats([5])).toEqual({ layers: 1, sumMs: 5, minMs: 5, medianMs: 5, maxMs: 5 });
});

describe("StepProfiler (host clock)", () => {
  /** Drives the hooks as the model and the loop call them, the backward's releases and repeated requests included. */
  function runStep(p: StepProfiler, L: number): void {
    p.begin();
    for (let i = 0; i < L; i++) {
      p.layer(i);
      p.released(i);
    }
    p.loss();
    for (let i = L - 1; i >= 0; i--) {
      p.layer(i);
      p.layer(i); // a second request of the same layer is not a new mark
      p.released(i); // backward releases are not marks
      p.layerDone(i);
    }
    p.sequenceEnd();
    p.settled();
    p.normed();
    p.combined();
    p.end();
  }

  test("each step: the block, and one JSON object in DIR/profile.jsonl", () => {
    const out = join(dir, "run");
    using p = new StepProfiler(["remat-aware", "none"], null, out, { resume: false });
    runStep(p, 2);
    p.layer(0); // between steps: ignored
    expect(p.finish(1)).toMatch(/^profile step 1 \(host clock only\): total [\d.]+ ms\n {2}setup/);
    runStep(p, 2);
    p.finish(2);
    const recs = readFileSync(join(out, "profile.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(recs.map((r) => r.step)).toEqual([1, 2]);
    const r = recs[1];
    expect(r.clock).toBe("host");
    expect(r.total_gpu_ms).toBeNull();
    expect(Object.keys(r.phases)).toEqual(["setup", "forward", "loss", "backward", "backward-rest", "tail", "optimizer"]);
    expect(r.forward_ms).toHaveLength(2);
    expect(r.kinds.map((k: { kind: string }) => k.kind)).toEqual(["remat-aware", "none"]);
    expect(r.marks.map((m: { mark: string }) => m.mark)).toEqual([
      "step",
      "forward L0",
      "forward-end L0",
      "forward L1",
      "forward-end L1",
      "loss",
      "backward L1",
      "backward-end L1",
      "backward L0",
      "backward-end L0",
      "sequence-end",
      "settled",
      "normed",
      "combined",
      "end",
    ]);
    expect(r.optimizer_parts.map((o: { part: string }) => o.part)).toEqual([
      "sums of squares read",
      "step numbers all-gathered",
      "update, step end",
    ]);
  });

  test("a mark order it does not know is logged raw and reported, not thrown", () => {
    const out = join(dir, "odd");
    using p = new StepProfiler(["none", "none"], null, out, { resume: false });
    p.begin();
    p.layer(0);
    p.layer(1); // no release between: not a forward it knows
    p.end();
    expect(p.finish(1)).toMatch(
      /^profile step 1: unexpected marks forward L0 -> forward L1 \(a hook fired out of order\); raw marks in .*profile\.jsonl$/,
    );
    const rec = JSON.parse(readFileSync(join(out, "profile.jsonl"), "utf8"));
    expect(rec.error).toMatch(/unexpected marks/);
    expect(rec.marks).toHaveLength(4);
  });

  test("finish before end is an error", () => {
    using p = new StepProfiler(["none"], null, join(dir, "early"), { resume: false });
    p.begin();
    expect(() => p.finish(1)).toThrow(/finish\(\) without end\(\)/);
  });
});
