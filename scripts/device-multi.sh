#!/usr/bin/env bash
# Multi-GPU device runs, one stage per call (each must end inside the tool's 10-minute limit).
#   A: GPU tests (2 GPUs), attention kernel vs PyTorch SDPA (1 GPU), NCCL vs torch.distributed (2 GPUs)
#   B: DistAttn vs PyTorch context_parallel on 2 GPUs (T = 64K, 128K, 256K)
#   C: DistAttn vs PyTorch context_parallel on 2 and 4 GPUs; D: leftovers of C (equality, 1M tokens)
#   I3: comm tests, NCCL vs torch.distributed twice alternately, overlap by comm priority and NCCL_MAX_CTAS (2 GPUs)
#   I3B: I3's comparison again after the ranks were aligned on the device (BENCHMARKS.md's comm numbers)
#   I5 / I5G: DistAttn on cuDNN blocks, every schedule and mode, MHA / GQA, PyTorch CP beside it (2 GPUs)
#   I5F: I5 with the high-priority comm stream, plus the bf16 equality on both block backends
#   I5X: overlap experiments at 128K (comm priority, NCCL copy-engine P2P, our kernels) with GPU telemetry
#   I5K / I5KG / I5KZ: the grid on our own kernels; I5KG adds the bf16 equality (2 GPUs)
#   CE1: every GPU test (2 GPUs; the copy-engine transport's conformance and watchdog among them),
#        overlap with NCCL vs copy-engine send/recv, the copy-engine bandwidth sweep beside torch's
#   CE3: the copy-engine watchdog test; what copies cost a GEMM (bench/ce_probe.py); overlap with NCCL
#        P2P channel limits and CTA policy, and with copy-engine chunking variants
#   CE4: CE3's NCCL variants, and an nsys trace of the copy-engine overlap (what runs where)
#   CE5: the overlap by protocol (posted/queued) for NCCL, copy-engine and torch; then DistAttn MHA on
#        cuDNN blocks (lightseq, zigzag; overlap, nocomm) over each transport, PyTorch CP beside it
#   FIN: the overlap (both priorities and protocols) beside torch's; DistAttn on cuDNN blocks, MHA every
#        schedule and mode, GQA overlap and nocomm; PyTorch CP for both, in one call
#   DIAG: where zigzag's MHA overlap cost lies: forward and backward timed apart (BENCH_PHASE), every
#        mode, NCCL; the backward again over the copy-engine transport
#   FIN2: FIN's DistAttn and PyTorch CP part again, after nocomm's receive buffers got real data
#   CE2: DistAttn on cuDNN blocks over the copy-engine transport, MHA and GQA, PyTorch CP beside it
# The I stages write at most 8 files to $OUT (what the device tool brings back): one log and the
# JSON files; they end by printing bench/report.ts's markdown tables. Tables over several stages:
# bun bench/report.ts distattn i5/*.json i5g/*.json ... --cp i5/cp32.json --cp i5g/cp8.json (here, no GPU).
# Usage: source .device/setup.sh && bash scripts/device-multi.sh A|A2|B|C|D|I3|I3B|I5|I5F|I5G|I5X|I5K|I5KG|I5KZ|CE1|CE2
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
bun run build:kernels 2>&1 | tail -1
ngpu=$(nvidia-smi -L | wc -l)

