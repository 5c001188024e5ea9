// The one conformance suite of the Communicator interface, run by every backend (CPU in CI with
// P = 1, 2, 3, 4, 8 processes; NCCL on GPU machines). Inputs are small integers derived from the
// rank and the index, so every expected result is exact in f32, bf16 and i32 (Megatron's and
// llm.c's habit): for P <= 8 every value stays below 256, the largest integer range bf16 holds.
//
// Every rank runs the same cases in the same order; a case's result is local to the rank, so the
// test that launched the ranks checks that every rank passed every case. After an error inside
// the communicator (not a wrong value) the ranks may be out of step, so the remaining cases are
// reported as skipped rather than left to hang.

import { type Device, type DType, empty, f32ToBf16Bits, type Tensor, to, toFloat32Array } from "@lightseq/tensor";
import { CommError, type Communicator, type ReduceOp } from "./communicator.ts";

export interface ConformanceOptions {
  /** Bytes of the large cases (>= 4 MiB on the CPU, >= 64 MiB on a GPU); 0 skips them. */
  largeBytes: number;
  /**
   * Whether avg must be exact for every P. The CPU backend divides the exact sum; NCCL multiplies
   * each input by 1/P first, which is exact only when P is a power of two (checked exactly then).
   */
  exactAvg: boolean;
  /**
   * Whether sums are promised in rank order, ((x0 + x1) + x2) ..., so that sums whose f32 value
   * depends on the order are exact: the CPU backend (cpu.ts). NCCL's order depends on its algorithm
   * (ring, tree) and on the chunk, so such a sum has no one right answer there.
   */
  rankOrderSums: boolean;
  /** Runs only the cases whose name matches. */
  only?: RegExp;
  /** Progress lines (one per failure, and a summary). */
  log?: (line: string) => void;
}

export interface CaseResult {
  name: string;
  status: "pass" | "fail" | "skip";
  ms: number;
  error?: string;
}

interface Case {
  name: string;
  run(comm: Communicator): Promise<void>;
}

type Gen = (i: number) => number;

// ---------------------------------------------------------------------------------------------
// Tensors from formulas, and exact checks

/** A tensor on `device` with element i = gen(i), rounded to `dtype` (exact for our small integers). */
function make(device: Device, dtype: DType, n: number, gen: Gen): Tensor {
  const host = empty([n], { dtype });
  const d = host.data();
  if (dtype === "bf16") for (let i = 0; i < n; i++) d[i] = f32ToBf16Bits(gen(i));
  else for (let i = 0; i < n; i++) d[i] = gen(i);
  if (device.kind === "cpu") return host;
  const t = to(host, device);
  host.dispose();
  return t;
}

/** Throws with the first mismatches unless every element equals expect(i) (or is within rtol). */
function expectValues(t: Tensor, expect: Gen, label: string, rtol = 0): void {
  const got = toFloat32Array(t);
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < got.length; i++) {
    const want = Math.fround(expect(i));
    const g = got[i] as number;
    const ok = rtol === 0 ? g === want : Math.abs(g - want) <= rtol * Math.abs(want) + 1e-30;
    if (!ok) {
      count++;
      if (bad.length < 5) bad.push(`[${i}] got ${g}, want ${want}`);
    }
  }
  if (count > 0) throw new Error(`${label}: ${count} of ${got.length} elements wrong${rtol ? ` (rtol ${rtol})` : ""}: ${bad.join("; ")}`);
}

/** Runs `fn` with the tensors it makes, disposing them afterwards. */
async function using_(ts: Tensor[], fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } finally {
    for (const t of ts) t.dispose();
  }
}

async function expectCommError(p: Promise<unknown>, pattern: RegExp, label: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof CommError)) throw new Error(`${label}: expected a CommError, got ${(e as Error).name}: ${(e as Error).message}`);
    if (!pattern.test(e.message)) throw new Error(`${label}: message ${JSON.stringify(e.message)} does not match ${pattern}`);
    return;
  }
  throw new Error(`${label}: expected an error, the call succeeded`);
}

// ---------------------------------------------------------------------------------------------
// Inputs and their exact results (k = i % 7 + 1 keeps every value small)

const k = (i: number) => (i % 7) + 1;
const triangle = (P: number) => (P * (P + 1)) / 2;

