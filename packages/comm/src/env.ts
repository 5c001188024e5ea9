// Every environment variable the comm package reads, read here (initCommunicator calls readCommEnv
// once; everything below it takes plain options; the launcher, which builds the ranks' environment,
// checks it with readCommEnv before starting them and reads CUDA_VISIBLE_DEVICES to hand out GPUs).
// Every value is checked and a bad one is an EnvError, one line naming the variable, what it holds
// and what was expected.
//
// Where this process sits in the job (readDistEnv): torchrun's variables (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_ADDR, MASTER_PORT, as our launcher sets
// them too), else SLURM's (srun), else a single process.
// How it talks (readCommEnv): LIGHTSEQ_COMM_TIMEOUT_MS, LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS,
// LIGHTSEQ_CPU_TRANSPORT, LIGHTSEQ_P2P, LIGHTSEQ_P2P_CHUNK_MIB, LIGHTSEQ_P2P_SLOTS; and
// CUDA_VISIBLE_DEVICES, only to name it in messages.

import { UserError } from "@lightseq/cuda";
import type { Transport } from "./mesh.ts";
import { DEFAULT_JOB_ID, MAX_JOB_ID_CHARS } from "./store-wire.ts";

export class EnvError extends UserError {
  override name = "EnvError";
}

export interface DistEnv {
  /** Which variables described the job. */
  source: "torchrun" | "slurm" | "single";
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  nodeRank: number;
  nnodes: number;
  /** Rendezvous store address; port 0 only for a single process without a store. */
  masterAddr: string;
  masterPort: number;
  /** Set by our launcher: the store is already served at MASTER_ADDR:MASTER_PORT (else rank 0 serves it). */
  storeHosted: boolean;
}

export type Env = Record<string, string | undefined>;

const DEFAULT_MASTER_ADDR = "127.0.0.1";
/** torch's default, used when SLURM gives no MASTER_PORT. */
const DEFAULT_SLURM_PORT = 29500;

function int(env: Env, name: string, o: { min?: number; fallback?: number } = {}): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") {
    if (o.fallback !== undefined) return o.fallback;
    throw new EnvError(`${name} is not set`);
  }
  if (!/^\s*\d+\s*$/.test(raw)) throw new EnvError(`${name}=${JSON.stringify(raw)}: expected a non-negative integer`);
  const v = Number(raw);
  if (!Number.isSafeInteger(v) || v < (o.min ?? 0)) throw new EnvError(`${name}=${raw}: expected an integer >= ${o.min ?? 0}`);
  return v;
}

function port(env: Env, name: string, fallback?: number): number {
  const v = int(env, name, fallback === undefined ? {} : { fallback });
  if (v > 65535) throw new EnvError(`${name}=${v}: a port is at most 65535`);
  return v;
}

function less(aName: string, a: number, bName: string, b: number): void {
  if (a >= b) throw new EnvError(`${aName}=${a} must be less than ${bName}=${b}`);
}

/** First host of a SLURM node list: "gpu[07-09,12],cpu3" -> "gpu07", "r[3,5]-n[1-2]" -> "r3-n1". */
export function firstSlurmHost(nodelist: string): string {
  let depth = 0;
  let end = nodelist.length;
  for (let i = 0; i < nodelist.length; i++) {
    const ch = nodelist[i];
    if (ch === "[") depth++;
    else if (ch === "]") depth--;
    else if (ch === "," && depth === 0) {
      end = i;
      break;
    }
  }
  const first = nodelist.slice(0, end).trim();
  if (first === "" || depth < 0) throw new EnvError(`SLURM node list ${JSON.stringify(nodelist)}: cannot read its first host`);
  // Each bracket group contributes the start of its first range.
  return first.replace(/\[([^\]]*)\]/g, (_, ranges: string) => (ranges.split(",")[0] as string).split("-")[0] as string);
}

/** Tasks on the first node from SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE ("4(x2),3" -> 4). */
function slurmTasksPerNode(env: Env): number | undefined {
  const direct = env.SLURM_NTASKS_PER_NODE;
  if (direct !== undefined && direct !== "") return int(env, "SLURM_NTASKS_PER_NODE", { min: 1 });
  for (const name of ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    const m = /^(\d+)/.exec(raw);
    if (!m) throw new EnvError(`${name}=${JSON.stringify(raw)}: expected a count like "4" or "4(x2)"`);
    return Number(m[1]);
  }
  return undefined;
}

