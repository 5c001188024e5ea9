// Timing helpers shared by the benchmarks (bench/, packages/*/bench/): CUDA events on a stream after
// warm-up, median of the runs. Benchmark code, not part of the library: import it as
// "@lightseq/cuda/bench/timing".

import { Event, type Stream } from "../src/runtime.ts";

/** The middle element of `xs` after sorting (the upper of the two middle ones for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError("median: no values");
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

export interface EventTimingOptions {
  /** Untimed calls first (default 2). */
  warmup?: number;
  /** Timed runs; the result is their median (default 5). */
  reps?: number;
  /** Calls per timed run, to spread launch gaps over several (default 1). */
  inner?: number;
}

/**
 * Median milliseconds per call of `fn`, which enqueues work on `stream`: CUDA events around each run of
 * `inner` calls, after `warmup` calls. Synchronises on the end event of each run.
 */
export function medianEventMs(stream: Stream, fn: () => void, o: EventTimingOptions = {}): number {
  const { warmup = 2, reps = 5, inner = 1 } = o;
  for (let i = 0; i < warmup; i++) fn();
  const e0 = Event.create(stream.device, { timing: true });
  const e1 = Event.create(stream.device, { timing: true });
  try {
    const times: number[] = [];
    for (let r = 0; r < reps; r++) {
      e0.record(stream);
      for (let i = 0; i < inner; i++) fn();
      e1.record(stream);
      e1.synchronize();
      times.push(e0.elapsedMs(e1) / inner);
    }
    return median(times);
  } finally {
    e0.dispose();
    e1.dispose();
  }
}
