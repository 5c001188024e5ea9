// Reading the environment: the job (torchrun's variables, SLURM's), timeouts and transports, and a
// one-line EnvError naming the variable for every bad value.

import { expect, test } from "bun:test";
import {
  DEFAULT_COPY_ENGINE_CONFIG,
  EnvError,
  firstSlurmHost,
  readCommEnv,
  readCopyEngineConfig,
  readDistEnv,
  readP2PTransport,
  readTimeoutMs,
} from "./env.ts";

test("no variables: a single process", () => {
  expect(readDistEnv({})).toMatchObject({ source: "single", rank: 0, worldSize: 1, localRank: 0, nnodes: 1, masterPort: 0 });
});

test("torchrun variables, with defaults for the optional ones", () => {
  expect(
    readDistEnv({ RANK: "3", WORLD_SIZE: "8", LOCAL_RANK: "1", LOCAL_WORLD_SIZE: "2", MASTER_ADDR: "10.1.2.3", MASTER_PORT: "29500" }),
  ).toEqual({
    source: "torchrun",
    rank: 3,
    worldSize: 8,
    localRank: 1,
    localWorldSize: 2,
    nodeRank: 1,
    nnodes: 4,
    masterAddr: "10.1.2.3",
    masterPort: 29500,
    storeHosted: false,
  });
  expect(readDistEnv({ RANK: "1", WORLD_SIZE: "2", MASTER_PORT: "1234", LIGHTSEQ_STORE_HOSTED: "1" })).toMatchObject({
    localRank: 1,
    localWorldSize: 2,
    nodeRank: 0,
    masterAddr: "127.0.0.1",
    storeHosted: true,
  });
  expect(readDistEnv({ RANK: "5", WORLD_SIZE: "6", LOCAL_WORLD_SIZE: "3", GROUP_RANK: "1", NNODES: "2", MASTER_PORT: "1" })).toMatchObject({
    nodeRank: 1,
    nnodes: 2,
    localRank: 2,
  });
});

test("bad torchrun variables are errors that name the variable", () => {
  const base = { MASTER_PORT: "29500" };
  const cases: [Record<string, string>, RegExp][] = [
    [{ RANK: "2", WORLD_SIZE: "2" }, /^RANK=2 must be less than WORLD_SIZE=2$/],
    [{ RANK: "0" }, /RANK is set but WORLD_SIZE is not/],
    [{ WORLD_SIZE: "2" }, /WORLD_SIZE is set but RANK is not/],
    [{ RANK: "x", WORLD_SIZE: "2" }, /^RANK="x": expected a non-negative integer$/],
    [{ RANK: "0", WORLD_SIZE: "0" }, /^WORLD_SIZE=0: expected an integer >= 1$/],
    [{ RANK: "0", WORLD_SIZE: "2", LOCAL_RANK: "2", LOCAL_WORLD_SIZE: "2" }, /^LOCAL_RANK=2 must be less than LOCAL_WORLD_SIZE=2$/],
    [{ RANK: "0", WORLD_SIZE: "2", MASTER_PORT: "70000" }, /^MASTER_PORT=70000: a port is at most 65535$/],
    [{ RANK: "0", WORLD_SIZE: "2", NNODES: "1", NODE_RANK: "1" }, /^NODE_RANK=1 must be less than NNODES=1$/],
  ];
  for (const [env, pattern] of cases) expect(() => readDistEnv({ ...base, ...env })).toThrow(pattern);
  expect(() => readDistEnv({ RANK: "0", WORLD_SIZE: "2" })).toThrow(/^MASTER_PORT is not set$/);
  expect(() => readDistEnv({ RANK: "0", WORLD_SIZE: "2" })).toThrow(EnvError);
});

test("SLURM variables: ranks, tasks per node, node id and the first host of the node list", () => {
  const env = {
    SLURM_PROCID: "5",
    SLURM_NTASKS: "8",
    SLURM_LOCALID: "1",
    SLURM_STEP_TASKS_PER_NODE: "4(x2)",
    SLURM_NODEID: "1",
    SLURM_NNODES: "2",
    SLURM_STEP_NODELIST: "gpu[07-08]",
  };
  expect(readDistEnv(env)).toEqual({
    source: "slurm",
    rank: 5,
    worldSize: 8,
    localRank: 1,
    localWorldSize: 4,
    nodeRank: 1,
    nnodes: 2,
    masterAddr: "gpu07",
    masterPort: 29500,
    storeHosted: false,
  });
  expect(readDistEnv({ ...env, SLURM_NTASKS_PER_NODE: "4", MASTER_ADDR: "head", MASTER_PORT: "1234" })).toMatchObject({
    masterAddr: "head",
    masterPort: 1234,
  });
  expect(() => readDistEnv({ ...env, SLURM_PROCID: "8" })).toThrow(/^SLURM_PROCID=8 must be less than SLURM_NTASKS=8$/);
  expect(() => readDistEnv({ SLURM_PROCID: "0", SLURM_NTASKS: "2" })).toThrow(/cannot tell where rank 0 is/);
});

