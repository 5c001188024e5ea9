// DIR/loss.png: the loss curve as an SVG drawn here (axes with round-number ticks, the raw loss and
// an exponential moving average), rasterized by @resvg/resvg-js with the Inter font shipped by
// @expo-google-fonts/inter (OFL), so the picture is the same on every machine, fonts installed or not.
// Written to a temp file and renamed: a viewer never sees half a PNG.

import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Resvg } from "@resvg/resvg-js";

export interface Point {
  step: number;
  loss: number;
}

export interface PlotOptions {
  title?: string;
  width?: number;
  height?: number;
  /** EMA weight of the previous smoothed value (0: no smoothing line; default 0.8). */
  smoothing?: number;
}

const FONT = Bun.resolveSync("@expo-google-fonts/inter/400Regular/Inter_400Regular.ttf", import.meta.dir);

/** Round-number ticks covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 6): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * mag >= raw) as number) * mag;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
  return out;
}

// Debiased exponential moving average (as TensorBoard smooths): the accumulator starts at 0 and each
// value is divided by 1 - a^n, so the first points are not pulled toward the first loss.
function ema(points: readonly Point[], a: number): Point[] {
  let s = 0;
  return points.map((p, i) => {
    s = a * s + (1 - a) * p.loss;
    return { step: p.step, loss: s / (1 - a ** (i + 1)) };
  });
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const fmt = (v: number) => (Math.abs(v) >= 100 || Number.isInteger(v) ? String(v) : v.toPrecision(3).replace(/\.?0+$/, ""));

/** The SVG text of the loss curve. Non-finite losses are left out (a gap would hide nothing useful). */
export function lossSvg(all: readonly Point[], o: PlotOptions = {}): string {
  const W = o.width ?? 900;
  const H = o.height ?? 520;
  const m = { left: 72, right: 28, top: 48, bottom: 56 };
  const points = all.filter((p) => Number.isFinite(p.loss));
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Inter" font-size="13">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${m.left}" y="28" font-size="17" fill="#111">${esc(o.title ?? "training loss")}</text>`,
  ];
  if (points.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#666">no steps yet</text>`, "</svg>");
    return parts.join("\n");
  }
  const x0 = Math.min(...points.map((p) => p.step));
  const x1 = Math.max(x0 + 1, ...points.map((p) => p.step));
  let y0 = Math.min(...points.map((p) => p.loss));
  let y1 = Math.max(...points.map((p) => p.loss));
  const pad = (y1 - y0) * 0.05 || Math.abs(y1) * 0.05 || 1;
  y0 -= pad;
  y1 += pad;
  const X = (s: number) => m.left + ((s - x0) / (x1 - x0)) * pw;
  const Y = (l: number) => m.top + (1 - (l - y0) / (y1 - y0)) * ph;

  for (const t of niceTicks(y0, y1)) {
    const y = Y(t).toFixed(1);
    parts.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${m.left - 8}" y="${y}" dy="4" text-anchor="end" fill="#333">${fmt(t)}</text>`);
  }
  for (const t of niceTicks(x0, x1, 8).filter((t) => Number.isInteger(t))) {
    const x = X(t).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${m.top}" y2="${m.top + ph}" stroke="#f0f0f0"/>`);
    parts.push(`<text x="${x}" y="${m.top + ph + 20}" text-anchor="middle" fill="#333">${t}</text>`);
  }
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${H - 14}" text-anchor="middle" fill="#333">step</text>`);
  parts.push(`<text transform="translate(20 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" fill="#333">loss</text>`);

  const line = (ps: readonly Point[], color: string, width: number) =>
    `<polyline fill="none" stroke="${color}" stroke-width="${width}" stroke-linejoin="round" points="${ps
      .map((p) => `${X(p.step).toFixed(1)},${Y(p.loss).toFixed(1)}`)
      .join(" ")}"/>`;
  const a = o.smoothing ?? 0.8;
  const smooth = a > 0 && points.length > 2;
  parts.push(line(points, smooth ? "#9ec5f0" : "#1f6fd1", smooth ? 1.2 : 2));
  if (smooth) parts.push(line(ema(points, a), "#1f6fd1", 2.2));
  const last = points[points.length - 1] as Point;
  parts.push(
    `<text x="${m.left + pw}" y="28" text-anchor="end" fill="#333">step ${last.step}: loss ${last.loss.toFixed(4)}${
      smooth ? ` (EMA ${(ema(points, a).at(-1) as Point).loss.toFixed(4)})` : ""
    }</text>`,
  );
  parts.push("</svg>");
  return parts.join("\n");
}

/** PNG bytes of an SVG, text in the shipped font. */
export function rasterize(svg: string): Uint8Array {
  const r = new Resvg(svg, { font: { fontFiles: [FONT], loadSystemFonts: false, defaultFontFamily: "Inter" }, background: "#ffffff" });
  return new Uint8Array(r.render().asPng());
}

/** Writes DIR/loss.png (and DIR/loss.svg beside it), each by a temp file and a rename. */
export function writeLossPlot(dir: string, points: readonly Point[], o: PlotOptions = {}): string {
  const svg = lossSvg(points, o);
  const png = join(dir, "loss.png");
  const tmp = `${png}.tmp-${process.pid}`;
  writeFileSync(tmp, rasterize(svg));
  renameSync(tmp, png);
  const svgPath = join(dir, "loss.svg");
  writeFileSync(`${svgPath}.tmp-${process.pid}`, svg);
  renameSync(`${svgPath}.tmp-${process.pid}`, svgPath);
  return png;
}
