#!/usr/bin/env bash
# A GPU job longer than one device call (10 minutes): the 512K step of issue 14 (start-up ~75 s, the step
# 727 s measured, 824 s in all). `start` runs the command in a new process session, which the device
# tool leaves running after the call returns (until the machine goes back: it stays held while calls follow
# each other within its 30 s idle window); `wait` follows it from the next calls. A gap of more than 30 s
# between calls gives the machine back and loses the job (2026-12-02: a first 512K attempt was lost so, 9 minutes in).
#   start NAME CMD...    run CMD detached, with OUT=/tmp/detached/NAME/out; its output goes to
#                        /tmp/detached/NAME/log, its exit code to /tmp/detached/NAME/rc; returns at once
#   wait NAME SECONDS    follow NAME's log for up to SECONDS (new lines as they come); then copy its OUT and
#                        log to $OUT/NAME.tar.gz. Exit 0 once NAME has ended (its exit code is printed),
#                        3 while it still runs, 2 when there is no such job (a fresh machine: it was lost)
# Both print the job's state last. Call `wait` without carrying kernels/build or .device, so that nothing the
# job has open is replaced under it. Example (device tool, repository root):
#   source .device/setup.sh && bash scripts/gpu/detached.sh start long512 env SEQS=512k STEPS=1 CAP_512k=1500 \
#     EXTRA="--lr 2e-5 --min-lr 2e-6 --warmup 1" bash scripts/gpu/trainer-long.sh && bash scripts/gpu/detached.sh wait long512 560
#   bash scripts/gpu/detached.sh wait long512 580      (the next call, within 30 s of the last)
set -uo pipefail
ROOT=${DETACHED_ROOT:-/tmp/detached}
usage() { echo "usage: detached.sh start NAME CMD... | wait NAME SECONDS" >&2; exit 2; }
[ "$#" -ge 2 ] || usage
verb=$1 name=$2
shift 2
dir="$ROOT/$name"
case "$name" in *[!A-Za-z0-9_-]*|"") echo "detached: NAME must be letters, digits, - or _ (got \"$name\")" >&2; exit 2 ;; esac

state() {
  if [ -f "$dir/rc" ]; then echo "[$name] ended: exit $(cat "$dir/rc") after $(( $(stat -c %Y "$dir/rc") - $(cat "$dir/started") )) s"
  else echo "[$name] running for $(( $(date +%s) - $(cat "$dir/started") )) s"; fi
}

case "$verb" in
  start)
    [ "$#" -ge 1 ] || usage
    if [ -d "$dir" ] && [ ! -f "$dir/rc" ]; then echo "detached: $name is running already (started $(cat "$dir/started"))" >&2; exit 2; fi
    rm -rf "$dir" && mkdir -p "$dir/out"
    date +%s >"$dir/started"
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
    # the command's words are passed through as they are; rc is written last, whatever the command did
    OUT="$dir/out" setsid bash -c '"$@" >"$0/log" 2>&1; echo $? >"$0/rc.tmp"; mv "$0/rc.tmp" "$0/rc"' "$dir" "$@" </dev/null >/dev/null 2>&1 &
    sleep 1
    state
    ;;
  wait)
    [ "$#" -eq 1 ] || usage
    secs=$1
    case "$secs" in *[!0-9]*|"") echo "detached: SECONDS must be a whole number (got \"$secs\")" >&2; exit 2 ;; esac
    [ -f "$dir/started" ] || { echo "detached: no job $name under $ROOT (a fresh machine has none: start it again)" >&2; exit 2; }
    seen=0 end=$(( $(date +%s) + secs ))
    while :; do
      n=$(wc -l <"$dir/log" 2>/dev/null || echo 0)
      if [ "$n" -gt "$seen" ]; then sed -n "$((seen + 1)),${n}p" "$dir/log"; seen=$n; fi
      [ -f "$dir/rc" ] && break
      [ "$(date +%s)" -ge "$end" ] && break
      sleep 5
    done
    OUT=${OUT:-/tmp/out}
    mkdir -p "$OUT"
    tar -C "$ROOT" -czf "$OUT/$name.tar.gz" "$name"
    state
    [ -f "$dir/rc" ] || exit 3
    ;;
  *) usage ;;
esac