function reduceInput(op: ReduceOp, r: number, P: number): Gen {
  return op === "max" ? (i) => ((i + r) % P) * k(i) - 3 : (i) => (r + 1) * k(i);
}

function reduceResult(op: ReduceOp, dtype: DType, P: number): Gen {
  if (op === "max") return (i) => (P - 1) * k(i) - 3;
  if (op === "sum") return (i) => k(i) * triangle(P);
  // avg: the exact sum divided by P; i32 truncates toward zero.
  return dtype === "i32" ? (i) => Math.trunc((k(i) * triangle(P)) / P) : (i) => (k(i) * triangle(P)) / P;
}

function avgTolerance(o: ConformanceOptions, op: ReduceOp, dtype: DType, size: number): number {
  const pow2 = (size & (size - 1)) === 0;
  if (op !== "avg" || o.exactAvg || pow2 || dtype === "i32") return 0;
  return dtype === "bf16" ? 2 ** -7 : 1e-6;
}

// ---------------------------------------------------------------------------------------------
// The cases

const DTYPES: readonly DType[] = ["f32", "bf16", "i32"];
const OPS: readonly ReduceOp[] = ["sum", "avg", "max"];

function elementCases(o: ConformanceOptions, dtype: DType, n: number, tag: string): Case[] {
  const cases: Case[] = [];
  for (const op of OPS) {
    cases.push({
      name: `allReduce ${op} ${dtype} n=${n}${tag}`,
      run: async (c) => {
        const t = make(c.device, dtype, n, reduceInput(op, c.rank, c.size));
        await using_([t], async () => {
          await c.allReduce(t, op);
          expectValues(t, reduceResult(op, dtype, c.size), "result", avgTolerance(o, op, dtype, c.size));
        });
      },
    });
  }
  cases.push({
    name: `allReduce sum out= ${dtype} n=${n}${tag}`,
    run: async (c) => {
      const input = reduceInput("sum", c.rank, c.size);
      const t = make(c.device, dtype, n, input);
      const out = make(c.device, dtype, n, () => -1);
      await using_([t, out], async () => {
        await c.allReduce(t, "sum", { out });
        expectValues(out, reduceResult("sum", dtype, c.size), "out");
        expectValues(t, input, "input (must be left untouched)");
      });
    },
  });
  for (const op of OPS) {
    cases.push({
      name: `reduceScatter ${op} ${dtype} n=${n}/rank${tag}`,
      run: async (c) => {
        const input = make(c.device, dtype, n * c.size, reduceInput(op, c.rank, c.size));
        const out = make(c.device, dtype, n, () => -1);
        await using_([input, out], async () => {
          await c.reduceScatter(input, out, op);
          const whole = reduceResult(op, dtype, c.size);
          expectValues(out, (i) => whole(c.rank * n + i), "result", avgTolerance(o, op, dtype, c.size));
        });
      },
    });
  }
  cases.push({
    name: `allGather ${dtype} n=${n}/rank${tag}`,
    run: async (c) => {
      const input = make(c.device, dtype, n, (i) => c.rank * 8 + (i % 8));
      const out = make(c.device, dtype, n * c.size, () => -1);
      await using_([input, out], async () => {
        await c.allGather(input, out);
        expectValues(out, (j) => Math.floor(j / Math.max(n, 1)) * 8 + ((j % Math.max(n, 1)) % 8), "result");
      });
    },
  });
  for (const which of ["first", "last"] as const) {
    cases.push({
      name: `broadcast from ${which} rank ${dtype} n=${n}${tag}`,
      run: async (c) => {
        const root = which === "first" ? 0 : c.size - 1;
        const t = make(c.device, dtype, n, (i) => (c.rank === root ? (i % 13) + root : -1));
        await using_([t], async () => {
          await c.broadcast(t, root);
          expectValues(t, (i) => (i % 13) + root, "result");
        });
      },
    });
  }
  cases.push(...ringCases(dtype, n, tag));
  return cases;
}

