#!/usr/bin/env python3
"""The table of trainer runs that the GPU stage scripts print last, from their metrics.jsonl files.

usage: runs-table.py COLUMN LABEL=PATH [LABEL=PATH ...] [--diff] [--by step_s]
One row per run: steps, loss first -> last, tokens/s and step time (median of the steps after the first),
MFU, peak GPU and host memory. A missing or empty file gives a row that points at LABEL's log. --diff adds
the difference of the second run's median step from the first's. The median step is the middle one of the
steps after the first ordered by tokens/s (of an even count, the faster of the two middle ones), or with
--by step_s ordered by step time (the slower of the two).
"""
import json, os, sys

flags = sys.argv[1:]
by = "tokens_per_s"
if "--by" in flags:
    k = flags.index("--by"); by = flags[k + 1]; del flags[k : k + 2]
args = [a for a in flags if a != "--diff"]
column, runs = args[0], [a.split("=", 1) for a in args[1:]]
print(f"\n| {column} | steps | loss first -> last | tokens/s (median, step >= 2) | MFU | step s | peak GPU GiB | peak host GiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
medians = []
for label, path in runs:
    r = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
    if not r:
        print(f"| {label} | 0 | see the log of {label} | | | | | |")
        continue
    t = sorted(r[1:] or r, key=lambda x: x[by]); m = t[len(t) // 2]
    medians.append(m["step_s"])
    host = max(x.get("host_mem_bytes", 0) for x in r) / 2**30
    gpu = max(x["peak_mem_bytes"] for x in r) / 2**30
    print(f"| {label} | {len(r)} | {r[0]['loss']:.4f} -> {r[-1]['loss']:.4f} | {m['tokens_per_s']:,.0f} | {100*m['mfu']:.1f}% | {m['step_s']:.3f} | {gpu:.1f} | {host:.1f} |")
if "--diff" in sys.argv and len(medians) == 2:
    d = medians[1] - medians[0]
    print(f"\n{runs[1][0]} against {runs[0][0]}: {d*1000:+.0f} ms a step ({100*d/medians[0]:+.1f}%)")
