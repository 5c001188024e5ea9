// initCommunicator: read the environment once (env.ts: where this process sits, timeouts,
// transports), meet the other ranks at the rendezvous
// store, agree on the job, and build the communicator of the chosen backend.
//
// Rendezvous, under a per-call key prefix (every rank calls initCommunicator in the same order):
//   1. claim/<r>  (add) a second process with the same RANK is refused;
//   2. info/<r>   every rank publishes { worldSize, backend, host, pid } and reads everyone's, in
//                 rank order, so a rank with another WORLD_SIZE or backend is reported by name;
//   3. backend    cpu: each rank listens and publishes addr/<r>, then connects to the lower ranks;
//                 nccl: rank 0 publishes the unique id; everyone confirms got-id/<r> before rank 0
//                 calls init (init blocks its thread, and rank 0 may be the one serving the store);
//   4. ready/<r>  nobody leaves until everyone is done with the store.
// A rank that finds a problem publishes it under `failed`; every wait also watches that key, so
// every rank fails with the same clear message instead of waiting for a timeout.

import { hostname } from "node:os";
import { LibraryOverrideError, probeGpus, UserError } from "@lightseq/cuda";
import { CommError, type Communicator, fmtRanks } from "./communicator.ts";
import { CpuCommunicator } from "./cpu.ts";
import { type DistEnv, type P2PTransport, readCommEnv } from "./env.ts";
import { Mesh, type Transport } from "./mesh.ts";
import { NcclCommunicator } from "./nccl.ts";
import { nccl, ncclUniqueId } from "./nccl-ffi.ts";
import { StoreClient } from "./store-client.ts";
import { StoreServer } from "./store-server.ts";

export type BackendChoice = "cpu" | "nccl" | "auto";

export interface InitOptions {
  /** "auto" (default) takes NCCL when a GPU and libnccl are present, else the CPU backend. */
  backend?: BackendChoice;
  /** Variables to read instead of process.env. */
  env?: Record<string, string | undefined>;
  /** Per-operation timeout (default LIGHTSEQ_COMM_TIMEOUT_MS, else 60 s). */
  timeoutMs?: number;
  /** Connecting to and waiting at the store (default LIGHTSEQ_RENDEZVOUS_TIMEOUT_MS, else timeoutMs). */
  rendezvousTimeoutMs?: number;
  /** CPU backend: "unix" (abstract Unix sockets) or "tcp" (on `host`, default 127.0.0.1); default LIGHTSEQ_CPU_TRANSPORT, else "unix". */
  transport?: Transport;
  host?: string;
  /** NCCL backend: what a watchdog failure does (see nccl.ts). */
  watchdog?: "exit" | "throw";
  /**
   * NCCL backend: how send/recv between ranks of one host travel, "nccl" or "copy-engine"
   * (experimental/copy-engine.ts: no SMs used); default LIGHTSEQ_P2P, else "nccl". Chunking: LIGHTSEQ_P2P_CHUNK_MIB,
   * LIGHTSEQ_P2P_SLOTS.
   */
  p2p?: P2PTransport;
}

/** The ranks could not meet or agree (a mismatch in how they were started): the user's to fix. */
export class RendezvousError extends UserError {
  override name = "RendezvousError";
}

interface RankInfo {
  worldSize: number;
  backend: "cpu" | "nccl";
  host: string;
  pid: number;
}

let initCalls = 0;

/** Which backend "auto" means on this machine, and why. */
export function resolveBackend(choice: BackendChoice): "cpu" | "nccl" {
  if (choice === "cpu" || choice === "nccl") return choice;
  if (choice !== "auto") throw new TypeError(`backend: expected "cpu", "nccl" or "auto", got ${JSON.stringify(choice)}`);
  if (probeGpus().count === 0) return "cpu";
  try {
    nccl();
    return "nccl";
  } catch (e) {
    // A LIGHTSEQ_NCCL_SO naming no file is a mistake to report, not a reason to run on the CPU.
    if (e instanceof LibraryOverrideError) throw e;
    return "cpu";
  }
}

