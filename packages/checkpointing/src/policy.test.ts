import { describe, expect, test } from "bun:test";
import {
  bestMixed,
  type CheckpointPolicy,
  formatPolicy,
  inputSource,
  keptTensors,
  keptTensorsOf,
  LAYER_KINDS,
  type LayerKind,
  layerKinds,
  layerPolicy,
  mixedPolicy,
  POLICY_KINDS,
  parsePolicy,
  policyOfKinds,
  SAVED_NAMES,
  skipPolicy,
  type UniformPolicy,
} from "./policy.ts";

test("each policy keeps what DESIGN.md section 6 says", () => {
  expect(keptTensors({ kind: "none" })).toEqual(SAVED_NAMES);
  expect(keptTensors({ kind: "full" })).toEqual(["x"]);
  expect(keptTensors({ kind: "remat-aware" })).toEqual(["x", "o", "lse"]);
  expect(keptTensors({ kind: "skip" })).toEqual([]);
});

test("every kind parses and round-trips; an unknown one is refused by name", () => {
  for (const k of POLICY_KINDS) {
    expect(parsePolicy(k).kind).toBe(k);
    expect(formatPolicy(parsePolicy(k, 32))).toBe(k);
  }
  expect(() => parsePolicy("selective")).toThrow(
    'checkpoint policy: expected one of none, full, remat-aware, or a per-layer mix such as remat-aware*8,none*24, got "selective"',
  );
  expect(() => keptTensors({ kind: "offload" } as unknown as UniformPolicy)).toThrow('got {"kind":"offload"}');
});

describe("mixed policies", () => {
  test("mixedPolicy puts the cheap kind on the last layers and collapses to a uniform policy when a part is empty", () => {
    const p = mixedPolicy(5, "none", 2, "remat-aware");
    expect(p).toEqual({ kind: "mixed", layers: ["remat-aware", "remat-aware", "remat-aware", "none", "none"] });
    expect(mixedPolicy(5, "none", 0, "remat-aware")).toEqual({ kind: "remat-aware" });
    expect(mixedPolicy(5, "none", 5, "remat-aware")).toEqual({ kind: "none" });
    expect(mixedPolicy(5, "full", 3, "full")).toEqual({ kind: "full" });
    expect(() => mixedPolicy(5, "none", 6, "full")).toThrow("mixedPolicy: lastCount must be an integer in [0, 5], got 6");
    expect(() => mixedPolicy(0, "none", 0, "full")).toThrow("mixedPolicy: layers must be a positive integer");
  });

  test("layerPolicy and keptTensorsOf give each layer its own kind; a mix of another length names both numbers", () => {
    const p = mixedPolicy(4, "none", 1, "full");
    expect([0, 1, 2, 3].map((i) => layerPolicy(p, i, 4))).toEqual([{ kind: "full" }, { kind: "full" }, { kind: "full" }, { kind: "none" }]);
    expect(keptTensorsOf(p, 0, 4)).toEqual(["x"]);
    expect(keptTensorsOf(p, 3, 4)).toEqual(SAVED_NAMES);
    expect(layerKinds({ kind: "remat-aware" }, 2)).toEqual(["remat-aware", "remat-aware"]);
    expect(() => layerPolicy(p, 0, 32)).toThrow("checkpoint policy full x3 + none x1 names 4 layers, the model has 32");
    expect(() => layerPolicy({ kind: "none" }, 3, 3)).toThrow("layer must be an integer in [0, 3), got 3");
    const bogus = { kind: "mixed", layers: ["full", "most"] } as unknown as CheckpointPolicy;
    expect(() => layerPolicy(bogus, 1, 2)).toThrow('got "most"');
  });

  test("parse and format round trip, in both spellings", () => {
    const p = parsePolicy("remat-aware*8,none*24", 32);
    expect(p.kind).toBe("mixed");
    expect(layerKinds(p, 32)).toEqual([...new Array(8).fill("remat-aware"), ...new Array(24).fill("none")]);
    expect(formatPolicy(p)).toBe("remat-aware x8 + none x24");
    expect(parsePolicy(formatPolicy(p), 32)).toEqual(p);
    // any sequence of runs, spaces allowed; equal neighbours merge; one kind throughout is uniform
    const q = parsePolicy(" full*1, remat-aware * 2 ,remat-aware*1,none*3 ");
    expect(formatPolicy(q)).toBe("full x1 + remat-aware x3 + none x3");
    expect(parsePolicy(formatPolicy(q))).toEqual(q);
    expect(parsePolicy("none*2,none*30", 32)).toEqual({ kind: "none" });
    expect(parsePolicy("full x32")).toEqual({ kind: "full" });
  });

  test("bad specs are refused in one line naming the bad part", () => {
    const cases: [string, string][] = [
      ["remat-aware*8,nne*24", 'part "nne*24": expected a kind of none, full, remat-aware, skip, got "nne"'],
      ["remat-aware*0,none*32", 'part "remat-aware*0": the layer count must be a positive integer, got "0"'],
      ["remat-aware*1.5,none*30", 'the layer count must be a positive integer, got "1.5"'],
      ["remat-aware*-2,none*34", 'the layer count must be a positive integer, got "-2"'],
      ["remat-aware*8,none", 'part "none": expected kind*count, e.g. remat-aware*8,none*24'],
      ["remat-aware*8,,none*24", 'part "": expected kind*count'],
      ["remat-aware*8,none*20", "its counts add up to 28 layers, the model has 32"],
      ["none*99999999", "99999999 layers (at most 65536)"],
    ];
    for (const [spec, msg] of cases) {
      expect(() => parsePolicy(spec, spec.startsWith("none*9") ? undefined : 32)).toThrow(msg);
      let line = "";
      try {
        parsePolicy(spec, 32);
      } catch (e) {
        line = (e as Error).message;
      }
      expect(line).toContain(JSON.stringify(spec));
      expect(line).not.toContain("\n");
    }
  });
});

