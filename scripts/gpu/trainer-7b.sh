#!/usr/bin/env bash
# The trainer on one H200 (issue 13's GPU acceptance). Parts (PARTS="smoke 7b", PARTS=small; default all,
# about 8 minutes):
#   smoke  the tiny preset at 512 tokens for 3 steps, AdamW per layer during the backward, the
#          optimizer state on the device, then in pinned host memory (StreamedAdamW): same losses  ~40 s
#   7b     llama2-7b at 32K tokens, STEPS7B (20) steps on the Brown corpus (Llama-2 tokenizer), the
#          preset's per-layer update (no whole-model gradient), --optimizer auto (the estimator's
#          choice, printed at start: the state on the device, remat-aware), warmup 5 of a 20-step
#          schedule, no snapshots (a 7B state is 81 GB) and no export: loss, tokens/s, MFU   ~4 min
#   small  tinyllama-1.1b at 2K tokens: 4 steps uninterrupted with the export (run A); our loss and
#          transformers' on a held-out sequence of the export (f32 on both sides); then 2 steps + a
#          snapshot and --resume to 4 (run B): B's losses against A's                 est ~2.5 min
#          (SMALL_RUNS: which of runs a, b, c (below) to run, default all; SMALL_HF=0: run A without the export and the transformers check; SMALL_EXTRA: more flags
#          for the three runs, e.g. "--attention cuda". By default neither GPU attention backward is
#          deterministic (dQ by f32 atomics): A and B agree to run-to-run noise, from step 2 on, not to
#          the bit. SMALL_EXTRA="--deterministic" takes cuDNN's deterministic backward (with --attention
#          cuda it is refused: our kernels have none); then A and B should agree to the bit)
# Each run is capped (timeout). Writes $OUT/<run>.log and <run>.metrics.jsonl; the table comes last.
# Usage (device tool, repository root): source .device/setup.sh && PARTS="smoke 7b" bash scripts/gpu/trainer-7b.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PARTS=${PARTS:-smoke 7b small}
STEPS7B=${STEPS7B:-20}
for p in $PARTS; do
  case $p in smoke | 7b | small) ;; *) echo "PARTS: unknown part \"$p\" (parts: smoke 7b small)"; exit 2 ;; esac
done
want() { [[ " $PARTS " == *" $1 "* ]]; }
SMALL_RUNS=${SMALL_RUNS:-a b c}
swant() { [[ " $SMALL_RUNS " == *" $1 "* ]]; }
RUNS=${RUNS_DIR:-/tmp/trainer-runs}
rm -rf "$RUNS" && mkdir -p "$RUNS"
t_start=$SECONDS
timeout 240 bun kernels/build.ts > "$OUT/build.log" 2>&1 || { echo "kernel build failed:"; tail -20 "$OUT/build.log"; exit 1; }
echo "kernels built ($((SECONDS - t_start)) s); parts: $PARTS"

# run NAME CAP ARGS...: the trainer, its output in $OUT/NAME.log, the step lines shown
run() {
  local name=$1 cap=$2
  shift 2
  local t0=$SECONDS
  timeout "$cap" bun run apps/trainer "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "^policy|^attention|^step |^snapshot|^resumed|^exported|^stopped|trainer:|job failed|rror" "$OUT/$name.log" | tail -40
  echo "[$name] exit $rc in $((SECONDS - t0)) s"
  [ -f "$RUNS/$name/metrics.jsonl" ] && cp "$RUNS/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl"
  [ -f "$RUNS/$name/loss.png" ] && cp "$RUNS/$name/loss.png" "$OUT/$name.loss.png"
  return $rc
}

rc_smoke="-"; rc7="-"; hf_line="not run"
if want smoke; then
  SMOKE=(--seq 512 --steps 3 --warmup 1 --decay-steps 3 --nprocs 1 --cp 1 --update per-layer --snapshots=false --export=false)
  run smoke 120 "${SMOKE[@]}" --optimizer device --out "$RUNS/smoke"
  rc_smoke=$?
  run smoke-host 120 "${SMOKE[@]}" --optimizer host --out "$RUNS/smoke-host"
  rc_smoke="$rc_smoke/$?"
fi

if want 7b; then
  run 7b 330 --preset llama2-7b-32k --steps "$STEPS7B" --decay-steps 20 --optimizer auto \
    --snapshots=false --export=false --out "$RUNS/7b"
  rc7=$?
fi