/** Grouped ring exchanges: forward, backward, and both at once (the DistAttn pattern). */
function ringCases(dtype: DType, n: number, tag: string): Case[] {
  const payload =
    (r: number, shift: number): Gen =>
    (i) =>
      r * 8 + ((i + shift) % 8);
  return [
    {
      name: `ring send->rank+1 recv<-rank-1 ${dtype} n=${n}${tag}`,
      run: async (c) => {
        const next = (c.rank + 1) % c.size;
        const prev = (c.rank + c.size - 1) % c.size;
        const x = make(c.device, dtype, n, payload(c.rank, 0));
        const y = make(c.device, dtype, n, () => -1);
        await using_([x, y], async () => {
          await c.group(() => {
            void c.send(x, next);
            void c.recv(y, prev);
          });
          expectValues(y, payload(prev, 0), "received");
        });
      },
    },
    {
      name: `ring send->rank-1 recv<-rank+1 ${dtype} n=${n}${tag}`,
      run: async (c) => {
        const next = (c.rank + 1) % c.size;
        const prev = (c.rank + c.size - 1) % c.size;
        const x = make(c.device, dtype, n, payload(c.rank, 0));
        const y = make(c.device, dtype, n, () => -1);
        await using_([x, y], async () => {
          await c.group(() => {
            void c.recv(y, next);
            void c.send(x, prev);
          });
          expectValues(y, payload(next, 0), "received");
        });
      },
    },
    {
      name: `ring both directions in one group ${dtype} n=${n}${tag}`,
      run: async (c) => {
        const next = (c.rank + 1) % c.size;
        const prev = (c.rank + c.size - 1) % c.size;
        const fwd = make(c.device, dtype, n, payload(c.rank, 0));
        const bwd = make(c.device, dtype, n, payload(c.rank, 3));
        const fromPrev = make(c.device, dtype, n, () => -1);
        const fromNext = make(c.device, dtype, n, () => -1);
        await using_([fwd, bwd, fromPrev, fromNext], async () => {
          // With P = 2 (or 1) next and prev are the same rank: the two messages match in posting order.
          await c.group(() => {
            void c.send(fwd, next);
            void c.send(bwd, prev);
            void c.recv(fromPrev, prev);
            void c.recv(fromNext, next);
          });
          expectValues(fromPrev, payload(prev, 0), "from rank-1");
          expectValues(fromNext, payload(next, 3), "from rank+1");
        });
      },
    },
  ];
}

/**
 * Large cases: `largeBytes` is the size of the whole buffer an operation moves, as in nccl-tests:
 * the all-reduced tensor, the gathered output, the scattered input, the broadcast tensor, each ring
 * message. Element counts are odd so that chunk boundaries never fall evenly.
 */
function largeCases(o: ConformanceOptions, size: number): Case[] {
  if (o.largeBytes <= 0) return [];
  const tag = ` (large, ${(o.largeBytes / 2 ** 20).toFixed(0)} MiB)`;
  const odd = (n: number) => Math.floor(n) | 1;
  const whole = odd(o.largeBytes / 4);
  const perRank = odd(o.largeBytes / 4 / size);
  const pick = (cases: Case[], pattern: RegExp) => cases.filter((c) => pattern.test(c.name));
  return [
    ...pick(elementCases(o, "f32", whole, tag), /^allReduce (sum|max) f32|^broadcast from last|^ring both/),
    ...pick(elementCases(o, "f32", perRank, tag), /^allGather|^reduceScatter sum/),
    ...pick(elementCases(o, "bf16", odd(o.largeBytes / 2), tag), /^allReduce sum bf16/),
  ];
}