describe("bestMixed", () => {
  /** A synthetic budget: none costs 10 per layer, remat-aware 4, full 1, skip 0; fits when the sum is within budget. */
  const cost = { none: 10, "remat-aware": 4, full: 1, skip: 0 } as const;
  function search(L: number, budget: number) {
    const calls: string[] = [];
    const fits = (p: CheckpointPolicy) => {
      calls.push(formatPolicy(p));
      return layerKinds(p, L).reduce((s, k) => s + cost[k], 0) <= budget;
    };
    const p = bestMixed(L, fits);
    return { p: p === null ? null : formatPolicy(p), calls };
  }

  test("the largest k of cheap last layers that fits, by binary search", () => {
    // L = 32: remat-aware x(32 - k) + none xk costs 128 + 6k; budget 200 -> k = 12
    const r = search(32, 200);
    expect(r.p).toBe("remat-aware x20 + none x12");
    expect(r.calls[0]).toBe("none");
    expect(r.calls.length).toBeLessThanOrEqual(1 + Math.ceil(Math.log2(32)));
    // full x(32 - k) + remat-aware xk costs 32 + 3k; budget 100 -> k = 22, after none, its mix and remat-aware failed
    const f = search(32, 100);
    expect(f.p).toBe("full x10 + remat-aware x22");
    expect(f.calls).toContain("remat-aware");
    expect(f.calls.indexOf("remat-aware")).toBeLessThan(f.calls.indexOf("full x10 + remat-aware x22"));
  });

  test("edge cases: k = L (uniform cheap), k = L - 1, k = 1, k = 0 (the next uniform kind), nothing fits", () => {
    expect(search(8, 80)).toEqual({ p: "none", calls: ["none"] });
    expect(search(8, 79).p).toBe("remat-aware x1 + none x7"); // 4 + 70 = 74
    expect(search(8, 4 * 7 + 10).p).toBe("remat-aware x7 + none x1");
    expect(search(8, 4 * 8 + 5).p).toBe("remat-aware"); // k = 1 costs 38 > 37
    expect(search(8, 8 + 3).p).toBe("full x7 + remat-aware x1");
    expect(search(8, 8).p).toBe("full");
    expect(search(8, 7).p).toBe("full x1 + skip x1 + full x6"); // one skip: 7
    expect(search(8, 4).p).toBe("(full, skip) x4"); // the most skips: 4
    expect(search(8, 3).p).toBeNull();
    expect(search(9, 5).p).toBe("(full, skip) x4 + full x1");
    // one layer: no mix exists; the uniform kinds in order
    expect(search(1, 4)).toEqual({ p: "remat-aware", calls: ["none", "remat-aware"] });
    expect(search(1, 0)).toEqual({ p: null, calls: ["none", "remat-aware", "full"] });
  });

  test("every budget: the result fits, and the next faster candidate does not", () => {
    const L = 6;
    for (let budget = 0; budget <= 10 * L; budget++) {
      // (with L = 6: 0..2 fit nothing, 3..5 a skip mix)
      const { p } = search(L, budget);
      const all = [
        "none",
        ...Array.from({ length: L - 1 }, (_, i) => formatPolicy(mixedPolicy(L, "none", L - 1 - i, "remat-aware"))),
        "remat-aware",
        ...Array.from({ length: L - 1 }, (_, i) => formatPolicy(mixedPolicy(L, "remat-aware", L - 1 - i, "full"))),
        "full",
        ...Array.from({ length: Math.floor(L / 2) }, (_, k) => formatPolicy(skipPolicy(L, k + 1))),
      ];
      const costOf = (s: string) => layerKinds(parsePolicy(s, L), L).reduce((n, k) => n + cost[k], 0);
      const first = all.find((s) => costOf(s) <= budget) ?? null;
      expect({ budget, p }).toEqual({ budget, p: first });
    }
  });
});

