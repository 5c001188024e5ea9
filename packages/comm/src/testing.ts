// Test helpers for multi-rank code (exported as "@lightseq/comm/testing"): run a script as a job of
// local ranks and collect what each rank prints; the Communicator conformance suite.

import { isAbsolute, join } from "node:path";
import { type LaunchOptions, type LaunchResult, launch } from "./launch.ts";

export const FIXTURES = join(import.meta.dir, "fixtures");

export interface Job extends LaunchResult {
  /** Output lines of each rank (indexed by global rank), without the prefix. */
  lines: string[][];
  /** Launcher messages. */
  log: string[];
  /** Everything, prefixed, for failure messages. */
  transcript(): string;
}

/** Runs `script` (a path; relative ones are taken in this package's fixtures/) on `nprocs` local ranks and captures their output. */
export async function runJob(script: string, nprocs: number, o: Partial<LaunchOptions> = {}): Promise<Job> {
  const first = (o.nodeRank ?? 0) * nprocs;
  const lines: string[][] = Array.from({ length: first + nprocs }, () => []);
  const log: string[] = [];
  const all: string[] = [];
  const r = await launch({
    nprocs,
    script: isAbsolute(script) ? script : join(FIXTURES, script),
    gracePeriodMs: 2_000,
    ...o,
    onLine: (rank, stream, line) => {
      lines[rank]?.push(line);
      all.push(`[rank ${rank}${stream === "stderr" ? " err" : ""}] ${line}`);
    },
    log: (m) => {
      log.push(m);
      all.push(`[launcher] ${m}`);
    },
  });
  return { ...r, lines, log, transcript: () => all.join("\n") };
}

/** A port nobody listens on (bound, read, released). */
export function freePort(): number {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

export { type CaseResult, type ConformanceOptions, conformanceCases, runConformance } from "./conformance.ts";
