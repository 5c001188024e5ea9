export * from "./communicator.ts";
export { CpuCommunicator } from "./cpu.ts";
export {
  type CommEnv,
  type CopyEngineConfig,
  DEFAULT_COPY_ENGINE_CONFIG,
  DEFAULT_TIMEOUT_MS,
  type DistEnv,
  EnvError,
  firstSlurmHost,
  type P2PTransport,
  readCommEnv,
  readDistEnv,
} from "./env.ts";
export { type BackendChoice, type InitOptions, initCommunicator, RendezvousError, resolveBackend } from "./init.ts";
export { LaunchError, type LaunchOptions, type LaunchResult, launch, MULTICAST_OFF_ENV, parseLaunchArgs, type RankExit } from "./launch.ts";
export { NcclCommunicator } from "./nccl.ts";
export { NCCL_DTYPE, NCCL_OP, NcclError, ncclVersion } from "./nccl-ffi.ts";
export { StoreClient } from "./store-client.ts";
export { StoreServer } from "./store-server.ts";
export { StoreError } from "./store-wire.ts";
