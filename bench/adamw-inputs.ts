// Inputs and results for bench/adamw_torch.py: n random weights and `steps` random gradients (seeded),
// our TS reference's p, m, v after those steps, and our kernel's when a GPU is present.
//   bun bench/adamw-inputs.ts OUT_DIR [n] [steps]
// Files (raw little-endian f32): p0, g1..gSTEPS, ref_{p,m,v}, gpu_{p,m,v}; params.json (hyperparameters).

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { hasGpu } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import { type AdamWHyper, adamwCuda, adamwReference, adamwScalars } from "../apps/trainer/src/optim/adamw.ts";

const out = process.argv[2];
if (!out) throw new Error("usage: bun bench/adamw-inputs.ts OUT_DIR [n] [steps]");
const n = Number(process.argv[3] ?? 1 << 20);
const steps = Number(process.argv[4] ?? 10);
const h: AdamWHyper = { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const save = (name: string, a: Float32Array) =>
  writeFileSync(join(out, `${name}.f32`), new Uint8Array(a.buffer, a.byteOffset, a.byteLength));

const p = T.randn([n], { seed: 11, std: 0.02 }).data() as Float32Array;
save("p0", p);
const m = new Float32Array(n);
const v = new Float32Array(n);
const grads: Float32Array[] = [];
for (let t = 1; t <= steps; t++) {
  const g = T.randn([n], { seed: 100 + t, std: 1e-3 * t }).data() as Float32Array;
  grads.push(g);
  save(`g${t}`, g);
  adamwReference(p, g, m, v, adamwScalars(h, t, true));
}
save("ref_p", p);
save("ref_m", m);
save("ref_v", v);

if (hasGpu()) {
  const stream = T.currentStream(0);
  const dp = T.to(T.fromArray(T.randn([n], { seed: 11, std: 0.02 }).data() as Float32Array, [n]), "cuda:0");
  const dm = T.zeros([n], { device: "cuda:0" });
  const dv = T.zeros([n], { device: "cuda:0" });
  for (let t = 1; t <= steps; t++) {
    const dg = T.to(T.fromArray(grads[t - 1] as Float32Array, [n]), "cuda:0");
    adamwCuda({ p: dp.ptr(), g: dg.ptr(), m: dm.ptr(), v: dv.ptr(), w: 0, n }, adamwScalars(h, t, true), stream);
  }
  save("gpu_p", T.to(dp, "cpu").data() as Float32Array);
  save("gpu_m", T.to(dm, "cpu").data() as Float32Array);
  save("gpu_v", T.to(dv, "cpu").data() as Float32Array);
}
writeFileSync(join(out, "params.json"), JSON.stringify({ n, steps, ...h, gpu: hasGpu() }));
console.log(`wrote ${n} elements, ${steps} steps to ${out}${hasGpu() ? " (with our kernel's results)" : ""}`);