# Stage budget (I stages): a command gets at most CAP seconds and never more than is left of BUDGET,
# counted from the script's start (kernel build included), so a stage ends inside the tool's 10
# minutes whatever the estimates below turn out to be; a command with no time left is skipped.
BUDGET=${BUDGET:-480}
tmo() {
  local cap=$1 left=$((BUDGET - SECONDS))
  shift
  if [ "$left" -lt 15 ]; then echo "skipped (stage budget of ${BUDGET}s spent): $*"; return 124; fi
  [ "$cap" -gt "$left" ] && cap=$left
  # Start and end times go into the log too: the next estimates come from them.
  local c="$*"
  echo "== [${SECONDS}s] $(env | grep -E '^(NCCL_MAX_CTAS|BENCH_[A-Z_]+)=' | sort | tr '\n' ' ')${c:0:200}"
  timeout -k 10 "$cap" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] && echo "timed out after ${cap}s: $*"
  echo "== [${SECONDS}s] exit $rc"
  return "$rc"
}
# Appends a command's output (rank 0's) to $LOG and shows only the lines that say how it went
# (the tables come at the end, from the JSON).
keep() { grep -v -e '^\[rank [1-9]' -e Warning | tee -a "$LOG" | grep -E '^==|^overlap|^wrote|^block kernels|rror|timed out|skipped|^one GPU'; }
keep_eq() { grep -v -e '^\[rank [1-9]' -e Warning | tee -a "$LOG" | grep -E '^==|bf16 equality|rror|timed out'; }
# The files among the arguments that exist and are not empty.
have() { for f in "$@"; do [ -s "$f" ] && printf '%s\n' "$f"; done; }
report() { echo; timeout 30 bun bench/report.ts "$@" 2>&1 | tee -a "$LOG"; }
# "--cp FILE" for each PyTorch CP file among the arguments that exists (report.ts distattn's option).
cp_opts() { for f in $(have "$@"); do printf -- '--cp %s ' "$f"; done; }
# DistAttn on cuDNN blocks, MHA every schedule and mode (~140 s), GQA overlap and nocomm (~90 s), then
# PyTorch CP for both (~90 s), and the tables (stages FIN, FIN2: BENCHMARKS.md's DistAttn grid).
distattn_grid() {
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 tmo 200 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/mha.json" 65536,131072,262144 32 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=8 tmo 130 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/gqa.json" 65536,131072,262144 8 ring,lightseq,zigzag overlap,nocomm 2>&1 | keep
  tmo 70 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp32.json" 65536,131072,262144 32 32 cudnn 2>&1 | keep
  tmo 70 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp8.json" 65536,131072,262144 32 8 cudnn 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/{mha,gqa}.json) $(cp_opts "$OUT/cp32.json" "$OUT/cp8.json")
}
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
I3)
  # Estimate (no GPU timing of these yet; start-up guessed from stages A/A2): kernel build when cached
  # ~5 s; GPU tests of packages/comm and packages/cuda ~70 s (27 s on the CPU here, plus NCCL
  # conformance with a 64 MiB case and the 3 s watchdog test); nccl-bench --trials 10 ~25 s each
  # (start-up and NCCL init ~10 s; the sweep moves ~0.5 GiB per trial per op and size: ~3 s; the
  # overlap ~1 s); torch_dist_bench ~35 s each (import torch, init); three overlap-only runs ~15 s
  # each; reports ~2 s. Total ~250 s; the caps add up past that, BUDGET bounds the whole.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i3.log"
  LIGHTSEQ_REQUIRE_GPU=1 tmo 150 bun test packages/comm packages/cuda > /tmp/i3-test.log 2>&1
  cat /tmp/i3-test.log >> "$LOG"
  grep -E '^==|^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error|timed out|skipped' /tmp/i3-test.log | head -20
  # Ours and torch's alternately, twice: a difference that follows the order is the machine's, not ours.
  for i in 1 2; do
    tmo 75 bun packages/comm/bench/nccl-bench.ts "$OUT/nccl-$i.json" --trials 10 2>&1 | keep
    tmo 90 torchrun --nproc-per-node=2 packages/comm/bench/torch_dist_bench.py "$OUT/torch-$i.json" --trials 10 2>&1 | keep
  done
  # Overlap by comm stream priority (one process, a comm stream per priority), then with NCCL's CTA cap.
  tmo 45 bun packages/comm/bench/nccl-bench.ts "$OUT/overlap.json" --overlap-only --comm-priority default,high --trials 10 2>&1 | keep
  NCCL_MAX_CTAS=16 tmo 45 bun packages/comm/bench/nccl-bench.ts "$OUT/overlap-ctas16.json" --overlap-only --comm-priority default,high --trials 10 2>&1 | keep
  NCCL_MAX_CTAS=8 tmo 45 bun packages/comm/bench/nccl-bench.ts "$OUT/overlap-ctas8.json" --overlap-only --comm-priority default,high --trials 10 2>&1 | keep
  report comm "$OUT/nccl-1.json" "$OUT/torch-1.json"
  report comm "$OUT/nccl-2.json" "$OUT/torch-2.json"
  # shellcheck disable=SC2046
  report overlap $(have "$OUT"/{overlap,overlap-ctas16,overlap-ctas8,torch-1,torch-2}.json)
  ;;
