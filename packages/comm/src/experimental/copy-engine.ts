// EXPERIMENTAL, opt-in (LIGHTSEQ_P2P=copy-engine), not the default. Measured on 2x H200
// (BENCHMARKS.md, issue 3; packages/comm/README.md): it keeps its promise of using no SMs (a GEMM beside
// a 256 MiB exchange runs 1.43 ms vs 1.41 ms alone), but the exchange itself stalls while a full-GPU
// kernel runs (1.11 ms alone, 2.16 ms beside the GEMM: 1.54x together, NCCL 1.08x), and its two-way
// bandwidth is 71-89% of NCCL's (the receiver's staging copy). Under DistAttn it is within 0.5% of NCCL.
// Until the stall is understood, NCCL's send/recv stay the default.
//
// The copy-engine transport for send/recv between GPUs of one node: the data moves by the GPUs'
// copy engines (cudaMemcpyAsync into IPC-mapped memory of the peer), ordered by stream memory
// operations (cuStreamWaitValue32 / cuStreamWriteValue32), so no SM runs communication. NCCL's
// send/recv kernels hold SMs for the whole transfer; beside a GEMM or an attention block that costs
// the compute 5-10% (BENCHMARKS.md). The protocol (slots, counters, who writes what where) is
// described in kernels/src/p2p.cu, which issues it; its entry points are declared with the rest of
// liblightseq.so in @lightseq/cuda kernels.ts.
//
// Used by NcclCommunicator when its p2p transport is "copy-engine" (LIGHTSEQ_P2P=copy-engine, read in
// env.ts): sends and receives between ranks of the same host go through here, everything else
// (collectives, peers on other hosts, a rank's messages to itself) through NCCL. Setup is collective
// (one NCCL all-gather of IPC handles) and blocks until every rank has mapped its peers' blocks.
//
// Costs: a block of (size - 1) * slots * chunk bytes per rank (default 4 x 16 MiB per peer), and
// one extra local copy per message on the receiver (slot -> destination). Ordering: every message
// is staged through the sender's send stream and the receiver's recv stream, joined to the caller's
// stream with events, so the caller's stream sees the data (and may reuse the send buffer) after it.
//
// Failure: when a peer dies mid-message, the communicator's watchdog names the operation and aborts;
// abort() releases this rank's blocked waits (release()), so its streams drain and the process can
// exit.

import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { check, cudart, Event, errorName, errorString, type Kernels, kernels, memsetAsync, Stream, setDevice } from "@lightseq/cuda";
import { empty, fromArray, type Tensor, to } from "@lightseq/tensor";
import { CommError } from "../communicator.ts";
import { type CopyEngineConfig, DEFAULT_COPY_ENGINE_CONFIG } from "../env.ts";

const MiB = 2 ** 20;

/** liblightseq.so (with p2p.cu), loaded once; a missing library names the way out. */
function p2p(): Kernels {
  try {
    return kernels();
  } catch (e) {
    throw new CommError("copy-engine", `needs liblightseq.so (or set LIGHTSEQ_P2P=nccl): ${(e as Error).message}`);
  }
}

function fail(call: string, code: number, context: string): never {
  throw new CommError("copy-engine", `${call} failed: ${errorName(code)} (${code}): ${errorString(code)} [${context}]`);
}

/** A host's identity: hostname and boot id, hashed. Ranks with equal ids share a node. */
function hostId(): Uint8Array {
  let boot = "";
  try {
    boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    // Not Linux: the hostname alone.
  }
  const h = new Bun.CryptoHasher("sha256");
  h.update(`${hostname()}\n${boot}`);
  return new Uint8Array(h.digest().buffer.slice(0, 32));
}

interface Pending {
  dir: "send" | "recv";
  t: Tensor;
  peer: number;
  stream: Stream;
}

