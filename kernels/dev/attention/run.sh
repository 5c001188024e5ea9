#!/usr/bin/env bash
# The attention lab in one command (for the GPU machine): build check.cu for sm_90a with the ptxas report,
# summarise the SASS (HMMA present, no LDL/STL), validate, then time. Arguments go to check
# (--quick, --no-time, --time-only, --verbose, --reps N). Logs land in $OUT when it is set.
#
#   kernels/dev/attention/run.sh            # full: validation grid, merge, determinism, lab variants, timings
#   kernels/dev/attention/run.sh --quick    # smaller grid, shipped timings only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../src" && pwd)
out=${OUT:-$(mktemp -d)}
bin=$out/attn_check
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}

echo "== build ($($nvcc --version | grep -o 'release [0-9.]*'))"
"$nvcc" -O3 -std=c++17 --expt-relaxed-constexpr -lineinfo -gencode arch=compute_90a,code=sm_90a -Xptxas -v \
  -I"$src" "$here/check.cu" -o "$bin" 2>"$out/ptxas.log" || { cat "$out/ptxas.log"; exit 1; }
python3 "$here/ptxas_table.py" <"$out/ptxas.log" | grep -v ' ref_\| fill_' | tee "$out/ptxas.txt"

if command -v cuobjdump >/dev/null; then
  echo "== SASS"
  cuobjdump -sass "$bin" >"$out/check.sass"
  python3 "$here/sass_summary.py" <"$out/check.sass" | grep -v ' ref_\| fill_' | tee "$out/sass.txt"
fi

echo "== run"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv,noheader || true
"$bin" "$@" 2>&1 | tee "$out/check.log"
exit "${PIPESTATUS[0]}"
