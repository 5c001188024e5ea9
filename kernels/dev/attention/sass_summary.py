#!/usr/bin/env python3
"""Reads `cuobjdump -sass BINARY` on stdin; per kernel counts the instructions that tell whether the
code is on the intended path: HMMA (mma.sync), LDSM (ldmatrix), LDGSTS (cp.async), MUFU.EX2, RED/ATOM
(dq atomics), BAR, and LDL/STL (local memory: spills or register arrays indexed at run time)."""
import re
import subprocess
import sys

WATCH = ["HMMA", "LDSM", "LDGSTS", "MUFU.EX2", "RED", "ATOM", "BAR", "LDL", "STL"]

def demangle(n):
    try:
        return subprocess.run(["c++filt", n], capture_output=True, text=True).stdout.strip()
    except OSError:
        return n

kernels = []
cur = None
for line in sys.stdin:
    m = re.search(r"Function : (\S+)", line)
    if m:
        cur = {"name": m.group(1), "total": 0, **{w: 0 for w in WATCH}}
        kernels.append(cur)
        continue
    m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
    if m and cur is not None:
        op = m.group(1)
        cur["total"] += 1
        for w in WATCH:
            if op == w or op.startswith(w + ".") or (w in ("RED", "ATOM") and op.startswith(w)):  # REDG, ATOMG
                cur[w] += 1

print(f"{'total':>6} " + " ".join(f"{w:>8}" for w in WATCH) + "  kernel")
for k in kernels:
    d = demangle(k["name"]).replace("(anonymous namespace)::", "").replace("ls::attn::", "")
    d = re.sub(r"\(ls::attn::\w+\)$", "", d)
    if d.endswith(")") and "(" in d:
        d = d[: d.index("(")] if not d.startswith("void") else d[: d.rindex("(")]
    print(f"{k['total']:6d} " + " ".join(f"{k[w]:8d}" for w in WATCH) + f"  {d}")
