#!/usr/bin/env bun
// The launcher: starts the local ranks of a job (one process each), like torchrun.
//
//   lightseq-launch [-n NPROCS] [--nnodes N --node-rank R] [--master-addr A] [--master-port P] script.ts [args...]
//
// - Node rank 0 hosts the rendezvous store at MASTER_ADDR:MASTER_PORT (port 0 or unset: a free one);
//   a taken port is an error that says so. The store serves one job id (env.ts jobIdFromEnv:
//   LIGHTSEQ_JOB_ID, else TORCHELASTIC_RUN_ID, else SLURM_JOB_ID, else "default"), which every rank
//   gets as LIGHTSEQ_JOB_ID; every node of a multi-node job must be started with the same one.
// - Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, NNODES,
//   MASTER_ADDR, MASTER_PORT; CUDA_VISIBLE_DEVICES=<its GPU> when there is a GPU per local rank; and
//   always NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 (the GPU
//   machines require multicast/NVLS off).
// - Output lines are prefixed "[rank N] ".
// - The first rank to fail (non-zero exit or a signal) stops the others: SIGTERM, then SIGKILL after
//   a grace period; the launcher then exits non-zero naming that rank (of the failures within 0.5 s
//   of the first, the likeliest cause: ranks failing because of a peer may exit before it). SIGINT/SIGTERM sent to the
//   launcher are forwarded. Ranks run with --no-orphans: if the launcher dies, they die with it.
// - What every rank would trip on is checked once, here, before any rank starts: the script exists,
//   and the ranks' environment holds valid comm settings (env.ts; a bad LIGHTSEQ_* is one line).

import { existsSync } from "node:fs";
import { cliErrors, LIGHTSEQ_VERSION, probeGpus, UserError } from "@lightseq/cuda";
import { jobIdFromEnv, readCommEnv } from "./env.ts";
import { StoreServer } from "./store-server.ts";
import { StoreError } from "./store-wire.ts";

/** Always set for every rank (see the header). */
export const MULTICAST_OFF_ENV = { NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1" } as const;

export interface LaunchOptions {
  /** Ranks on this node. */
  nprocs: number;
  /** The Bun script each rank runs. */
  script: string;
  args?: readonly string[];
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  /** 0 or unset: node 0 picks a free port (other nodes need the real one). */
  masterPort?: number;
  /** Extra variables for every rank (over process.env). */
  env?: Record<string, string>;
  /** SIGTERM -> SIGKILL delay when stopping ranks (default 3 s). */
  gracePeriodMs?: number;
  /** Each output line of a rank (default: written to our stdout/stderr with a "[rank N] " prefix). */
  onLine?: (rank: number, stream: "stdout" | "stderr", line: string) => void;
  /** Launcher messages (default: stderr with a "[launcher] " prefix). */
  log?: (message: string) => void;
  /** GPUs to hand out (default: the visible ones); one per local rank when there are enough. */
  gpus?: number;
}

export interface RankExit {
  rank: number;
  localRank: number;
  exitCode: number | null;
  signal: string | null;
  /** Stopped by the launcher after another rank failed. */
  stopped: boolean;
}

export interface LaunchResult {
  /** 0 when every rank exited 0. */
  exitCode: number;
  ranks: RankExit[];
  /** The first failure, e.g. "rank 2 exited with code 3"; null on success. */
  failure: string | null;
  masterPort: number;
  elapsedMs: number;
}

export class LaunchError extends UserError {
  override name = "LaunchError";
}

function positiveInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new LaunchError(`${name}: expected a positive integer, got ${v}`);
  return v;
}

function describeExit(e: RankExit): string {
  return e.signal ? `rank ${e.rank} was killed by ${e.signal}` : `rank ${e.rank} exited with code ${e.exitCode}`;
}

/** How long after a rank's failure the launcher waits for others before naming the first (see launch()). */
const SETTLE_MS = 500;

/**
 * Of failures seen at once, the likeliest cause: a rank killed by a signal (a crash, the OOM killer),
 * else one with an exit code other than 1 (a rank that fails because a peer died exits 1, with the
 * communicator's error), else the first seen.
 */
function likeliestCause(failed: readonly RankExit[]): RankExit {
  return failed.find((e) => e.signal !== null) ?? failed.find((e) => e.exitCode !== 1) ?? (failed[0] as RankExit);
}

/** Which GPU each local rank sees, or null to leave CUDA_VISIBLE_DEVICES alone. */
function gpuAssignment(nprocs: number, gpus: number): string[] | null {
  if (gpus < nprocs || gpus === 0) return null;
  const parent = process.env.CUDA_VISIBLE_DEVICES;
  const visible = parent ? parent.split(",").map((s) => s.trim()) : Array.from({ length: gpus }, (_, i) => String(i));
  return Array.from({ length: nprocs }, (_, i) => visible[i] ?? String(i));
}

