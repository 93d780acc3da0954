"""torch.compile against eager for the kit's own training step on this CPU, side by side.

The measurement behind "torch.compile on a CPU" in benchmarks/README.md. For each step (benign,
PGD-k expert), at a laptop size, in one process: the kit's step (`bench.fast_step_fn`, the code
`train_stage` runs, with the fast-path switches the CPU probe chose) eager, then the same step with
`compile=True` (the update's forward through `torch.compile`; attacks stay eager, as in training),
then eager again, so a drift of the machine's speed shows as a difference between the two eager
figures. The compiled step's first call (the compile) is timed on its own and reported, because on
a laptop course it is paid once per stage. A compile that fails falls back to eager (the kit's
rule) and is reported as failed, not as a speed.

    python benchmarks/cpu_compile.py [--size laptop-w4] [--steps 8] [--out FILE.json]
"""
import argparse
import dataclasses
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from bench import SIZES, device_batches, device_name, fast_step_fn  # benchmarks/bench.py, beside this script

from dwf_lab.core.config import get_profile
from dwf_lab.models.registry import build_model
from dwf_lab.training.fast_path import training_runtime


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="laptop-w4", choices=[s for s in SIZES if s.startswith("laptop")])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps after the first call, before timing")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    sz = SIZES[a.size]
    p = get_profile("paper", width=sz.width, device="cpu", pgd_steps_choices=(sz.pgd_k,),
                    expert_batch=sz.batch, mixture_batch=sz.batch)
    rt = training_runtime(p)
    g = torch.Generator().manual_seed(0)
    n = sz.batch * (1 + a.warmup + a.steps)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    out = {"cpu": device_name(torch.device("cpu")), "machine": platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "size": a.size, "path": rt.fast_path and rt.fast_path["choice"],
           "steps": a.steps, "warmup": a.warmup, "cases": {}}
    for case in ("benign", "pgd"):
        row = {}
        for label, comp in (("eager", False), ("compiled", True), ("eager_again", False)):
            torch.manual_seed(0)
            model = build_model("resnet18", width=sz.width, dataset="cifar10")
            r = dataclasses.replace(rt, compile=comp)
            fn = fast_step_fn(case, model, p, r, device_batches(x, y, sz.batch, "crop_flip"))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                fn()
                first = time.perf_counter() - t0
            failed = any("torch.compile failed" in str(w.message) for w in caught)
            for _ in range(a.warmup):
                fn()
            s = timed(fn, a.steps)
            row[label] = {"first_call_s": first, "seconds_per_step": s, "images_per_s": sz.batch / s,
                          **({"compile_failed": failed} if comp else {})}
            print(f"[compile] {case} {label}: first call {first:.1f}s, {sz.batch / s:.0f} img/s"
                  + (" (compile FAILED, eager fallback)" if comp and failed else ""), file=sys.stderr, flush=True)
        eager = (row["eager"]["seconds_per_step"] + row["eager_again"]["seconds_per_step"]) / 2
        row["compiled_over_eager"] = eager / row["compiled"]["seconds_per_step"]
        row["eager_drift"] = row["eager"]["seconds_per_step"] / row["eager_again"]["seconds_per_step"]
        out["cases"][case] = row
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
