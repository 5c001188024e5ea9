#!/usr/bin/env bash
# One device run for the foundation: probe the machine, check hand-declared ABI values against the
# headers, build the kernels, run the GPU tests, run our benchmarks and PyTorch's on the same card.
# Usage (device tool, carry [".device"]): source .device/setup.sh && bash scripts/device-foundation.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  ldconfig -p | grep -E 'libcuda\.so|nccl|cublas|cudnn' | head
  ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
} 2>&1 | tee "$OUT/probe.log"
inc=$(dirname "$(find / -name cublasLt.h -path '*include*' 2>/dev/null | head -1)")
echo "cublasLt.h in $inc"
nvcc -I"$inc" -I/usr/local/cuda/include scripts/abi-check.c -o /tmp/abi-check -x cu 2>&1 | tail -3 && /tmp/abi-check | tee "$OUT/abi.log"
bun run build:kernels 2>&1 | tail -3
LIGHTSEQ_REQUIRE_GPU=1 bun test ${TEST_PATHS:-packages} 2>&1 | tee "$OUT/test.log" | grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|error:' | head -40
bun bench/foundation.ts "$OUT/ours.json" 2>&1 | tee "$OUT/bench.log"
python3 bench/torch_foundation.py "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
bun run demo 2>&1 | tail -8