/** What setup needs from the communicator: an all-gather of i32 device tensors, run to completion. */
export interface SetupContext {
  rank: number;
  size: number;
  device: number;
  allGather(input: Tensor, output: Tensor): Promise<void>;
}

const WORDS = 48; // per rank: 64 B handle, 32 B host id, chunk bytes (2 words), slots, magic
const MAGIC = 0x4c535032; // "LSP2"

export class CopyEngineP2P {
  readonly #rank: number;
  readonly #size: number;
  readonly #device: number;
  readonly #config: CopyEngineConfig;
  readonly #flagBytes: number;
  readonly #local: number;
  /** The peers' blocks mapped here, by rank (0 where the peer is not on this host, or is us). */
  readonly #remote: number[];
  readonly #sent: number[];
  readonly #received: number[];
  readonly #sendStream: Stream;
  readonly #recvStream: Stream;
  readonly #events: Event[];
  #pending: Pending[] = [];
  #closed = false;

  private constructor(ctx: SetupContext, config: CopyEngineConfig, local: number, remote: number[]) {
    this.#rank = ctx.rank;
    this.#size = ctx.size;
    this.#device = ctx.device;
    this.#config = config;
    this.#flagBytes = flagBytes(ctx.size);
    this.#local = local;
    this.#remote = remote;
    this.#sent = new Array(ctx.size).fill(0);
    this.#received = new Array(ctx.size).fill(0);
    this.#sendStream = Stream.create(ctx.device, { priority: "high" });
    this.#recvStream = Stream.create(ctx.device, { priority: "high" });
    this.#events = [0, 1, 2].map(() => Event.create(ctx.device));
  }

  /** Collective: allocates this rank's block, exchanges IPC handles, maps the local peers' blocks. */
  static async setup(ctx: SetupContext, config: CopyEngineConfig = DEFAULT_COPY_ENGINE_CONFIG): Promise<CopyEngineP2P> {
    const f = p2p();
    setDevice(ctx.device);
    const code = f.ls_p2p_init();
    if (code !== 0)
      fail("cuStreamWaitValue32/cuStreamWriteValue32 lookup", code, "the driver's stream memory operations; set LIGHTSEQ_P2P=nccl");
    const bytes = flagBytes(ctx.size) + Math.max(ctx.size - 1, 0) * config.slots * config.chunkBytes;
    const out = new BigUint64Array(new ArrayBuffer(8));
    check(cudart().cudaMalloc(out, bytes), "cudaMalloc", `copy-engine block of ${(bytes / MiB).toFixed(0)} MiB on cuda:${ctx.device}`);
    const local = Number(out[0]);
    let remote: number[] = [];
    try {
      const zeroing = Stream.create(ctx.device);
      memsetAsync(local, 0, flagBytes(ctx.size), zeroing);
      zeroing.synchronize();
      zeroing.dispose();
      const mine = new Int32Array(new ArrayBuffer(WORDS * 4));
      const bytesView = new Uint8Array(mine.buffer);
      const c = f.ls_ipc_get_handle(local, bytesView);
      if (c !== 0) fail("cudaIpcGetMemHandle", c, `cuda:${ctx.device}`);
      bytesView.set(hostId(), 64);
      mine[24] = config.chunkBytes % 2 ** 30;
      mine[25] = Math.floor(config.chunkBytes / 2 ** 30);
      mine[26] = config.slots;
      mine[27] = MAGIC;
      const all = await gather(ctx, mine);
      remote = new Array(ctx.size).fill(0);
      const me = all[ctx.rank] as Int32Array;
      for (let r = 0; r < ctx.size; r++) {
        const theirs = all[r] as Int32Array;
        if (theirs[27] !== MAGIC) throw new CommError("copy-engine", `rank ${r} sent a malformed setup record`);
        const theirChunk = (theirs[24] as number) + (theirs[25] as number) * 2 ** 30;
        if (theirChunk !== config.chunkBytes || theirs[26] !== config.slots)
          throw new CommError(
            "copy-engine",
            `ranks disagree on the chunking: rank ${ctx.rank} has ${config.chunkBytes} B x ${config.slots} slots, rank ${r} has ${theirChunk} B x ${theirs[26]} (LIGHTSEQ_P2P_CHUNK_MIB / LIGHTSEQ_P2P_SLOTS must be equal on every rank)`,
          );
        if (r === ctx.rank || !sameHost(me, theirs)) continue;
        const mapped = new BigUint64Array(new ArrayBuffer(8));
        const handle = new Uint8Array(theirs.buffer.slice(theirs.byteOffset, theirs.byteOffset + 64));
        const oc = f.ls_ipc_open_handle(handle, mapped);
        if (oc !== 0)
          fail(
            "cudaIpcOpenMemHandle",
            oc,
            `rank ${ctx.rank} mapping rank ${r}'s block (same host); without peer access use LIGHTSEQ_P2P=nccl`,
          );
        remote[r] = Number(mapped[0]);
      }
    } catch (e) {
      for (const p of remote) if (p) f.ls_ipc_close_handle(p);
      cudart().cudaFree(local);
      throw e;
    }
    return new CopyEngineP2P(ctx, config, local, remote);
  }

