import { expect, test } from "bun:test";
import { hasGpu } from "@lightseq/cuda";
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
