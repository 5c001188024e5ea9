// liblightseq.so holds every entry point kernels.ts declares (the experimental copy-engine transport's
// among them), at the ABI version the table is written for. Loading needs no GPU, only the library
// (CI builds it before the tests): skipped, visibly, where it is not built.

import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { KERNELS_ABI_VERSION, kernels, kernelsPath } from "./kernels.ts";
import { CUDART, locateLibrary } from "./locate.ts";

const built = kernelsPath().path !== "" && locateLibrary(CUDART).path !== null;

test.skipIf(!built)("every declared entry point resolves, and the ABI version matches", () => {
  expect(existsSync(kernelsPath().path)).toBe(true);
  const k = kernels(); // dlopen fails on the first declared symbol the library lacks
  expect(k.ls_abi_version()).toBe(KERNELS_ABI_VERSION);
  for (const name of ["ls_p2p_init", "ls_p2p_send", "ls_p2p_recv", "ls_ipc_get_handle", "ls_stream_wait_u32"] as const)
    expect(typeof k[name]).toBe("function");
});
