import { expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lossSvg, niceTicks, rasterize, writeLossPlot } from "./plot.ts";

const curve = Array.from({ length: 60 }, (_, i) => ({ step: i + 1, loss: 10 * Math.exp(-i / 15) + 2 }));

test("ticks are round numbers covering the range", () => {
  expect(niceTicks(0, 100)).toEqual([0, 20, 40, 60, 80, 100]);
  expect(niceTicks(2.3, 10.9)).toEqual([4, 6, 8, 10]);
  expect(niceTicks(0.11, 0.19, 4)).toEqual([0.12, 0.14, 0.16, 0.18]);
  expect(niceTicks(5, 5)).toEqual([5]);
});

test("the SVG has the curve, its EMA and the last value; NaN losses are left out", () => {
  const svg = lossSvg([...curve, { step: 61, loss: Number.NaN }], { title: "a & b" });
  expect(svg.match(/<polyline/g)).toHaveLength(2);
  expect(svg).toContain("a &amp; b");
  expect(svg).toContain(`step 60: loss ${curve[59]!.loss.toFixed(4)}`);
  expect(lossSvg([])).toContain("no steps yet");
});

test("rasterized with the shipped font: a PNG of the asked size whose text is drawn", () => {
  const png = rasterize(lossSvg(curve, { width: 640, height: 360 }));
  expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const ihdr = new DataView(png.buffer, png.byteOffset + 16, 8);
  expect([ihdr.getUint32(0), ihdr.getUint32(4)]).toEqual([640, 360]);
  // Only the title differs: without a usable font resvg drops text and the two images would be equal.
  expect(rasterize(lossSvg(curve, { title: "one" }))).not.toEqual(rasterize(lossSvg(curve, { title: "two" })));
});

test("loss.png and loss.svg are written whole, no temp files left", () => {
  const dir = mkdtempSync(join(tmpdir(), "trainer-plot-"));
  writeLossPlot(dir, curve);
  writeLossPlot(dir, curve.slice(0, 30)); // refreshed in place
  expect(readdirSync(dir).sort()).toEqual(["loss.png", "loss.svg"]);
  expect(readFileSync(join(dir, "loss.svg"), "utf8")).toContain("step 30:");
});
