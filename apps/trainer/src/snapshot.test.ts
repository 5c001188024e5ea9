import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ownedRange, shardLayout } from "./optim/shard.ts";
import {
  describeMeshChange,
  finalizeSnapshot,
  latestComplete,
  loadRankShards,
  loadRankState,
  type Mesh,
  rankShardElements,
  type SnapshotLayout,
  writeRankShards,
} from "./snapshot.ts";

const tmp = () => mkdtempSync(join(tmpdir(), "trainer-snap-"));
const layout: SnapshotLayout = {
  buffers: [
    { name: "layer0", numel: 37 },
    { name: "layer1", numel: 100 },
    { name: "head", numel: 5 },
  ],
  align: 8,
};
const total = layout.buffers.reduce((a, b) => a + b.numel, 0);

/** The full (unsharded) value of element i of buffer b for an array: distinct everywhere. */
const full = (arr: string, b: number, i: number) => (arr === "master" ? 1 : -1) * (1000 * b + i + 0.5);

/** Rank r's concatenated shards of `layout` over `ranks` (padding zero). */
function shardsOf(arr: string, rank: number, ranks: number): Float32Array {
  const a = new Float32Array(rankShardElements(layout, ranks));
  let off = 0;
  layout.buffers.forEach((buf, b) => {
    const l = shardLayout(buf.numel, ranks, layout.align);
    const { start, len } = ownedRange(l, rank);
    for (let i = 0; i < len; i++) a[off + i] = full(arr, b, start + i);
    off += l.shardLen;
  });
  return a;
}

function write(root: string, step: number, mesh: Mesh, keep = 3, state: unknown = { step }) {
  const ranks = mesh.cp * mesh.dp;
  for (let r = 0; r < ranks; r++)
    writeRankShards(root, step, r, ranks, layout, { master: shardsOf("master", r, ranks), m: shardsOf("m", r, ranks) });
  return finalizeSnapshot(root, step, { mesh, layout, arrays: ["master", "m"], state, keep });
}

