"""bf16 against fp32 evaluation on a run's trained models: agreement and speed, side by side.

The measurement behind the laptop profile's ``eval_precision="auto"``: for each key model of a
run (benign, FGSM-AT, PGD-AT, DWF), in one process, the paper's PGD-10 and PGD-20 (one trajectory,
random start, the same seed and batches) on the first ``--n`` test images, in fp32 and then in bf16
autocast (:mod:`dwf_lab.attacks.precision`). Prints and stores each model's robust accuracy in both,
the difference (the rule: within 1 point), how many images the two disagree on, and the seconds
of each, as a ratio.

    DWF_CIFAR10_SUBSET=... python benchmarks/eval_precision.py --run laptop [--n 500] [--set K=V] [--out FILE.json]
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from bench import device_name  # benchmarks/bench.py, beside this script

from dwf_lab.core.config import get_profile, parse_sets
from dwf_lab.core.precision import bf16_attack_speedup
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_model
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data, load_run_model

STAGES = ("benign", "fgsm-at", "pgd-at", "mixture")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="laptop", help="a run directory name under runs/ ($DWF_RUNS_DIR)")
    ap.add_argument("--n", type=int, default=500, help="test images (the first ones)")
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="the run's own settings where they differ from the profile's")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    run = Run.open(a.run, get_profile(a.profile, **parse_sets(a.set)))
    p, seed = run.profile, run.profile.seeds[0]
    data = load_data(p)
    x, y = data.x_test[:a.n], data.y_test[:a.n]
    threads = torch.get_num_threads()
    rows = []
    for stage in STAGES:
        if not run.is_done(seed, stage):
            print(f"{stage}: not trained in {run.root}, skipped", file=sys.stderr)
            continue
        model = load_run_model(run, seed, stage, data)
        out = {"model": stage}
        correct = {}
        for precision in ("fp32", "bf16"):
            s = EvalSettings(fgsm_eps=(), pgd_steps=(10, 20), long=False, batch_size=p.eval_batch,
                             precision=precision)
            t0 = time.perf_counter()
            metrics, c = evaluate_model(model, x, y, s, seed=seed, progress=False)
            out[f"seconds_{precision}"] = round(time.perf_counter() - t0, 2)
            out.update({f"{k}_{precision}": round(v, 2) for k, v in metrics.items() if k != "worst-case"})
            correct[precision] = c
        out["pgd20_difference"] = round(out["pgd:20_bf16"] - out["pgd:20_fp32"], 2)
        out["pgd20_images_disagreeing"] = int((correct["fp32"]["pgd:20"] != correct["bf16"]["pgd:20"]).sum())
        out["clean_images_disagreeing"] = int((correct["fp32"]["SA"] != correct["bf16"]["SA"]).sum())
        out["speedup"] = round(out["seconds_fp32"] / out["seconds_bf16"], 2)
        rows.append(out)
        print(f"{stage:8s} SA {out['SA_fp32']:5.1f} / {out['SA_bf16']:5.1f}  PGD-20 fp32 {out['pgd:20_fp32']:5.1f}"
              f"  bf16 {out['pgd:20_bf16']:5.1f}  (diff {out['pgd20_difference']:+.1f}, "
              f"{out['pgd20_images_disagreeing']} images differ)  {out['seconds_fp32']:.0f} s / "
              f"{out['seconds_bf16']:.0f} s = {out['speedup']:.2f}x", flush=True)
    result = {"benchmark": "eval_precision", "run": run.name, "profile": p.name, "n_images": len(x),
              "attack": "the protocol's PGD-10/20 trajectory, eps 8/255, alpha 2/255, random start",
              "cpu": device_name(torch.device("cpu")), "machine": platform.machine(), "threads": threads,
              "probe_bf16_speedup": round(bf16_attack_speedup(threads), 2),
              "load_average_start": os.getloadavg()[0], "models": rows,
              "within_one_point": all(abs(r["pgd20_difference"]) <= 1.0 for r in rows)}
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
