#!/usr/bin/env bash
# The attention CUDA test file alone (both kernel sets run through it), e.g. after a tolerance change.
set -uo pipefail
timeout 120 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/attention/src/cuda.test.ts 2>&1 | grep -E "^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error" | head -20
