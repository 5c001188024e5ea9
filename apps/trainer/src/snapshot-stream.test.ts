// Snapshots stream one buffer's shard at a time: the writer, the reader and the optimizer state never
// hold the whole rank's state in one array (a 1.1B model's master alone exceeds one JS typed array).
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AdamWHyper } from "./optim/adamw.ts";
import { ShardedAdamW } from "./optim/sharded.ts";
import { finalizeSnapshot, latestComplete, readRankShards, type ShardSource, writeRankShards } from "./snapshot.ts";

const H: AdamWHyper = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const specs = [0, 1, 2, 3].map((l) => ({ name: `layer${l}`, params: [{ name: "w", numel: 1000 + 37 * l }] }));

/** A source that hands out one buffer at a time: every call overwrites the one scratch array and poisons what it gave before. */
function oneAtATime(inner: ShardSource, maxLen: number): ShardSource & { calls: number } {
  const scratch = new Float32Array(maxLen);
  const src = {
    arrays: inner.arrays,
    calls: 0,
    shard(array: string, b: number): Float32Array {
      scratch.fill(Number.NaN);
      const a = inner.shard(array, b);
      src.calls++;
      const out = scratch.subarray(0, a.length);
      out.set(a);
      return out;
    },
  };
  return src;
}

function filled(rank: number, ranks: number): ShardedAdamW {
  const o = new ShardedAdamW(specs, rank, ranks, H);
  specs.forEach((s, b) => {
    const n = s.params[0]!.numel;
    o.initFromFull(
      s.name,
      Float32Array.from({ length: n }, (_, i) => b * 10_000 + i + 0.25),
    );
    const l = o.layoutOf(s.name);
    o.step(
      s.name,
      Float32Array.from({ length: l.shardLen }, (_, i) => Math.sin(i + b)),
      1,
      1e-2,
      1,
    );
  });
  return o;
}

test("write and restore pull one buffer at a time and round-trip exactly, re-cut over another rank count", () => {
  const root = mkdtempSync(join(tmpdir(), "trainer-snap-stream-"));
  const two = [filled(0, 2), filled(1, 2)];
  const layout = two[0]!.snapshotLayout();
  const maxLen = Math.max(...specs.map((s) => two[0]!.layoutOf(s.name).shardLen));
  for (const o of two) {
    const src = oneAtATime(o.snapshotArrays(), maxLen);
    writeRankShards(root, 5, o.rank, 2, layout, src);
    expect(src.calls).toBe(3 * specs.length);
  }
  finalizeSnapshot(root, 5, { mesh: { cp: 2, dp: 1 }, layout, arrays: ["master", "m", "v"], state: { step: 5 }, keep: 1 });
  const { found } = latestComplete(root); // re-hashes every file: the incremental SHA-256 equals the whole file's
  expect(found).not.toBeNull();
  // Same mesh: restore through a one-at-a-time source gives back every value.
  for (const o of two) {
    const back = new ShardedAdamW(specs, o.rank, 2, H);
    back.restore(oneAtATime(readRankShards(found!, o.rank, 2, layout), maxLen));
    for (const s of specs) expect(back.master(s.name)).toEqual(o.master(s.name));
    const a = o.snapshotArrays();
    const b = back.snapshotArrays();
    specs.forEach((_, i) => {
      for (const k of ["m", "v"]) expect(b.shard(k, i)).toEqual(a.shard(k, i));
    });
  }
  // One rank: the reader hands out views of one reused host array, never the rank's whole state.
  const one = readRankShards(found!, 0, 1, layout);
  const x = one.shard("master", 0);
  const y = one.shard("master", 3);
  expect(x.buffer).toBe(y.buffer);
  expect(x.buffer.byteLength).toBe(4 * Math.max(...specs.map((s) => new ShardedAdamW(specs, 0, 1, H).layoutOf(s.name).shardLen)));
  const whole = new ShardedAdamW(specs, 0, 1, H);
  whole.restore(one);
  specs.forEach((s) => {
    const n = s.params[0]!.numel;
    const half = two[0]!.layoutOf(s.name).shardLen;
    const want = new Float32Array(n);
    want.set(two[0]!.master(s.name).subarray(0, Math.min(half, n)));
    want.set(two[1]!.master(s.name).subarray(0, n - half), half);
    expect(whole.master(s.name).subarray(0, n)).toEqual(want);
  });
  expect(readFileSync(join(found!.dir, "manifest.json"), "utf8")).toContain('"arrays": [');
});

test("a shard of the wrong length is refused naming the buffer", () => {
  const root = mkdtempSync(join(tmpdir(), "trainer-snap-stream-"));
  const o = filled(0, 1);
  const bad: ShardSource = { arrays: ["master"], shard: (_k, b) => new Float32Array(b === 2 ? 3 : o.layoutOf(`layer${b}`).shardLen) };
  expect(() => writeRankShards(root, 1, 0, 1, o.snapshotLayout(), bad)).toThrow(/buffer layer2 has 3 elements/);
  const short: ShardSource = { arrays: ["master", "m"], shard: () => new Float32Array(0) };
  expect(() => new ShardedAdamW(specs, 0, 1, H).restore(short)).toThrow(/no "v"/);
});
