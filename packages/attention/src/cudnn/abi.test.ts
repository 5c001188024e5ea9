// The cuDNN ABI table's checker (the headers' side only exists on a GPU machine: abi.c's output), and the
// printer abi.c against the table: both list the same names in the same order.

import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CUDNN_ABI, checkCudnnAbi } from "./abi.ts";

const table = CUDNN_ABI as Readonly<Record<string, number>>;
const printed = (over: Record<string, number | undefined> = {}) =>
  [
    "# CUDNN_VERSION=91300 (cudnn_version.h)",
    ...Object.entries({ ...table, ...over })
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}=${v}`),
  ].join("\n");

test("abi.c prints exactly the names of CUDNN_ABI, in its order", () => {
  const c = readFileSync(join(import.meta.dir, "abi.c"), "utf8");
  const names = [...c.matchAll(/^\s*P\(([A-Z0-9_]+)\);/gm)].map((m) => m[1]);
  expect(names).toEqual(Object.keys(table));
});

test("checkCudnnAbi: the table's own values pass; a changed, missing or extra name is a difference; a bad line throws", () => {
  expect(checkCudnnAbi(printed())).toEqual({ headers: ["CUDNN_VERSION=91300 (cudnn_version.h)"], diffs: [] });
  const first = Object.keys(table)[0] as string;
  const second = Object.keys(table)[1] as string;
  expect(checkCudnnAbi(printed({ [first]: (table[first] as number) + 1, [second]: undefined, CUDNN_NEW_THING: 7 })).diffs).toEqual([
    `${first}: CUDNN_ABI ${table[first]}, headers ${(table[first] as number) + 1}`,
    `${second}: CUDNN_ABI ${table[second]}, not printed by abi.c`,
    "CUDNN_NEW_THING: headers 7, not in CUDNN_ABI",
  ]);
  expect(() => checkCudnnAbi(`${printed()}\nnot a line`, "x.txt")).toThrow('cudnn ABI: cannot read line "not a line" of x.txt');
});
