import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CUBLASLT,
  CUDART,
  CUDNN,
  deviceInfo,
  Event,
  kernelsPath,
  LibraryNotFoundError,
  LibraryOverrideError,
  locateLibrary,
  NCCL,
  probeGpus,
  runtimeVersion,
  Stream,
  skipWithoutGpu,
} from "./index.ts";

describe("library locator", () => {
  test("the environment override wins", () => {
    const dir = mkdtempSync(join(tmpdir(), "ls-loc-"));
    const fake = join(dir, "libnccl.so.2");
    writeFileSync(fake, "");
    const prev = process.env.LIGHTSEQ_NCCL_SO;
    process.env.LIGHTSEQ_NCCL_SO = fake;
    try {
      expect(locateLibrary(NCCL).path).toBe(fake);
    } finally {
      if (prev === undefined) delete process.env.LIGHTSEQ_NCCL_SO;
      else process.env.LIGHTSEQ_NCCL_SO = prev;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a missing library lists every place it looked", () => {
    const r = locateLibrary({ ...NCCL, sonames: ["libdoes-not-exist.so.9"], envVar: "LIGHTSEQ_NOPE_SO" });
    expect(r.path).toBeNull();
    const text = r.tried.join("\n");
    expect(text).toContain("$LIGHTSEQ_NOPE_SO (unset)");
    expect(text).toContain("/usr/local/cuda/lib64/{libdoes-not-exist.so.9}");
    expect(text).toContain("ldconfig -p (no libdoes-not-exist.so.9)");
    const err = new LibraryNotFoundError("x", r.tried, "hint");
    expect(err.message).toMatch(/x not found\. Looked in:\n {2}\$LIGHTSEQ_NOPE_SO/);
  });

  test("an override naming no file is an error naming it, never a fallback to another copy", () => {
    for (const spec of [CUDART, CUBLASLT, NCCL, CUDNN]) {
      const prev = process.env[spec.envVar];
      process.env[spec.envVar] = "/nonexistent/path";
      try {
        expect(() => locateLibrary(spec)).toThrow(new LibraryOverrideError(spec.envVar, "/nonexistent/path", spec.name));
        expect(() => locateLibrary(spec)).toThrow(new RegExp(`^${spec.envVar}=/nonexistent/path: no such file`));
      } finally {
        if (prev === undefined) delete process.env[spec.envVar];
        else process.env[spec.envVar] = prev;
      }
    }
    const prev = process.env.LIGHTSEQ_KERNELS_SO;
    process.env.LIGHTSEQ_KERNELS_SO = "/nonexistent/liblightseq.so";
    try {
      expect(() => kernelsPath()).toThrow(/^LIGHTSEQ_KERNELS_SO=\/nonexistent\/liblightseq\.so: no such file/);
    } finally {
      if (prev === undefined) delete process.env.LIGHTSEQ_KERNELS_SO;
      else process.env.LIGHTSEQ_KERNELS_SO = prev;
    }
  });
});

const noGpu = skipWithoutGpu();

test.skipIf(!noGpu)("without a GPU the probe says why", () => {
  const p = probeGpus();
  expect(p.count).toBe(0);
  expect(p.reason.length).toBeGreaterThan(10);
});

describe.skipIf(noGpu)("runtime on a GPU", () => {
  test("device properties and versions", () => {
    const info = deviceInfo(0);
    expect(info.name).toMatch(/NVIDIA/);
    expect(info.multiProcessors).toBeGreaterThan(0);
    expect(runtimeVersion()).toBeGreaterThanOrEqual(12000);
  });

  test("a high-priority stream is created and runs work", () => {
    const s = Stream.create(0, { priority: "high" });
    const e = Event.create(0);
    e.record(s);
    s.synchronize();
    expect(e.query()).toBe(true);
    e.dispose();
    s.dispose();
  });

  test("events order streams and time work; query never blocks", () => {
    const a = Stream.create(0);
    const b = Stream.create(0);
    const e0 = Event.create(0, { timing: true });
    const e1 = Event.create(0, { timing: true });
    e0.record(a);
    e1.record(a);
    b.wait(e1);
    b.synchronize();
    expect(e1.query()).toBe(true);
    expect(e0.elapsedMs(e1)).toBeGreaterThanOrEqual(0);
    for (const x of [e0, e1, a, b]) x.dispose();
    expect(() => a.handle).toThrow(/stream used after dispose/);
  });
});