/** Splits a byte stream into lines and hands each to `emit`. */
async function pumpLines(stream: ReadableStream<Uint8Array>, emit: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let nl = pending.indexOf("\n");
    while (nl >= 0) {
      emit(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
      nl = pending.indexOf("\n");
    }
  }
  pending += decoder.decode();
  if (pending.length > 0) emit(pending);
}

export async function launch(o: LaunchOptions): Promise<LaunchResult> {
  const start = performance.now();
  const nprocs = positiveInt("nprocs", o.nprocs);
  const nnodes = positiveInt("nnodes", o.nnodes ?? 1);
  const nodeRank = o.nodeRank ?? 0;
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes)
    throw new LaunchError(`nodeRank: expected an integer in [0, ${nnodes}), got ${nodeRank}`);
  const masterAddr = o.masterAddr ?? "127.0.0.1";
  const requestedPort = o.masterPort ?? 0;
  if (nodeRank > 0 && requestedPort === 0) throw new LaunchError("masterPort: node ranks > 0 must be given the port of node 0's store");
  const worldSize = nnodes * nprocs;
  const log = o.log ?? ((m: string) => process.stderr.write(`[launcher] ${m}\n`));
  const onLine =
    o.onLine ??
    ((rank: number, stream: "stdout" | "stderr", line: string) =>
      (stream === "stdout" ? process.stdout : process.stderr).write(`[rank ${rank}] ${line}\n`));
  const grace = o.gracePeriodMs ?? 3_000;
  if (!existsSync(o.script)) throw new LaunchError(`script ${o.script}: no such file`);

  // Throws a LaunchError-like StoreError ("port N on host is in use") before any rank starts.
  const job = jobIdFromEnv({ ...process.env, ...o.env });
  const store = nodeRank === 0 ? StoreServer.listen({ host: masterAddr, port: requestedPort, job }) : null;
  const masterPort = store?.port ?? requestedPort;
  const gpus = gpuAssignment(nprocs, o.gpus ?? probeGpus().count);

  const exits: RankExit[] = [];
  const procs: Bun.Subprocess<"ignore", "pipe", "pipe">[] = [];
  let failure: RankExit | null = null;
  // Which rank failed first. The ranks that fail because a peer died can exit before it does (they
  // see its sockets close while its process is still being torn down; on a loaded machine that takes
  // a while), so failures are collected for SETTLE_MS after the first and the likeliest cause named.
  const early: RankExit[] = [];
  let verdict: Timer | null = null;
  const decide = () => {
    if (failure !== null || early.length === 0) return;
    failure = likeliestCause(early);
    const also = early.filter((e) => e !== failure).map(describeExit);
    log(`${describeExit(failure)}${also.length ? ` (at about the same time: ${also.join(", ")})` : ""}; stopping the other ranks`);
    stopAll("SIGTERM");
  };
  let stopping = false;
  const killTimers: Timer[] = [];

  const stopAll = (signal: NodeJS.Signals) => {
    stopping = true;
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill(signal);
    killTimers.push(
      setTimeout(() => {
        for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
      }, grace),
    );
  };

  const forward = (signal: NodeJS.Signals) => () => {
    log(`received ${signal}; forwarding it to the ranks`);
    stopAll(signal);
  };
  const onInt = forward("SIGINT");
  const onTerm = forward("SIGTERM");
  process.on("SIGINT", onInt);
  process.on("SIGTERM", onTerm);

  const pumps: Promise<void>[] = [];
  const waits: Promise<void>[] = [];
  try {
    for (let local = 0; local < nprocs; local++) {
      const rank = nodeRank * nprocs + local;
      const env: Record<string, string | undefined> = {
        ...process.env,
        ...o.env,
        RANK: String(rank),
        WORLD_SIZE: String(worldSize),
        LOCAL_RANK: String(local),
        LOCAL_WORLD_SIZE: String(nprocs),
        GROUP_RANK: String(nodeRank),
        NODE_RANK: String(nodeRank),
        NNODES: String(nnodes),
        MASTER_ADDR: masterAddr,
        MASTER_PORT: String(masterPort),
        LIGHTSEQ_STORE_HOSTED: "1",
        LIGHTSEQ_JOB_ID: job,
        BUN_FEATURE_FLAG_NO_ORPHANS: "1",
        ...MULTICAST_OFF_ENV,
      };
      if (gpus) env.CUDA_VISIBLE_DEVICES = gpus[local] as string;
      if (local === 0) readCommEnv(env); // the EnvError every rank would hit, once
      const exit: RankExit = { rank, localRank: local, exitCode: null, signal: null, stopped: false };
      exits.push(exit);
      const proc = Bun.spawn([process.execPath, "--no-orphans", o.script, ...(o.args ?? [])], {
        env,
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
      });
      // `exited` (not onExit, which may run later) so the codes are known when the job ends.
      waits.push(
        proc.exited.then(() => {
          const signal = proc.signalCode;
          exit.exitCode = proc.exitCode;
          exit.signal = signal === null ? null : typeof signal === "number" ? `signal ${signal}` : signal;
          exit.stopped = stopping && failure !== null;
          if ((exit.exitCode !== 0 || exit.signal !== null) && failure === null && !stopping) {
            early.push(exit);
            verdict ??= setTimeout(decide, SETTLE_MS);
          }
        }),
      );
      procs.push(proc);
      pumps.push(pumpLines(proc.stdout, (l) => onLine(rank, "stdout", l)));
      pumps.push(pumpLines(proc.stderr, (l) => onLine(rank, "stderr", l)));
    }
    await Promise.all(waits);
    if (verdict) clearTimeout(verdict);
    decide();
    await Promise.all(pumps);
  } finally {
    for (const t of killTimers) clearTimeout(t);
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
    store?.close();
  }

  const first = failure as RankExit | null;
  const bad = exits.find((e) => e.exitCode !== 0 || e.signal !== null);
  const culprit = first ?? bad ?? null;
  let message: string | null = null;
  if (culprit) {
    const others = exits.filter((e) => e !== culprit && e.stopped).map((e) => e.rank);
    const also = early.filter((e) => e !== culprit).map(describeExit);
    message = `${describeExit(culprit)}${also.length ? `; at about the same time ${also.join(", ")}` : ""}${others.length ? `; stopped ${others.length === 1 ? "rank" : "ranks"} ${others.join(", ")}` : ""}`;
    log(`job failed: ${message}`);
  }
  const exitCode = culprit === null ? 0 : culprit.exitCode !== null && culprit.exitCode !== 0 ? culprit.exitCode : 1;
  return { exitCode, ranks: exits, failure: message, masterPort, elapsedMs: performance.now() - start };
}