function miscCases(): Case[] {
  return [
    {
      name: "barrier",
      run: async (c) => {
        for (let i = 0; i < 3; i++) await c.barrier();
      },
    },
    {
      name: "several operations issued before awaiting any",
      run: async (c) => {
        const a = make(c.device, "f32", 257, reduceInput("sum", c.rank, c.size));
        const b = make(c.device, "i32", 129, reduceInput("max", c.rank, c.size));
        const g = make(c.device, "bf16", 33 * c.size, () => -1);
        const part = make(c.device, "bf16", 33, (i) => c.rank * 8 + (i % 8));
        await using_([a, b, g, part], async () => {
          await Promise.all([c.allReduce(a, "sum"), c.allReduce(b, "max"), c.allGather(part, g)]);
          await c.wait();
          expectValues(a, reduceResult("sum", "f32", c.size), "a");
          expectValues(b, reduceResult("max", "i32", c.size), "b");
          expectValues(g, (j) => Math.floor(j / 33) * 8 + ((j % 33) % 8), "g");
        });
      },
    },
    {
      name: "bad arguments are refused locally with a CommError",
      run: async (c) => {
        const t = make(c.device, "f32", 4, () => 1);
        const wrong = make(c.device, "f32", 4 * c.size + 1, () => 0);
        const i32 = make(c.device, "i32", 4, () => 0);
        await using_([t, wrong, i32], async () => {
          await expectCommError(c.allGather(t, wrong), /allGather: output: expected \d+ elements/, "allGather size");
          await expectCommError(c.allReduce(t, "sum", { out: i32 }), /allReduce: out: expected dtype f32/, "allReduce dtype");
          await expectCommError(c.allReduce(t, "prod" as ReduceOp), /op must be one of/, "allReduce op");
          await expectCommError(c.send(t, c.size), /peer must be an integer in \[0, \d+\)/, "send peer");
          await expectCommError(c.broadcast(t, -1), /root must be/, "broadcast root");
          await expectCommError(
            c.group(() => {
              void c.allReduce(t, "sum");
            }),
            /only send and recv may be posted inside a group/,
            "collective in group",
          );
        });
      },
    },
  ];
}

/**
 * Sums whose f32 value depends on the order of the terms (the other cases' small integers sum exactly
 * in any order): rank 0 holds 1e8, the last rank -1e8, the ranks between 1. In rank order every 1 is
 * lost against 1e8 (its f32 spacing is 8) and the sum is exactly 0; starting anywhere else, e.g. at
 * the reducing rank's own term, keeps some of the ones. Every rank reduces a chunk (n = 7 per rank),
 * so a wrong start on any rank shows. P = 2 cannot tell (a + b = b + a).
 */
function rankOrderCases(): Case[] {
  const term = (r: number, P: number) => (r === 0 ? 1e8 : r === P - 1 ? -1e8 : 1);
  const inRankOrder = (op: "sum" | "avg", P: number) => {
    let acc = term(0, P);
    for (let r = 1; r < P; r++) acc = Math.fround(acc + term(r, P));
    return op === "avg" ? Math.fround(acc / P) : acc;
  };
  const cases: Case[] = [];
  for (const op of ["sum", "avg"] as const) {
    cases.push({
      name: `allReduce ${op} f32 in rank order ([1e8, 1, ..., -1e8])`,
      run: async (c) => {
        const t = make(c.device, "f32", 7 * c.size, () => term(c.rank, c.size));
        await using_([t], async () => {
          await c.allReduce(t, op);
          expectValues(t, () => inRankOrder(op, c.size), "result");
        });
      },
    });
    cases.push({
      name: `reduceScatter ${op} f32 in rank order ([1e8, 1, ..., -1e8])`,
      run: async (c) => {
        const input = make(c.device, "f32", 7 * c.size, () => term(c.rank, c.size));
        const out = make(c.device, "f32", 7, () => -1);
        await using_([input, out], async () => {
          await c.reduceScatter(input, out, op);
          expectValues(out, () => inRankOrder(op, c.size), "result");
        });
      },
    });
  }
  return cases;
}