  /** True when messages to and from `peer` go through the copy engines. */
  handles(peer: number): boolean {
    return peer !== this.#rank && (this.#remote[peer] ?? 0) !== 0;
  }

  /** The ranks reached through the copy engines. */
  get peers(): number[] {
    return this.#remote.flatMap((p, r) => (p ? [r] : []));
  }

  get config(): CopyEngineConfig {
    return { ...this.#config };
  }

  /** Queues a send or receive; `flush` issues what was queued. */
  post(dir: "send" | "recv", t: Tensor, peer: number, stream: Stream): void {
    this.#pending.push({ dir, t, peer, stream });
  }

  /**
   * Issues the queued messages: the send and recv streams wait for the callers' streams, the
   * messages are issued on them, and the callers' streams wait for both. Returns the callers' streams.
   */
  flush(): Stream[] {
    const ops = this.#pending;
    this.#pending = [];
    if (ops.length === 0) return [];
    if (this.#closed) throw new CommError("copy-engine", "the transport was closed");
    const f = p2p();
    const users = [...new Set(ops.map((o) => o.stream))];
    const [fork, sendDone, recvDone] = this.#events as [Event, Event, Event];
    for (const u of users) {
      fork.record(u);
      this.#sendStream.wait(fork);
      this.#recvStream.wait(fork);
    }
    const { chunkBytes, slots } = this.#config;
    for (const o of ops) {
      const bytes = o.t.bytes;
      const chunks = Math.ceil(bytes / chunkBytes);
      const remote = this.#remote[o.peer] as number;
      if (o.dir === "send") {
        const first = this.#sent[o.peer] as number;
        const code = f.ls_p2p_send(
          o.t.ptr(),
          bytes,
          remote + this.#slotsOffset(o.peer, this.#rank),
          chunkBytes,
          slots,
          first,
          this.#local + this.#freedOffset(o.peer),
          remote + this.#fullOffset(this.#rank),
          this.#sendStream.handle,
        );
        if (code !== 0) fail("ls_p2p_send", code, `${o.t.describe()} to rank ${o.peer}`);
        this.#sent[o.peer] = first + chunks;
      } else {
        const first = this.#received[o.peer] as number;
        const code = f.ls_p2p_recv(
          o.t.ptr(),
          bytes,
          this.#local + this.#slotsOffset(this.#rank, o.peer),
          chunkBytes,
          slots,
          first,
          this.#local + this.#fullOffset(o.peer),
          remote + this.#freedOffset(this.#rank),
          this.#recvStream.handle,
        );
        if (code !== 0) fail("ls_p2p_recv", code, `${o.t.describe()} from rank ${o.peer}`);
        this.#received[o.peer] = first + chunks;
      }
    }
    sendDone.record(this.#sendStream);
    recvDone.record(this.#recvStream);
    for (const u of users) {
      u.wait(sendDone);
      u.wait(recvDone);
    }
    return users;
  }

  /**
   * For a broken communicator: satisfies every wait this rank has issued (writes the counts its
   * streams wait for into its own flags, from a fresh stream), so no stream stays blocked on a peer
   * that will never answer; a blocked stream would also hang the process's exit. What those
   * messages deliver is garbage, as after any abort.
   */
  release(): void {
    if (this.#closed) return;
    const f = p2p();
    setDevice(this.#device);
    const s = Stream.create(this.#device, { priority: "high" });
    for (let r = 0; r < this.#size; r++) {
      if (!this.handles(r)) continue;
      f.ls_stream_write_u32(this.#local + this.#fullOffset(r), (this.#received[r] as number) % 2 ** 32, s.handle);
      f.ls_stream_write_u32(this.#local + this.#freedOffset(r), (this.#sent[r] as number) % 2 ** 32, s.handle);
    }
    s.dispose(); // destroyed once its writes have run
  }

  /**
   * Waits until every peer has consumed what we sent (so no peer writes into our block any more),
   * then unmaps the peers' blocks and frees ours. `waitIdle` polls the given stream to completion.
   */
  async close(waitIdle: (s: Stream) => Promise<void>, drain = true): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const f = p2p();
    setDevice(this.#device);
    if (drain) {
      for (let r = 0; r < this.#size; r++) {
        const sent = this.#sent[r] as number;
        if (!this.handles(r) || sent === 0) continue;
        const code = f.ls_stream_wait_u32(this.#local + this.#freedOffset(r), sent % 2 ** 32, this.#sendStream.handle);
        if (code !== 0) fail("cuStreamWaitValue32", code, `draining the messages to rank ${r}`);
      }
      await waitIdle(this.#sendStream);
      await waitIdle(this.#recvStream);
      for (const p of this.#remote) if (p) f.ls_ipc_close_handle(p);
      cudart().cudaFree(this.#local);
      this.#sendStream.dispose();
      this.#recvStream.dispose();
      for (const e of this.#events) e.dispose();
    }
    // Without a drain (the communicator broke) the streams may be blocked for good: the memory and
    // the streams stay until the process exits.
  }

  // Layout of a block (p2p.cu): flags full[size], freed[size]; then one slot ring per sender.
  #fullOffset(sender: number): number {
    return 4 * sender;
  }
  #freedOffset(receiver: number): number {
    return 4 * (this.#size + receiver);
  }
  /** Offset, in `owner`'s block, of the slots that `sender` writes into. */
  #slotsOffset(owner: number, sender: number): number {
    const index = sender < owner ? sender : sender - 1;
    return this.#flagBytes + index * this.#config.slots * this.#config.chunkBytes;
  }
}

function flagBytes(size: number): number {
  return Math.ceil((8 * size) / 4096) * 4096;
}

function sameHost(a: Int32Array, b: Int32Array): boolean {
  for (let i = 16; i < 24; i++) if (a[i] !== b[i]) return false;
  return true;
}

async function gather(ctx: SetupContext, mine: Int32Array): Promise<Int32Array[]> {
  const device = { kind: "cuda" as const, index: ctx.device };
  const input = fromArray(mine, [WORDS], { dtype: "i32", device });
  const output = empty([WORDS * ctx.size], { dtype: "i32", device });
  try {
    await ctx.allGather(input, output);
    const host = to(output, "cpu");
    const all = new Int32Array(host.data() as Int32Array);
    host.dispose();
    return Array.from({ length: ctx.size }, (_, r) => all.slice(r * WORDS, (r + 1) * WORDS));
  } finally {
    input.dispose();
    output.dispose();
  }
}
