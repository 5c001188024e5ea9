#!/usr/bin/env bash
# PTX of the attention kernels at git revision REV (default HEAD) against the working tree, per kernel
# (ptx_diff.py), for every target the build uses: sm_80 and sm_90 (attention.cu, mma.sync) and sm_90a
# (attention_sm90.cu, wgmma). Exit 0 when every kernel's instruction sequence is the same.
#   kernels/dev/attention/ptx_diff.sh [REV]
set -euo pipefail
rev=${1:-HEAD}
root=$(git rev-parse --show-toplevel)
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/old" "$tmp/ptx"
git -C "$root" archive "$rev" kernels/src | tar -x -C "$tmp/old"
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
flags="-O3 -std=c++17 --expt-relaxed-constexpr"
status=0
for side in old new; do
  src=$([ "$side" = old ] && echo "$tmp/old/kernels/src" || echo "$root/kernels/src")
  "$nvcc" $flags -arch=sm_80 -ptx "$src/attention.cu" -o "$tmp/ptx/$side-sm80.ptx" &
  "$nvcc" $flags -arch=sm_90 -ptx "$src/attention.cu" -o "$tmp/ptx/$side-sm90.ptx" &
  "$nvcc" $flags -arch=sm_90a -ptx "$src/attention_sm90.cu" -o "$tmp/ptx/$side-sm90a.ptx" &
  wait
done
for t in sm80 sm90 sm90a; do
  echo "== $t ($rev -> working tree)"
  python3 "$here/ptx_diff.py" "$tmp/ptx/old-$t.ptx" "$tmp/ptx/new-$t.ptx" || status=1
done
exit $status
