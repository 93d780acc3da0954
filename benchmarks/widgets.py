"""How fast the course widgets answer a slider move, on this machine's CPU.

    python benchmarks/widgets.py                      # laptop size, 1 and 2 threads, 20 moves
    python benchmarks/widgets.py --threads 1 --moves 10 --out benchmarks/results/widgets-cpu.json
    python benchmarks/widgets.py --size tiny --moves 2   # seconds: checks the script runs

Laptop size: the ε explorer on a ResNet-18 at width 1/4 (the benign expert) over 200
test images; the gate heatmap on the DWF mixture of 9 such experts (gate hidden 128),
16 inputs, PGD-10 and FGSM, ε up to 0.1 — notebook 00's and 04's calls. Models are at
random initialisation and images uniform noise: a move's cost does not depend on the
weights or the pixels (the attacks run a fixed number of steps).

A *move* is what a learner's drag does: set ``ui.slider.value`` and let the widget
answer (attack if needed, repaint the figure, serialise it as the notebook output a
static figure is re-drawn with). Measured per widget and thread count:

- ``first_display_s``: building the widget until it can be shown (the heatmap: with
  the whole ε grid computed up front, as in a live front end, and lazily, as headless);
- ``cold``: moves to ε values the widget has not computed yet (the explorer: 20 new
  values of k/255; the heatmap: each stop of its grid once, on the lazy widget);
- ``warm``: moves back to values already computed (answered from ``ui.cache``).

Each as ``{"n", "median_s", "max_s"}``. The numbers are printed, then one JSON line
(``--out`` also writes it). Nothing here asserts a time: a shared CPU makes times noise,
so the load (``/proc/loadavg``) before and after is part of the record.
"""
import argparse
import contextlib
import io
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from dwf_lab.course.widgets import epsilon_explorer, gate_heatmap
from dwf_lab.models.registry import build_model

SIZES = {
    "laptop": dict(width=0.25, n_images=200, n_experts=9, gate_hidden=128, heatmap_n=16, pgd_steps=10),
    "tiny": dict(width=0.0625, n_images=16, n_experts=3, gate_hidden=16, heatmap_n=4, pgd_steps=2),
}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EPS_MAX = 0.1


class _Handle:
    """Stands in for a notebook's display handle: the widget still serialises its figure."""

    def update(self, bundle, raw=False):
        self.size = sum(len(str(v)) for v in bundle.values())


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def stats(seconds: list[float]) -> dict:
    return {"n": len(seconds), "median_s": round(statistics.median(seconds), 4) if seconds else None,
            "max_s": round(max(seconds), 4) if seconds else None}


def timed(fn) -> float:
    """Seconds ``fn()`` takes; what it prints (the heatmap's progress line) is kept out of the figures."""
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def move(ui, value) -> float:
    """One slider move, timed; checks the widget answered for that value."""
    def go():
        ui.slider.value = value
    s = timed(go)
    if abs(ui.result["eps"] - value) > 1e-12:
        raise RuntimeError(f"the widget did not answer the move to {value}")
    return s


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def warm_up() -> float:
    """Build both widgets once on tiny models, untimed by the figures: the first plotly figure,
    ipywidgets and torch's first passes cost seconds once per process (a notebook has paid them
    before its widget cell), so they are reported apart as ``process_warmup_s``."""
    def go():
        x, y = data(2)
        tiny = build_model("resnet18", width=0.0625).eval()
        epsilon_explorer(tiny, x, y, CLASSES, static=True)
        mix = build_model("dwf_mixture", n_experts=2, width=0.0625, gate_hidden=8).eval()
        gate_heatmap(mix, x, y, grid=[0.0, 0.01], eps=0.01, pgd_steps=1, precompute=False, static=True)
    return timed(go)


