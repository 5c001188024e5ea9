#!/usr/bin/env bash
# Llama-2-7B at long sequences on one H200 (issue 14): our trainer at each of SEQS (default "64k 128k"),
# STEPS steps each (default 3; the first is left out of the timing), the estimator's choices (`auto`:
# optimizer state placement, checkpoint policy, spill of checkpoints to pinned host memory, tiled MLP),
# the per-layer update, the Brown corpus with the Llama-2 tokenizer, no snapshots, no export.
# Step times (one H200, 2026-12-02): 32K 4.4 s, 64K 12.5 s, 128K 39.3 s, 256K 147.8 s (full x11 + remat-aware
# x21 + spill, state on the host; its first step also pins the spilled checkpoints), 512K 727 s (the only plan that
# fits 107 GiB of pinned host memory recomputes every layer and re-runs 14 more: (full, skip) x14 + full x4 + spill):
# with the ~75 s start-up of a 7B run (pinning the 75 GiB optimizer state alone takes 47-73 s) over the 10-minute
# command limit, so scripts/gpu/detached.sh runs it across calls (824 s in all). Long runs train well at the lr of a
# long-context continued pre-training: EXTRA="--lr 2e-5 --min-lr 2e-6 --warmup 1".
# Each run is capped (CAP_<seq>, default from the estimate); a run that the estimator refuses exits at
# start with its numbers, which is a result too. Writes $OUT/long-<seq>.log and .metrics.jsonl; the
# table (scripts/gpu/runs-table.py: tokens/s median of steps >= 2, MFU, peak GPU memory, peak host memory) comes last.
# EXTRA: more trainer flags for every run (e.g. EXTRA="--profile": DIR/profile.jsonl comes back as
# long-<seq>.profile.jsonl; SEQS=32k then times the 32K preset itself).
# Usage (device tool, repository root): source .device/setup.sh && SEQS="64k 128k" bash scripts/gpu/trainer-long.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
SEQS=${SEQS:-64k 128k}
STEPS=${STEPS:-3}
RUNS=${RUNS_DIR:-/tmp/trainer-long}
rm -rf "$RUNS" && mkdir -p "$RUNS"
timeout 240 bun kernels/build.ts >"$OUT/build.log" 2>&1 || { echo "kernel build failed:"; tail -20 "$OUT/build.log"; exit 1; }
free -g | sed -n 2p | awk '{print "host memory: " $2 " GiB"}'

# seq -> default cap in seconds: start-up + STEPS steps at the rough step time above, plus a margin
cap_of() {
  case $1 in
    32k) echo $((90 + 8 * STEPS)) ;;
    64k) echo $((60 + 20 * STEPS)) ;;
    128k) echo $((90 + 50 * STEPS)) ;;
    256k) echo $((90 + 150 * STEPS)) ;;
    512k) echo $((90 + 740 * STEPS)) ;;
    *) return 1 ;;
  esac
}
for s in $SEQS; do cap_of "$s" >/dev/null || { echo "SEQS: unknown length \"$s\" (32k 64k 128k 256k 512k)"; exit 2; }; done
# shellcheck disable=SC2206  # EXTRA is a list of flags (e.g. "--profile")
EXTRA=(${EXTRA:-})

for s in $SEQS; do
  var="CAP_$s"
  cap=${!var:-$(cap_of "$s")}
  echo "== $s: bun run apps/trainer --preset llama2-7b-32k --seq $s --steps $STEPS (cap ${cap}s)"
  t0=$SECONDS
  timeout -k 20 "$cap" bun run apps/trainer --preset llama2-7b-32k --seq "$s" --steps "$STEPS" --decay-steps 20 \
    --snapshots=false --export=false --out "$RUNS/$s" "${EXTRA[@]}" >"$OUT/long-$s.log" 2>&1
  rc=$?
  grep -E "^policy|^plan|^update|^step |trainer:|rror|does not fit" "$OUT/long-$s.log" | tail -12
  echo "[$s] exit $rc in $((SECONDS - t0)) s"
  [ -f "$RUNS/$s/metrics.jsonl" ] && cp "$RUNS/$s/metrics.jsonl" "$OUT/long-$s.metrics.jsonl"
  [ -f "$RUNS/$s/profile.jsonl" ] && cp "$RUNS/$s/profile.jsonl" "$OUT/long-$s.profile.jsonl"
done

rows=()
for s in $SEQS; do rows+=("$s=$OUT/long-$s.metrics.jsonl"); done
python3 scripts/gpu/runs-table.py seq "${rows[@]}"