export function readDistEnv(env: Env = process.env): DistEnv {
  const hosted = env.LIGHTSEQ_STORE_HOSTED;
  if (hosted !== undefined && hosted !== "" && hosted !== "0" && hosted !== "1")
    throw new EnvError(`LIGHTSEQ_STORE_HOSTED=${JSON.stringify(hosted)}: expected 1 (the launcher serves the store) or 0`);
  const storeHosted = hosted === "1";
  const has = (k: string) => env[k] !== undefined && env[k] !== "";
  if (has("RANK") || has("WORLD_SIZE")) {
    if (!has("RANK")) throw new EnvError("WORLD_SIZE is set but RANK is not (set both, or neither for a single process)");
    if (!has("WORLD_SIZE")) throw new EnvError("RANK is set but WORLD_SIZE is not (set both, or neither for a single process)");
    const worldSize = int(env, "WORLD_SIZE", { min: 1 });
    const rank = int(env, "RANK");
    less("RANK", rank, "WORLD_SIZE", worldSize);
    const localWorldSize = int(env, "LOCAL_WORLD_SIZE", { min: 1, fallback: worldSize });
    const localRank = int(env, "LOCAL_RANK", { fallback: rank % localWorldSize });
    less("LOCAL_RANK", localRank, "LOCAL_WORLD_SIZE", localWorldSize);
    if (localWorldSize > worldSize) throw new EnvError(`LOCAL_WORLD_SIZE=${localWorldSize} must not exceed WORLD_SIZE=${worldSize}`);
    const nnodes = int(env, "NNODES", { min: 1, fallback: Math.ceil(worldSize / localWorldSize) });
    const nodeRankVar = has("GROUP_RANK") ? "GROUP_RANK" : "NODE_RANK";
    const nodeRank = int(env, nodeRankVar, { fallback: Math.floor(rank / localWorldSize) });
    less(nodeRankVar, nodeRank, "NNODES", nnodes);
    const masterAddr = env.MASTER_ADDR || DEFAULT_MASTER_ADDR;
    const masterPort = worldSize > 1 || has("MASTER_PORT") ? port(env, "MASTER_PORT") : 0;
    return { source: "torchrun", rank, worldSize, localRank, localWorldSize, nodeRank, nnodes, masterAddr, masterPort, storeHosted };
  }
  if (has("SLURM_PROCID")) {
    const worldSize = int(env, "SLURM_NTASKS", { min: 1 });
    const rank = int(env, "SLURM_PROCID");
    less("SLURM_PROCID", rank, "SLURM_NTASKS", worldSize);
    const nnodes = int(env, has("SLURM_NNODES") ? "SLURM_NNODES" : "SLURM_JOB_NUM_NODES", { min: 1, fallback: 1 });
    const localWorldSize = slurmTasksPerNode(env) ?? Math.ceil(worldSize / nnodes);
    const localRank = int(env, "SLURM_LOCALID", { fallback: rank % localWorldSize });
    less("SLURM_LOCALID", localRank, "tasks per node", localWorldSize);
    const nodeRank = int(env, "SLURM_NODEID", { fallback: 0 });
    less("SLURM_NODEID", nodeRank, "SLURM_NNODES", nnodes);
    let masterAddr = env.MASTER_ADDR;
    if (!masterAddr) {
      const list = env.SLURM_STEP_NODELIST || env.SLURM_JOB_NODELIST || env.SLURM_NODELIST;
      if (!list) throw new EnvError("SLURM job without MASTER_ADDR or SLURM_NODELIST: cannot tell where rank 0 is");
      masterAddr = firstSlurmHost(list);
    }
    const masterPort = port(env, "MASTER_PORT", DEFAULT_SLURM_PORT);
    return { source: "slurm", rank, worldSize, localRank, localWorldSize, nodeRank, nnodes, masterAddr, masterPort, storeHosted };
  }
  return {
    source: "single",
    rank: 0,
    worldSize: 1,
    localRank: 0,
    localWorldSize: 1,
    nodeRank: 0,
    nnodes: 1,
    masterAddr: env.MASTER_ADDR || DEFAULT_MASTER_ADDR,
    masterPort: has("MASTER_PORT") ? port(env, "MASTER_PORT") : 0,
    storeHosted,
  };
}

// ---------------------------------------------------------------------------------------------
// How the communicator talks

/** CPU backend transports (mesh.ts): abstract Unix sockets, or TCP. */
export const TRANSPORTS: readonly Transport[] = ["unix", "tcp"];

/** How send/recv between GPUs of one host travel (experimental/copy-engine.ts). */
export type P2PTransport = "nccl" | "copy-engine";
export const P2P_TRANSPORTS: readonly P2PTransport[] = ["nccl", "copy-engine"];

export interface CopyEngineConfig {
  /** Bytes per chunk (and per slot). */
  chunkBytes: number;
  /** Slots per ordered pair of ranks: chunks in flight before the sender waits for the receiver. */
  slots: number;
}

const MiB = 2 ** 20;
export const DEFAULT_COPY_ENGINE_CONFIG: CopyEngineConfig = { chunkBytes: 16 * MiB, slots: 4 };
export const DEFAULT_TIMEOUT_MS = 60_000;

export interface CommEnv {
  dist: DistEnv;
  /** Per-operation timeout: LIGHTSEQ_COMM_TIMEOUT_MS, else 60 s. */
  timeoutMs: number;
  /** Rendezvous timeout: LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS, else undefined (the caller uses timeoutMs). */
  rendezvousTimeoutMs: number | undefined;
  /** LIGHTSEQ_CPU_TRANSPORT, else "unix". */
  cpuTransport: Transport;
  /** LIGHTSEQ_P2P, else "nccl". */
  p2p: P2PTransport;
  /** LIGHTSEQ_P2P_CHUNK_MIB and LIGHTSEQ_P2P_SLOTS, else 16 MiB x 4 (read whatever p2p says, so a typo never waits). */
  copyEngine: CopyEngineConfig;
  /** CUDA_VISIBLE_DEVICES as given, or "unset": for messages only. */
  visibleDevices: string;
  /** The job id the store and its clients share (jobIdFromEnv). */
  jobId: string;
}

