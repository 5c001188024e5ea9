import { expect, test } from "bun:test";
import { attentionEnv } from "./env.ts";

test("LIGHTSEQ_ATTN_KERNEL: unset or empty is auto; auto, mma, wgmma as named; anything else is refused by name", () => {
  expect(attentionEnv({})).toEqual({ kernels: "auto" });
  expect(attentionEnv({ LIGHTSEQ_ATTN_KERNEL: "" })).toEqual({ kernels: "auto" });
  for (const k of ["auto", "mma", "wgmma"] as const) expect(attentionEnv({ LIGHTSEQ_ATTN_KERNEL: k })).toEqual({ kernels: k });
  expect(() => attentionEnv({ LIGHTSEQ_ATTN_KERNEL: "bogus" })).toThrow(
    'LIGHTSEQ_ATTN_KERNEL="bogus": expected auto, mma or wgmma (or unset)',
  );
  expect(() => attentionEnv({ LIGHTSEQ_ATTN_KERNEL: "mma.sync" })).toThrow('LIGHTSEQ_ATTN_KERNEL="mma.sync"');
});
