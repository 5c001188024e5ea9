import { describe, expect, test } from "bun:test";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { decodeBf16, encodeBf16 } from "@lightseq/tensor";
import { encodeF16 } from "./f16.ts";
import { tempDirs } from "./fixtures/temp-dirs.ts";
import { INDEX_FILE, SafetensorsCheckpoint, SafetensorsError, SafetensorsFile } from "./safetensors.ts";
import { planShards, SafetensorsWriter, type TensorSpec, writeSafetensors, writeShardedSafetensors } from "./safetensors-write.ts";

const { root, freshDir } = tempDirs("safetensors-test-");

function randn(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 8;
  }
  return out;
}

/** A file from a header (object or raw text) and a data buffer, with an optional lying length prefix. */
function rawFile(path: string, header: unknown, data: Uint8Array, lengthOverride?: bigint): void {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.byteLength), true);
  const all = new Uint8Array(8 + json.byteLength + data.byteLength);
  all.set(prefix);
  all.set(json, 8);
  all.set(data, 8 + json.byteLength);
  writeFileSync(path, all);
}

describe("round trip", () => {
  const a = randn(6 * 5, 1);
  const b = randn(7, 2);
  const c = randn(3 * 4 * 2, 3);
  const ids = new Int32Array([0, -1, 2 ** 31 - 1, 42]);

  test("every dtype, an empty tensor and metadata; header padded to 8 bytes", () => {
    const path = join(freshDir(), "t.safetensors");
    writeSafetensors(
      path,
      [
        { name: "a", dtype: "F32", shape: [6, 5], data: a },
        { name: "b", dtype: "BF16", shape: [7], data: b },
        { name: "c", dtype: "F16", shape: [3, 4, 2], data: c },
        { name: "ids", dtype: "I32", shape: [4], data: ids },
        { name: "empty", dtype: "F32", shape: [0, 3], data: new Float32Array(0) },
      ],
      { format: "pt" },
    );
    const f = SafetensorsFile.open(path);
    try {
      expect(f.dataStart % 8).toBe(0);
      expect(f.metadata).toEqual({ format: "pt" });
      expect(f.names().sort()).toEqual(["a", "b", "c", "empty", "ids"]);
      expect(f.info("c")).toMatchObject({ dtype: "F16", shape: [3, 4, 2], numel: 24, byteLength: 48 });
      expect(f.readF32("a")).toEqual(a);
      // bf16/f16 store the rounded values; reading widens them exactly
      expect(f.readBf16("b")).toEqual(encodeBf16(b));
      expect(f.readF32("b")).toEqual(decodeBf16(encodeBf16(b)));
      expect(new Uint16Array(f.readBytes("c").buffer)).toEqual(encodeF16(c));
      expect(f.readF32("c")).toEqual(new Float32Array(c.map((v) => Math.fround(v)).map((v) => fromF16(v))));
      expect(f.readBf16("a")).toEqual(encodeBf16(a)); // F32 -> bf16 rounds to nearest even
      expect(f.readBf16("c")).toEqual(encodeBf16(f.readF32("c")));
      expect(f.readI32("ids")).toEqual(ids);
      expect(f.readF32("empty").length).toBe(0);
      // into a caller's buffer (a view at an offset)
      const big: Float32Array = new Float32Array(40);
      const view = big.subarray(5, 35);
      expect(f.readF32("a", view)).toBe(view);
      expect(view).toEqual(a);
      expect(() => f.readF32("a", new Float32Array(29))).toThrow(/tensor "a": output has 29 elements, the tensor 30/);
      expect(() => f.readF32("ids")).toThrow(/tensor "ids": is I32; read it with readI32/);
      expect(() => f.readF32("nope")).toThrow(/t\.safetensors: tensor "nope": missing/);
    } finally {
      f.close();
    }
    expect(() => f.readF32("a")).toThrow(/read after close/);
    expect(existsSync(`${path}.partial`)).toBe(false);
  });

  test("a tensor larger than one conversion chunk", () => {
    const n = (1 << 22) + 3;
    const x = randn(n, 4);
    const path = join(freshDir(), "big.safetensors");
    writeSafetensors(path, [{ name: "x", dtype: "BF16", shape: [n], data: x }]);
    const f = SafetensorsFile.open(path);
    const got = f.readF32("x");
    f.close();
    const want = decodeBf16(encodeBf16(x));
    expect(got[0]).toBe(want[0]!);
    expect(got[n - 1]).toBe(want[n - 1]!);
    expect(Buffer.compare(Buffer.from(got.buffer), Buffer.from(want.buffer))).toBe(0);
  });

  test("a tensor beyond 4 GiB in the file is read at its 64-bit offset (sparse file, nothing written in between)", () => {
    const path = join(freshDir(), "far.safetensors");
    const padBytes = 4.5 * 2 ** 30; // an I32 tensor of 4.5 GiB before the one we read
    const header = {
      pad: { dtype: "I32", shape: [padBytes / 4], data_offsets: [0, padBytes] },
      far: { dtype: "F32", shape: [4], data_offsets: [padBytes, padBytes + 16] },
    };
    const json = new TextEncoder().encode(JSON.stringify(header));
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(json.byteLength), true);
    const fd = openSync(path, "w");
    try {
      writeSync(fd, prefix, 0, 8, 0);
      writeSync(fd, json, 0, json.byteLength, 8);
      const far = new Float32Array([1.5, -2, 3.25, 1e-3]);
      writeSync(fd, new Uint8Array(far.buffer), 0, 16, 8 + json.byteLength + padBytes);
    } finally {
      closeSync(fd);
    }
    const f = SafetensorsFile.open(path);
    try {
      expect(f.info("far").fileOffset).toBeGreaterThan(2 ** 32);
      expect([...f.readF32("far")]).toEqual([1.5, -2, 3.25, Math.fround(1e-3)]);
    } finally {
      f.close();
    }
    rmSync(path);
  });

  test("sharded: planned by bytes, index written, read back through the checkpoint", async () => {
    const dir = freshDir();
    const specs: TensorSpec[] = [
      { name: "w0", dtype: "F32", shape: [10, 10] }, // 400 B
      { name: "w1", dtype: "F32", shape: [10, 10] }, // 400 B
      { name: "w2", dtype: "BF16", shape: [600] }, // 1200 B > shardBytes: a shard of its own
      { name: "w3", dtype: "F32", shape: [5] }, // 20 B
    ];
    expect(planShards(specs, 1000).map((s) => s.map((t) => t.name))).toEqual([["w0", "w1"], ["w2"], ["w3"]]);
    const data = new Map(
      specs.map((s, i) => [
        s.name,
        randn(
          s.shape.reduce((p, d) => p * d, 1),
          10 + i,
        ),
      ]),
    );
    const asked: string[] = [];
    const files = await writeShardedSafetensors(
      dir,
      specs,
      (s) => {
        asked.push(s.name);
        return data.get(s.name)!;
      },
      { shardBytes: 1000 },
    );
    expect(asked).toEqual(["w0", "w1", "w2", "w3"]);
    expect(readdirSync(dir).sort()).toEqual([
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      INDEX_FILE,
    ]);
    expect(files.length).toBe(4);
    const index = JSON.parse(readFileSync(join(dir, INDEX_FILE), "utf8"));
    expect(index.metadata.total_size).toBe(400 + 400 + 1200 + 20);
    expect(index.weight_map.w2).toBe("model-00002-of-00003.safetensors");
    const ck = SafetensorsCheckpoint.open(dir);
    try {
      expect(ck.names().sort()).toEqual(["w0", "w1", "w2", "w3"]);
      expect(ck.readF32("w1")).toEqual(data.get("w1")!);
      expect(ck.readBf16("w2")).toEqual(encodeBf16(data.get("w2")!));
      expect(ck.info("w3").file).toBe(join(dir, "model-00003-of-00003.safetensors"));
      expect(() => ck.info("w9")).toThrow(/model\.safetensors\.index\.json: tensor "w9": missing from the checkpoint/);
    } finally {
      ck.close();
    }
    // saved again into one shard: model.safetensors, and the stale index is gone
    await writeShardedSafetensors(dir, specs, (s) => data.get(s.name)!, { shardBytes: 1 << 20 });
    expect(existsSync(join(dir, INDEX_FILE))).toBe(false);
    const one = SafetensorsCheckpoint.open(dir);
    expect(one.readF32("w0")).toEqual(data.get("w0")!);
    one.close();
  });
});

