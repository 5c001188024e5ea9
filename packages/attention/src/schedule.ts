// DistAttn schedules as data. A sequence is cut into chunks (global order = chunk id); a placement
// says which rank owns each chunk. A schedule lists, per step and rank, the attention blocks computed
// (query chunk x key/value chunk, causal on the diagonal) and the transfers issued at the start of
// the step (prefetch: a transfer issued at step t is what step t+1 computes with, or, for results,
// what the receiver merges at step t). Transfers are derived from the blocks by one rule for every
// schedule, so the executor is shared and the checker proves any schedule:
//   - a block on rank r needs its q and kv chunks on r: owned, or received by a transfer at step t-1;
//   - a block whose query chunk is foreign (a helper's block) sends its partial result back at t+1;
//   - a block whose kv chunk is foreign sends its dK/dV piece back at t+1 (backward).
// Schedules (reference/lightseq.md 1.2-1.5; DESIGN.md 1, 5):
//   ring     contiguous chunks; rank r computes q_r x kv_{r-t} at step t: P steps, early ranks idle.
//   lightseq contiguous chunks; distance d = i - j of pair (q_i, kv_j): the owner of q_i computes it at
//            step d when d <= floor(P/2), otherwise the owner of kv_j (idle by then) computes it at
//            step P - d as a helper and ships the partial back. floor(P/2) + 1 compute steps; for odd
//            P every rank is busy at every step (a balanced variant, unlike the reference code, which
//            drops pairs for odd P); for even P half the ranks idle in the last step.
//   zigzag   2P chunks, rank r holds chunks r and 2P-1-r; at step t rank r computes its causal pairs
//            against the chunks of rank (r - t) mod P: P steps of equal work, only K/V travel, and only
//            the chunks a step needs (one chunk when the source rank is earlier).

export type ScheduleName = "ring" | "lightseq" | "zigzag";
export const SCHEDULES: readonly ScheduleName[] = ["ring", "lightseq", "zigzag"];

export interface Block {
  /** Rank that computes the block. */
  rank: number;
  /** Query chunk id (global order). */
  q: number;
  /** Key/value chunk id (global order). */
  kv: number;
  /** Diagonal block (q == kv): causal mask inside; otherwise every key is visible. */
  causal: boolean;
}

/**
 * What travels. Forward: "kv" (K and V of a chunk), "q" (a query chunk lent to a helper), "out" (a
 * helper's partial O and lse of a query chunk, back to its owner). Backward: "kv", "qbwd" (q, O,
 * lse, dO of a lent query chunk), "dq" (a helper's dQ piece back to the query owner), "dkv" (a dK/dV
 * piece back to the key owner).
 */
export type Payload = "kv" | "q" | "out" | "qbwd" | "dq" | "dkv";

export interface Transfer {
  from: number;
  to: number;
  payload: Payload;
  chunk: number;
}

export interface Step {
  /** Blocks computed at this step, in the order the rank computes them. */
  blocks: Block[];
  /** Transfers posted (as one group per rank) at the start of this step. */
  transfers: Transfer[];
}

export interface Schedule {
  name: ScheduleName;
  /** Number of ranks. */
  P: number;
  /** Number of chunks the sequence is cut into. */
  chunks: number;
  /** owner[c] = rank that holds chunk c (its tokens, q, k, v, o, gradients). */
  owner: number[];
  /** chunksOf[r] = chunk ids of rank r, in the order they are stored locally. */
  chunksOf: number[][];
  forward: Step[];
  backward: Step[];
}

function placement(name: ScheduleName, P: number): { chunks: number; owner: number[]; chunksOf: number[][] } {
  if (name === "zigzag") {
    const chunksOf = Array.from({ length: P }, (_, r) => [r, 2 * P - 1 - r]);
    const owner = new Array<number>(2 * P);
    chunksOf.forEach((cs, r) => {
      for (const c of cs) owner[c] = r;
    });
    return { chunks: 2 * P, owner, chunksOf };
  }
  return { chunks: P, owner: Array.from({ length: P }, (_, r) => r), chunksOf: Array.from({ length: P }, (_, r) => [r]) };
}