export async function initCommunicator(o: InitOptions = {}): Promise<Communicator> {
  const env = readCommEnv(o.env ?? process.env);
  const { dist } = env;
  const timeoutMs = o.timeoutMs ?? env.timeoutMs;
  const rendezvousMs = o.rendezvousTimeoutMs ?? env.rendezvousTimeoutMs ?? timeoutMs;
  const backend = resolveBackend(o.backend ?? "auto");
  const p2p = o.p2p ?? env.p2p;
  const ceConfig = p2p === "copy-engine" ? env.copyEngine : null;
  const call = initCalls++;

  if (dist.worldSize === 1 && dist.masterPort === 0) {
    if (backend === "cpu") return CpuCommunicator.single({ timeoutMs });
    return NcclCommunicator.init({
      rank: 0,
      size: 1,
      device: pickDevice(dist, env.visibleDevices),
      id: ncclUniqueId(),
      timeoutMs,
      watchdog: o.watchdog,
    });
  }

  const job = env.jobId;
  const server = dist.rank === 0 && !dist.storeHosted ? StoreServer.listen({ host: dist.masterAddr, port: dist.masterPort, job }) : null;
  const store = await StoreClient.connect(dist.masterAddr, server?.port ?? dist.masterPort, { connectTimeoutMs: rendezvousMs, job });
  const r = new Rendezvous(store, `lightseq/init${call}`, dist, rendezvousMs);
  try {
    await r.agree(backend);
    let comm: Communicator;
    if (backend === "cpu") {
      comm = await r.connectCpu(o.transport ?? env.cpuTransport, o.host ?? "127.0.0.1", timeoutMs);
    } else {
      const device = pickDevice(dist, env.visibleDevices);
      const id = await r.shareNcclId();
      const nc = NcclCommunicator.init({ rank: dist.rank, size: dist.worldSize, device, id, timeoutMs, watchdog: o.watchdog });
      if (ceConfig) await nc.enableCopyEngine(ceConfig);
      comm = nc;
    }
    await r.phase("ready");
    return comm;
  } catch (e) {
    await r.report(e as Error);
    throw e;
  } finally {
    store.close();
    server?.close();
  }
}

/** The CUDA device of this rank: 0 when the launcher narrowed CUDA_VISIBLE_DEVICES to one, else LOCAL_RANK. */
function pickDevice(dist: DistEnv, visibleDevices: string): number {
  const { count, reason } = probeGpus();
  if (count === 0) throw new CommError("init", `backend "nccl" needs a GPU: ${reason}`);
  const device = count === 1 ? 0 : dist.localRank;
  if (device >= count) {
    throw new CommError(
      "init",
      `LOCAL_RANK=${dist.localRank} but only ${count} GPU(s) are visible (CUDA_VISIBLE_DEVICES=${visibleDevices})`,
    );
  }
  return device;
}

class Rendezvous {
  readonly #failed: string;
  readonly #deadline: number;

  constructor(
    readonly store: StoreClient,
    readonly prefix: string,
    readonly dist: DistEnv,
    readonly timeoutMs: number,
  ) {
    this.#failed = `${prefix}/failed`;
    this.#deadline = performance.now() + timeoutMs;
  }