// Reference f16 rounding through an independent path: Math.fround is exact for f16 values, so the
// value read back must be the f16 nearest to the input; checked here by the encoder round trip.
function fromF16(v: number): number {
  const bits = encodeF16([v])[0]!;
  const e = (bits >>> 10) & 0x1f;
  const m = bits & 0x3ff;
  const s = bits & 0x8000 ? -1 : 1;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

describe("bad files: errors name the file and the tensor", () => {
  const ok = { x: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] } };
  const data16 = new Uint8Array(16);
  const cases: [string, (path: string) => void, RegExp][] = [
    [
      "shorter than the length prefix",
      (p) => writeFileSync(p, new Uint8Array(5)),
      /truncated: 5 bytes, but a safetensors file starts with an 8-byte header length/,
    ],
    ["header length beyond the file", (p) => rawFile(p, ok, data16, 10_000n), /header length 10000 lies beyond the file/],
    ["header length of 2^64 - 1", (p) => rawFile(p, ok, data16, 2n ** 64n - 1n), /header length 18446744073709551615 lies beyond the file/],
    ["header JSON invalid", (p) => rawFile(p, '{"x": {"dtype": "F32",', data16), /header JSON invalid/],
    ["header not an object", (p) => rawFile(p, [1, 2], data16), /header JSON must be an object/],
    [
      "unknown dtype",
      (p) => rawFile(p, { x: { ...ok.x, dtype: "F8_E4M3" } }, data16),
      /tensor "x": unsupported dtype "F8_E4M3" \(supported: BF16, F16, F32, I32\)/,
    ],
    [
      "end before begin",
      (p) => rawFile(p, { x: { ...ok.x, data_offsets: [16, 0] } }, data16),
      /tensor "x": data_offsets \[16, 0\]: end before begin/,
    ],
    [
      "offsets beyond the buffer",
      (p) => rawFile(p, { x: { ...ok.x, data_offsets: [0, 16] } }, data16.subarray(0, 12)),
      /tensor "x": data_offsets \[0, 16\] lie beyond the data buffer \(12 bytes\)/,
    ],
    [
      "size disagreeing with the shape",
      (p) => rawFile(p, { x: { ...ok.x, shape: [2, 3] } }, data16),
      /tensor "x": data_offsets \[0, 16\] hold 16 bytes, but shape \[2, 3\] of F32 needs 24/,
    ],
    [
      "overlapping tensors",
      (p) =>
        rawFile(
          p,
          {
            a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
            e: { dtype: "F32", shape: [0], data_offsets: [6, 6] },
            b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
          },
          data16,
        ),
      /tensor "b": data_offsets \[8, 16\] overlap tensor "a" \[0, 12\]/,
    ],
    [
      "negative shape",
      (p) => rawFile(p, { x: { ...ok.x, shape: [-2, -2] } }, data16),
      /tensor "x": shape must be a list of non-negative integers/,
    ],
    ["offsets missing", (p) => rawFile(p, { x: { dtype: "F32", shape: [4] } }, data16), /tensor "x": data_offsets must be \[begin, end\]/],
    ["unknown entry field", (p) => rawFile(p, { x: { ...ok.x, strides: [2, 1] } }, data16), /tensor "x": unknown header field "strides"/],
    ["metadata not strings", (p) => rawFile(p, { __metadata__: { step: 3 }, ...ok }, data16), /__metadata__ must map strings to strings/],
  ];
  for (const [what, make, re] of cases) {
    test(what, () => {
      const path = join(freshDir(), "bad.safetensors");
      make(path);
      let err: unknown;
      try {
        SafetensorsFile.open(path).close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SafetensorsError);
      expect((err as Error).message).toStartWith(path);
      expect((err as Error).message).toMatch(re);
    });
  }

  test("header not UTF-8", () => {
    const path = join(freshDir(), "bad.safetensors");
    const bytes = new Uint8Array([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0xff, 0xfe, 0x7d, 0x20, 0x20, 0x20, 0x20]);
    writeFileSync(path, bytes);
    expect(() => SafetensorsFile.open(path)).toThrow(/header JSON invalid/);
  });

  test("a file truncated after it was opened: the read stops at the end and says so", () => {
    const path = join(freshDir(), "t.safetensors");
    writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [64], data: randn(64, 5) }]);
    const f = SafetensorsFile.open(path);
    truncateSync(path, f.dataStart + 100);
    expect(() => f.readF32("w")).toThrow(/tensor "w": truncated: the file ended at byte/);
    f.close();
  });

  test("a missing file", () => {
    expect(() => SafetensorsFile.open(join(root, "none.safetensors"))).toThrow(/none\.safetensors: no such file/);
  });
});

