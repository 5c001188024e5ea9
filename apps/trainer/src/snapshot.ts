// Snapshots: DIR/snapshots/step-NNNNNNNN/, sharded per rank, atomic, checksummed, the last N kept.
//
// What a snapshot holds: the ZeRO-3 shards of every rank (fp32 master weights and the AdamW moments,
// each a concatenation of the rank's shard of every flat buffer of `layout`, in order, padding
// included), one JSON state shared by all ranks (step, data order position, RNG offsets, the config)
// and, where a rank has state of its own (a per-rank RNG, say), that rank's JSON.
//
// Protocol (the barrier is the caller's communicator):
//   1. every rank: writeRankShards()  - its files into DIR/snapshots/.tmp-step-N/, each fsynced, and
//      rankR.files.json with their sizes and SHA-256;
//   2. barrier;
//   3. rank 0: finalizeSnapshot()     - checks every rank's list, writes manifest.json (sizes,
//      checksums, mesh, layout, state) last, fsyncs it and the folder, renames the folder to step-N,
//      fsyncs DIR/snapshots, then deletes later steps' snapshots (an abandoned run's), all but the
//      newest `keep` of the others, and stale temp folders.
// A crash anywhere before the rename leaves only a .tmp- folder, which latestComplete() never reads;
// after it, the snapshot is whole. latestComplete() also re-checks sizes and checksums, skipping
// (and naming) a damaged snapshot in favour of an older one.
//
// Mesh: the shards are flat ranges of each buffer, so a snapshot written by R ranks is read by R' ranks
// by re-cutting each buffer (loadRankShards reads only the byte ranges the new rank owns). A different
// model layout is refused, naming the first buffer that differs.

import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { ownedRange, type ShardLayout, shardLayout } from "./optim/shard.ts";

export const SNAPSHOT_FORMAT = 1;

export class SnapshotError extends Error {
  override name = "SnapshotError";
}

export interface Mesh {
  cp: number;
  dp: number;
}

/** The flat buffers every sharded array is cut from, in file order. */
export interface SnapshotLayout {
  buffers: { name: string; numel: number }[];
  align: number;
}

export interface FileRecord {
  name: string;
  bytes: number;
  sha256: string;
}

export interface Manifest {
  format: number;
  step: number;
  mesh: Mesh;
  ranks: number;
  layout: SnapshotLayout;
  /** Names of the sharded arrays (each rank has rankR.NAME.f32). */
  arrays: string[];
  state: unknown;
  files: FileRecord[];
  written: string;
}

export interface SnapshotInfo {
  dir: string;
  manifest: Manifest;
}

const stepName = (step: number) => `step-${String(step).padStart(8, "0")}`;
const tmpName = (step: number) => `.tmp-${stepName(step)}`;
const rankPrefix = (rank: number) => `rank${String(rank).padStart(5, "0")}`;
const arrayFile = (rank: number, name: string) => `${rankPrefix(rank)}.${name}.f32`;
const listFile = (rank: number) => `${rankPrefix(rank)}.files.json`;
const stateFile = (rank: number) => `${rankPrefix(rank)}.state.json`;