function set(env: Env, name: string): string | undefined {
  const raw = env[name];
  return raw === undefined || raw === "" ? undefined : raw;
}

function positiveMs(env: Env, name: string): number | undefined {
  const raw = set(env, name);
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new EnvError(`${name}: expected a positive number of milliseconds, got ${JSON.stringify(raw)}`);
  return v;
}

function oneOf<T extends string>(env: Env, name: string, choices: readonly T[], fallback: T): T {
  const raw = set(env, name);
  if (raw === undefined) return fallback;
  if ((choices as readonly string[]).includes(raw)) return raw as T;
  throw new EnvError(`${name}: expected one of ${choices.join(", ")}, got ${JSON.stringify(raw)}`);
}

/** The per-operation timeout from LIGHTSEQ_COMM_TIMEOUT_MS, else 60 s. */
export function readTimeoutMs(env: Env = process.env): number {
  return positiveMs(env, "LIGHTSEQ_COMM_TIMEOUT_MS") ?? DEFAULT_TIMEOUT_MS;
}

/** LIGHTSEQ_P2P (default "nccl"). */
export function readP2PTransport(env: Env = process.env): P2PTransport {
  return oneOf(env, "LIGHTSEQ_P2P", P2P_TRANSPORTS, "nccl");
}

/** Chunk size and slot count from LIGHTSEQ_P2P_CHUNK_MIB and LIGHTSEQ_P2P_SLOTS (defaults 16 and 4). */
export function readCopyEngineConfig(env: Env = process.env): CopyEngineConfig {
  const read = (name: string, fallback: number, max: number): number => {
    const raw = set(env, name);
    if (raw === undefined) return fallback;
    const v = Number(raw);
    if (!Number.isFinite(v) || v <= 0 || v > max)
      throw new EnvError(`${name}: expected a number in (0, ${max}], got ${JSON.stringify(raw)}`);
    return v;
  };
  const chunkMiB = read("LIGHTSEQ_P2P_CHUNK_MIB", DEFAULT_COPY_ENGINE_CONFIG.chunkBytes / MiB, 1024);
  const slots = read("LIGHTSEQ_P2P_SLOTS", DEFAULT_COPY_ENGINE_CONFIG.slots, 64);
  if (!Number.isInteger(slots)) throw new EnvError(`LIGHTSEQ_P2P_SLOTS: expected an integer, got ${slots}`);
  // Whole 4 KiB pages keep every slot aligned for the copy engines.
  const chunkBytes = Math.max(4096, Math.round((chunkMiB * MiB) / 4096) * 4096);
  return { chunkBytes, slots };
}

/** Everything the comm package takes from the environment, checked. */
/**
 * The job id a store and its clients must share: LIGHTSEQ_JOB_ID (our launcher sets it for its
 * ranks), else torchrun's TORCHELASTIC_RUN_ID (its --rdzv-id), else SLURM's SLURM_JOB_ID (with
 * .SLURM_STEP_ID when set: two steps of one allocation are two jobs), else "default".
 */
export function jobIdFromEnv(env: Env = process.env): string {
  const set = (name: string) => {
    const v = env[name]?.trim();
    return v === undefined || v === "" ? undefined : v;
  };
  const slurmJob = set("SLURM_JOB_ID");
  const slurmStep = set("SLURM_STEP_ID");
  const candidates: [string, string | undefined][] = [
    ["LIGHTSEQ_JOB_ID", set("LIGHTSEQ_JOB_ID")],
    ["TORCHELASTIC_RUN_ID", set("TORCHELASTIC_RUN_ID")],
    ["SLURM_JOB_ID", slurmJob !== undefined && slurmStep !== undefined ? `${slurmJob}.${slurmStep}` : slurmJob],
  ];
  for (const [name, v] of candidates) {
    if (v === undefined) continue;
    if (v.length > MAX_JOB_ID_CHARS) throw new EnvError(`${name}: a job id is at most ${MAX_JOB_ID_CHARS} characters, got ${v.length}`);
    return v;
  }
  return DEFAULT_JOB_ID;
}

export function readCommEnv(env: Env = process.env): CommEnv {
  return {
    dist: readDistEnv(env),
    timeoutMs: readTimeoutMs(env),
    rendezvousTimeoutMs: positiveMs(env, "LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS"),
    cpuTransport: oneOf(env, "LIGHTSEQ_CPU_TRANSPORT", TRANSPORTS, "unix"),
    p2p: readP2PTransport(env),
    copyEngine: readCopyEngineConfig(env),
    visibleDevices: env.CUDA_VISIBLE_DEVICES ?? "unset",
    jobId: jobIdFromEnv(env),
  };
}
