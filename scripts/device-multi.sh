#!/usr/bin/env bash
# Multi-GPU device runs, one stage per call (each must end inside the tool's 10-minute limit).
#   A: GPU tests (2 GPUs), attention kernel vs PyTorch SDPA (1 GPU), NCCL vs torch.distributed (2 GPUs)
#   B: DistAttn vs PyTorch context_parallel on 2 GPUs (T = 64K, 128K, 256K)
#   C: DistAttn vs PyTorch context_parallel on 4 GPUs (T = 128K .. 512K)
# Usage: source .device/setup.sh && bash scripts/device-multi.sh A|B|C
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
bun run build:kernels 2>&1 | tail -1
ngpu=$(nvidia-smi -L | wc -l)
case "${1:-A}" in
A2)
  # Comm (NCCL) and attention GPU tests, NCCL bandwidth, the cuDNN backend check.
  export CUDA_VISIBLE_DEVICES=0,1
  timeout 200 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/comm packages/attention/src/cuda.test.ts > "$OUT/test.log" 2>&1
  grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/test.log" | head -20
  timeout 100 bun packages/comm/bench/nccl-bench.ts "$OUT/nccl.json" --trials 5 2>&1 | grep -v '^\[rank [1-9]' | tail -24
  inc=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(nvidia.cudnn.__path__[0], "include"))')
  cc -I"$inc" -I/usr/local/cuda/include packages/attention/bench/cudnn-abi.c -o /tmp/cudnn-abi && /tmp/cudnn-abi > "$OUT/cudnn-abi.txt"
  CUDA_VISIBLE_DEVICES=0 timeout 150 bun packages/attention/bench/cudnn-check.ts "$OUT/cudnn-abi.txt" --reps 3 > "$OUT/cudnn.log" 2>&1; tail -30 "$OUT/cudnn.log"
  ;;
A)
  export CUDA_VISIBLE_DEVICES=0,1
  timeout 240 env LIGHTSEQ_REQUIRE_GPU=1 bun test ${TEST_PATHS:-packages} > "$OUT/test.log" 2>&1
  grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$' "$OUT/test.log" | sort | uniq -c | head -20
  CUDA_VISIBLE_DEVICES=0 timeout 120 bun packages/attention/bench/attn-bench.ts "$OUT/attn.json" --reps 3 2>&1 | tail -12
  CUDA_VISIBLE_DEVICES=0 timeout 100 python3 packages/attention/bench/torch_sdpa_bench.py "$OUT/sdpa.json" 2>&1 | tail -12
  timeout 120 bun packages/comm/bench/nccl-bench.ts "$OUT/nccl.json" --trials 5 2>&1 | grep -v '^\[rank [1-9]' | tail -40
  timeout 120 torchrun --nproc-per-node=2 packages/comm/bench/torch_dist_bench.py "$OUT/torchdist.json" --trials 5 2>&1 | grep -v Warning | tail -40
  ;;
B)
  export CUDA_VISIBLE_DEVICES=0,1
  timeout 400 bun packages/attention/bench/distattn-bench.ts "$OUT/distattn2.json" 65536,131072,262144 32,8 2>&1 | grep -v '^\[rank [1-9]' | tail -30
  timeout 180 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp2.json" 65536,131072,262144 32 32 cudnn 2>&1 | grep '^{' | tail -10
  ;;
BD)
  # Leftovers: zigzag GQA equality (2 GPUs); 4 GPUs: share of communication hidden at 256K; 1M tokens.
  CUDA_VISIBLE_DEVICES=0,1 BENCH_EQUALITY=only timeout 50 bun packages/attention/bench/distattn-bench.ts "$OUT/eq2.json" 0 0 zigzag 2>&1 | grep -v '^\[rank [1-9]' | tail -3
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_REPS=2 BENCH_ALL_MODES_HKV=32 timeout 60 bun packages/attention/bench/distattn-bench.ts "$OUT/hidden4.json" 262144 32 zigzag,lightseq overlap,nocomm 2>&1 | grep -v '^\[rank [1-9]' | tail -3
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_REPS=1 BENCH_NO_BASELINE=1 timeout 80 bun packages/attention/bench/distattn-bench.ts "$OUT/m1.json" 1048576 32 zigzag overlap 2>&1 | grep -v '^\[rank [1-9]' | tail -3
  ;;
C)
  # 2 GPUs: PyTorch context_parallel, DistAttn bf16 equality, DistAttn on cuDNN blocks; then 4 GPUs.
  CUDA_VISIBLE_DEVICES=0,1 timeout 130 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp2.json" 65536,131072,262144 32 32 cudnn 2>&1 | grep '^{' | tail -4
  CUDA_VISIBLE_DEVICES=0,1 BENCH_EQUALITY=only timeout 50 bun packages/attention/bench/distattn-bench.ts "$OUT/eq2.json" 2>&1 | grep -v '^\[rank [1-9]' | tail -8
  CUDA_VISIBLE_DEVICES=0,1 BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 timeout 100 bun packages/attention/bench/distattn-bench.ts "$OUT/distattn2-cudnn.json" 65536,131072,262144 32 zigzag,lightseq overlap,nocomm 2>&1 | grep -v '^\[rank [1-9]' | tail -8
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_REPS=2 BENCH_ALL_MODES_HKV=0 timeout 220 bun packages/attention/bench/distattn-bench.ts "$OUT/distattn4.json" 131072,262144,524288 32,8 ring,lightseq,zigzag overlap 2>&1 | grep -v '^\[rank [1-9]' | tail -30
  timeout 90 torchrun --nproc-per-node="$ngpu" bench/torch_cp_attn.py "$OUT/cp4.json" 131072,262144,524288 32 32 cudnn 2>&1 | grep '^{' | tail -4
  ;;
D)
  # Leftovers: zigzag GQA equality (2 GPUs); 4 GPUs: share of communication hidden at 256K; 1M tokens.
  CUDA_VISIBLE_DEVICES=0,1 BENCH_EQUALITY=only timeout 50 bun packages/attention/bench/distattn-bench.ts "$OUT/eq2.json" 0 0 zigzag 2>&1 | grep -v '^\[rank [1-9]' | tail -3
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_REPS=2 BENCH_ALL_MODES_HKV=32 timeout 60 bun packages/attention/bench/distattn-bench.ts "$OUT/hidden4.json" 262144 32 zigzag,lightseq overlap,nocomm 2>&1 | grep -v '^\[rank [1-9]' | tail -3
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_REPS=1 BENCH_NO_BASELINE=1 timeout 80 bun packages/attention/bench/distattn-bench.ts "$OUT/m1.json" 1048576 32 zigzag overlap 2>&1 | grep -v '^\[rank [1-9]' | tail -3
  ;;
C)
  BENCH_REPS=2 BENCH_ALL_MODES_HKV=0 timeout 420 bun packages/attention/bench/distattn-bench.ts "$OUT/distattn4.json" 131072,262144,524288 32,8 ring,lightseq,zigzag overlap 2>&1 | grep -v '^\[rank [1-9]' | tail -30
  timeout 150 torchrun --nproc-per-node="$ngpu" bench/torch_cp_attn.py "$OUT/cp4.json" 131072,262144,524288 32 32 cudnn 2>&1 | grep '^{' | tail -10
  ;;
esac