function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeDurable(path: string, data: Uint8Array): void {
  const fd = openSync(path, "w");
  try {
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off, Math.min(data.length - off, 1 << 30));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * One rank's sharded arrays handed out one buffer at a time, so no array of the whole rank's state is
 * ever built (a 1.1B model's master alone is 4.4 GB, past what one JS typed array may hold).
 * shard(array, b) returns buffer b's shard of `array` (shardLen elements); the view may be reused by
 * the next call.
 */
export interface ShardSource {
  readonly arrays: readonly string[];
  shard(array: string, buffer: number): Float32Array;
}

/** A ShardSource over arrays already concatenated in layout order (small states, tests). */
export function arraySource(layout: SnapshotLayout, ranks: number, arrays: Readonly<Record<string, Float32Array>>): ShardSource {
  const { shards, offsets, total } = rankLayout(layout, ranks);
  for (const [name, a] of Object.entries(arrays))
    if (a.length !== total) throw new SnapshotError(`array "${name}" has ${a.length} elements, its shard of the layout has ${total}`);
  return {
    arrays: Object.keys(arrays),
    shard: (array, b) => {
      const a = arrays[array];
      if (!a) throw new SnapshotError(`no array "${array}" (arrays: ${Object.keys(arrays).join(", ")})`);
      const off = offsets[b] as number;
      return a.subarray(off, off + (shards[b] as ShardLayout).shardLen);
    },
  };
}

/** The concatenation of a source's arrays (what loadRankShards returns; only for states that fit one array). */
export function concatShards(layout: SnapshotLayout, ranks: number, src: ShardSource): Record<string, Float32Array> {
  const { offsets, total } = rankLayout(layout, ranks);
  const out: Record<string, Float32Array> = {};
  for (const name of src.arrays) {
    const a = new Float32Array(total);
    for (let b = 0; b < layout.buffers.length; b++) a.set(src.shard(name, b), offsets[b] as number);
    out[name] = a;
  }
  return out;
}

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

/** SHA-256 of a file read in 64 MiB pieces: a rank's state file can be larger than one JS buffer. */
function sha256File(path: string): string {
  const hash = createHash("sha256");
  const buf = new Uint8Array(64 * 2 ** 20);
  const fd = openSync(path, "r");
  try {
    for (let pos = 0; ; ) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}
const isSource = (a: object): a is ShardSource => typeof (a as ShardSource).shard === "function";
const bytesOf = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The per-buffer shard layouts of `layout` over `ranks`, and each buffer's element offset in a rank's file. */
function rankLayout(layout: SnapshotLayout, ranks: number): { shards: ShardLayout[]; offsets: number[]; total: number } {
  const shards = layout.buffers.map((b) => shardLayout(b.numel, ranks, layout.align));
  const offsets: number[] = [];
  let total = 0;
  for (const s of shards) {
    offsets.push(total);
    total += s.shardLen;
  }
  return { shards, offsets, total };
}

/** Elements of one rank's concatenated shard of `layout` (the length of every array it saves). */
export function rankShardElements(layout: SnapshotLayout, ranks: number): number {
  return rankLayout(layout, ranks).total;
}

export function snapshotsDir(runDir: string): string {
  return join(runDir, "snapshots");
}

/**
 * Step 1 (every rank): this rank's arrays (and its own JSON state, when it has one) into the step's
 * temp folder, fsynced, with their checksums.
 */
export function writeRankShards(
  root: string,
  step: number,
  rank: number,
  ranks: number,
  layout: SnapshotLayout,
  arrays: Readonly<Record<string, Float32Array>> | ShardSource,
  rankState?: unknown,
): FileRecord[] {
  const { shards } = rankLayout(layout, ranks);
  const src = isSource(arrays) ? arrays : arraySource(layout, ranks, arrays);
  const tmp = join(root, tmpName(step));
  mkdirSync(tmp, { recursive: true });
  const records: FileRecord[] = [];
  for (const name of src.arrays) {
    if (!/^[A-Za-z0-9_-]+$/.test(name)) throw new SnapshotError(`array name "${name}": use letters, digits, _ and -`);
    // One buffer's shard at a time: written at its offset, hashed as it goes.
    const hash = createHash("sha256");
    let bytes = 0;
    const fd = openSync(join(tmp, arrayFile(rank, name)), "w");
    try {
      layout.buffers.forEach((buf, b) => {
        const a = src.shard(name, b);
        const want = (shards[b] as ShardLayout).shardLen;
        if (a.length !== want)
          throw new SnapshotError(`array "${name}" of rank ${rank}: buffer ${buf.name} has ${a.length} elements, its shard has ${want}`);
        const u8 = bytesOf(a);
        let off = 0;
        while (off < u8.length) off += writeSync(fd, u8, off, Math.min(u8.length - off, 1 << 30));
        hash.update(u8);
        bytes += u8.length;
      });
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    records.push({ name: arrayFile(rank, name), bytes, sha256: hash.digest("hex") });
  }
  if (rankState !== undefined) {
    const bytes = new TextEncoder().encode(JSON.stringify(rankState));
    writeDurable(join(tmp, stateFile(rank)), bytes);
    records.push({ name: stateFile(rank), bytes: bytes.length, sha256: sha256(bytes) });
  }
  writeDurable(join(tmp, listFile(rank)), new TextEncoder().encode(JSON.stringify(records)));
  return records;
}

export interface FinalizeOptions {
  mesh: Mesh;
  layout: SnapshotLayout;
  arrays: string[];
  state: unknown;
  /** Complete snapshots to keep (the new one included). */
  keep: number;
}

/** Step 3 (rank 0, after every rank's writeRankShards): manifest last, rename into place, prune. */
export function finalizeSnapshot(root: string, step: number, o: FinalizeOptions): SnapshotInfo {
  const ranks = o.mesh.cp * o.mesh.dp;
  const tmp = join(root, tmpName(step));
  const files: FileRecord[] = [];
  for (let r = 0; r < ranks; r++) {
    const list = join(tmp, listFile(r));
    if (!existsSync(list))
      throw new SnapshotError(`snapshot ${step}: rank ${r} wrote no ${listFile(r)} (did every rank finish writeRankShards?)`);
    const recs = JSON.parse(readFileSync(list, "utf8")) as FileRecord[];
    const names = recs
      .map((f) => f.name)
      .filter((n) => n !== stateFile(r))
      .sort();
    const expected = o.arrays.map((a) => arrayFile(r, a)).sort();
    if (JSON.stringify(names) !== JSON.stringify(expected))
      throw new SnapshotError(`snapshot ${step}: rank ${r} wrote ${names.join(", ")}, expected ${expected.join(", ")}`);
    files.push(...recs, { name: listFile(r), bytes: statSync(list).size, sha256: sha256(readFileSync(list)) });
  }
  // Anything else in the folder (a crashed earlier attempt with more ranks) goes before the manifest.
  const listed = new Set(files.map((f) => f.name));
  for (const f of readdirSync(tmp)) if (!listed.has(f)) rmSync(join(tmp, f), { recursive: true, force: true });
  const manifest: Manifest = {
    format: SNAPSHOT_FORMAT,
    step,
    mesh: o.mesh,
    ranks,
    layout: o.layout,
    arrays: o.arrays,
    state: o.state,
    files,
    written: new Date().toISOString(),
  };
  writeDurable(join(tmp, "manifest.json"), new TextEncoder().encode(JSON.stringify(manifest, null, 1)));
  fsyncPath(tmp);
  const dir = join(root, stepName(step));
  if (existsSync(dir)) rmSync(dir, { recursive: true, force: true }); // an older run's snapshot of the same step
  renameSync(tmp, dir);
  fsyncPath(root);
  prune(root, step, o.keep);
  return { dir, manifest };
}

/**
 * After writing the snapshot of `step`: deletes snapshots of later steps (left by a run that this one,
 * resumed from an earlier snapshot, has replaced), all but the newest `keep` of the rest, and the temp
 * folders of interrupted writes.
 */
export function prune(root: string, step: number, keep: number): void {
  const entries = readdirSync(root);
  const steps = entries.filter((e) => /^step-\d{8}$/.test(e)).sort();
  const later = steps.filter((e) => Number(e.slice(5)) > step);
  const upTo = steps.filter((e) => Number(e.slice(5)) <= step);
  for (const old of [...later, ...upTo.slice(0, Math.max(0, upTo.length - keep))])
    rmSync(join(root, old), { recursive: true, force: true });
  for (const t of entries.filter((e) => e.startsWith(".tmp-step-"))) rmSync(join(root, t), { recursive: true, force: true });
}

/** Why a snapshot folder is not usable, or null when it is (checksums checked when `verify`). */
export function checkSnapshot(dir: string, verify: boolean): { manifest: Manifest } | { problem: string } {
  const mpath = join(dir, "manifest.json");
  if (!existsSync(mpath)) return { problem: "no manifest.json (incomplete)" };
  let m: Manifest;
  try {
    m = JSON.parse(readFileSync(mpath, "utf8"));
  } catch (e) {
    return { problem: `manifest.json is not JSON (${(e as Error).message})` };
  }
  if (m.format !== SNAPSHOT_FORMAT) return { problem: `format ${m.format}, this trainer reads ${SNAPSHOT_FORMAT}` };
  for (const f of m.files) {
    const p = join(dir, f.name);
    if (!existsSync(p)) return { problem: `${f.name} is missing` };
    const size = statSync(p).size;
    if (size !== f.bytes) return { problem: `${f.name} has ${size} bytes, the manifest says ${f.bytes}` };
    if (verify && sha256File(p) !== f.sha256) return { problem: `${f.name} does not match its SHA-256` };
  }
  return { manifest: m };
}

/**
 * The newest usable snapshot under `root` (null when there is none), and the newer ones it skipped with
 * the reason. `verify` re-hashes every file (the default); false checks sizes only.
 */
export function latestComplete(root: string, verify = true): { found: SnapshotInfo | null; skipped: { dir: string; problem: string }[] } {
  const skipped: { dir: string; problem: string }[] = [];
  if (!existsSync(root)) return { found: null, skipped };
  const steps = readdirSync(root)
    .filter((e) => /^step-\d{8}$/.test(e))
    .sort()
    .reverse();
  for (const s of steps) {
    const dir = join(root, s);
    const c = checkSnapshot(dir, verify);
    if ("manifest" in c) return { found: { dir, manifest: c.manifest }, skipped };
    skipped.push({ dir, problem: c.problem });
  }
  return { found: null, skipped };
}

/** Refuses a snapshot of another model: the layouts must be the same buffers in the same order. */
export function checkLayout(m: Manifest, layout: SnapshotLayout): void {
  const a = m.layout.buffers;
  const b = layout.buffers;
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (!x || !y || x.name !== y.name || x.numel !== y.numel) {
      const show = (v?: { name: string; numel: number }) => (v ? `${v.name} (${v.numel} elements)` : "nothing");
      throw new SnapshotError(
        `snapshot step ${m.step} is of another model: its buffer ${i} is ${show(x)}, this model's is ${show(y)} (same --model needed)`,
      );
    }
  }
}

/**
 * Rank `rank` of `ranks` reads its shard of every array, one buffer at a time (shard() reads only the
 * byte ranges of that buffer this rank owns, into one reused host array): the files as written when
 * the snapshot has as many ranks, re-cut from the old ranks' files otherwise.
 */
export function readRankShards(info: SnapshotInfo, rank: number, ranks: number, layout: SnapshotLayout): ShardSource {
  const m = info.manifest;
  checkLayout(m, layout);
  const now = rankLayout(layout, ranks);
  const old = rankLayout(m.layout, m.ranks);
  const host = new Float32Array(Math.max(0, ...now.shards.map((s) => s.shardLen)));
  return {
    arrays: m.arrays,
    shard: (name, b) => {
      if (!m.arrays.includes(name))
        throw new SnapshotError(`snapshot step ${m.step} has no array "${name}" (it has ${m.arrays.join(", ")})`);
      const mine = ownedRange(now.shards[b] as ShardLayout, rank);
      const was = old.shards[b] as ShardLayout;
      const a = host.subarray(0, (now.shards[b] as ShardLayout).shardLen);
      a.fill(0);
      const fds = new Map<number, number>();
      try {
        // Old ranks owning pieces of [mine.start, mine.start + mine.len).
        for (let i = mine.start; i < mine.start + mine.len; ) {
          const r = Math.floor(i / was.shardLen);
          const pieceEnd = Math.min(mine.start + mine.len, (r + 1) * was.shardLen);
          const len = pieceEnd - i;
          const fileOff = ((old.offsets[b] as number) + (i - r * was.shardLen)) * 4;
          const dst = new Uint8Array(a.buffer, a.byteOffset + (i - mine.start) * 4, len * 4);
          let fd = fds.get(r);
          if (fd === undefined) {
            fd = openSync(join(info.dir, arrayFile(r, name)), "r");
            fds.set(r, fd);
          }
          let got = 0;
          while (got < dst.length) {
            const n = readSync(fd, dst, got, dst.length - got, fileOff + got);
            if (n === 0) throw new SnapshotError(`${arrayFile(r, name)} in ${info.dir} ends early`);
            got += n;
          }
          i = pieceEnd;
        }
      } finally {
        for (const fd of fds.values()) closeSync(fd);
      }
      return a;
    },
  };
}

/** readRankShards concatenated into whole arrays (small states and tests; a large model's state does not fit one array). */
export function loadRankShards(info: SnapshotInfo, rank: number, ranks: number, layout: SnapshotLayout): Record<string, Float32Array> {
  return concatShards(layout, ranks, readRankShards(info, rank, ranks, layout));
}

/** Rank `rank`'s own JSON state (undefined when it wrote none); it belongs to one rank of one mesh, so another rank count is refused. */
export function loadRankState(info: SnapshotInfo, rank: number, ranks: number): unknown {
  const m = info.manifest;
  if (!m.files.some((f) => f.name === stateFile(rank))) return undefined;
  if (m.ranks !== ranks)
    throw new SnapshotError(
      `snapshot step ${m.step} holds per-rank state of ${m.ranks} ranks, which cannot be split over ${ranks}: resume on ${m.ranks} ranks`,
    );
  return JSON.parse(readFileSync(join(info.dir, stateFile(rank)), "utf8"));
}

/** A one-line account of how a snapshot's mesh relates to this run's (printed at resume). */
export function describeMeshChange(m: Manifest, mesh: Mesh): string {
  const was = `cp ${m.mesh.cp} x dp ${m.mesh.dp}`;
  const now = `cp ${mesh.cp} x dp ${mesh.dp}`;
  if (was === now) return `same mesh (${now})`;
  return m.ranks === mesh.cp * mesh.dp
    ? `mesh ${was} -> ${now}: same ${m.ranks} shards, read as written`
    : `mesh ${was} -> ${now}: ${m.ranks} shards re-cut into ${mesh.cp * mesh.dp}`;
}