I3B)
  # I3 again after aligning the ranks on the device before each timed trial (nccl-bench's Bench.align)
  # and tightening the barrier's polling: ours and torch's alternately twice, then the overlap by comm
  # stream priority. ~60 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i3b.log"
  for i in 1 2; do
    tmo 75 bun packages/comm/bench/nccl-bench.ts "$OUT/nccl-$i.json" --trials 10 2>&1 | keep
    tmo 90 torchrun --nproc-per-node=2 packages/comm/bench/torch_dist_bench.py "$OUT/torch-$i.json" --trials 10 2>&1 | keep
  done
  tmo 45 bun packages/comm/bench/nccl-bench.ts "$OUT/overlap.json" --overlap-only --comm-priority default,high --trials 10 2>&1 | keep
  report comm "$OUT/nccl-1.json" "$OUT/torch-1.json"
  report comm "$OUT/nccl-2.json" "$OUT/torch-2.json"
  # shellcheck disable=SC2046
  report overlap $(have "$OUT"/{overlap,torch-1,torch-2}.json)
  ;;
CE1)
  # Every GPU test on 2 GPUs (~150 s: the kernels' suites, comm's NCCL and copy-engine conformance and
  # watchdogs, DistAttn's bf16 checks), then the GEMM/exchange overlap with each send/recv transport
  # (~30 s each), then the copy-engine bandwidth sweep (~60 s) and torch.distributed's (~70 s).
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/ce1.log"
  tmo 240 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages > "$OUT/test.log" 2>&1
  grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error:' "$OUT/test.log" | sort | uniq -c | head -20 | tee -a "$LOG"
  for p2p in nccl copy-engine; do
    LIGHTSEQ_P2P=$p2p tmo 50 bun packages/comm/bench/nccl-bench.ts "$OUT/overlap-$p2p.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep
  done
  LIGHTSEQ_P2P=copy-engine tmo 80 bun packages/comm/bench/nccl-bench.ts "$OUT/nccl-ce.json" --trials 7 2>&1 | keep
  tmo 90 torchrun --nproc-per-node=2 packages/comm/bench/torch_dist_bench.py "$OUT/torch.json" --trials 7 2>&1 | keep
  report comm "$OUT/nccl-ce.json" "$OUT/torch.json"
  # shellcheck disable=SC2046
  report overlap $(have "$OUT"/{overlap-nccl,overlap-copy-engine,torch}.json)
  ;;
