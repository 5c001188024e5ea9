// How many ranks the demo starts and on what, decided before any process starts, from what the
// machine has: GPU ranks only with one GPU per rank (and at least two), CPU ranks otherwise, and no
// more local ranks than the machine can host (each is a Bun process: a core's share and ~100 MiB).

/** CPU ranks per core: 16 ranks on 2 cores run the demo in ~6 s; many more time out at the store. */
export const RANKS_PER_CORE = 8;
/** Resident memory of one CPU rank of the demo (Bun runtime + the reference tensors: ~60 MiB measured), rounded up. */
export const BYTES_PER_RANK = 100 * 2 ** 20;
/** The sequence the CPU ranks split (rank.ts): zigzag cuts it into 2 chunks per rank of >= 1 token. */
export const CPU_TOKENS = 389;

export interface Machine {
  /** The command-line argument (ranks), if any. */
  arg: string | undefined;
  gpus: number;
  gpuName: string;
  /** Why there is no GPU, when gpus is 0. */
  noGpuReason: string;
  cores: number;
  freeBytes: number;
}

export type Plan = { ranks: number; backend: "cpu" | "nccl"; line: string } | { error: string };

export function maxLocalRanks(m: Pick<Machine, "cores" | "freeBytes">): number {
  return Math.max(1, Math.min(RANKS_PER_CORE * m.cores, Math.floor(m.freeBytes / BYTES_PER_RANK), Math.floor(CPU_TOKENS / 2)));
}

export function demoPlan(m: Machine): Plan {
  let ranks = m.gpus >= 2 ? m.gpus : 4;
  if (m.arg !== undefined) {
    ranks = Number(m.arg);
    if (!/^\s*\d+\s*$/.test(m.arg) || !Number.isInteger(ranks) || ranks < 1)
      return { error: `ranks: expected a positive integer, got ${JSON.stringify(m.arg)} (usage: bun run demo [ranks])` };
  }
  if (m.gpus >= 2 && ranks <= m.gpus) {
    return { ranks, backend: "nccl", line: `GPU: ${m.gpus} x ${m.gpuName}: ${ranks} GPU ranks over NCCL` };
  }
  const max = maxLocalRanks(m);
  if (ranks > max) {
    const gib = (m.freeBytes / 2 ** 30).toFixed(1);
    return {
      error: `${ranks} local ranks is more than this machine can host: at most ${max} (${RANKS_PER_CORE} ranks per core on ${m.cores} cores, ~100 MiB each of ${gib} GiB free, and at least 2 of the ${CPU_TOKENS} tokens each); ask for ${max} or fewer`,
    };
  }
  const why =
    m.gpus === 0
      ? `no GPU (${m.noGpuReason.split(":")[0]})`
      : m.gpus === 1
        ? `1 GPU (${m.gpuName}): DistAttn needs one GPU per rank and at least 2 ranks`
        : `${m.gpus} GPUs for ${ranks} ranks: DistAttn needs one GPU per rank (ask for at most ${m.gpus} to use them)`;
  return { ranks, backend: "cpu", line: `${why}: ${ranks} CPU ranks, reference kernels` };
}
