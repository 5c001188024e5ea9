#!/usr/bin/env bash
# One-GPU run for the Llama model (issue 11): the llama GPU tests (tiny model in bf16 on the GPU against
# the f32 CPU model; the seeded init equal on both devices; the ops' GPU checks if present), then one
# Llama-2-7B decoder layer forward+backward at 32K and 64K tokens, ours (layer-bench.ts, cuDNN attention)
# beside PyTorch eager and torch.compile (torch_llama_layer.py, SDPA cuDNN). The table comes last.
# Usage (repository root): source .device/setup.sh && bash scripts/gpu/llama-model.sh   (results in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
bun kernels/build.ts 2>&1 | tail -1
timeout 300 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/llama packages/checkpointing > "$OUT/llama-test.log" 2>&1
echo "llama tests:"; grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error|^loss:|^gradient relative|^attention backend' "$OUT/llama-test.log" | head -30
timeout 240 python3 packages/llama/bench/torch_llama_layer.py "$OUT/torch_layer.json" 2>&1 | tee "$OUT/torch_layer.log" | grep -vE '^\s' | tail -8
timeout 200 bun packages/llama/bench/layer-bench.ts "$OUT/layer.json" --torch "$OUT/torch_layer.json" 2>&1 | tee "$OUT/layer.log" | tail -12