CE3)
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/ce3.log"
  tmo 60 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/comm/src/nccl.test.ts -t "watchdog" 2>&1 | grep -E '^\(fail\)|^\(pass\)|^ *[0-9]+ (pass|fail)$' | tee -a "$LOG"
  tmo 60 python3 bench/ce_probe.py 256 2>&1 | tee -a "$LOG" | grep '^{'
  for v in NCCL_MAX_P2P_NCHANNELS=8 NCCL_MAX_P2P_NCHANNELS=4 NCCL_MAX_P2P_NCHANNELS=2 NCCL_CTA_POLICY=1; do
    (export "${v?}" LIGHTSEQ_P2P=nccl && tmo 30 bun packages/comm/bench/nccl-bench.ts "$OUT/ov-$v.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep)
  done
  LIGHTSEQ_P2P=nccl tmo 30 bun packages/comm/bench/nccl-bench.ts "$OUT/ov-nccl.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep
  LIGHTSEQ_P2P=copy-engine LIGHTSEQ_P2P_CHUNK_MIB=64 LIGHTSEQ_P2P_SLOTS=2 tmo 30 bun packages/comm/bench/nccl-bench.ts "$OUT/ov-ce64.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep
  # shellcheck disable=SC2046
  report overlap $(have "$OUT"/ov-*.json) > /dev/null
  tar czf "$OUT/ov.tgz" -C "$OUT" $(cd "$OUT" && ls ov-*.json) && rm -f "$OUT"/ov-*.json
  tail -14 "$LOG"
  ;;
CE4)
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/ce4.log"
  for v in NCCL_MAX_P2P_NCHANNELS=8 NCCL_MAX_P2P_NCHANNELS=4 NCCL_MAX_P2P_NCHANNELS=2 NCCL_CTA_POLICY=1 NCCL_CTA_POLICY=2; do
    (export "${v?}" LIGHTSEQ_P2P=nccl && tmo 30 bun packages/comm/bench/nccl-bench.ts "$OUT/ov-$v.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep)
  done
  (export LIGHTSEQ_P2P=nccl && tmo 30 bun packages/comm/bench/nccl-bench.ts "$OUT/ov-nccl.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep)
  # shellcheck disable=SC2046
  report overlap $(have "$OUT"/ov-*.json) > /dev/null
  tar czf "$OUT/ov.tgz" -C "$OUT" $(cd "$OUT" && ls ov-*.json) && rm -f "$OUT"/ov-*.json
  if command -v nsys > /dev/null; then
    (export LIGHTSEQ_P2P=copy-engine && tmo 120 nsys profile -o /tmp/ce --force-overwrite true --trace=cuda bun packages/comm/bench/nccl-bench.ts /tmp/ov-trace.json --overlap-only --comm-priority high --trials 3 > /tmp/nsys.log 2>&1)
    tail -3 /tmp/nsys.log
    for f in /tmp/ce*.nsys-rep; do
      timeout 60 nsys stats --report cuda_gpu_kern_sum,cuda_gpu_mem_time_sum --format csv "$f" 2>/dev/null | head -40
    done > "$OUT/nsys.txt"
    head -60 "$OUT/nsys.txt"
  else
    echo "no nsys"
  fi
  tail -14 "$LOG"
  ;;
CE5)
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/ce5.log"
  tmo 60 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/cuda packages/comm/src/nccl.test.ts 2>&1 | grep -E '^\(fail\)|^ *[0-9]+ (pass|fail)$' | tee -a "$LOG"
  for p2p in nccl copy-engine; do
    (export LIGHTSEQ_P2P=$p2p && tmo 40 bun packages/comm/bench/nccl-bench.ts "$OUT/ov-$p2p.json" --overlap-only --comm-priority high --trials 10 2>&1 | keep)
  done
  tmo 60 torchrun --nproc-per-node=2 packages/comm/bench/torch_dist_bench.py "$OUT/torch.json" --trials 5 2>&1 | keep
  # shellcheck disable=SC2046
  report overlap $(have "$OUT"/{ov-nccl,ov-copy-engine,torch}.json)
  for p2p in copy-engine nccl; do
    nb=0; [ "$p2p" = nccl ] && nb=1
    (export LIGHTSEQ_P2P=$p2p BENCH_NO_BASELINE=$nb && BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 tmo 150 bun packages/attention/bench/distattn-bench.ts \
      "$OUT/dist-$p2p.json" 65536,131072,262144 32 lightseq,zigzag overlap,nocomm 2>&1 | keep)
  done
  tmo 90 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp32.json" 65536,131072,262144 32 32 cudnn 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/dist-{copy-engine,nccl}.json) $(cp_opts "$OUT/cp32.json")
  ;;
FIN)
  # ~20 s overlap, ~140 s DistAttn MHA (27 rows + baseline), ~90 s GQA (18 rows + baseline), ~100 s CP.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/fin.log"
  tmo 40 bun packages/comm/bench/nccl-bench.ts "$OUT/ov.json" --overlap-only --comm-priority default,high --trials 10 2>&1 | keep
  tmo 60 torchrun --nproc-per-node=2 packages/comm/bench/torch_dist_bench.py "$OUT/torch.json" --trials 5 2>&1 | keep
  report overlap "$OUT/ov.json" "$OUT/torch.json"
  distattn_grid
  ;;
DIAG)
  export CUDA_VISIBLE_DEVICES=0,1 BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 BENCH_NO_BASELINE=1
  LOG="$OUT/diag.log"
  for ph in fwd bwd; do
    BENCH_PHASE=$ph tmo 90 bun packages/attention/bench/distattn-bench.ts "$OUT/$ph.json" 65536,131072,262144 32 zigzag overlap,sync,nocomm 2>&1 | keep
  done
  LIGHTSEQ_P2P=copy-engine BENCH_PHASE=bwd tmo 80 bun packages/attention/bench/distattn-bench.ts "$OUT/bwd-ce.json" 65536,131072,262144 32 zigzag overlap,sync,nocomm 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/{fwd,bwd,bwd-ce}.json)
  ;;
FIN2)
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/fin2.log"
  distattn_grid
  ;;
CE2)
  # DistAttn on cuDNN blocks with copy-engine send/recv: MHA every schedule and mode (~150 s), GQA zigzag
  # and lightseq overlap/nocomm (~70 s), PyTorch CP MHA beside it (~50 s).
  export CUDA_VISIBLE_DEVICES=0,1 LIGHTSEQ_P2P=copy-engine
  LOG="$OUT/ce2.log"
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 tmo 230 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/ce-mha.json" 65536,131072,262144 32 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=8 tmo 110 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/ce-gqa.json" 65536,131072,262144 8 lightseq,zigzag overlap,nocomm 2>&1 | keep
  tmo 90 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp32.json" 65536,131072,262144 32 32 cudnn 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/{ce-mha,ce-gqa}.json) $(cp_opts "$OUT/cp32.json")
  ;;
