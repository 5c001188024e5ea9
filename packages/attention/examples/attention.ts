// Causal attention over one block (256 tokens, 4 query heads sharing 2 K/V heads), forward and
// backward, through the backend "auto" picks for the device: the reference on the CPU; on a GPU
// cuDNN when present, else our CUDA kernels (liblightseq.so: bunx lightseq-build-kernels), in bf16,
// checked against the reference on the same inputs.
//   bun attention.ts [device] [backend]     device: cpu (default) or cuda:0; backend: auto, cuda, cudnn
import { type BackendChoice, referenceBackend, selectAttentionBackend } from "@lightseq/attention";
import * as T from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";

const device = process.argv[2] ?? "cpu";
const dtype = device === "cpu" ? "f32" : "bf16";
const { backend, reason } = selectAttentionBackend((process.argv[3] ?? "auto") as BackendChoice, device);
console.log(reason);

const [tokens, heads, kvHeads, headDim] = [256, 4, 2, 64];
const q = T.randn([tokens, heads, headDim], { seed: 1, dtype, device });
const k = T.randn([tokens, kvHeads, headDim], { seed: 2, dtype, device });
const v = T.randn([tokens, kvHeads, headDim], { seed: 3, dtype, device });
const dO = T.randn([tokens, heads, headDim], { seed: 4, dtype, device });
const { o, lse } = backend.forward(q, k, v, { causal: true }); // o [256, 4, 64], lse [4, 256] f32
const { dq, dk, dv } = backend.backward(q, k, v, o, lse, dO, { causal: true });

const cpu = (t: T.Tensor) => T.to(t, "cpu");
const ref = referenceBackend.forward(cpu(q), cpu(k), cpu(v), { causal: true });
const grads = referenceBackend.backward(cpu(q), cpu(k), cpu(v), ref.o, ref.lse, cpu(dO), { causal: true });
// bf16 inputs and outputs: about 2^-8 relative per value, a few roundings deep.
const tol = dtype === "bf16" ? { atol: 2e-2, rtol: 2e-2 } : { atol: 1e-5, rtol: 1e-5 };
for (const [name, got, want] of [
  ["o", o, ref.o],
  ["dq", dq, grads.dq],
  ["dk", dk, grads.dk],
  ["dv", dv, grads.dv],
] as const) {
  expectClose(got, want, { ...tol, label: name });
}
console.log(`attention fwd+bwd on ${device} (${backend.name}, ${dtype}): o, dq, dk, dv match the reference`);
