#!/usr/bin/env bash
# PyTorch's Llama-2-7B training on one H200, the baseline rows that issues 13 and 14 set ours beside
# (bench/torch_llama_train.py: FSDP2 + full activation checkpointing + cuDNN SDPA + fused AdamW):
#   32k           seq 32768,  torch.compile per block, 3 steps (1 warm-up)   est ~130 s (compile ~90 s)
#   64k           seq 65536,  torch.compile per block, 3 steps (1 warm-up)   est ~160 s (compile ~90 s)
#   128k-offload  seq 131072, CPUOffloadPolicy, eager, 2 steps (1 warm-up)   est ~190 s (~63 s a step)
#   256k-offload  seq 262144, CPUOffloadPolicy, eager, expected OOM in step 1 (its fp32 logits) est ~90 s
# Estimates from ../shared/DESIGN.md section 9 (5,872 tok/s at 32K = 5.6 s a step; 4,035 at 64K; 2,089
# at 128K offloaded) plus start-up, compile and (offload) pinning ~110 GB of host memory. The offload
# rows run eager: at 128K attention is ~70% of the FLOPs, and a compile minute would not fit the cap.
# All four need ~9.5 min, more than one device call should take: by default the rows run in order
# while their estimate fits BUDGET (480 s); the others are listed as skipped. Two calls cover them:
#   ROWS="32k 64k" bash scripts/gpu/torch-baseline.sh        (~5 min)
#   ROWS="128k-offload 256k-offload" bash scripts/gpu/torch-baseline.sh   (~5 min)
# COMPILE=0 runs the 32k/64k rows eager (all four then fit in ~6.5 min). Rows may also be given as
# arguments. Each row is capped (timeout); a row that runs out of GPU or host memory is a result row.
# Environment, as a user training at these lengths sets it: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# (what PyTorch's own OOM message advises against fragmentation; override by exporting another value),
# and NVLink multicast off for NCCL/torch (the machines' rule).
# Writes $OUT/torch-<row>.json (bench/torch_llama_train.py's row) and .log; the table comes last.
# Usage (device tool, repository root): bash scripts/gpu/torch-baseline.sh [ROW ...]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
BUDGET=${BUDGET:-480}
COMPILE=${COMPILE:-1}
if [ "$#" -gt 0 ]; then rows=("$@"); else read -r -a rows <<<"${ROWS:-32k 64k 128k-offload 256k-offload}"; fi
compile_flag=--compile
[ "$COMPILE" = 0 ] && compile_flag=--no-compile

# row -> "estimate_s cap_s arguments"
spec() {
  case $1 in
    32k) echo "130 240 --seq 32768 --steps 3 --warmup-steps 1 $compile_flag" ;;
    64k) echo "160 270 --seq 65536 --steps 3 --warmup-steps 1 $compile_flag" ;;
    128k-offload) echo "190 300 --seq 131072 --steps 2 --warmup-steps 1 --cpu-offload --no-compile" ;;
    256k-offload) echo "90 200 --seq 262144 --steps 2 --warmup-steps 1 --cpu-offload --no-compile" ;;
    *) return 1 ;;
  esac
}
for r in "${rows[@]}"; do
  spec "$r" >/dev/null || { echo "torch-baseline: unknown row '$r'; rows are 32k 64k 128k-offload 256k-offload"; exit 2; }
done

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
free -g | sed -n 2p | awk '{print "host memory: " $2 " GiB"}'
python3 -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())'
echo "PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF; rows: ${rows[*]}; budget ${BUDGET}s"

declare -A note
for r in "${rows[@]}"; do
  read -r est cap args <<<"$(spec "$r")"
  left=$((BUDGET - SECONDS))
  rm -f "$OUT/torch-$r.json"
  if [ "$est" -gt "$left" ]; then
    note[$r]="skipped: needs ~${est}s, ${left}s of the budget left (run it in another call: ROWS=$r)"
    echo "== $r ${note[$r]}"
    continue
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== [${SECONDS}s] $r (cap ${cap}s): torchrun --standalone --nproc-per-node=1 bench/torch_llama_train.py --preset llama2-7b $args"
  t0=$SECONDS
  # shellcheck disable=SC2086  # $args is a list of flags
  timeout -k 15 "$cap" torchrun --standalone --nproc-per-node=1 bench/torch_llama_train.py \
    --preset llama2-7b $args --out "$OUT/torch-$r.json" >"$OUT/torch-$r.log" 2>&1
  rc=$?
  grep -E '^(torch_llama_train|init|step|compile failed|OOM|\[rank)|^torch llama' "$OUT/torch-$r.log" | grep -v '^\[rank [1-9]'
  note[$r]="exit $rc in $((SECONDS - t0))s"
  if [ ! -s "$OUT/torch-$r.json" ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      note[$r]="timed out after ${cap}s (no result row)"
    elif grep -qE 'Signal 9|SIGKILL' "$OUT/torch-$r.log"; then
      note[$r]="killed by signal 9 after $((SECONDS - t0))s: host out of memory? (no result row)"
    else
      note[$r]="failed, exit $rc: $(grep -m1 -E '^[A-Za-z.]*(Error|Exception)' "$OUT/torch-$r.log" | cut -c1-160)"
    fi
    echo "   ${note[$r]}"
  fi
done

echo
echo "PyTorch Llama-2-7B on one GPU (FSDP2 + full AC + cuDNN SDPA + fused AdamW; PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF)"
for r in "${rows[@]}"; do printf '%s\t%s\n' "$r" "${note[$r]}"; done >"$OUT/torch-baseline.notes"
python3 - "$OUT" <<'PY' | tee "$OUT/torch-baseline.md"
import json, os, sys

out = sys.argv[1]
ref = {"32k": "5,872 eager / 6,254 compiled", "64k": "4,035", "128k-offload": "2,089", "256k-offload": "OOM"}
print("| row | status | tok/s | MFU | step s | compile s | GPU alloc / reserved GiB | host GiB | loss first -> last | DESIGN.md tok/s | run |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
for line in open(os.path.join(out, "torch-baseline.notes")):
    row, note = line.rstrip("\n").split("\t", 1)
    path = os.path.join(out, f"torch-{row}.json")
    if not os.path.exists(path):
        print(f"| {row} | no result | | | | | | | | {ref[row]} | {note} |")
        continue
    r = json.load(open(path))
    mem = f"{r.get('peak_mem_allocated_gib', 0):.1f} / {r.get('peak_mem_reserved_gib', 0):.1f}"
    host = f"{r.get('peak_host_rss_gib', 0):.1f}"
    losses = r.get("losses") or []
    loss = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
    status = {"ok": "ok", "oom": f"OOM at step {r.get('oom_step')}"}.get(r["status"], r["status"])
    if r["compile"].startswith("failed"):
        status += " (compile failed, ran eager)"
    elif r["compile"] == "on":
        status += f" (compiled, {r.get('compiled_graphs', '?')} graphs)"
    if "tokens_per_s" in r:
        nums = f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['median_step_s']:.2f} | {r['compile_s']:.0f}"
    else:
        nums = " | | | "
    print(f"| {row} | {status} | {nums} | {mem} | {host} | {loss} | {ref[row]} | {note} |")
PY