  #key(name: string): string {
    return `${this.prefix}/${name}`;
  }

  #me(): string {
    return `rank ${this.dist.rank} (${hostname()} pid ${process.pid})`;
  }

  /** Waits for `key`, or fails at once when another rank has reported a failure. */
  async #wait(key: string, what: string, missing: () => Promise<string>): Promise<unknown> {
    const left = Math.max(1, this.#deadline - performance.now());
    const found = await this.store.waitAny([this.#failed, this.#key(key)], left);
    if (found === this.#failed) {
      throw new RendezvousError(`${await this.store.get(this.#failed, 0)} (reported to ${this.#me()})`);
    }
    if (found === null) {
      throw new RendezvousError(
        `rendezvous at ${this.store.address}: ${this.#me()} waited ${(this.timeoutMs / 1000).toFixed(1)} s for ${what}; ${await missing()}. Were all WORLD_SIZE=${this.dist.worldSize} ranks started, with the same WORLD_SIZE and MASTER_ADDR:MASTER_PORT?`,
      );
    }
    return this.store.get(this.#key(key), 0);
  }

  async #arrived(name: string): Promise<string> {
    const here: number[] = [];
    for (let p = 0; p < this.dist.worldSize; p++) if ((await this.store.get(this.#key(`${name}/${p}`), 0)) !== undefined) here.push(p);
    const gone = Array.from({ length: this.dist.worldSize }, (_, p) => p).filter((p) => !here.includes(p));
    return `${here.length} of ${this.dist.worldSize} arrived (missing: ${fmtRanks(gone)})`;
  }

  async #fail(message: string): Promise<never> {
    await this.store.set(this.#failed, message).catch(() => {});
    throw new RendezvousError(message);
  }

  /** Publishes a local failure so the other ranks stop waiting (best effort). */
  async report(e: Error): Promise<void> {
    if (e instanceof RendezvousError) return;
    await this.store.set(this.#failed, `${this.#me()} failed during init: ${e.message}`).catch(() => {});
  }

  /** Steps 1 and 2: one process per rank, and every rank agrees on WORLD_SIZE and the backend. */
  async agree(backend: "cpu" | "nccl"): Promise<void> {
    const { rank, worldSize } = this.dist;
    const claims = await this.store.add(this.#key(`claim/${rank}`), 1);
    if (claims > 1) {
      const other = (await this.store.get(this.#key(`info/${rank}`), 0)) as RankInfo | undefined;
      await this.#fail(
        `RANK=${rank} was claimed by two processes: ${this.#me()} and ${other ? `${other.host} pid ${other.pid}` : "another one"}`,
      );
    }
    const mine: RankInfo = { worldSize, backend, host: hostname(), pid: process.pid };
    await this.store.set(this.#key(`info/${rank}`), mine);
    for (let p = 0; p < worldSize; p++) {
      const theirs = (await this.#wait(`info/${p}`, `rank ${p} to arrive`, () => this.#arrived("info"))) as RankInfo;
      if (theirs.worldSize !== worldSize) {
        await this.#fail(
          `WORLD_SIZE mismatch: ${this.#me()} has WORLD_SIZE=${worldSize} but rank ${p} (${theirs.host} pid ${theirs.pid}) has WORLD_SIZE=${theirs.worldSize}`,
        );
      }
      if (theirs.backend !== backend) {
        await this.#fail(
          `backend mismatch: ${this.#me()} uses "${backend}" but rank ${p} (${theirs.host} pid ${theirs.pid}) uses "${theirs.backend}"`,
        );
      }
    }
  }

  /** Step 3, CPU: listen, publish the address, connect the mesh. */
  async connectCpu(transport: Transport, host: string, timeoutMs: number): Promise<CpuCommunicator> {
    const { rank, worldSize } = this.dist;
    const mesh = new Mesh({ rank, size: worldSize, transport, host, session: `${this.store.address}/${this.prefix}` });
    const address = mesh.listen();
    await this.store.set(this.#key(`addr/${rank}`), address);
    const addresses: string[] = [];
    for (let p = 0; p < rank; p++)
      addresses.push((await this.#wait(`addr/${p}`, `the address of rank ${p}`, () => this.#arrived("addr"))) as string);
    try {
      await mesh.connect(addresses, Math.max(1, this.#deadline - performance.now()));
    } catch (e) {
      mesh.abort("connection failed");
      throw new RendezvousError(`${this.#me()}: connecting the CPU mesh failed: ${(e as Error).message}`);
    }
    return new CpuCommunicator(
      mesh,
      0,
      Array.from({ length: worldSize }, (_, p) => p),
      rank,
      { timeoutMs },
    );
  }

  /** Step 3, NCCL: rank 0's unique id to everyone; returns once every rank holds it. */
  async shareNcclId(): Promise<Uint8Array> {
    const { rank } = this.dist;
    if (rank === 0) await this.store.set(this.#key("nccl/id"), ncclUniqueId());
    const id = (await this.#wait("nccl/id", "the NCCL unique id from rank 0", async () => "rank 0 has not published it")) as Uint8Array;
    await this.phase("got-id");
    return id;
  }

  /** Every rank sets name/<rank>, then waits for all of them. */
  async phase(name: string): Promise<void> {
    await this.store.set(this.#key(`${name}/${this.dist.rank}`), 1);
    for (let p = 0; p < this.dist.worldSize; p++)
      await this.#wait(`${name}/${p}`, `rank ${p} to reach "${name}"`, () => this.#arrived(name));
  }
}
