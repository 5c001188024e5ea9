#!/usr/bin/env bash
# The cross-entropy row kernel lab (GPU machine): build check.cu with the ptxas report, validate every
# variant against the f64 reference on sampled rows, time them against a device copy.
#   kernels/dev/cross_entropy/run.sh [--reps N]      (logs in $OUT when set)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$(mktemp -d)}
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$nvcc" -O3 -std=c++17 --expt-relaxed-constexpr -lineinfo -gencode arch=compute_90,code=sm_90 -Xptxas -v -I"$here/../../src" "$here/check.cu" -o "$out/ce_check" 2>"$out/ce_ptxas.log" ||
  { cat "$out/ce_ptxas.log"; exit 1; }
grep -E "spill" "$out/ce_ptxas.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -5 || true
"$out/ce_check" "$@"
