import { expect, test } from "bun:test";
import { median } from "./timing.ts";

test("median: the middle value, the upper middle for an even count; no values is an error", () => {
  expect(median([3, 1, 2])).toBe(2);
  expect(median([4, 1, 3, 2])).toBe(3);
  expect(median([7])).toBe(7);
  expect(() => median([])).toThrow("median: no values");
});