if want small; then
  # shellcheck disable=SC2206  # SMALL_EXTRA is a list of flags (e.g. "--attention cuda")
  SMALL=(--model tinyllama-1.1b --seq 2048 --batch 1 --lr 3e-4 --min-lr 3e-5 --warmup 2 --decay-steps 4 --nprocs 1 --cp 1 ${SMALL_EXTRA:-})
  if ! swant a; then
    :
  elif [ "${SMALL_HF:-1}" = 0 ]; then
    run small-a 150 "${SMALL[@]}" --steps 4 --snapshots=false --export=false --out "$RUNS/small-a"
  else
    run small-a 150 "${SMALL[@]}" --steps 4 --snapshots=false --out "$RUNS/small-a"
  fi
  if swant a && [ $? -eq 0 ] && [ "${SMALL_HF:-1}" != 0 ]; then
    timeout 180 bun scripts/gpu/trainer-hf-loss.ts "$RUNS/small-a" 512 "$OUT/small-ours.json" 2>&1 | tail -2
    hf_line=$(timeout 120 python3 scripts/gpu/trainer-hf-loss.py "$RUNS/small-a/hf" "$OUT/small-ours.json" 2>&1 | grep -v -i warn | tail -1)
    echo "$hf_line"
  fi
  if swant b; then
    run small-b 120 "${SMALL[@]}" --steps 2 --keep-snapshots 1 --export=false --out "$RUNS/small-b"
    run small-b-resume 150 "${SMALL[@]}" --steps 4 --keep-snapshots 1 --resume --export=false --out "$RUNS/small-b"
    cp "$RUNS/small-b/metrics.jsonl" "$OUT/small-b.metrics.jsonl" 2>/dev/null
    rm -rf "$RUNS/small-b/snapshots"
  fi
  # Run C: 3 steps with a snapshot at step 2 (and the end one, removed); --resume from step 2 re-runs
  # step 3. Its loss is the forward of the restored weights on the restored data position: equal to
  # the bit to run C's own step 3 when the restore is exact (the forward is deterministic; only the
  # backwards' dQ atomics are not, which is why B drifts from A without --deterministic).
  # C's resume goes on to step 4: with --deterministic its step 4 equals run A's to the bit as well.
  if swant c; then
    run small-c 200 "${SMALL[@]}" --steps 3 --snapshot-every 2 --keep-snapshots 2 --export=false --out "$RUNS/small-c"
    cp "$RUNS/small-c/metrics.jsonl" "$OUT/small-c.metrics.jsonl" 2>/dev/null
    rm -rf "$RUNS/small-c/snapshots/step-00000003"
    run small-c-resume 150 "${SMALL[@]}" --steps 4 --resume --snapshots=false --export=false --out "$RUNS/small-c"
    cp "$RUNS/small-c/metrics.jsonl" "$OUT/small-c-resume.metrics.jsonl" 2>/dev/null
    rm -rf "$RUNS/small-c/snapshots"
  fi
fi

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, f"{name}.metrics.jsonl")
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
print("\n| run | steps | first loss | last loss | tokens/s (median, step >= 3) | MFU | TFLOP/s/GPU | peak GiB | step s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name in ["smoke", "smoke-host", "7b", "small-a", "small-b"]:
    r = rows(name)
    if not r:
        continue
    t = sorted(r[2:] or r, key=lambda x: x["tokens_per_s"]); m = t[len(t) // 2]
    print(f"| {name} | {len(r)} | {r[0]['loss']:.4f} | {r[-1]['loss']:.4f} | {m['tokens_per_s']:,.0f} | {100*m['mfu']:.1f}% | {m['tflops_per_gpu']:.1f} | {max(x['peak_mem_bytes'] for x in r)/2**30:.1f} | {m['step_s']:.2f} |")
d, h = rows("smoke"), rows("smoke-host")
if d and h:
    print(f"\nsmoke: device vs host optimizer losses {[x['loss'] for x in d]} vs {[x['loss'] for x in h]}: " + ("equal" if [x['loss'] for x in d] == [x['loss'] for x in h] else f"max |diff| {max(abs(x['loss'] - y['loss']) for x, y in zip(d, h)):.2e}"))
a, b = rows("small-a"), rows("small-b")
if a and b:
    same = [x["loss"] == y["loss"] for x, y in zip(a, b)]
    diffs = [abs(x["loss"] - y["loss"]) for x, y in zip(a, b)]
    print(f"\nresume: run B (2 steps, snapshot, --resume to 4) vs run A (4 steps): {len(b)} steps, equal at steps {[i + 1 for i, s in enumerate(same) if s]}, max |diff| {max(diffs):.2e}")
c, cr = rows("small-c"), rows("small-c-resume")
if len(c) >= 3 and cr:
    by = {x["step"]: x["loss"] for x in cr}
    l3 = c[2]["loss"]; r3 = by.get(3)
    print(f"resume: run C step 3 {l3!r} vs step 3 after --resume from its step-2 snapshot {r3!r}: " + ("equal to the bit" if l3 == r3 else f"DIFFERENT by {abs(l3 - r3):.3e}" if r3 is not None else "not run"))
    if a:
        la = [x["loss"] for x in a]; lc = [x["loss"] for x in c] + [by[s] for s in sorted(by) if s > len(c)]
        print(f"determinism: run A {la} vs run C then its resume {lc}: " + ("equal to the bit" if la[:len(lc)] == lc[:len(la)] else f"equal at steps {[i + 1 for i, (x, y) in enumerate(zip(la, lc)) if x == y]}"))
EOF
echo "transformers check: ${hf_line}"
echo "exit codes: smoke device/host $rc_smoke, 7b $rc7; total $((SECONDS - t_start)) s"
