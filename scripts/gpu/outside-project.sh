#!/usr/bin/env bash
# The packages used from outside the repository on a GPU machine (issue 18): pack them and install the
# tarballs offline into a fresh project in /tmp (scripts/outside-project.ts, as the CI test does), run
# the documented kernels step there (`bunx lightseq-build-kernels`), then the README examples on the
# GPU: the probe, a matmul (inputs drawn by our kernels, product by cuBLASLt), block attention
# forward+backward through our kernels and through cuDNN, each checked against the CPU reference, and
# one forward+backward of the small Llama (bf16, our llama op kernels, the attention "auto" picks),
# whose loss must be near ln(vocab); then the CPU-only examples (estimator, HF checkpoint round trip).
# Usage (device tool, carry [".device"]): source .device/setup.sh && bash scripts/gpu/outside-project.sh
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
dir=$(bun scripts/outside-project.ts) || { echo "outside-project: could not create the project"; exit 1; }
trap 'rm -rf "$dir"' EXIT
echo "project: $dir"
cd "$dir"

results=()
step() { # name, command...: runs it, keeps its output in $OUT/<name>.log, records ok/FAILED and what it said
  local name=$1 status line
  shift
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    status=ok
    line=$(grep -v '^$' "$OUT/$name.log" | tail -1)
  else
    status=FAILED
    line=$(grep -m1 -E '^[A-Za-z]*Error|error:' "$OUT/$name.log" || tail -1 "$OUT/$name.log")
  fi
  results+=("$(printf '%-16s %-7s %4ss  %s' "$name" "$status" $((SECONDS - t0)) "${line:0:140}")")
}

step build-kernels bun x lightseq-build-kernels   # = bunx lightseq-build-kernels (the device has no bunx link)
step probe bun examples/cuda/probe.ts
step matmul-cuda bun examples/tensor/matmul.ts cuda:0
step attention-cuda bun examples/attention/attention.ts cuda:0 cuda
step attention-cudnn bun examples/attention/attention.ts cuda:0 cudnn
step attention-auto bun examples/attention/attention.ts cuda:0
step llama-cuda bun examples/llama/train-step.ts cuda:0
step matmul-cpu bun examples/tensor/matmul.ts cpu
step llama-cpu bun examples/llama/train-step.ts cpu
step llama-hf bun examples/llama/hf-checkpoint.ts
step estimate bun examples/checkpointing/estimate.ts

cat "$OUT/probe.log"
echo
printf '%-16s %-7s %5s  %s\n' step status time "what it said"
printf '%s\n' "${results[@]}" | tee "$OUT/summary.txt"
! grep -q FAILED "$OUT/summary.txt"