def bench_explorer(size: dict, attack: str, moves: int, rng: random.Random) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet18", width=size["width"]).eval()
    x, y = data(size["n_images"])
    holder = {}

    def build():
        holder["w"] = epsilon_explorer(model, x, y, CLASSES, index=0, attack=attack, eps_max=EPS_MAX,
                                       pgd_steps=size["pgd_steps"], static=True)
    first = timed(build)
    ui = holder["w"][0]
    ui._handle = _Handle()
    levels = [k for k in range(1, 26) if k != 8]        # the slider's k/255 stops, 8/255 shown first
    values = [k / 255 for k in rng.sample(levels, min(moves, len(levels)))]
    cold = [move(ui, v) for v in values]
    again = values[:]
    rng.shuffle(again)
    warm = [move(ui, v) for v in again]
    return {"first_display_s": round(first, 4), "cold": stats(cold), "warm": stats(warm),
            "cached_after": len(ui.cache)}


def bench_heatmap(size: dict, moves: int, rng: random.Random) -> dict:
    torch.manual_seed(0)
    mixture = build_model("dwf_mixture", n_experts=size["n_experts"], width=size["width"],
                          gate_hidden=size["gate_hidden"]).eval()
    x, y = data(size["heatmap_n"], seed=1)
    names = [f"expert {i}" for i in range(size["n_experts"])]
    kw = dict(eps_max=EPS_MAX, n=size["heatmap_n"], pgd_steps=size["pgd_steps"], static=True)
    holder = {}

    def build(precompute: bool):
        def go():
            holder["w"] = gate_heatmap(mixture, x, y, names, precompute=precompute, **kw)
        return go
    first_pre = timed(build(True))                       # a live front end: the whole grid up front
    first_lazy = timed(build(False))                     # headless: the shown value only
    ui = holder["w"][0]
    ui._handle = _Handle()
    stops = [v for _, v in ui.slider.options]
    todo = [s for s in stops if s != ui.slider.value]
    rng.shuffle(todo)
    cold = [move(ui, v) for v in todo]
    warm, current = [], ui.slider.value
    for _ in range(moves):
        current = rng.choice([s for s in stops if s != current])
        warm.append(move(ui, current))
    return {"first_display_precompute_s": round(first_pre, 3), "first_display_lazy_s": round(first_lazy, 3),
            "grid": [round(s, 5) for s in stops], "cold": stats(cold), "warm": stats(warm)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="laptop")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    ap.add_argument("--moves", type=int, default=20, help="moves per widget and kind (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the JSON record here")
    args = ap.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--threads must list whole numbers, e.g. 1,2; got {args.threads!r}")
    if not threads or min(threads) < 1 or args.moves < 1:
        ap.error("need --threads >= 1 and --moves >= 1")
    os.environ.setdefault("DWF_STATIC_FIGURES", "1")
    size = SIZES[args.size]
    record = {"benchmark": "widgets", "size": args.size, "settings": size, "moves": args.moves,
              "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
              "python": platform.python_version(), "load_before": loadavg(), "threads": {}}
    t_all = time.perf_counter()
    record["process_warmup_s"] = round(warm_up(), 2)
    for t in threads:
        torch.set_num_threads(t)
        rng = random.Random(args.seed)
        r = {"explorer_fgsm": bench_explorer(size, "fgsm", args.moves, rng),
             "explorer_pgd": bench_explorer(size, "pgd", args.moves, rng),
             "heatmap": bench_heatmap(size, args.moves, rng)}
        record["threads"][str(t)] = r
        for name, v in r.items():
            first = (f"first display {v['first_display_s']:.2f} s" if "first_display_s" in v else
                     f"first display {v['first_display_precompute_s']:.1f} s (whole grid) / "
                     f"{v['first_display_lazy_s']:.1f} s (lazy)")
            print(f"{t} thread{'s' if t > 1 else ' '} {name:14s} {first}; "
                  f"cold move median {v['cold']['median_s']:.3f} s, max {v['cold']['max_s']:.3f} s "
                  f"(n={v['cold']['n']}); warm move median {v['warm']['median_s']:.4f} s, "
                  f"max {v['warm']['max_s']:.4f} s (n={v['warm']['n']})", flush=True)
    record["load_after"] = loadavg()
    record["wall_s"] = round(time.perf_counter() - t_all, 1)
    line = json.dumps(record)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