describe("skip: a per-layer kind that keeps nothing", () => {
  test("after full, the smallest k of odd layers 1, 3, ... that skip and fits, by binary search", () => {
    // full costs 1 per layer, skip 0: with L = 32 and a budget of 20, k = 12 skips fit, 11 do not
    const calls: string[] = [];
    const p = bestMixed(32, (q) => {
      calls.push(formatPolicy(q));
      return layerKinds(q, 32).filter((k) => k !== "skip").length <= 20;
    });
    expect(p).toEqual(skipPolicy(32, 12));
    expect(formatPolicy(p as CheckpointPolicy)).toBe("(full, skip) x12 + full x8");
    expect(calls.indexOf("full")).toBeLessThan(calls.indexOf("(full, skip) x16"));
    const after = calls.slice(calls.indexOf("full") + 1);
    expect(after[0]).toBe("(full, skip) x16"); // the most skips first: nothing fits when they do not
    expect(after.length).toBeLessThanOrEqual(1 + Math.ceil(Math.log2(16)));
    expect(layerKinds(skipPolicy(6, 2), 6)).toEqual(["full", "skip", "full", "skip", "full", "full"]);
    expect(() => skipPolicy(6, 4)).toThrow("skipPolicy: k must be an integer in [0, 3]");
  });

  test("parse and format: runs and repeated groups, in both spellings, round trip for any kinds", () => {
    expect(formatPolicy(skipPolicy(32, 16))).toBe("(full, skip) x16");
    expect(parsePolicy("(full, skip) x16", 32)).toEqual(skipPolicy(32, 16));
    expect(parsePolicy("(full*1,skip*1)*16", 32)).toEqual(skipPolicy(32, 16));
    expect(parsePolicy("full*1,skip*1,full*1,skip*1", 4)).toEqual({ kind: "mixed", layers: ["full", "skip", "full", "skip"] });
    const q = parsePolicy("remat-aware*1,skip*2,none*1", 4);
    expect(formatPolicy(q)).toBe("remat-aware x1 + skip x2 + none x1");
    expect(formatPolicy(parsePolicy("(remat-aware*2, skip)*3, none*1"))).toBe("(remat-aware x2, skip) x3 + none x1");
    // a pseudo-random sequence of kinds (layer 0 not skip): format, then parse, gives it back
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    let grouped = 0;
    for (let n = 0; n < 300; n++) {
      const L = 2 + Math.floor(rand() * 40);
      // two kinds half the time: repeated groups are frequent then
      const alphabet: readonly LayerKind[] = rand() < 0.5 ? ["full", "skip"] : LAYER_KINDS;
      const kinds = Array.from({ length: L }, () => alphabet[Math.floor(rand() * alphabet.length)] as LayerKind);
      kinds[0] = "remat-aware";
      kinds[1] = "skip";
      const text = formatPolicy(policyOfKinds(kinds));
      if (text.includes("(")) grouped++;
      expect({ n, back: layerKinds(parsePolicy(text, L), L) }).toEqual({ n, back: kinds });
    }
    expect(grouped).toBeGreaterThan(50);
  });

  test("skip on layer 0 and a uniform skip are refused, saying why", () => {
    const first = "layer 0 cannot be skip: its input is the embedding's output";
    const all = "skip cannot be every layer's kind";
    expect(() => parsePolicy("skip")).toThrow(all);
    expect(() => parsePolicy("skip*4", 4)).toThrow(`checkpoint policy "skip*4": ${all}`);
    expect(() => parsePolicy("skip*1,full*3", 4)).toThrow(`checkpoint policy "skip*1,full*3": ${first}`);
    expect(() => parsePolicy("(skip, full) x2")).toThrow(first);
    expect(() => policyOfKinds(["skip", "full"])).toThrow(first);
    const bogus: CheckpointPolicy = { kind: "mixed", layers: ["skip", "full"] };
    expect(() => layerPolicy(bogus, 1, 2)).toThrow(`checkpoint policy skip x1 + full x1: ${first}`);
    expect(() => parsePolicy("(full, skp)*2")).toThrow('part "(full, skp)*2": expected a kind of none, full, remat-aware, skip, got "skp"');
    expect(() => parsePolicy("(full, skip)*0")).toThrow('part "(full, skip)*0": the layer count must be a positive integer, got "0"');
    expect(() => parsePolicy("(full, skip")).toThrow('part "(full, skip": expected kind*count');
  });

  test("inputSource: a skip layer re-runs from the nearest earlier layer that is not skip", () => {
    const kinds: LayerKind[] = ["remat-aware", "skip", "skip", "none", "skip"];
    expect(kinds.map((_, i) => inputSource(kinds, i))).toEqual([0, 0, 0, 3, 3]);
    expect(() => inputSource(["skip", "full"], 0)).toThrow("layer 0 cannot be skip");
  });
});
