export * from "./communicator.ts";
export { CpuCommunicator } from "./cpu.ts";
export { type DistEnv, EnvError, firstSlurmHost, readDistEnv } from "./env.ts";
export { type BackendChoice, type InitOptions, initCommunicator, RendezvousError, resolveBackend } from "./init.ts";
export { LaunchError, type LaunchOptions, type LaunchResult, launch, MULTICAST_OFF_ENV, parseLaunchArgs, type RankExit } from "./launch.ts";
export { NCCL_DTYPE, NCCL_OP, NcclCommunicator, NcclError, ncclVersion } from "./nccl.ts";
export { StoreClient, StoreError, StoreServer } from "./store.ts";
