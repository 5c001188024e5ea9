// One training step's forward and backward of a small Llama over one 128-token sequence, from the
// seeded init: the "tiny" preset with 4 query heads (2 K/V heads) of width 64, because the GPU
// attention backends run head dims 64 and 128 only (the preset's 8 heads are 32 wide).
// The gradients are summed into an f32 copy of the parameters. At the init (std 0.02) the logits have
// a standard deviation of about 0.02 * sqrt(dim) = 0.32, which lifts the loss above ln(vocab) by about
// 0.32^2 / 2 = 0.05: the example fails unless the loss is within 0.2 of ln(vocab).
// On the CPU: f32, reference attention, matmuls through OpenBLAS (apt-get install libopenblas0-pthread;
// without it setCpuMatmul throws BlasError saying so). On a GPU: bf16 parameters and activations, the
// attention backend "auto" picks (cuDNN when found, else our kernels: bunx lightseq-build-kernels).
//   bun train-step.ts [device]        device: cpu (default) or cuda:0
import { selectAttentionBackend } from "@lightseq/attention";
import { initParams, LocalGradientSink, llamaParamCount, llamaPreset, localModel, sequenceBatch, zeroParams } from "@lightseq/llama";
import * as T from "@lightseq/tensor";

const device = process.argv[2] ?? "cpu";
const dtype = device === "cpu" ? "f32" : "bf16";
if (device === "cpu") T.setCpuMatmul("blas");
const { backend, reason } = selectAttentionBackend("auto", device);
console.log(reason);

const config = llamaPreset("tiny", { heads: 4, kvHeads: 2 });
const millions = (llamaParamCount(config).total / 1e6).toFixed(1);
console.log(
  `${config.layers} layers, dim ${config.dim}, ${config.heads} heads of ${config.headDim}, vocab ${config.vocab}: ${millions}M parameters`,
);

using params = initParams(config, { seed: 1, dtype, device });
using grads = zeroParams(config, { device }); // f32, accumulated into (+=)
using sink = new LocalGradientSink(grads);
const model = localModel(params, { policy: { kind: "remat-aware" }, backend });

const tokens = Int32Array.from({ length: 128 }, (_, i) => (i * 7919 + 13) % config.vocab);
const batch = sequenceBatch(tokens); // positions 0..127; labels: the next token, -100 for the last
const t0 = performance.now();
const { lossSum, count } = await model.forwardBackward(batch, sink, { gradScale: 1 / 127 }); // d(mean loss)/d(one label's loss)
const ms = performance.now() - t0;

const loss = lossSum / count;
const lnV = Math.log(config.vocab);
let sq = 0;
for (const g of grads.all()) for (const v of T.toFloat32Array(g)) sq += v * v;
if (!(Math.abs(loss - lnV) < 0.2)) throw new Error(`loss ${loss} is not within 0.2 of ln(vocab) = ${lnV}`);
if (!(sq > 0 && Number.isFinite(sq))) throw new Error(`the squared gradient norm is ${sq}, expected a positive finite number`);
console.log(
  `llama fwd+bwd on ${device} (${backend.name}, ${dtype}): loss ${loss.toFixed(4)} over ${count} labels (ln ${config.vocab} = ${lnV.toFixed(4)}), ` +
    `|grad| ${Math.sqrt(sq).toFixed(3)}, ${ms.toFixed(0)} ms`,
);