test("first host of a SLURM node list", () => {
  expect(firstSlurmHost("node1")).toBe("node1");
  expect(firstSlurmHost("node1,node2")).toBe("node1");
  expect(firstSlurmHost("gpu[007-009,012],cpu3")).toBe("gpu007");
  expect(firstSlurmHost("rack[3,5]-n[1-2],x")).toBe("rack3-n1");
});

test("defaults: 60 s timeouts, unix sockets, NCCL send/recv, 16 MiB x 4 copy-engine slots", () => {
  expect(readCommEnv({})).toEqual({
    dist: readDistEnv({}),
    timeoutMs: 60_000,
    rendezvousTimeoutMs: undefined,
    cpuTransport: "unix",
    p2p: "nccl",
    copyEngine: { chunkBytes: 16 * 2 ** 20, slots: 4 },
    visibleDevices: "unset",
    jobId: "default",
  });
  expect(
    readCommEnv({
      LIGHTSEQ_COMM_TIMEOUT_MS: "2500",
      LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS: "100",
      LIGHTSEQ_CPU_TRANSPORT: "tcp",
      CUDA_VISIBLE_DEVICES: "3",
    }),
  ).toMatchObject({ timeoutMs: 2500, rendezvousTimeoutMs: 100, cpuTransport: "tcp", visibleDevices: "3" });
});

test("every bad value is an EnvError, one line naming the variable", () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ LIGHTSEQ_COMM_TIMEOUT_MS: "soon" }, /^LIGHTSEQ_COMM_TIMEOUT_MS: expected a positive number of milliseconds, got "soon"$/],
    [{ LIGHTSEQ_COMM_TIMEOUT_MS: "0" }, /^LIGHTSEQ_COMM_TIMEOUT_MS: /],
    [{ LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS: "-5" }, /^LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS: expected a positive number/],
    [{ LIGHTSEQ_CPU_TRANSPORT: "udp" }, /^LIGHTSEQ_CPU_TRANSPORT: expected one of unix, tcp, got "udp"$/],
    [{ LIGHTSEQ_P2P: "ce" }, /^LIGHTSEQ_P2P: expected one of nccl, copy-engine, got "ce"$/],
    [{ LIGHTSEQ_P2P_SLOTS: "many" }, /^LIGHTSEQ_P2P_SLOTS: expected a number/],
    [{ LIGHTSEQ_STORE_HOSTED: "yes" }, /^LIGHTSEQ_STORE_HOSTED="yes": expected 1/],
    [{ RANK: "x", WORLD_SIZE: "2", MASTER_PORT: "1" }, /^RANK="x"/],
  ];
  for (const [env, pattern] of cases) {
    let err: unknown;
    try {
      readCommEnv(env);
    } catch (e) {
      err = e;
    }
    expect(err, JSON.stringify(env)).toBeInstanceOf(EnvError);
    expect((err as Error).message).toMatch(pattern);
    expect((err as Error).message).not.toContain("\n");
  }
  expect(readTimeoutMs({ LIGHTSEQ_COMM_TIMEOUT_MS: "" })).toBe(60_000);
});

test("LIGHTSEQ_P2P picks the send/recv transport; default nccl; anything else is an error naming the choices", () => {
  expect(readP2PTransport({})).toBe("nccl");
  expect(readP2PTransport({ LIGHTSEQ_P2P: "" })).toBe("nccl");
  expect(readP2PTransport({ LIGHTSEQ_P2P: "copy-engine" })).toBe("copy-engine");
  expect(readP2PTransport({ LIGHTSEQ_P2P: "nccl" })).toBe("nccl");
  expect(() => readP2PTransport({ LIGHTSEQ_P2P: "ce" })).toThrow(/LIGHTSEQ_P2P: expected one of nccl, copy-engine, got "ce"/);
});

test("copy-engine chunking: defaults 16 MiB x 4 slots; sizes round to whole 4 KiB pages; bad values are errors", () => {
  expect(readCopyEngineConfig({})).toEqual(DEFAULT_COPY_ENGINE_CONFIG);
  expect(DEFAULT_COPY_ENGINE_CONFIG).toEqual({ chunkBytes: 16 * 2 ** 20, slots: 4 });
  expect(readCopyEngineConfig({ LIGHTSEQ_P2P_CHUNK_MIB: "1", LIGHTSEQ_P2P_SLOTS: "2" })).toEqual({ chunkBytes: 2 ** 20, slots: 2 });
  expect(readCopyEngineConfig({ LIGHTSEQ_P2P_CHUNK_MIB: "0.001" }).chunkBytes).toBe(4096);
  expect(readCopyEngineConfig({ LIGHTSEQ_P2P_CHUNK_MIB: "0.5" }).chunkBytes).toBe(2 ** 19);
  expect(() => readCopyEngineConfig({ LIGHTSEQ_P2P_CHUNK_MIB: "-1" })).toThrow(
    /LIGHTSEQ_P2P_CHUNK_MIB: expected a number in \(0, 1024\], got "-1"/,
  );
  expect(() => readCopyEngineConfig({ LIGHTSEQ_P2P_SLOTS: "1.5" })).toThrow(/LIGHTSEQ_P2P_SLOTS: expected an integer/);
  expect(() => readCopyEngineConfig({ LIGHTSEQ_P2P_SLOTS: "many" })).toThrow(/LIGHTSEQ_P2P_SLOTS: expected a number/);
});
