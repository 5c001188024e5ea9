import { expect, test } from "bun:test";
import { StepProgress } from "./progress.ts";

test("quiet for short steps, then one line per interval naming phase and layers", () => {
  let t = 0;
  const lines: string[] = [];
  const p = new StepProgress(32, { afterMs: 5000, everyMs: 5000, out: (s) => lines.push(s), now: () => t });
  p.begin(3);
  for (let l = 1; l <= 32; l++) {
    t += 100; // a 3.2 s forward: nothing
    p.layerDone("forward", l);
  }
  expect(lines).toEqual([]);
  for (let l = 1; l <= 32; l++) {
    t += 1000;
    p.layerDone("backward", l);
  }
  expect(lines[0]).toBe("step 3: backward 2/32 layers, 5 s");
  expect(lines[1]).toBe("step 3: backward 7/32 layers, 10 s");
  expect(lines).toHaveLength(7);
  p.begin(4);
  p.layerDone("forward", 1);
  expect(lines).toHaveLength(7);
});