// ---------------------------------------------------------------------------------------------
// Command line

const USAGE =
  "usage: lightseq-launch [-n NPROCS] [--nnodes N] [--node-rank R] [--master-addr ADDR] [--master-port PORT] script.ts [args...]\n" +
  "  NPROCS defaults to the number of visible GPUs (at least 1); PORT 0 picks a free port.\n";

/** The options of a command line, or "help" for -h/--help, "version" for --version. */
export function parseLaunchArgs(argv: readonly string[]): LaunchOptions | "help" | "version" {
  const o: Partial<LaunchOptions> & { args: string[] } = { args: [] };
  const num = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n))
      throw new LaunchError(`${flag}: expected an integer, got ${v === undefined ? "nothing" : JSON.stringify(v)}`);
    return n;
  };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--") {
      i++;
      break;
    }
    if (!a.startsWith("-")) break;
    const [flag, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case "-n":
      case "--nprocs":
      case "--nproc-per-node":
      case "--nproc_per_node":
        o.nprocs = num(flag, value());
        break;
      case "--nnodes":
        o.nnodes = num(flag, value());
        break;
      case "--node-rank":
      case "--node_rank":
        o.nodeRank = num(flag, value());
        break;
      case "--master-addr":
      case "--master_addr":
        o.masterAddr = value();
        break;
      case "--master-port":
      case "--master_port":
        o.masterPort = num(flag, value());
        break;
      case "-h":
      case "--help":
        return "help";
      case "--version":
        return "version";
      default:
        throw new LaunchError(`unknown option ${flag}`);
    }
  }
  const script = argv[i];
  if (script === undefined) throw new LaunchError("no script given");
  o.script = script;
  o.args = argv.slice(i + 1) as string[];
  o.nprocs ??= Math.max(1, probeGpus().count);
  return o as LaunchOptions;
}

async function main(): Promise<void> {
  cliErrors("lightseq-launch");
  let opts: LaunchOptions | "help" | "version";
  try {
    opts = parseLaunchArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`lightseq-launch: ${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (opts === "help") {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  if (opts === "version") {
    process.stdout.write(`lightseq-launch ${LIGHTSEQ_VERSION}\n`);
    process.exit(0);
  }
  try {
    const r = await launch(opts);
    process.exit(r.exitCode);
  } catch (e) {
    // The store's port taken is the user's to fix too; anything else is a bug (cliErrors: a stack trace).
    if (e instanceof StoreError) throw new LaunchError(e.message);
    throw e;
  }
}

if (import.meta.main) await main();