describe("bad checkpoints", () => {
  // shard 1 holds a and b, shard 2 holds c
  async function sharded(): Promise<string> {
    const dir = freshDir();
    const specs: TensorSpec[] = [
      { name: "a", dtype: "F32", shape: [4] },
      { name: "b", dtype: "F32", shape: [4] },
      { name: "c", dtype: "F32", shape: [4] },
    ];
    await writeShardedSafetensors(dir, specs, () => new Float32Array(4), { shardBytes: 32 });
    return dir;
  }
  const editIndex = (dir: string, edit: (ix: { metadata: { total_size: number }; weight_map: Record<string, string> }) => void) => {
    const p = join(dir, INDEX_FILE);
    const ix = JSON.parse(readFileSync(p, "utf8"));
    edit(ix);
    writeFileSync(p, JSON.stringify(ix));
  };

  test("no checkpoint in the folder", () => {
    expect(() => SafetensorsCheckpoint.open(freshDir())).toThrow(/no model\.safetensors\.index\.json and no model\.safetensors/);
  });
  test("index names a shard that does not exist", async () => {
    const dir = await sharded();
    editIndex(dir, (ix) => (ix.weight_map.c = "model-00009-of-00009.safetensors"));
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(
      /index\.json: tensor "c": its shard model-00009-of-00009\.safetensors does not exist/,
    );
  });
  test("index places a tensor in a shard that lacks it", async () => {
    const dir = await sharded();
    editIndex(dir, (ix) => {
      ix.weight_map.d = "model-00001-of-00002.safetensors";
    });
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(
      /model-00001-of-00002\.safetensors: tensor "d": missing \(model\.safetensors\.index\.json places it in this shard\)/,
    );
  });
  test("a shard holds a tensor the index does not map to it", async () => {
    const dir = await sharded();
    editIndex(dir, (ix) => {
      delete ix.weight_map.b;
    });
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(
      /model-00001-of-00002\.safetensors: tensor "b": in this shard but model\.safetensors\.index\.json maps it to null/,
    );
  });
  test("total_size larger than the shards hold", async () => {
    const dir = await sharded();
    editIndex(dir, (ix) => {
      ix.metadata.total_size = 1000;
    });
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(/metadata\.total_size 1000 exceeds the 48 tensor bytes/);
  });
  test("index JSON invalid", async () => {
    const dir = await sharded();
    writeFileSync(join(dir, INDEX_FILE), "{ weight_map");
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(/index\.json: index JSON invalid/);
  });
});