/** Compute blocks per step (the part that differs between schedules). */
function computeGrid(name: ScheduleName, P: number, chunksOf: number[][]): Block[][] {
  const steps: Block[][] = [];
  const at = (t: number) => {
    while (steps.length <= t) steps.push([]);
    return steps[t] as Block[];
  };
  const add = (t: number, rank: number, q: number, kv: number) => at(t).push({ rank, q, kv, causal: q === kv });
  switch (name) {
    case "ring":
      for (let t = 0; t < P; t++) for (let r = t; r < P; r++) add(t, r, r, r - t);
      break;
    case "lightseq": {
      const half = Math.floor(P / 2);
      for (let r = 0; r < P; r++) add(0, r, r, r);
      for (let t = 1; t <= half; t++) {
        for (let r = 0; r < P; r++) {
          if (r >= t) add(t, r, r, r - t);
          else if (P - t > half) add(t, r, r + P - t, r); // helper: q of rank r+P-t (distance P-t) x own kv
        }
      }
      break;
    }
    case "zigzag":
      for (let t = 0; t < P; t++) {
        for (let r = 0; r < P; r++) {
          const s = (((r - t) % P) + P) % P;
          for (const q of chunksOf[r] as number[]) for (const kv of chunksOf[s] as number[]) if (q >= kv) add(t, r, q, kv);
        }
      }
      break;
  }
  return steps;
}

/** Derives the transfers of one direction from the blocks (see the top comment). */
function withTransfers(grid: Block[][], owner: number[], dir: "forward" | "backward"): Step[] {
  const steps: Step[] = grid.map((blocks) => ({ blocks, transfers: [] }));
  const at = (t: number): Step => {
    while (steps.length <= t) steps.push({ blocks: [], transfers: [] });
    return steps[t] as Step;
  };
  const seen = new Set<string>();
  const push = (t: number, tr: Transfer) => {
    const key = `${t}|${tr.from}|${tr.to}|${tr.payload}|${tr.chunk}`;
    if (seen.has(key)) return; // one copy of a chunk per step is enough for several blocks
    seen.add(key);
    at(t).transfers.push(tr);
  };
  grid.forEach((blocks, t) => {
    for (const b of blocks) {
      const qOwner = owner[b.q] as number;
      const kvOwner = owner[b.kv] as number;
      if (kvOwner !== b.rank) {
        push(t - 1, { from: kvOwner, to: b.rank, payload: "kv", chunk: b.kv });
        if (dir === "backward") push(t + 1, { from: b.rank, to: kvOwner, payload: "dkv", chunk: b.kv });
      }
      if (qOwner !== b.rank) {
        push(t - 1, { from: qOwner, to: b.rank, payload: dir === "forward" ? "q" : "qbwd", chunk: b.q });
        push(t + 1, { from: b.rank, to: qOwner, payload: dir === "forward" ? "out" : "dq", chunk: b.q });
      }
    }
  });
  return steps;
}

export function makeSchedule(name: ScheduleName, P: number): Schedule {
  if (!SCHEDULES.includes(name)) throw new TypeError(`schedule: expected one of ${SCHEDULES.join(", ")}, got ${JSON.stringify(name)}`);
  if (!Number.isInteger(P) || P < 1) throw new RangeError(`schedule: P must be a positive integer, got ${P}`);
  const { chunks, owner, chunksOf } = placement(name, P);
  const grid = computeGrid(name, P, chunksOf);
  return {
    name,
    P,
    chunks,
    owner,
    chunksOf,
    forward: withTransfers(grid, owner, "forward"),
    backward: withTransfers(grid, owner, "backward"),
  };
}

// ---------------------------------------------------------------------------------------------
// Checker

export interface ScheduleReport {
  ok: boolean;
  errors: string[];
  /** Compute steps (steps that hold blocks) and all steps (with the trailing result transfers). */
  computeSteps: number;
  steps: number;
  /** work[t][r]: block units computed (a full block = 1, a causal diagonal block = 0.5). */
  work: number[][];
  /** Chunk-sized tensors sent / received per rank over the forward and the backward, by payload. */
  sent: Record<Payload, number>[];
  received: Record<Payload, number>[];
  /** Sum of work / (P * max per-step work summed over steps): 1 = perfectly balanced. */
  balance: number;
  /** Speedup over one rank computing everything, if communication were free: total / sum of per-step max. */
  idealSpeedup: number;
}

const emptyCounts = (): Record<Payload, number> => ({ kv: 0, q: 0, out: 0, qbwd: 0, dq: 0, dkv: 0 });

/**
 * Proves a schedule: every causal (query chunk, key chunk) pair computed exactly once, every block's
 * inputs resident when it runs (owned, or received at the previous step), every foreign result sent
 * back to its owner at the next step, every transfer's sender holding what it sends, no rank sending
 * to itself. Sends and receives of a step are posted in one group, so a matched step cannot deadlock.
 */