I5)
  # DistAttn on cuDNN blocks, MHA (Hkv 32), every schedule and mode, then PyTorch CP (Hkv 32), then the
  # comm stream experiment. Estimate from BENCHMARKS.md (2x H100, cuDNN blocks): overlap per fwd+bwd
  # zigzag 127 / 471 / 1828 ms and ring ~ lightseq (the same schedule at P = 2) 177 / 693 / 2724 ms at
  # 64K / 128K / 256K, sync and nocomm about the same; one GPU ~216 / 918 / 3710 ms (1.70x, 1.95x,
  # 2.03x). Each mode and the baseline run 4 times (1 warm-up + BENCH_REPS 3): 256K 3 modes x 4 x
  # (2.72 + 2.72 + 1.83) s = 87 s + baseline 15 s; 128K 22 + 4 s; 64K 6 + 1 s: ~135 s + ~30 s start-up
  # and cuDNN graph builds. PyTorch CP: 4 CP and 4 one-GPU runs per T, ~30 s + ~20 s start-up.
  # Experiment (64K zigzag, overlap and nocomm, 7 reps, no baseline): 3 runs x ~20 s. Total ~280 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5.log"
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32,8 tmo 300 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-cudnn-mha.json" 65536,131072,262144 32 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  tmo 120 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp32.json" 65536,131072,262144 32 32 cudnn 2>&1 | keep
  # Does the overlap's cost over nocomm (7.5% at 64K) shrink with a high-priority comm stream, or with
  # NCCL held to 8 CTAs? The same settings with the default stream first, as the control.
  for v in default high ctas8; do
    prio=default ctas=()
    [ "$v" = high ] && prio=high
    [ "$v" = ctas8 ] && ctas=(NCCL_MAX_CTAS=8)
    BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_NO_BASELINE=1 BENCH_REPS=7 BENCH_COMM_PRIORITY=$prio tmo 60 env "${ctas[@]}" \
      bun packages/attention/bench/distattn-bench.ts "$OUT/exp-$v.json" 65536 32 zigzag overlap,nocomm 2>&1 | keep
  done
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/{distattn-cudnn-mha,exp-default,exp-high,exp-ctas8}.json) $(cp_opts "$OUT/cp32.json")
  ;;
I5X)
  # Why zigzag's overlap costs 8-10% over nocomm on cuDNN blocks (I5, 2026-11-26): 128K zigzag MHA,
  # overlap and nocomm, with the default comm stream, a high-priority one, NCCL's copy-engine P2P
  # (NCCL_P2P_USE_CUDA_MEMCPY=1), and our own (non-persistent) kernels; GPU clocks, power and throttle
  # reasons logged every second meanwhile. ~20 s a run: ~90 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5x.log"
  nvidia-smi --query-gpu=index,clocks.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader,nounits -l 1 > /tmp/smi.csv 2>&1 &
  smi=$!
  for v in cudnn cudnn-high cudnn-memcpy cuda; do
    be=cudnn prio=default extra=()
    [ "$v" = cudnn-high ] && prio=high
    [ "$v" = cudnn-memcpy ] && extra=(NCCL_P2P_USE_CUDA_MEMCPY=1)
    [ "$v" = cuda ] && be=cuda
    BENCH_BACKEND=$be BENCH_EQUALITY=skip BENCH_NO_BASELINE=1 BENCH_REPS=5 BENCH_COMM_PRIORITY=$prio tmo 60 env "${extra[@]}" \
      bun packages/attention/bench/distattn-bench.ts "$OUT/x-$v.json" 131072 32 zigzag overlap,nocomm 2>&1 | keep
  done
  kill "$smi" 2>/dev/null
  cp /tmp/smi.csv "$OUT/smi.csv"
  echo "GPU telemetry during the runs (per GPU: SM clock min/median/max MHz, power max W / limit, temperature max C, throttle reasons seen):"
  python3 - <<'PY'
import collections, statistics
rows = collections.defaultdict(list)
for line in open("/tmp/smi.csv"):
    f = [x.strip() for x in line.split(",")]
    if len(f) == 6 and f[0].isdigit():
        rows[f[0]].append(f)
for g, rs in sorted(rows.items()):
    clk = [float(r[1]) for r in rs]; pw = [float(r[2]) for r in rs]
    print(f"GPU {g}: clocks {min(clk):.0f}/{statistics.median(clk):.0f}/{max(clk):.0f}, power max {max(pw):.0f}/{rs[0][3]}, temp max {max(float(r[4]) for r in rs):.0f}, reasons {sorted(set(r[5] for r in rs))}")
