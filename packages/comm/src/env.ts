// Where this process sits in the job, read from the environment: torchrun's variables (RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_ADDR, MASTER_PORT, as our
// launcher sets them too), else SLURM's (srun), else a single process. Every value is checked and
// a bad one is an EnvError naming the variable.

export class EnvError extends Error {
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

type Env = Record<string, string | undefined>;

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
  const storeHosted = env.LIGHTSEQ_STORE_HOSTED === "1";
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
