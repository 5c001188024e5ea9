#!/usr/bin/env python3
"""Per-kernel comparison of two PTX files, for refactors of the attention kernels that must not change
what runs (no GPU needed). Register numbers and labels are normalised away; for each kernel it prints
"same" (identical instruction sequence), or the difference in instruction counts by opcode.

  python3 kernels/dev/attention/ptx_diff.py old.ptx new.ptx      (ptx_diff.sh builds both from git)
"""
import collections
import re
import sys


def kernels(path):
    out, cur = {}, None
    for line in open(path):
        m = re.match(r"\s*\.(visible\s+)?\.entry\s+(\S+)\(", line)
        if m:
            cur = m.group(2)
            out[cur] = []
            continue
        s = line.strip()
        if cur is None or not s or s.startswith(("//", ".reg", ".loc", ".file")):
            continue
        s = re.sub(r"%(rd|r|p|f|fd|rs|h|hh)\d+", r"%\1", s)
        s = re.sub(r"\$L__BB\d+_\d+", "$L", s)
        out[cur].append(s)
    return out


def main(old, new):
    a, b = kernels(old), kernels(new)
    same = True
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            print(f"only in {'new' if k in b else 'old'}: {k}")
            same = False
            continue
        if a[k] == b[k]:
            print(f"same  {k}")
            continue
        same = False
        ha = collections.Counter(x.split()[0] for x in a[k])
        hb = collections.Counter(x.split()[0] for x in b[k])
        d = {op: hb[op] - ha[op] for op in sorted(set(ha) | set(hb)) if ha[op] != hb[op]}
        print(f"DIFF  {k}: {len(a[k])} -> {len(b[k])} instructions; by opcode {d or '(the same counts, another order)'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
