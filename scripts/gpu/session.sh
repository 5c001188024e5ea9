#!/usr/bin/env bash
# Runs several GPU stage scripts in one device call, each under its own time cap, and brings their
# logs back as one archive (the device tool returns at most 8 files).
#   usage: source .device/setup.sh && bash scripts/gpu/session.sh NAME:SECONDS [NAME:SECONDS ...]
# NAME is scripts/gpu/NAME.sh; each stage gets OUT=$OUT/NAME; the summary lists every stage's exit
# code and the last lines it printed.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/stages"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
bun kernels/build.ts 2>&1 | tail -1
summary=""
for spec in "$@"; do
  name=${spec%%:*}
  cap=${spec##*:}
  script="scripts/gpu/$name.sh"
  t0=$(date +%s)
  if [ ! -f "$script" ]; then summary+="$name: missing $script"$'\n'; continue; fi
  mkdir -p "$OUT/stages/$name"
  OUT="$OUT/stages/$name" timeout "$cap" bash "$script" > "$OUT/stages/$name.log" 2>&1
  rc=$?
  summary+="== $name: exit $rc in $(( $(date +%s) - t0 )) s (cap $cap)"$'\n'
  summary+="$(tail -25 "$OUT/stages/$name.log")"$'\n'
  # after every stage, so a call stopped by its time limit still brings back what finished
  tar -C "$OUT" -czf "$OUT/stages.tar.gz.tmp" stages && mv "$OUT/stages.tar.gz.tmp" "$OUT/stages.tar.gz"
done
rm -rf "$OUT/stages"
echo "total $(( $(date +%s) - start )) s"
printf '%s' "$summary"