PY
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/x-{cudnn,cudnn-high,cudnn-memcpy,cuda}.json)
  ;;
I5KZ)
  # Our own kernels (wgmma on H100), MHA, every schedule and mode at 64K and 128K, zigzag at 256K;
  # one-GPU baselines. ~120 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5kz.log"
  BENCH_BACKEND=cuda BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 tmo 200 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-cuda-mha.json" 65536,131072 32 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  BENCH_BACKEND=cuda BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 tmo 120 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-cuda-mha-256k.json" 262144 32 zigzag overlap,sync,nocomm 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/distattn-cuda-mha{,-256k}.json)
  ;;
I5F)
  # DistAttn on cuDNN blocks, MHA, every schedule and mode, with the comm stream at high priority (the
  # default since I5X), beside PyTorch CP (MHA) in the same call; then the bf16 equality with one-GPU
  # attention for every schedule, MHA and GQA, on cuDNN blocks and on our kernels. ~250 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5f.log"
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32 tmo 280 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-cudnn-mha.json" 65536,131072,262144 32 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  tmo 100 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp32.json" 65536,131072,262144 32 32 cudnn 2>&1 | keep
  for be in cudnn cuda; do
    BENCH_BACKEND=$be BENCH_EQUALITY=only tmo 45 bun packages/attention/bench/distattn-bench.ts "$OUT/eq-$be.json" 0 0 ring,lightseq,zigzag 2>&1 |
      keep_eq
  done
  # shellcheck disable=SC2046
  report distattn $(have "$OUT"/{distattn-cudnn-mha,eq-cudnn,eq-cuda}.json) $(cp_opts "$OUT/cp32.json")
  ;;
I5G)
  # As I5 for GQA (Hkv 8; PyTorch CP repeats K/V to 32 heads, so its cost is MHA's): ~165 s DistAttn
  # (cuDNN's GQA blocks cost about MHA's) + ~50 s PyTorch CP. Total ~220 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5g.log"
  BENCH_BACKEND=cudnn BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32,8 tmo 300 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-cudnn-gqa.json" 65536,131072,262144 8 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  tmo 120 torchrun --nproc-per-node=2 bench/torch_cp_attn.py "$OUT/cp8.json" 65536,131072,262144 32 8 cudnn 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT/distattn-cudnn-gqa.json") $(cp_opts "$OUT/cp8.json")
  ;;
I5K)
  # The I5 grid on our own kernel, MHA. Estimate from BENCHMARKS.md (stage B, our kernel, 2 GPUs):
  # ring / lightseq / zigzag 352 / 360 / 246 ms at 64K, 1432 / 1455 / 961 at 128K, 5632 / 5719 / 3883
  # at 256K; one GPU 443 / 1788 / 7416 ms. 4 runs per mode: 256K 3 x 4 x 15.2 s = 183 s + baseline
  # 30 s; 128K 46 + 7 s; 64K 12 + 2 s: ~280 s + ~30 s start-up = ~310 s. Those were the mma.sync
  # kernels; on H100 the default is now wgmma (the log's "block kernels" line says which ran), likely
  # faster, so this is an upper estimate. Over ~500 s with GQA as well, hence I5KG.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5k.log"
  BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32,8 tmo 420 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-ours-mha.json" 65536,131072,262144 32 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  report distattn $(have "$OUT/distattn-ours-mha.json")
  ;;
I5KG)
  # As I5K for GQA (Hkv 8, ~310 s), then the bf16 equality with one-GPU attention (T = 8229, every
  # schedule, MHA and GQA, our kernel: ~20 s with start-up). Total ~330 s.
  export CUDA_VISIBLE_DEVICES=0,1
  LOG="$OUT/i5kg.log"
  BENCH_EQUALITY=skip BENCH_ALL_MODES_HKV=32,8 tmo 400 bun packages/attention/bench/distattn-bench.ts \
    "$OUT/distattn-ours-gqa.json" 65536,131072,262144 8 ring,lightseq,zigzag overlap,sync,nocomm 2>&1 | keep
  BENCH_EQUALITY=only tmo 60 bun packages/attention/bench/distattn-bench.ts "$OUT/equality-ours.json" 0 0 ring,lightseq,zigzag 2>&1 | keep
  # shellcheck disable=SC2046
  report distattn $(have "$OUT/distattn-ours-gqa.json" "$OUT/equality-ours.json")
  ;;
esac
