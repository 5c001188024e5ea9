// The copy-engine transport's settings (the transport itself needs two GPUs: nccl.test.ts runs the
// conformance suite and the watchdog on it).
import { expect, test } from "bun:test";
import { copyEngineConfigFromEnv, DEFAULT_COPY_ENGINE_CONFIG, p2pTransportFromEnv } from "./copy-engine.ts";

test("LIGHTSEQ_P2P picks the send/recv transport; default nccl; anything else is an error naming the choices", () => {
  expect(p2pTransportFromEnv({})).toBe("nccl");
  expect(p2pTransportFromEnv({ LIGHTSEQ_P2P: "" })).toBe("nccl");
  expect(p2pTransportFromEnv({ LIGHTSEQ_P2P: "copy-engine" })).toBe("copy-engine");
  expect(p2pTransportFromEnv({ LIGHTSEQ_P2P: "nccl" })).toBe("nccl");
  expect(() => p2pTransportFromEnv({ LIGHTSEQ_P2P: "ce" })).toThrow(/LIGHTSEQ_P2P: expected one of nccl, copy-engine, got "ce"/);
});

test("chunking: defaults 16 MiB x 4 slots; sizes round to whole 4 KiB pages; bad values are errors", () => {
  expect(copyEngineConfigFromEnv({})).toEqual(DEFAULT_COPY_ENGINE_CONFIG);
  expect(DEFAULT_COPY_ENGINE_CONFIG).toEqual({ chunkBytes: 16 * 2 ** 20, slots: 4 });
  expect(copyEngineConfigFromEnv({ LIGHTSEQ_P2P_CHUNK_MIB: "1", LIGHTSEQ_P2P_SLOTS: "2" })).toEqual({ chunkBytes: 2 ** 20, slots: 2 });
  expect(copyEngineConfigFromEnv({ LIGHTSEQ_P2P_CHUNK_MIB: "0.001" }).chunkBytes).toBe(4096);
  expect(copyEngineConfigFromEnv({ LIGHTSEQ_P2P_CHUNK_MIB: "0.5" }).chunkBytes).toBe(2 ** 19);
  expect(() => copyEngineConfigFromEnv({ LIGHTSEQ_P2P_CHUNK_MIB: "-1" })).toThrow(
    /LIGHTSEQ_P2P_CHUNK_MIB: expected a number in \(0, 1024\], got "-1"/,
  );
  expect(() => copyEngineConfigFromEnv({ LIGHTSEQ_P2P_SLOTS: "1.5" })).toThrow(/LIGHTSEQ_P2P_SLOTS: expected an integer/);
  expect(() => copyEngineConfigFromEnv({ LIGHTSEQ_P2P_SLOTS: "many" })).toThrow(/LIGHTSEQ_P2P_SLOTS: expected a number/);
});
