#!/usr/bin/env bash
# On a machine with ONE GPU: `bun run demo` must run (CPU ranks, with a line saying why; never a second
# rank on the GPU), and the comm and cuda GPU tests must pass with a missing GPU an error, not a skip.
# Prints a short table last; logs under $OUT.
#   source .device/setup.sh && bash scripts/gpu/demo-one-gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TURBO_TELEMETRY_DISABLED=1
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

bun kernels/build.ts 2>&1 | tail -1
gpus=$(bun -e 'import { probeGpus } from "@lightseq/cuda"; console.log(probeGpus().count)' 2>/dev/null)
echo "visible GPUs: ${gpus:-?} (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)"

timeout 120 bun run demo > "$OUT/demo.log" 2>&1
demo_rc=$?
head -3 "$OUT/demo.log"
tail -2 "$OUT/demo.log"
# One GPU: the plan line says why the ranks are CPU processes, and NCCL never saw two ranks on one device.
grep -q "^1 GPU (" "$OUT/demo.log" && plan=ok || plan=MISSING
grep -q "Duplicate GPU" "$OUT/demo.log" && dup=yes || dup=no

timeout 240 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/comm packages/cuda > "$OUT/test.log" 2>&1
test_rc=$?
grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/test.log" | head -20
pass=$(grep -E '^ *[0-9]+ pass$' "$OUT/test.log" | awk '{s+=$1} END {print s+0}')
fail=$(grep -E '^ *[0-9]+ fail$' "$OUT/test.log" | awk '{s+=$1} END {print s+0}')
skip=$(grep -E '^ *[0-9]+ skip$' "$OUT/test.log" | awk '{s+=$1} END {print s+0}')

echo
echo "| check | result |"
echo "| --- | --- |"
echo "| bun run demo exit code | $demo_rc (want 0) |"
echo "| demo's one-GPU line (\"1 GPU (...): ... CPU ranks\") | $plan (want ok) |"
echo "| NCCL 'Duplicate GPU' in the demo | $dup (want no) |"
echo "| GPU tests packages/comm packages/cuda | exit $test_rc: $pass pass, $fail fail, $skip skip (want exit 0, 0 fail) |"
[ "$demo_rc" -eq 0 ] && [ "$plan" = ok ] && [ "$dup" = no ] && [ "$test_rc" -eq 0 ]