/** Cases on sub-communicators from split (run on the parent; each makes and destroys its split). */
function splitCases(o: ConformanceOptions): Case[] {
  return [
    {
      name: "split even/odd ranks: sizes, ranks, collectives and a ring inside each half",
      run: async (c) => {
        const sub = await c.split(c.rank % 2, c.rank);
        if (!sub) throw new Error("split returned null for a non-negative color");
        try {
          const members = Array.from({ length: c.size }, (_, r) => r).filter((r) => r % 2 === c.rank % 2);
          if (sub.size !== members.length || sub.rank !== members.indexOf(c.rank)) {
            throw new Error(`sub-communicator rank ${sub.rank} of ${sub.size}, want ${members.indexOf(c.rank)} of ${members.length}`);
          }
          // Sum of the parent ranks + 1 of the members: checks that each half reduces only its own.
          const t = make(c.device, "f32", 1001, (i) => (c.rank + 1) * k(i));
          const s = members.reduce((a, r) => a + r + 1, 0);
          await using_([t], async () => {
            await sub.allReduce(t, "sum");
            expectValues(t, (i) => s * k(i), "sum over the half");
          });
          // avg divides by the half's size, not the job's: inputs scaled by it so the mean is exact.
          const m = members.length;
          const a = make(c.device, "f32", 1001, (i) => m * (c.rank + 1) * k(i));
          await using_([a], async () => {
            await sub.allReduce(a, "avg");
            expectValues(a, (i) => s * k(i), `avg over the half (${m} ranks)`, avgTolerance(o, "avg", "f32", m));
          });
          for (const cs of [
            ...ringCases("bf16", 17, " (sub)"),
            ...elementCases(o, "i32", 5, " (sub)").filter((x) => /allGather|reduceScatter max/.test(x.name)),
          ]) {
            await cs.run(sub).catch((e) => {
              throw new Error(`${cs.name}: ${(e as Error).message}`);
            });
          }
          await sub.barrier();
        } finally {
          await sub.destroy();
        }
      },
    },
    {
      name: "split with reversed keys orders the new ranks by key",
      run: async (c) => {
        const sub = await c.split(7, c.size - c.rank);
        if (!sub) throw new Error("split returned null");
        try {
          if (sub.rank !== c.size - 1 - c.rank) throw new Error(`rank ${sub.rank} in the split, want ${c.size - 1 - c.rank}`);
          const part = make(c.device, "i32", 3, () => c.rank);
          const all = make(c.device, "i32", 3 * c.size, () => -1);
          await using_([part, all], async () => {
            await sub.allGather(part, all);
            expectValues(all, (j) => c.size - 1 - Math.floor(j / 3), "gathered parent ranks, in split order");
          });
        } finally {
          await sub.destroy();
        }
      },
    },
    {
      name: "split with a negative color leaves that rank out",
      run: async (c) => {
        const out = c.rank === c.size - 1;
        const sub = await c.split(out ? -1 : 0, c.rank);
        if (out) {
          if (sub !== null) throw new Error("a negative color must give null");
          return;
        }
        if (!sub) throw new Error("split returned null for color 0");
        try {
          if (sub.size !== c.size - 1) throw new Error(`size ${sub.size}, want ${c.size - 1}`);
          const t = make(c.device, "i32", 9, () => 1);
          await using_([t], async () => {
            await sub.allReduce(t, "sum");
            expectValues(t, () => c.size - 1, "count of members");
          });
        } finally {
          await sub.destroy();
        }
      },
    },
  ];
}

/** Every case, in the order every rank runs them (the large ones depend on the communicator size). */
export function conformanceCases(o: ConformanceOptions, size: number): Case[] {
  const all: Case[] = [];
  for (const dtype of DTYPES) for (const n of [0, 1, 1001]) all.push(...elementCases(o, dtype, n, ""));
  if (o.rankOrderSums) all.push(...rankOrderCases());
  all.push(...miscCases(), ...splitCases(o), ...largeCases(o, size));
  return o.only ? all.filter((c) => o.only?.test(c.name)) : all;
}

/** Makes a communicator, runs every case on it in order, destroys it; never throws for a failed case. */
export async function runConformance(makeComm: () => Promise<Communicator>, o: ConformanceOptions): Promise<CaseResult[]> {
  const log = o.log ?? (() => {});
  const comm = await makeComm();
  const results: CaseResult[] = [];
  let broken: string | null = null;
  try {
    for (const cs of conformanceCases(o, comm.size)) {
      if (broken !== null) {
        results.push({ name: cs.name, status: "skip", ms: 0, error: `skipped after a communicator error in "${broken}"` });
        continue;
      }
      const start = performance.now();
      try {
        await cs.run(comm);
        results.push({ name: cs.name, status: "pass", ms: performance.now() - start });
      } catch (e) {
        const error = `${(e as Error).name}: ${(e as Error).message}`;
        results.push({ name: cs.name, status: "fail", ms: performance.now() - start, error });
        log(`FAIL ${cs.name}: ${error}`);
        // A wrong value leaves the ranks in step; an error from the communicator may not.
        if (e instanceof CommError && !/bad arguments/.test(cs.name)) broken = cs.name;
      }
    }
  } finally {
    if (broken === null) await comm.destroy();
    else comm.abort("conformance suite stopped after an error");
  }
  const pass = results.filter((r) => r.status === "pass").length;
  log(`rank ${comm.rank} of ${comm.size} (${comm.backend}): ${pass} passed, ${results.length - pass} failed or skipped`);
  return results;
}
