// Offloading activation store (issue 12 "offload"; DESIGN.md sections 6 and 7): the tensors a policy
// keeps go to host memory during the forward and come back one layer ahead of the backward.
//
//   put(i, name, t)  placement "device": kept as is. "host": a device->host copy into the slot of
//                    (i, name) on the store's copy stream, ordered after the compute stream's work so
//                    far by an event. t stays alive until the first put of another layer, then is freed
//                    on the compute stream behind that copy's event: at most the layer being put and
//                    the one before it are on the device twice (the estimator's "two layers in flight").
//   prefetch(i)      host->device copies of layer i's entries into fresh device tensors, allocated on
//                    the compute stream and filled on the copy stream. The model calls it before the
//                    backward of layer i+1, so the copies overlap that backward.
//   get(i, name)     the device tensor; the first get of an entry makes the compute stream wait for its
//                    copy's event. Nothing in a step synchronises the host.
//   release(i)       frees the device tensors; the host slots stay for the next step.
// A layer whose device tensors are still alive when its backward comes (the last layer put) uses them
// as they are: no round trip.
//
// Placement (spill): the last `deviceLayers` of the model's `layers` keep their tensors on the device,
// the first ones go to the host (0: everything to the host). The last layers are the ones kept because
// their backward comes first: when the backward reaches the offloaded layers, the device ones are
// released, so the device never holds more than max(deviceLayers, 2) layers of kept tensors (the
// estimator's spill term: at least two). Keeping the FIRST layers instead would hold them through
// the whole backward beside the offloaded layers coming back. `spillLayers` turns a byte budget into
// deviceLayers, from one size for every layer or one per layer (a mixed policy: the estimator's
// keptLayerBytes; MemoryEstimate.deviceLayers is the same split).
//
// Host slots are allocated once per (layer, name, index in the lse list) and reused by every later
// step (reallocated only when a later tensor is larger): no page-locked allocation in the steady state.
// Pinned memory comes in segments of at most `segmentBytes` (1 GiB; one JS view holds at most 4 GiB),
// one async copy per segment. The copy stream is in order, so the next step's copy into a slot follows
// this step's copy out of it.
//
// On the CPU the same store runs with synchronous copies into ArrayBuffer slots: placement, slot reuse,
// prefetch order and release are this code on both devices, so the CPU tests check them (and that every
// value comes back bit for bit).

import { Event, memcpyAsync, PinnedBuffer, Stream } from "@lightseq/cuda";
import { currentStream, type Device, deviceName, empty, sameDevice, type Tensor, TensorError } from "@lightseq/tensor";
import { layersThatFit, type OffloadMode } from "./estimator.ts";
import type { SavedName } from "./policy.ts";
import type { ActivationStore, SavedValue } from "./store.ts";

export interface OffloadOptions {
  /** Decoder layers of the model (layer indices put are 0 .. layers - 1). */
  layers: number;
  /** The last this many layers keep their tensors on the device; the others go to the host. */
  deviceLayers: number;
  /**
   * CUDA: the stream the model computes on (and allocates its tensors on: they are freed on it);
   * default: the device's current stream, as the model's default.
   */
  stream?: Stream;
  /** Bytes per pinned segment (default 1 GiB). */
  segmentBytes?: number;
}

export type Placement = "device" | "host";

/** What the store has done so far (counters over its life, bytes now and at their peak). */
export interface OffloadReport {
  /** Bytes on the device now: kept there, not yet freed after their copy out, or brought back. */
  deviceBytes: number;
  peakDeviceBytes: number;
  /** Bytes of kept tensors whose home is host memory now. */
  hostBytes: number;
  peakHostBytes: number;
  /** Capacity of the host slots (pinned on CUDA). */
  slotBytes: number;
  slotAllocations: number;
  copiesOut: number;
  bytesOut: number;
  copiesIn: number;
  bytesIn: number;
  /** Host entries whose device tensor was still alive at their backward (used without a copy). */
  reused: number;
}

const GiB = 2 ** 30;

/**
 * The spill split for a device budget: how many of the last of `layers` layers stay on the device
 * within `deviceBytes` (the rest go to the host). `layerBytes`: what each layer keeps, one number for
 * every layer, or one per layer (layer 0 first: a mixed policy), taken from the last layer down
 * while they fit.
 */