describe("writer checks", () => {
  const specs: TensorSpec[] = [
    { name: "a", dtype: "F32", shape: [2] },
    { name: "b", dtype: "BF16", shape: [3] },
  ];
  test("out of order, wrong size, wrong array type, unfinished", () => {
    const dir = freshDir();
    const w = new SafetensorsWriter(join(dir, "w.safetensors"), specs);
    expect(() => w.write("b", new Float32Array(3))).toThrow(/w\.safetensors: tensor "b": written out of order: the header places "a" next/);
    expect(() => w.write("a", new Float32Array(3))).toThrow(/tensor "a": data has 3 elements, shape \[2\] has 2/);
    w.write("a", new Float32Array(2));
    expect(() => w.write("b", new Int32Array(3))).toThrow(/tensor "b": an Int32Array is data for I32, but the tensor is BF16/);
    expect(() => w.finish()).toThrow(/tensor "b": never written \(1 of 2 tensors missing\)/);
    expect(readdirSync(dir)).toEqual([]); // the partial file is removed, nothing is left under the name
  });
  test("duplicate names and bad shard size", () => {
    expect(() => new SafetensorsWriter(join(freshDir(), "w.safetensors"), [specs[0]!, specs[0]!])).toThrow(/tensor "a": listed twice/);
    expect(() => planShards(specs, 0)).toThrow(/shardBytes must be a positive integer, got 0/);
  });
});