describe("snapshots", () => {
  test("written, found, read back exactly; state and mesh in the manifest; the last N kept", () => {
    const root = tmp();
    for (const step of [10, 20, 30]) write(root, step, { cp: 2, dp: 1 }, 2, { step, order: { epoch: 0, next: step } });
    expect(readdirSync(root).sort()).toEqual(["step-00000020", "step-00000030"]);
    const { found, skipped } = latestComplete(root);
    expect(skipped).toEqual([]);
    expect(found!.manifest.step).toBe(30);
    expect(found!.manifest.state).toEqual({ step: 30, order: { epoch: 0, next: 30 } });
    expect(found!.manifest.mesh).toEqual({ cp: 2, dp: 1 });
    for (const r of [0, 1]) {
      const got = loadRankShards(found!, r, 2, layout);
      expect(got.master).toEqual(shardsOf("master", r, 2));
      expect(got.m).toEqual(shardsOf("m", r, 2));
    }
    expect(readdirSync(found!.dir).sort()).toEqual([
      "manifest.json",
      "rank00000.files.json",
      "rank00000.m.f32",
      "rank00000.master.f32",
      "rank00001.files.json",
      "rank00001.m.f32",
      "rank00001.master.f32",
    ]);
  });

  test("a run resumed from an older snapshot replaces the later ones it did not reach", () => {
    const root = tmp();
    for (const step of [10, 20, 30]) write(root, step, { cp: 1, dp: 1 }, 3);
    write(root, 15, { cp: 1, dp: 1 }, 1); // resumed from 10 (say 20 and 30 were damaged), keep 1
    expect(readdirSync(root)).toEqual(["step-00000015"]);
  });

  test("another mesh re-cuts the shards: 2 ranks -> 3, 1 and 4 give each rank exactly its new shard", () => {
    const root = tmp();
    const info = write(root, 5, { cp: 2, dp: 1 });
    for (const ranks of [1, 3, 4]) {
      for (let r = 0; r < ranks; r++) {
        const got = loadRankShards(info, r, ranks, layout);
        expect(got.master).toEqual(shardsOf("master", r, ranks));
        expect(got.m).toEqual(shardsOf("m", r, ranks));
      }
    }
    expect(describeMeshChange(info.manifest, { cp: 4, dp: 1 })).toBe("mesh cp 2 x dp 1 -> cp 4 x dp 1: 2 shards re-cut into 4");
    expect(describeMeshChange(info.manifest, { cp: 1, dp: 2 })).toBe("mesh cp 2 x dp 1 -> cp 1 x dp 2: same 2 shards, read as written");
    expect(shardsOf("master", 0, 1).slice(0, 37)).toEqual(Float32Array.from({ length: 37 }, (_, i) => full("master", 0, i)));
    expect(total).toBe(142);
  });

  test("another model's snapshot is refused, naming the buffer", () => {
    const info = write(tmp(), 1, { cp: 1, dp: 1 });
    const other = { ...layout, buffers: [layout.buffers[0]!, { name: "layer1", numel: 99 }, layout.buffers[2]!] };
    expect(() => loadRankShards(info, 0, 1, other)).toThrow(
      "snapshot step 1 is of another model: its buffer 1 is layer1 (100 elements), this model's is layer1 (99 elements) (same --model needed)",
    );
  });

  test("a rank's own JSON state comes back to that rank, and only on as many ranks", () => {
    const root = tmp();
    for (let r = 0; r < 2; r++)
      writeRankShards(root, 9, r, 2, layout, { master: shardsOf("master", r, 2), m: shardsOf("m", r, 2) }, { rng: { offset: 100 + r } });
    const info = finalizeSnapshot(root, 9, { mesh: { cp: 2, dp: 1 }, layout, arrays: ["master", "m"], state: { step: 9 }, keep: 1 });
    expect(loadRankState(info, 1, 2)).toEqual({ rng: { offset: 101 } });
    expect(() => loadRankState(info, 0, 4)).toThrow(
      "snapshot step 9 holds per-rank state of 2 ranks, which cannot be split over 4: resume on 2 ranks",
    );
    expect(loadRankState(write(tmp(), 1, { cp: 1, dp: 1 }), 0, 3)).toBeUndefined();
  });

  test("damaged snapshots are skipped with the reason, for the newest intact one", () => {
    const root = tmp();
    for (const step of [1, 2, 3, 4]) write(root, step, { cp: 2, dp: 1 }, 4);
    const flip = join(root, "step-00000004", "rank00001.m.f32");
    const bytes = readFileSync(flip);
    bytes[7] = (bytes[7] as number) ^ 1;
    writeFileSync(flip, bytes);
    truncateSync(join(root, "step-00000003", "rank00000.master.f32"), 12);
    writeFileSync(join(root, "step-00000002", "manifest.json"), "{ torn");
    const { found, skipped } = latestComplete(root);
    expect(found!.manifest.step).toBe(1);
    expect(skipped.map((s) => s.problem)).toEqual([
      "rank00001.m.f32 does not match its SHA-256",
      "rank00000.master.f32 has 12 bytes, the manifest says 352",
      expect.stringMatching(/^manifest.json is not JSON/),
    ]);
    expect(latestComplete(root, false).found!.manifest.step).toBe(4); // sizes only: the flipped bit passes
  });

  test("finalize refuses a rank that did not write, and leaves no snapshot", () => {
    const root = tmp();
    writeRankShards(root, 7, 0, 2, layout, { master: shardsOf("master", 0, 2), m: shardsOf("m", 0, 2) });
    expect(() => finalizeSnapshot(root, 7, { mesh: { cp: 2, dp: 1 }, layout, arrays: ["master", "m"], state: {}, keep: 2 })).toThrow(
      /rank 1 wrote no rank00001.files.json/,
    );
    expect(latestComplete(root).found).toBeNull();
    expect(() => writeRankShards(root, 7, 0, 2, layout, { master: new Float32Array(3) })).toThrow(
      /has 3 elements, its shard of the layout has 88/,
    );
  });

  test("a writer killed with SIGKILL at any moment leaves the previous snapshot usable", async () => {
    for (const delayMs of [0, 40, 120]) {
      const root = tmp();
      const child = Bun.spawn(["bun", join(import.meta.dir, "fixtures", "snapshot-writer.ts"), root, String(1 << 20)], { stdout: "pipe" });
      const reader = child.stdout.getReader();
      let seen = "";
      while (!seen.includes("done 1")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`writer exited early: ${seen}`);
        seen += new TextDecoder().decode(value);
      }
      await Bun.sleep(delayMs); // somewhere in the writes of the next snapshots
      child.kill("SIGKILL");
      await child.exited;
      const { found, skipped } = latestComplete(root);
      expect(skipped).toEqual([]);
      expect(found).not.toBeNull();
      const step = found!.manifest.step;
      expect(step).toBeGreaterThanOrEqual(1);
      const l = found!.manifest.layout;
      const got = loadRankShards(found!, 1, 2, l);
      expect(got.master![0]).toBe(step * 10 + 1);
      expect(got.m![0]).toBe(-step);
      expect(existsSync(join(root, `step-${String(step + 1).padStart(8, "0")}`))).toBe(false);
    }
  }, 30_000);
});
