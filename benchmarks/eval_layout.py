"""PGD through a run's trained models, fp32 contiguous against fp32 channels_last, side by side.

The figures behind "evaluation in channels_last where the CPU probe measured it faster"
(benchmarks/README.md): 250 test images of the CIFAR-10 subset ($DWF_CIFAR10_SUBSET), PGD-5 at
8/255 from one random start, each layout twice (best of two), two threads; prints the times, the
accuracies (they must agree) and the ratio.

    python benchmarks/eval_layout.py runs/laptop/seed-0/models pgd-1 mixture
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dwf_lab.attacks.pgd import pgd_trajectory
from dwf_lab.store.checkpoints import load_model


def main(models: Path, names: list[str]) -> None:
    torch.set_num_threads(2)
    d = np.load(os.environ["DWF_CIFAR10_SUBSET"])
    x = torch.tensor(d["x_test"][:250]).float()
    if x.max() > 1.5:
        x = x / 255
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(d["y_test"][:250]).long()
    for name in names:
        best: dict[bool, float] = {}
        for cl in (False, True, False, True):
            m = load_model(models / f"{name}.safetensors").eval()
            if cl:
                m = m.to(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            out = pgd_trajectory(m, x, y, 8 / 255, 2 / 255, (5,), generator=torch.Generator().manual_seed(0))
            dt = time.perf_counter() - t0
            best[cl] = min(dt, best.get(cl, dt))
            print(f"{name} {'channels_last' if cl else 'contiguous'} {dt:.2f}s "
                  f"PGD-5 accuracy {out[5].float().mean().item():.3f}", flush=True)
        print(f"{name}: contiguous / channels_last (best of 2) = {best[False] / best[True]:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
