"""Our AdamW (TS reference and CUDA kernel, from bench/adamw-inputs.ts) against PyTorch's torch.optim.AdamW
on the same inputs: the single-tensor CPU path, and on the GPU the foreach and fused paths.
Prints, per array, the share of bit-identical elements, the largest difference in ulps and relative.

    python3 bench/adamw_torch.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

out = Path(sys.argv[1])
prm = json.loads((out / "params.json").read_text())
n, steps = prm["n"], prm["steps"]
load = lambda name: np.fromfile(out / f"{name}.f32", dtype="<f4")  # noqa: E731


def torch_adamw(device, **kw):
    p = torch.nn.Parameter(torch.from_numpy(load("p0")).to(device))
    opt = torch.optim.AdamW([p], lr=prm["lr"], betas=(prm["beta1"], prm["beta2"]), eps=prm["eps"], weight_decay=prm["weightDecay"], **kw)
    for t in range(1, steps + 1):
        p.grad = torch.from_numpy(load(f"g{t}")).to(device)
        opt.step()
    st = opt.state[p]
    return {k: x.detach().cpu().numpy() for k, x in (("p", p), ("m", st["exp_avg"]), ("v", st["exp_avg_sq"]))}


def ulps(a, b):
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


ours = {k: load(f"ref_{k}") for k in "pmv"}
rows = []
if prm.get("gpu"):
    gpu = {k: load(f"gpu_{k}") for k in "pmv"}
    rows.append(("our kernel vs our TS reference", gpu, ours))
rows.append(("torch CPU single-tensor vs ours", torch_adamw("cpu", foreach=False), ours))
if torch.cuda.is_available():
    rows.append(("torch CUDA foreach vs ours", torch_adamw("cuda", foreach=True), ours))
    rows.append(("torch CUDA fused vs ours", torch_adamw("cuda", fused=True), ours))

print(f"AdamW, {n} elements, {steps} steps, lr {prm['lr']}, betas ({prm['beta1']}, {prm['beta2']}), wd {prm['weightDecay']}")
print(f"{'comparison':36} {'array':5} {'bit-equal':>10} {'max ulp':>8} {'max rel':>10}")
for name, a, b in rows:
    for k in "pmv":
        u = ulps(a[k], b[k])
        rel = np.max(np.abs(a[k].astype(np.float64) - b[k]) / (np.abs(b[k].astype(np.float64)) + 1e-30))
        print(f"{name:36} {k:5} {np.mean(u == 0):10.4%} {int(u.max()):8d} {rel:10.2e}")
