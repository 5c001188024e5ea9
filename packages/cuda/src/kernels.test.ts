// The declaration table of liblightseq.so (kernels.ts) against the C headers it binds: every symbol is
// declared there with the same number of arguments, so a signature change on one side fails here, on
// the CPU, instead of as a wrong call through bun:ffi on a GPU machine.

import { expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ATTN_ERR, ATTN_KERNELS, KERNELS_ABI_VERSION, kernelSymbols, kernels, kernelsPath } from "./kernels.ts";
import { CUDART, locateLibrary } from "./locate.ts";

const src = join(import.meta.dir, "../../../kernels/src");

/** name -> argument count of every `LS_API <type> name(...)` declaration in the given headers. */
function declarations(files: string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of files) {
    const text = readFileSync(join(src, f), "utf8").replace(/\/\/[^\n]*/g, "");
    for (const m of text.matchAll(/LS_API\s+[\w\s*]+?\b(ls_\w+)\s*\(([^)]*)\)\s*;/g)) {
      const params = (m[2] as string).trim();
      out.set(m[1] as string, params === "" || params === "void" ? 0 : params.split(",").length);
    }
  }
  return out;
}

test("every symbol of the kernels table is declared in the C headers with the same argument count", () => {
  const decl = declarations(["lightseq.cuh", "attention.cuh"]);
  expect(decl.size).toBeGreaterThan(30); // the parser found the headers' declarations
  const mismatches: string[] = [];
  for (const [name, d] of Object.entries(kernelSymbols)) {
    const n = decl.get(name);
    if (n !== d.args.length) mismatches.push(`${name}: table ${d.args.length} args, header ${n ?? "no declaration"}`);
  }
  expect(mismatches).toEqual([]);
});

test("the table's ABI version is the one the library's ls_abi_version returns", () => {
  const misc = readFileSync(join(src, "misc.cu"), "utf8");
  expect(misc).toContain(`LS_API int ls_abi_version(void) { return ${KERNELS_ABI_VERSION}; }`);
});

test("the attention kernel sets and refusal codes are the header's values", () => {
  const header = readFileSync(join(src, "attention.cuh"), "utf8");
  const value = (name: string) => Number(new RegExp(`#define ${name} (\\d+)`).exec(header)?.[1]);
  expect({ ...ATTN_KERNELS } as Record<string, number>).toEqual({
    auto: value("LS_ATTN_KERNELS_AUTO"),
    mma: value("LS_ATTN_KERNELS_MMA"),
    wgmma: value("LS_ATTN_KERNELS_WGMMA"),
  });
  expect({ ...ATTN_ERR } as Record<string, number>).toEqual({
    kernelsUnknown: value("LS_ATTN_ERR_KERNELS_UNKNOWN"),
    kernelsUnavailable: value("LS_ATTN_ERR_KERNELS_UNAVAILABLE"),
  });
});

// liblightseq.so holds every entry point the table declares (the experimental copy-engine transport's
// among them), at the table's ABI version. Loading needs no GPU, only the library (CI builds it before
// the tests): skipped, visibly, where it is not built.
const built = kernelsPath().path !== "" && locateLibrary(CUDART).path !== null;

test.skipIf(!built)("every declared entry point resolves, and the ABI version matches", () => {
  expect(existsSync(kernelsPath().path)).toBe(true);
  const k = kernels(); // dlopen fails on the first declared symbol the library lacks
  expect(k.ls_abi_version()).toBe(KERNELS_ABI_VERSION);
  for (const name of ["ls_p2p_init", "ls_p2p_send", "ls_p2p_recv", "ls_ipc_get_handle", "ls_stream_wait_u32"] as const)
    expect(typeof k[name]).toBe("function");
});
