#!/usr/bin/env bash
# One H200, under 4 minutes: what the attention tidy-up (branch tidy-attn) must show on a GPU.
#   1. build; the kernels ABI lab (validate.ts: ABI version 3, every non-attention function bit for bit)
#   2. the attention lab: validation grid of BOTH kernel sets (wgmma and mma.sync) on the shared per-tile code
#   3. LIGHTSEQ_REQUIRE_GPU=1 bun test packages/attention packages/cuda packages/tensor (incl. the kernel
#      choice tests and "both kernel sets agree")
#   4. attention at 32K, forward and forward+backward, each kernel set (attn-bench.ts, LIGHTSEQ_ATTN_KERNEL)
#   5. DistAttn on one GPU: P = 1 over NCCL equals one-GPU attention (every schedule, our kernels); and the
#      no-communication path (nocomm-rank.ts: rank 0 of zigzag P = 2 at 64K, our kernels and cuDNN)
# A table last, with the figures BENCHMARKS.md holds beside the new ones.
# Usage (repository root): source .device/setup.sh && bash scripts/gpu/attn-tidy.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
fails=()
step() { echo "== $1"; }

step "build; the attention lab (its own nvcc build of check.cu) runs beside it"
mkdir -p "$OUT/lab"
(OUT="$OUT/lab" timeout 170 bash kernels/dev/attention/run.sh --quick --no-time > "$OUT/lab.log" 2>&1; echo $? > "$OUT/lab.rc") &
lab=$!
timeout 120 bun kernels/build.ts > "$OUT/build.log" 2>&1 || fails+=("build")
tail -1 "$OUT/build.log"
timeout 60 bun kernels/dev/validate.ts --no-bench --no-large > "$OUT/validate.log" 2>&1 || fails+=("validate.ts")
grep -E "ls_abi_version|FAIL|fail|error" "$OUT/validate.log" | head -5

step "attention lab: validation of both kernel sets"
wait "$lab"
[ "$(cat "$OUT/lab.rc" 2>/dev/null)" = 0 ] || fails+=("lab")
grep -E "^== kernels|argument checks|VALIDATION|determinism|FAIL" "$OUT/lab.log" | head -20

step "GPU tests"
timeout 170 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/attention packages/cuda packages/tensor > "$OUT/test.log" 2>&1 || fails+=("tests")
grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/test.log" | head -20

step "attention 32K, each kernel set"
for k in wgmma mma; do
  LIGHTSEQ_ATTN_KERNEL=$k timeout 60 bun packages/attention/bench/attn-bench.ts "$OUT/attn-$k.json" --T 32768 --reps 5 --backends cuda \
    > "$OUT/attn-$k.log" 2>&1 || fails+=("attn-bench $k")
  tail -3 "$OUT/attn-$k.log"
done

step "DistAttn on one GPU"
# N odd and small: the worker checks against the CPU reference over the whole sequence.
cases='[{"schedule":"ring","N":1031,"Hq":4,"Hkv":2,"D":128},{"schedule":"lightseq","N":1031,"Hq":4,"Hkv":4,"D":128},{"schedule":"zigzag","N":1031,"Hq":4,"Hkv":1,"D":64}]'
timeout 60 bun packages/comm/src/launch.ts --nprocs 1 packages/attention/src/fixtures/distattn-worker.ts nccl cuda bf16 "$cases" \
  > "$OUT/distattn-p1.log" 2>&1 || fails+=("distattn P=1")
grep -c '"ok":true' "$OUT/distattn-p1.log" | sed 's/^/P = 1 equality cases ok (of 3): /'
timeout 60 bun packages/attention/bench/nocomm-rank.ts "$OUT/nocomm-cuda.json" 65536 2 zigzag 32 > "$OUT/nocomm-cuda.log" 2>&1 || fails+=("nocomm cuda")
BENCH_BACKEND=cudnn timeout 60 bun packages/attention/bench/nocomm-rank.ts "$OUT/nocomm-cudnn.json" 65536 2 zigzag 32 \
  > "$OUT/nocomm-cudnn.log" 2>&1 || fails+=("nocomm cudnn")
tail -n 1 "$OUT/nocomm-cuda.log" "$OUT/nocomm-cudnn.log"

step "table (old: BENCHMARKS.md)"
OUT="$OUT" bun -e '
const out = process.env.OUT;
const read = async (f) => { try { return JSON.parse(await Bun.file(`${out}/${f}`).text()).results; } catch { return []; } };
const rows = [];
for (const [k, old] of [["wgmma", { 32: [417.0, 366.7], 8: [433.6, 385.9] }], ["mma", { 32: [343.3, 279.5] }]]) {
  for (const r of await read(`attn-${k}.json`)) {
    const o = old[r.Hkv];
    rows.push([`attention 32K Hkv ${r.Hkv}, ${r.kernel}`, "fwd / fwd+bwd TFLOP/s", `${r.fwdTflops.toFixed(1)} / ${r.fwdBwdTflops.toFixed(1)}`,
      o ? `${o[0]} / ${o[1]}` : "-"]);
  }
}
for (const [b, old] of [["cuda", "172.0 (I5KZ, zero buffers; overlap 178.4)"], ["cudnn", "114.9 (FIN, zero buffers; overlap 123.5)"]]) {
  for (const r of await read(`nocomm-${b}.json`))
    rows.push([`DistAttn nocomm, rank 0 of zigzag P=2, 64K MHA, ${r.kernel}${r.attnKernels ? ` (${r.attnKernels})` : ""}`, "ms (2x H200 row: slowest rank)", r.nocomm_ms.toFixed(1), old]);
}
const w = [0, 1, 2, 3].map((i) => Math.max(...[["what", "unit", "now", "BENCHMARKS.md"], ...rows].map((r) => String(r[i]).length)));
for (const r of [["what", "unit", "now", "BENCHMARKS.md"], ...rows]) console.log(r.map((c, i) => String(c).padEnd(w[i])).join("  "));
'
if [ ${#fails[@]} -gt 0 ]; then echo "FAILED: ${fails[*]}"; exit 1; fi
echo "all steps passed"