export function spillLayers(o: { layers: number; layerBytes: number | readonly number[]; deviceBytes: number }): number {
  if (!(o.deviceBytes >= 0)) throw new TensorError(`spillLayers: deviceBytes must be non-negative, got ${o.deviceBytes}`);
  if (typeof o.layerBytes === "number") {
    if (!(o.layerBytes > 0)) throw new TensorError(`spillLayers: layerBytes must be positive, got ${o.layerBytes}`);
    return Math.min(o.layers, Math.floor(o.deviceBytes / o.layerBytes));
  }
  const sizes = o.layerBytes;
  if (sizes.length !== o.layers)
    throw new TensorError(`spillLayers: layerBytes lists ${sizes.length} layers, the model has ${o.layers} (one size per layer)`);
  // a skip layer keeps nothing (0)
  const bad = sizes.findIndex((b) => !(b >= 0));
  if (bad >= 0) throw new TensorError(`spillLayers: layerBytes must be non-negative, got ${sizes[bad]} for layer ${bad}`);
  return layersThatFit(sizes, o.deviceBytes);
}

/** A host slot; its memory is the mover's business. */
interface Slot {
  readonly capacity: number;
}

/** Copies between device tensors and host slots, for one device kind. */
interface Mover {
  newSlot(bytes: number): Slot;
  freeSlot(s: Slot): void;
  /** Starts the copy of t into s (after the compute stream's work so far). */
  copyOut(t: Tensor, s: Slot): void;
  /** A new device tensor that s's bytes are being copied into. */
  copyIn(s: Slot, like: { dtype: Tensor["dtype"]; shape: readonly number[] }): Tensor;
  /** The compute stream's later work waits for the last copy out of / into s. */
  afterOut(s: Slot): void;
  afterIn(s: Slot): void;
  dispose(): void;
}

interface CpuSlot extends Slot {
  bytes: Uint8Array;
}

function hostBytesOf(t: Tensor): Uint8Array {
  const d = t.data("offload");
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

class CpuMover implements Mover {
  constructor(readonly device: Device) {}
  newSlot(bytes: number): CpuSlot {
    return { capacity: bytes, bytes: new Uint8Array(bytes) };
  }
  freeSlot(_s: Slot): void {}
  copyOut(t: Tensor, s: Slot): void {
    (s as CpuSlot).bytes.set(hostBytesOf(t));
  }
  copyIn(s: Slot, like: { dtype: Tensor["dtype"]; shape: readonly number[] }): Tensor {
    const t = empty(like.shape, { dtype: like.dtype, device: this.device });
    const dst = hostBytesOf(t);
    dst.set((s as CpuSlot).bytes.subarray(0, dst.byteLength));
    return t;
  }
  afterOut(_s: Slot): void {}
  afterIn(_s: Slot): void {}
  dispose(): void {}
}

interface CudaSlot extends Slot {
  segments: PinnedBuffer[];
  /** Recorded on the compute stream before a copy; the copy stream waits for it. */
  mark: Event;
  out: Event;
  in: Event;
}

class CudaMover implements Mover {
  readonly copy: Stream;
  constructor(
    readonly device: Device & { kind: "cuda" },
    readonly compute: Stream,
    readonly segmentBytes: number,
  ) {
    this.copy = Stream.create(device.index);
  }

  newSlot(bytes: number): CudaSlot {
    const segments: PinnedBuffer[] = [];
    try {
      for (let at = 0; at < bytes; at += this.segmentBytes) segments.push(PinnedBuffer.alloc(Math.min(this.segmentBytes, bytes - at)));
    } catch (e) {
      for (const p of segments) p.dispose();
      throw e;
    }
    const ev = () => Event.create(this.device.index);
    return { capacity: bytes, segments, mark: ev(), out: ev(), in: ev() };
  }

  freeSlot(s: Slot): void {
    const c = s as CudaSlot;
    this.copy.synchronize(); // only when a slot is replaced or the store disposed, never in a steady step
    for (const p of c.segments) p.dispose();
    for (const e of [c.mark, c.out, c.in]) e.dispose();
  }

  #each(s: CudaSlot, bytes: number, f: (hostPtr: number, offset: number, n: number) => void): void {
    let at = 0;
    for (const p of s.segments) {
      if (at >= bytes) break;
      const n = Math.min(p.bytes, bytes - at);
      f(p.ptr, at, n);
      at += n;
    }
  }

  copyOut(t: Tensor, s: Slot): void {
    const c = s as CudaSlot;
    const src = t.ptr("offload");
    this.copy.waitFor(this.compute, c.mark);
    this.#each(c, t.bytes, (host, off, n) => memcpyAsync(host, src + off, n, this.copy, "offload: device to host"));
    c.out.record(this.copy);
  }

  copyIn(s: Slot, like: { dtype: Tensor["dtype"]; shape: readonly number[] }): Tensor {
    const c = s as CudaSlot;
    const t = empty(like.shape, { dtype: like.dtype, device: this.device, stream: this.compute });
    const dst = t.ptr("offload");
    this.copy.waitFor(this.compute, c.mark); // the allocation is ordered on the compute stream
    this.#each(c, t.bytes, (host, off, n) => memcpyAsync(dst + off, host, n, this.copy, "offload: host to device"));
    c.in.record(this.copy);
    return t;
  }

  afterOut(s: Slot): void {
    this.compute.wait((s as CudaSlot).out);
  }

  afterIn(s: Slot): void {
    this.compute.wait((s as CudaSlot).in);
  }

  dispose(): void {
    this.copy.synchronize();
    this.copy.dispose();
  }
}

