// y = x @ W^T (a linear layer) on a device, checked against the CPU reference (f64 accumulation).
// On the CPU the product runs through OpenBLAS, chosen with setCpuMatmul("blas") (apt-get install
// libopenblas0-pthread); on a GPU through cuBLASLt, with the inputs drawn there by the same
// counter-based generator, so both sides multiply identical numbers.
//   bun matmul.ts [device]        device: cpu (default) or cuda:0
import * as T from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";

const device = process.argv[2] ?? "cpu";
const via = device === "cpu" ? `OpenBLAS, ${T.setCpuMatmul("blas").blas?.path}` : "cuBLASLt";
const x = T.randn([64, 256], { seed: 1, device });
const w = T.randn([1000, 256], { seed: 2, device });
const y = T.matmul(x, w, { transB: true }); // [64, 1000]

T.setCpuMatmul("reference");
const ref = T.matmul(T.to(x, "cpu"), T.to(w, "cpu"), { transB: true });
// f32 accumulation of 256 unit-normal products: |error| <= 256 * 2^-24 * sum|x||w|, about 3e-3 at worst.
const r = expectClose(y, ref, { atol: 3e-3, rtol: 0 });
console.log(`matmul [64,256] @ [1000,256]^T on ${device} (${via}): max |error| ${r.maxAbsError.toExponential(1)} vs the reference`);
