// How much memory one rank needs to train Llama-2-7B on one 64K-token sequence split over cp GPUs
// (default 2 H200s: 139 GiB each, 64 GiB of pinned host memory per rank, AdamW state on the GPUs):
// the estimate of each checkpoint policy, then the one autoPolicy picks (the fastest that fits: here
// remat-aware on the first layers and none on as many of the last as fit) and why, with its terms; then one GPU, where the same sequence needs its checkpoints spilled to host
// memory, and four times as many tokens, which do not fit at all: the error says what to change.
// Pure arithmetic: the same on any machine, before anything is allocated.
//   bun estimate.ts [seqLen] [cp]        defaults: 65536 2
import {
  autoPolicy,
  estimateMemory,
  fmtGiB,
  formatEstimate,
  formatPolicy,
  MemoryEstimateError,
  type ModelShape,
  POLICY_KINDS,
} from "@lightseq/checkpointing";

// Llama-2-7B (a LlamaConfig from @lightseq/llama's llamaPreset("llama2-7b") is a ModelShape too).
const llama2_7b: ModelShape = {
  dim: 4096,
  layers: 32,
  heads: 32,
  kvHeads: 32,
  headDim: 128,
  ffn: 11008,
  vocab: 32000,
  tiedEmbeddings: false,
};
const GiB = 2 ** 30;
const seqLen = Number(process.argv[2] ?? 65536);
const cp = Number(process.argv[3] ?? 2);
const base = { model: llama2_7b, seqLen, mesh: { cp, dp: 1 }, optimizer: "device", deviceBytes: 139 * GiB, hostBytes: 64 * GiB } as const;

for (const kind of POLICY_KINDS) {
  const e = estimateMemory({ ...base, policy: { kind }, offload: "none" });
  console.log(
    `${kind.padEnd(12)} ${fmtGiB(e.gpuBytes).padStart(10)} on the GPU${e.fits ? "" : ` (does not fit: ${e.overflows.join("; ")})`}`,
  );
}
const auto = autoPolicy(base);
console.log(`auto: ${formatPolicy(auto.policy)}, offload ${auto.offload}. ${auto.reason}`);
console.log(formatEstimate(auto.estimate));

const oneGpu = autoPolicy({ ...base, mesh: { cp: 1, dp: 1 } });
console.log(`on one GPU: ${oneGpu.reason}`);
try {
  autoPolicy({ ...base, seqLen: 4 * seqLen, mesh: { cp: 1, dp: 1 } });
  throw new Error(`${4 * seqLen} tokens on one GPU were expected not to fit`);
} catch (e) {
  if (!(e instanceof MemoryEstimateError)) throw e;
  console.log(`${4 * seqLen} tokens on one GPU: ${e.name}: ${e.message}`);
}
