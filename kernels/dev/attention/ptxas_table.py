#!/usr/bin/env python3
"""Reads `nvcc -Xptxas -v` output on stdin; prints one line per (arch, kernel): registers, stack, spills."""
import re
import subprocess
import sys

arch = "?"
name = None
rows = []
for line in sys.stdin:
    m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
    if m:
        name, arch = m.group(1), m.group(2)
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name:
        stack, st, ld = m.groups()
        continue
    m = re.search(r"Used (\d+) registers", line)
    if m and name:
        rows.append((arch, name, int(m.group(1)), int(stack), int(st), int(ld)))
        name = None

def demangle(n):
    try:
        return subprocess.run(["c++filt", n], capture_output=True, text=True).stdout.strip()
    except OSError:
        return n

print(f"{'arch':6} {'regs':>4} {'stack':>5} {'spill st/ld':>11}  kernel")
for arch, n, regs, stack, st, ld in rows:
    d = demangle(n).replace("(anonymous namespace)::", "").replace("ls::attn::", "").replace("(ls::attn::FwdParams)", "").replace("(ls::attn::BwdParams)", "")
    d = re.sub(r"\(.*\)$", "", d)
    print(f"{arch:6} {regs:4d} {stack:5d} {st:5d}/{ld:<5d}  {d}")
