import { describe, expect, test } from "bun:test";
import { checkSchedule, makeSchedule, SCHEDULES, type Schedule } from "./schedule.ts";

const clone = (s: Schedule): Schedule => structuredClone(s);

describe("schedule checker proves every schedule for P = 1..16", () => {
  for (const name of SCHEDULES) {
    test(name, () => {
      for (let P = 1; P <= 16; P++) {
        const r = checkSchedule(makeSchedule(name, P));
        if (!r.ok) throw new Error(`${name} P=${P}:\n${r.errors.join("\n")}`);
      }
    });
  }
});

describe("the schedules have the shape the paper and later work give", () => {
  test("lightseq: floor(P/2)+1 compute steps; P=8 matches the paper's table", () => {
    for (let P = 2; P <= 16; P++) expect(checkSchedule(makeSchedule("lightseq", P)).computeSteps).toBe(Math.floor(P / 2) + 1);
    const s = makeSchedule("lightseq", 8);
    const at = (t: number) => s.forward[t]?.blocks.map((b) => `${b.rank}:${b.q}.${b.kv}`).join(" ");
    // reference/lightseq.md 1.4: helpers R0..R2 at t=3 take q5, q6, q7 against their own K/V; t=4 ranks 0-3 idle.
    expect(at(3)).toBe("0:5.0 1:6.1 2:7.2 3:3.0 4:4.1 5:5.2 6:6.3 7:7.4");
    expect(at(4)).toBe("4:4.0 5:5.1 6:6.2 7:7.3");
    // Helper partials come back one step later: R0 -> R7 (q7 from step 1) at step 2.
    expect(s.forward[2]?.transfers.filter((x) => x.payload === "out")).toEqual([{ from: 0, to: 7, payload: "out", chunk: 7 }]);
  });

  test("lightseq is perfectly balanced for odd P, idles P/2 ranks once for even P", () => {
    for (const P of [3, 5, 7, 9, 15]) expect(checkSchedule(makeSchedule("lightseq", P)).balance).toBe(1);
    const r8 = checkSchedule(makeSchedule("lightseq", 8));
    expect(r8.work[4]?.filter((w) => w === 0).length).toBe(4);
  });

  test("ideal speedups: lightseq ~7.1x and ring ~4.3x on 8 ranks; zigzag exactly P", () => {
    expect(checkSchedule(makeSchedule("lightseq", 8)).idealSpeedup).toBeCloseTo(32 / 4.5, 5);
    expect(checkSchedule(makeSchedule("ring", 8)).idealSpeedup).toBeCloseTo(32 / 7.5, 5);
    for (let P = 1; P <= 16; P++) expect(checkSchedule(makeSchedule("zigzag", P)).idealSpeedup).toBeCloseTo(P, 9);
  });

  test("zigzag moves only K/V, and only the chunk a step needs", () => {
    for (let P = 2; P <= 16; P++) {
      const r = checkSchedule(makeSchedule("zigzag", P));
      for (const c of [...r.sent, ...r.received]) {
        expect(c.q + c.out + c.qbwd + c.dq).toBe(0);
      }
      // Each rank receives from each other rank: 1 chunk from earlier ranks, 2 from later ones.
      const total = r.received.reduce((a, c) => a + c.kv, 0);
      expect(total).toBe(2 * ((P * (P - 1)) / 2 + P * (P - 1))); // forward + backward
    }
  });
});

describe("the checker catches broken schedules", () => {
  const base = () => clone(makeSchedule("lightseq", 8));
  test("a missing block", () => {
    const s = base();
    s.forward[2]?.blocks.pop();
    expect(checkSchedule(s).errors.join("\n")).toMatch(/forward: pair q7 x kv5 computed 0 times/);
  });
  test("a block computed twice", () => {
    const s = base();
    s.backward[1]?.blocks.push({ rank: 3, q: 3, kv: 2, causal: false });
    expect(checkSchedule(s).errors.join("\n")).toMatch(/backward: pair q3 x kv2 computed 2 times/);
  });
  test("a missing prefetch", () => {
    const s = base();
    const st = s.forward[1] as { transfers: { payload: string; to: number }[] };
    st.transfers = st.transfers.filter((x) => !(x.payload === "kv" && x.to === 4));
    expect(checkSchedule(s).errors.join("\n")).toMatch(
      /forward step 2: rank 4 computes with kv2 but neither owns nor received it at step 1/,
    );
  });
  test("a helper result never returned", () => {
    const s = base();
    const st = s.forward[3] as { transfers: { payload: string }[] };
    st.transfers = st.transfers.filter((x) => x.payload !== "out");
    expect(checkSchedule(s).errors.join("\n")).toMatch(/forward step 2: rank 0's result for q6 is never sent to its owner/);
  });
  test("a block the causal mask hides", () => {
    const s = base();
    s.forward[0]?.blocks.push({ rank: 1, q: 1, kv: 2, causal: false });
    expect(checkSchedule(s).errors.join("\n")).toMatch(/computes q1 x kv2, which the causal mask hides/);
  });
  test("bad names and sizes", () => {
    expect(() => makeSchedule("striped" as never, 4)).toThrow(/schedule: expected one of ring, lightseq, zigzag, got "striped"/);
    expect(() => makeSchedule("ring", 0)).toThrow(/P must be a positive integer, got 0/);
  });
});
