import { expect, test } from "bun:test";
import { type CheckpointPolicy, keptTensors, POLICY_KINDS, parsePolicy, SAVED_NAMES } from "./policy.ts";

test("each policy keeps what DESIGN.md section 6 says", () => {
  expect(keptTensors({ kind: "none" })).toEqual(SAVED_NAMES);
  expect(keptTensors({ kind: "full" })).toEqual(["x"]);
  expect(keptTensors({ kind: "remat-aware" })).toEqual(["x", "o", "lse"]);
});

test("every kind parses and round-trips; an unknown one is refused by name", () => {
  for (const k of POLICY_KINDS) expect(parsePolicy(k).kind).toBe(k);
  expect(() => parsePolicy("selective")).toThrow('checkpoint policy: expected one of none, full, remat-aware, got "selective"');
  expect(() => keptTensors({ kind: "offload" } as unknown as CheckpointPolicy)).toThrow('got {"kind":"offload"}');
});