export function checkSchedule(s: Schedule): ScheduleReport {
  const errors: string[] = [];
  const { P, owner } = s;
  const err = (m: string) => {
    if (errors.length < 50) errors.push(m);
  };
  for (const [dir, steps] of [["forward", s.forward] as const, ["backward", s.backward] as const]) {
    const done = new Map<string, number>();
    steps.forEach((step, t) => {
      const prev = steps[t - 1]?.transfers ?? [];
      const received = (r: number, payload: Payload, chunk: number) =>
        prev.some((x) => x.to === r && x.payload === payload && x.chunk === chunk);
      for (const b of step.blocks) {
        if (b.rank < 0 || b.rank >= P) err(`${dir} step ${t}: block on rank ${b.rank} outside [0, ${P})`);
        if (b.q < b.kv) err(`${dir} step ${t}: rank ${b.rank} computes q${b.q} x kv${b.kv}, which the causal mask hides`);
        if (b.causal !== (b.q === b.kv)) err(`${dir} step ${t}: block q${b.q} x kv${b.kv} has causal=${b.causal}`);
        const key = `${b.q},${b.kv}`;
        done.set(key, (done.get(key) ?? 0) + 1);
        const qPayload = dir === "forward" ? "q" : "qbwd";
        if (owner[b.q] !== b.rank && !received(b.rank, qPayload, b.q))
          err(`${dir} step ${t}: rank ${b.rank} computes with q${b.q} but neither owns nor received it at step ${t - 1}`);
        if (owner[b.kv] !== b.rank && !received(b.rank, "kv", b.kv))
          err(`${dir} step ${t}: rank ${b.rank} computes with kv${b.kv} but neither owns nor received it at step ${t - 1}`);
        const back = (payload: Payload, chunk: number) =>
          steps[t + 1]?.transfers.some((x) => x.from === b.rank && x.to === owner[chunk] && x.payload === payload && x.chunk === chunk) ??
          false;
        if (owner[b.q] !== b.rank && !back(dir === "forward" ? "out" : "dq", b.q))
          err(`${dir} step ${t}: rank ${b.rank}'s result for q${b.q} is never sent to its owner`);
        if (dir === "backward" && owner[b.kv] !== b.rank && !back("dkv", b.kv))
          err(`${dir} step ${t}: rank ${b.rank}'s dK/dV for kv${b.kv} is never sent to its owner`);
      }
      for (const x of step.transfers) {
        if (x.from === x.to) err(`${dir} step ${t}: rank ${x.from} sends ${x.payload} ${x.chunk} to itself`);
        if (x.from < 0 || x.from >= P || x.to < 0 || x.to >= P) err(`${dir} step ${t}: transfer ${x.from} -> ${x.to} outside [0, ${P})`);
        const isResult = x.payload === "out" || x.payload === "dq" || x.payload === "dkv";
        if (!isResult && owner[x.chunk] !== x.from)
          err(`${dir} step ${t}: rank ${x.from} sends ${x.payload} of chunk ${x.chunk}, owned by rank ${owner[x.chunk]}`);
        if (isResult) {
          const producedPrev = (steps[t - 1]?.blocks ?? []).some(
            (b) => b.rank === x.from && (x.payload === "dkv" ? b.kv : b.q) === x.chunk,
          );
          if (!producedPrev)
            err(`${dir} step ${t}: rank ${x.from} sends ${x.payload} of chunk ${x.chunk} that it did not compute at step ${t - 1}`);
          if (owner[x.chunk] !== x.to)
            err(`${dir} step ${t}: ${x.payload} of chunk ${x.chunk} goes to rank ${x.to}, not its owner ${owner[x.chunk]}`);
        }
      }
    });
    for (let i = 0; i < s.chunks; i++) {
      for (let j = 0; j <= i; j++) {
        const n = done.get(`${i},${j}`) ?? 0;
        if (n !== 1) err(`${dir}: pair q${i} x kv${j} computed ${n} times`);
      }
    }
  }
  const work = s.forward.map((step) => {
    const w = new Array<number>(P).fill(0);
    for (const b of step.blocks) w[b.rank] = (w[b.rank] as number) + (b.causal ? 0.5 : 1);
    return w;
  });
  const computeSteps = s.forward.filter((st) => st.blocks.length > 0).length;
  const total = work.flat().reduce((a, b) => a + b, 0);
  const critical = work.reduce((a, w) => a + Math.max(...w), 0);
  const sent = Array.from({ length: P }, emptyCounts);
  const received = Array.from({ length: P }, emptyCounts);
  for (const steps of [s.forward, s.backward]) {
    for (const step of steps) {
      for (const x of step.transfers) {
        (sent[x.from] as Record<Payload, number>)[x.payload]++;
        (received[x.to] as Record<Payload, number>)[x.payload]++;
      }
    }
  }
  return {
    ok: errors.length === 0,
    errors,
    computeSteps,
    steps: s.forward.length,
    work,
    sent,
    received,
    balance: total / (P * critical),
    idealSpeedup: total / critical,
  };
}
