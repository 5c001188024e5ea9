#!/usr/bin/env bash
# Builds the Hugging Face reference fixture of the Llama model (issue 11) with transformers, checks it
# from our side, and checks that transformers loads what our saveHfCheckpoint writes. Needs PyTorch +
# transformers, not a GPU (everything runs on the CPU in seconds); run where they are installed.
# Usage (repository root): source .device/setup.sh && bash scripts/gpu/llama-hf-fixture.sh
# Afterwards commit $OUT/hf-tiny/* as packages/llama/fixtures/hf-tiny/ (about 1 MB).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
FIX=packages/llama/fixtures/hf-tiny
timeout 120 python3 packages/llama/fixtures/make_hf_fixture.py --out "$FIX" 2>&1 | tee "$OUT/make.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fixture build failed"; exit 1; }
mkdir -p "$OUT/hf-tiny" && cp "$FIX"/* "$OUT/hf-tiny/"
echo "--- config.json as this transformers wrote it:"; cat "$FIX/config.json"
# our loader on the real fixture (the skipped test runs now), and the model comparison if it exists
timeout 120 bun test packages/llama/src/hf-fixture.test.ts packages/llama/src/hf-model.test.ts > "$OUT/test.log" 2>&1
echo "bun tests on the fixture:"; grep -E '^\(fail\)|^\(skip\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/test.log" | head -20
# our writer -> transformers: export the fixture through loadHfCheckpoint/saveHfCheckpoint, f32 and bf16 (sharded)
timeout 60 bun packages/llama/src/hf-convert.ts "$FIX" "$OUT/ours-f32" --dtype f32 && \
timeout 60 bun packages/llama/src/hf-convert.ts "$FIX" "$OUT/ours-bf16" --dtype bf16 --shard-bytes 100000 || { echo "export failed"; exit 1; }
timeout 120 python3 packages/llama/fixtures/check_hf_export.py "$FIX" "$OUT/ours-f32" "$OUT/ours-bf16" 2>&1 | grep -v Warning | tail -6
