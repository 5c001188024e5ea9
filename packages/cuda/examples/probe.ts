// What @lightseq/cuda finds on this machine: the NVIDIA libraries, our kernels library and the GPUs.
// With a GPU it also allocates from the stream-ordered pool and copies a buffer there and back.
//   bun probe.ts
import {
  CUBLASLT,
  CUDART,
  CUDNN,
  DeviceAllocator,
  deviceInfo,
  kernelsPath,
  LIGHTSEQ_VERSION,
  locateLibrary,
  memcpyAsync,
  NCCL,
  probeGpus,
  Stream,
} from "@lightseq/cuda";

console.log(`@lightseq/cuda ${LIGHTSEQ_VERSION}`);
for (const spec of [CUDART, CUBLASLT, NCCL, CUDNN]) console.log(`${spec.name}: ${locateLibrary(spec).path ?? "not found"}`);
console.log(`lightseq kernels: ${kernelsPath().path || "not built (bunx lightseq-build-kernels)"}`);

const gpus = probeGpus();
console.log(`GPUs: ${gpus.count}${gpus.count === 0 ? ` (${gpus.reason})` : ""}`);
if (gpus.count > 0) {
  const info = deviceInfo(0);
  console.log(`cuda:0: ${info.name}, compute capability ${info.computeCapability.join(".")}, ${info.multiProcessors} SMs`);
  using stream = Stream.create(0);
  const pool = DeviceAllocator.forDevice(0);
  const host = Float32Array.from({ length: 1024 }, (_, i) => i);
  const back = new Float32Array(host.length);
  const dev = pool.alloc(host.byteLength, stream);
  memcpyAsync(dev, host, host.byteLength, stream);
  memcpyAsync(back, dev, host.byteLength, stream);
  stream.synchronize();
  pool.free(dev, host.byteLength, stream);
  if (!back.every((v, i) => v === host[i])) throw new Error("device round trip changed the data");
  console.log(`cuda:0: ${host.byteLength} bytes there and back through the memory pool`);
}