interface DeviceEntry {
  kind: "device";
  tensor: Tensor;
}

interface HostEntry {
  kind: "host";
  slot: Slot;
  dtype: Tensor["dtype"];
  shape: readonly number[];
  bytes: number;
  /** The tensor put, alive until retired (its copy out may still run). */
  original: Tensor | null;
  /** The device tensor the backward uses (the original when it was still alive, else a copy in). */
  back: Tensor | null;
  /** The compute stream already waits for `back`'s copy. */
  ready: boolean;
}

type Entry = DeviceEntry | HostEntry;

/** One kept value: a tensor, or the lse list (one entry per element). */
interface Kept {
  list: boolean;
  entries: Entry[];
}

const key = (layer: number, name: SavedName, k: number) => `${layer}/${name}/${k}`;

export class OffloadActivationStore implements ActivationStore, Disposable {
  readonly layers: number;
  readonly deviceLayers: number;
  readonly #stream: Stream | undefined;
  readonly #segmentBytes: number;
  readonly #layers = new Map<number, Map<SavedName, Kept>>();
  readonly #slots = new Map<string, Slot>();
  #device: Device | null = null;
  #mover: Mover | null = null;
  /** The layer of the last put (its originals stay alive until another layer is put). */
  #lastPut: number | null = null;
  readonly #report: OffloadReport = {
    deviceBytes: 0,
    peakDeviceBytes: 0,
    hostBytes: 0,
    peakHostBytes: 0,
    slotBytes: 0,
    slotAllocations: 0,
    copiesOut: 0,
    bytesOut: 0,
    copiesIn: 0,
    bytesIn: 0,
    reused: 0,
  };

  constructor(o: OffloadOptions) {
    if (!Number.isSafeInteger(o.layers) || o.layers <= 0)
      throw new TensorError(`offload store: layers must be a positive integer (the model's decoder layers), got ${o.layers}`);
    if (!Number.isSafeInteger(o.deviceLayers) || o.deviceLayers < 0 || o.deviceLayers > o.layers)
      throw new TensorError(
        `offload store: deviceLayers must be an integer in [0, ${o.layers}] (layers kept on the device), got ${o.deviceLayers}`,
      );
    const seg = o.segmentBytes ?? GiB;
    if (!Number.isSafeInteger(seg) || seg <= 0 || seg > 2 ** 32)
      throw new TensorError(`offload store: segmentBytes must be a positive integer of at most 4 GiB, got ${seg}`);
    this.layers = o.layers;
    this.deviceLayers = o.deviceLayers;
    this.#stream = o.stream;
    this.#segmentBytes = seg;
  }

  #moverFor(t: Tensor): Mover {
    if (this.#device === null) {
      const d = t.device;
      this.#device = d;
      if (d.kind === "cpu") this.#mover = new CpuMover(d);
      else {
        const compute = this.#stream ?? currentStream(d.index);
        if (compute.device !== d.index)
          throw new TensorError(`offload store: its stream is on cuda:${compute.device}, the tensors on ${deviceName(d)}`);
        this.#mover = new CudaMover(d, compute, this.#segmentBytes);
      }
    } else if (!sameDevice(this.#device, t.device)) {
      throw new TensorError(`offload store: every tensor must be on ${deviceName(this.#device)} (the first one put), got ${t.describe()}`);
    }
    return this.#mover as Mover;
  }

  #slot(k: string, bytes: number, m: Mover): Slot {
    const s = this.#slots.get(k);
    if (s !== undefined && s.capacity >= bytes) return s;
    if (s !== undefined) {
      m.freeSlot(s);
      this.#report.slotBytes -= s.capacity;
    }
    const fresh = m.newSlot(bytes);
    this.#slots.set(k, fresh);
    this.#report.slotBytes += bytes;
    this.#report.slotAllocations++;
    return fresh;
  }

  /** Frees the device tensors put for layers other than `except`, behind their copies out. */
  #retire(except: number | null): void {
    const m = this.#mover as Mover;
    for (const [layer, names] of this.#layers) {
      if (layer === except) continue;
      for (const kept of names.values())
        for (const e of kept.entries) {
          if (e.kind !== "host" || e.original === null || e.back === e.original) continue;
          m.afterOut(e.slot);
          e.original.dispose();
          e.original = null;
        }
    }
  }

  put<K extends SavedName>(layer: number, name: K, value: SavedValue<K>): void {
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.layers)
      throw new TensorError(
        `offload store: layer must be an integer in [0, ${this.layers}) (the store was made for ${this.layers} layers), got ${layer}`,
      );
    let names = this.#layers.get(layer);
    if (names?.has(name)) throw new TensorError(`offload store: layer ${layer} already holds "${name}" (release the layer first)`);
    const list = Array.isArray(value);
    const tensors = list ? (value as Tensor[]) : [value as Tensor];
    if (tensors.length === 0) throw new TensorError(`offload store: "${name}" of layer ${layer} is an empty list`);
    const m = this.#moverFor(tensors[0] as Tensor);
    for (const t of tensors) this.#moverFor(t);
    if (this.#lastPut !== layer) {
      if (this.#lastPut !== null) this.#retire(layer);
      this.#lastPut = layer;
    }
    if (!names) {
      names = new Map();
      this.#layers.set(layer, names);
    }
    const onDevice = this.placementOf(layer) === "device";
    const entries: Entry[] = tensors.map((t, k) => {
      if (onDevice) return { kind: "device", tensor: t };
      const slot = this.#slot(key(layer, name, k), t.bytes, m);
      m.copyOut(t, slot);
      this.#report.copiesOut++;
      this.#report.bytesOut += t.bytes;
      return { kind: "host", slot, dtype: t.dtype, shape: t.shape, bytes: t.bytes, original: t, back: null, ready: false };
    });
    names.set(name, { list, entries });
    this.#account();
  }

  /** Starts bringing layer i's host entries back to the device (no-op for what is already there). */
  prefetch(layer: number): void {
    const names = this.#layers.get(layer);
    if (!names) return;
    const m = this.#mover as Mover;
    for (const kept of names.values()) for (const e of kept.entries) if (e.kind === "host") this.#bring(e, m);
    this.#account();
  }

  #bring(e: HostEntry, m: Mover): void {
    if (e.back !== null) return;
    if (e.original !== null) {
      e.back = e.original;
      e.ready = true;
      this.#report.reused++;
      return;
    }
    e.back = m.copyIn(e.slot, e);
    this.#report.copiesIn++;
    this.#report.bytesIn += e.bytes;
  }

  get<K extends SavedName>(layer: number, name: K): SavedValue<K> | undefined {
    const kept = this.#layers.get(layer)?.get(name);
    if (kept === undefined) return undefined;
    const m = this.#mover as Mover;
    const out = kept.entries.map((e) => {
      if (e.kind === "device") return e.tensor;
      this.#bring(e, m);
      if (!e.ready) {
        m.afterIn(e.slot);
        e.ready = true;
      }
      return e.back as Tensor;
    });
    this.#account();
    return (kept.list ? out : out[0]) as SavedValue<K>;
  }

  release(layer: number): void {
    const names = this.#layers.get(layer);
    if (!names) return;
    const m = this.#mover as Mover;
    for (const kept of names.values())
      for (const e of kept.entries) {
        if (e.kind === "device") {
          e.tensor.dispose();
          continue;
        }
        if (e.original !== null) {
          m.afterOut(e.slot); // its copy out may still read it
          e.original.dispose();
        }
        if (e.back !== null && e.back !== e.original) {
          if (!e.ready) m.afterIn(e.slot); // brought back but never used: its copy in may still write it
          e.back.dispose();
        }
        e.original = null;
        e.back = null;
      }
    this.#layers.delete(layer);
    if (this.#lastPut === layer) this.#lastPut = null;
    this.#account();
  }

  /** Bytes of the kept tensors (wherever they are). */
  bytes(): number {
    let n = 0;
    for (const names of this.#layers.values())
      for (const kept of names.values()) for (const e of kept.entries) n += e.kind === "device" ? e.tensor.bytes : e.bytes;
    return n;
  }

  /** Where the tensors kept now for `layer` are (for an lse list: its first element). */
  placement(layer: number): Map<SavedName, Placement> {
    const out = new Map<SavedName, Placement>();
    for (const [name, kept] of this.#layers.get(layer) ?? []) out.set(name, (kept.entries[0] as Entry).kind);
    return out;
  }

  /** Where layer i's kept tensors go. */
  placementOf(layer: number): Placement {
    return layer >= this.layers - this.deviceLayers ? "device" : "host";
  }

  report(): OffloadReport {
    return { ...this.#report };
  }

  /** Restarts the peaks at the bytes held now. */
  resetPeaks(): void {
    this.#report.peakDeviceBytes = this.#report.deviceBytes;
    this.#report.peakHostBytes = this.#report.hostBytes;
  }

  #account(): void {
    let dev = 0;
    let host = 0;
    for (const names of this.#layers.values())
      for (const kept of names.values())
        for (const e of kept.entries) {
          if (e.kind === "device") {
            dev += e.tensor.bytes;
            continue;
          }
          host += e.bytes;
          if (e.original !== null) dev += e.bytes;
          if (e.back !== null && e.back !== e.original) dev += e.bytes;
        }
    const r = this.#report;
    r.deviceBytes = dev;
    r.hostBytes = host;
    r.peakDeviceBytes = Math.max(r.peakDeviceBytes, dev);
    r.peakHostBytes = Math.max(r.peakHostBytes, host);
  }

  /** Releases every layer, then the host slots and the copy stream. */
  [Symbol.dispose](): void {
    for (const layer of [...this.#layers.keys()]) this.release(layer);
    const m = this.#mover;
    if (m !== null) {
      for (const s of this.#slots.values()) m.freeSlot(s);
      m.dispose();
    }
    this.#slots.clear();
    this.#report.slotBytes = 0;
    this.#mover = null;
    this.#device = null;
  }
}

/**
 * The store for one of the estimator's offload modes (MemoryPlan.offload): "none" keeps every layer on
 * the device, "host" none of them, "spill" the last `deviceLayers` (the estimate's layers on the GPU).
 */
export function storeForOffload(
  mode: OffloadMode,
  o: { layers: number; deviceLayers?: number; stream?: Stream; segmentBytes?: number },
): OffloadActivationStore {
  const base = { layers: o.layers, stream: o.stream, segmentBytes: o.segmentBytes };
  switch (mode) {
    case "none":
      return new OffloadActivationStore({ ...base, deviceLayers: o.layers });
    case "host":
      return new OffloadActivationStore({ ...base, deviceLayers: 0 });
    case "spill":
      if (o.deviceLayers === undefined)
        throw new TensorError('storeForOffload: "spill" needs deviceLayers (how many of the last layers stay on the device)');
      return new OffloadActivationStore({ ...base, deviceLayers: o.deviceLayers });
    default:
      throw new TensorError(`storeForOffload: expected offload "none", "host" or "spill", got ${JSON.stringify(mode satisfies never)}`);
  }
}
