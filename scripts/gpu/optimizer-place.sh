#!/usr/bin/env bash
# What streaming the optimizer state from pinned host memory costs a step (issue 14): Llama-2-7B at 32K on
# one H200, the same checkpoint policy (POLICY, default remat-aware on every layer: the planner fits it with
# the state on the device, 116.6 GiB, and on the host, 46.8 GiB, neither with a tiled MLP) and the per-layer
# update, once with `--optimizer device` and once with `--optimizer host` (streamed; layer 0's and the
# embedding's state stay on the GPU). STEPS steps each (default 5; the first is left out of the timing).
# Each run is capped at CAP seconds (default 200: the host run of call 3, 2026-12-02-s2, had written its steps but
# had not exited at 125 s, its shutdown with 72 GiB of pinned memory not timed).
# Writes $OUT/opt-<place>.log and .metrics.jsonl; the table (scripts/gpu/runs-table.py: median step of steps >= 2, the difference) last.
# Usage (device tool, repository root): source .device/setup.sh && bash scripts/gpu/optimizer-place.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
STEPS=${STEPS:-5}
POLICY=${POLICY:-remat-aware}
RUNS=${RUNS_DIR:-/tmp/optimizer-place}
rm -rf "$RUNS" && mkdir -p "$RUNS"
timeout 240 bun kernels/build.ts >"$OUT/build.log" 2>&1 || { echo "kernel build failed:"; tail -20 "$OUT/build.log"; exit 1; }
for place in device host; do
  echo "== $place: bun run apps/trainer --preset llama2-7b-32k --policy $POLICY --optimizer $place --steps $STEPS"
  t0=$SECONDS
  timeout -k 20 "${CAP:-200}" bun run apps/trainer --preset llama2-7b-32k --policy "$POLICY" --optimizer "$place" --steps "$STEPS" \
    --lr 2e-5 --min-lr 2e-6 --warmup 1 --decay-steps 20 --snapshots=false --export=false --out "$RUNS/$place" >"$OUT/opt-$place.log" 2>&1
  echo "[$place] exit $? in $((SECONDS - t0)) s"
  grep -E "^policy|^update|^step [0-9]+/|trainer:|rror|does not fit" "$OUT/opt-$place.log" | tail -8
  [ -f "$RUNS/$place/metrics.jsonl" ] && cp "$RUNS/$place/metrics.jsonl" "$OUT/opt-$place.metrics.jsonl"
done
python3 scripts/gpu/runs-table.py "optimizer state" device="$OUT/opt-device.metrics.jsonl" host="$OUT/opt-host.metrics.jsonl" --diff --by step_s
