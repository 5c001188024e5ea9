import { expect, test } from "bun:test";
import { hasGpu } from "@lightseq/cuda";
import { type CudnnBackend, cudnnBackend } from "./cudnn/index.ts";
import { referenceBackend } from "./reference.ts";
import { selectAttentionBackend } from "./select.ts";

test("the cpu gets the reference; GPU-only backends refuse it with the reason", () => {
  expect(selectAttentionBackend("auto", "cpu").backend.name).toBe("reference");
  expect(selectAttentionBackend("reference", "cpu").reason).toContain("reference");
  expect(() => selectAttentionBackend("cudnn", "cpu")).toThrow(/attention backend "cudnn" needs a cuda device, got cpu/);
  expect(() => selectAttentionBackend("flash" as never, "cpu")).toThrow(/expected one of auto, reference, cuda, cudnn, got "flash"/);
});

test.skipIf(hasGpu())("without a GPU a cuda device is refused with the probe's reason", () => {
  expect(() => selectAttentionBackend("auto", "cuda:0")).toThrow(/attention backend "auto": no CUDA device \(/);
});

test.skipIf(!hasGpu())("on a GPU, auto picks cuDNN when present, else our kernels, and says which", () => {
  const s = selectAttentionBackend("auto", "cuda:0");
  expect(["cudnn", "cuda"]).toContain(s.backend.name);
  expect(s.reason).toContain(`attention backend: ${s.backend.name} (auto`);
  expect(() => selectAttentionBackend("reference", "cuda:0")).toThrow(/runs on the cpu only/);
});

test("a bad LIGHTSEQ_ATTN_KERNEL is an error on the cpu too (it was ignored there)", () => {
  const prev = process.env.LIGHTSEQ_ATTN_KERNEL;
  process.env.LIGHTSEQ_ATTN_KERNEL = "bogus";
  try {
    expect(() => selectAttentionBackend("auto", "cpu")).toThrow('LIGHTSEQ_ATTN_KERNEL="bogus": expected auto, mma or wgmma (or unset)');
    expect(() => selectAttentionBackend("reference", "cpu")).toThrow('LIGHTSEQ_ATTN_KERNEL="bogus"');
  } finally {
    if (prev === undefined) delete process.env.LIGHTSEQ_ATTN_KERNEL;
    else process.env.LIGHTSEQ_ATTN_KERNEL = prev;
  }
  // An explicit choice is checked the same way, and wins over the environment.
  expect(() => selectAttentionBackend("auto", "cpu", { kernels: "fast" as never })).toThrow(
    'selectAttentionBackend: kernels: expected one of auto, mma, wgmma, got "fast"',
  );
  expect(selectAttentionBackend("auto", "cpu", { kernels: "mma" }).backend.name).toBe("reference");
});

test("deterministic: the reference says it already is; cuda is refused before any GPU is probed; bad values are named", () => {
  expect(selectAttentionBackend("auto", "cpu", { deterministic: true })).toEqual({
    backend: referenceBackend,
    reason: "attention backend: reference (cpu; deterministic: its backward is deterministic already)",
  });
  expect(selectAttentionBackend("auto", "cpu", { deterministic: false }).reason).toBe("attention backend: reference (cpu)");
  expect(() => selectAttentionBackend("cuda", "cuda:0", { deterministic: true })).toThrow(
    'attention backend "cuda" has no deterministic backward: our flash-attention kernels sum dq with f32 atomics',
  );
  expect(() => selectAttentionBackend("auto", "cpu", { deterministic: "yes" as never })).toThrow(
    "selectAttentionBackend: deterministic: expected true or false, got yes",
  );
});

test.skipIf(!hasGpu())("on a GPU, deterministic picks cuDNN's deterministic backward, or says cuDNN is missing", () => {
  let s: ReturnType<typeof selectAttentionBackend>;
  try {
    s = selectAttentionBackend("auto", "cuda:0", { deterministic: true });
  } catch (e) {
    expect((e as Error).message).toContain('attention backend "auto" with a deterministic backward needs cuDNN');
    return;
  }
  expect(s.backend.name).toBe("cudnn");
  expect((s.backend as CudnnBackend).deterministic).toBe(true);
  expect(s.reason).toContain("attention backend: cudnn, deterministic backward (auto: the deterministic backward;");
  expect(selectAttentionBackend("auto", "cuda:0").backend).toBe(cudnnBackend); // the default stays the fastest
});
