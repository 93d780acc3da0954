"""Benchmark: the kit's fast training path against a naive reference, step by step.

    python benchmarks/bench.py [--size tiny|laptop-w8|laptop-w4|full] [--device auto] [--out benchmarks/results/NAME.json]

One run measures, side by side, two implementations of the same training steps:

- ``reference`` -- what a straightforward PyTorch script does: fp32; the experts
  of the mixture in a Python loop; attacks that call ``loss.backward()`` with the
  parameters' ``requires_grad`` left on (so every attack step also computes and
  accumulates parameter gradients, zeroed afterwards: the kit's FGSM/PGD steps,
  :func:`dwf_lab.attacks.pgd_iterates`, with that gradient); a CPU
  ``torch.utils.data.DataLoader`` over a ``TensorDataset`` with CPU-side
  augmentation and a host-to-device copy per batch; ``loss.item()`` every step.
- ``reference_best`` (CPU) -- the same plain loop on the path the CPU probe found fastest
  (bf16 autocast and/or channels_last), the best a plain script gets on this CPU;
- ``fast`` -- the kit's own step (:func:`dwf_lab.training.loop.train_step`, the code
  ``train_stage`` runs), with the profile's fast-path switches resolved for the
  device (:func:`dwf_lab.training.fast_path.training_runtime`): data and augmentation
  resident on the device, bf16 autocast and channels_last on CUDA and, on a CPU,
  where the probe measured them faster, fused SGD on CUDA, attacks computing input gradients
  only, no host-device synchronisation inside the step, optional torch.compile.

on four steps: a benign step, an FGSM-expert step, a PGD-k expert step and the
end-to-end mixture step (FGSM + PGD-k against the 9-expert mixture, then the
update on the 3x batch); plus one attack step against the mixture with the
experts evaluated in a loop and with ``vmap`` (``MixtureOfExperts.expert_batching``).

Reported per step: images/s (clean images of the batch), the speed-up, achieved
TFLOP/s from a count of the model's useful FLOPs (conv/linear MACs counted with
forward hooks, forward = 2 x MACs, times the passes per image of the course's
cost model, :func:`dwf_lab.course.cost.passes_per_image`, one pass =
forward+backward = 3 x forward, so one attack step, ``ATTACK_STEP`` = 2/3 of a
pass, = 2 x forward), the fraction of the device's dense bf16 peak (null when
unknown or on CPU), the peak GPU memory (null on CPU), and the projected wall
time of the ``paper`` profile: each measured step's seconds per pass x the
passes of every stage of the profile.

``--size tiny`` (width 1/16, batch 16, PGD-2, 1 warm-up + 2 timed steps) is a
smoke test that runs on a CPU in well under a minute: its numbers say nothing
about a GPU or about the paper's model. ``--size laptop-w8`` / ``laptop-w4`` are a
learner's CPU: widths 1/8 and 1/4, batch 128, the laptop profile's PGD-2;
``ratio_to_best_plain`` is the kit's step against ``reference_best``. ``--size full`` (width 1, batch 128,
PGD-10, warm-up then timed steps) is the measurement, meant for a CUDA device.
"""
import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.core.config import Profile, get_profile
from dwf_lab.core.runtime import Runtime
from dwf_lab.course.cost import ATTACK_STEP, passes_per_image
from dwf_lab.data import augment_batch, iterate_batches
from dwf_lab.models.registry import build_model
from dwf_lab.training.fast_path import PATHS, training_runtime
from dwf_lab.training.loop import train_step, trainable_parameters, wrap_for_update
from dwf_lab.training.stages import plan_stages

SCHEMA = 1
CIFAR10_TRAIN = 50_000
N_EXPERTS = 9
PASS_FORWARDS = 3              # one pass (forward + backward of one image) in forward passes' FLOPs
MIXTURE_KINDS = ("mixture", "gate", "mixture_attack")   # counted in the mixture's FLOPs
# a stage kind of the paper profile -> the measured step whose seconds per pass it runs at
MEASURED_AS = {"benign": "benign", "fgsm": "fgsm", "pgd": "pgd", "fgsm_at": "fgsm", "pgd_at": "pgd",
               "mixture": "mixture", "gate": "mixture"}

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
}


@dataclass
class Size:
    width: float
    batch: int
    pgd_k: int
    warmup: int
    steps: int
    gate_hidden: int


SIZES = {
    "tiny": Size(width=0.0625, batch=16, pgd_k=2, warmup=1, steps=2, gate_hidden=32),
    # a learner's CPU: the laptop profile's batch and training PGD steps (its 1-3, mean 2) at widths 1/8, 1/4
    "laptop-w8": Size(width=0.125, batch=128, pgd_k=2, warmup=1, steps=3, gate_hidden=128),
    "laptop-w4": Size(width=0.25, batch=128, pgd_k=2, warmup=1, steps=3, gate_hidden=128),
    "full": Size(width=1.0, batch=128, pgd_k=10, warmup=3, steps=10, gate_hidden=256),
}
CASES = ("benign", "fgsm", "pgd", "mixture")


# ------------------------------------------------------------------ device --
def peak_bf16_tflops(device: torch.device) -> tuple[str | None, float | None]:
    """(table key, dense bf16 peak) for a known GPU; (None, None) otherwise and on CPU."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    if "H200" in name:
        key = "H200"
    elif "H100" in name:
        key = "H100 PCIe" if "PCIe" in name else "H100 NVL" if "NVL" in name else "H100 SXM"
    elif "A100" in name:
        key = "A100"
    else:
        return None, None
    return key, PEAK_BF16_TFLOPS[key]


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------- FLOPs --
def forward_flops(model: nn.Module, shape=(3, 32, 32)) -> float:
    """FLOPs of one forward pass for one image: 2 x the MACs of every conv and linear layer."""
    macs = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            macs[0] += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Linear):
            macs[0] += out.numel() * mod.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *shape, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return 2.0 * macs[0]


def passes(case: str, p: Profile) -> float:
    """Passes per image of a measured step or stage kind (the course's cost model); one attack step for
    ``mixture_attack``."""
    return ATTACK_STEP if case == "mixture_attack" else passes_per_image(case, p)


def step_flops(case: str, p: Profile, fwd_e: float, fwd_m: float, images: int) -> float:
    """Useful FLOPs of ``images`` images of ``case`` under profile ``p``: the cost model's passes x
    :data:`PASS_FORWARDS` forward passes of the expert's or the mixture's FLOPs."""
    return passes(case, p) * PASS_FORWARDS * (fwd_m if case in MIXTURE_KINDS else fwd_e) * images


# ------------------------------------------------------------ the reference --
def _naive_input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What a plain script does: backward with requires_grad left on (parameter grads too)."""
    model.eval()
    x = x.clone().detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    g = x.grad.detach()
    model.zero_grad()
    return g


def _naive_attack(model, x, y, eps, alpha, steps, random_start):
    """The kit's PGD steps (FGSM: one step of size eps from x) on the plain script's gradient."""
    *_, x_adv = attacks.pgd_iterates(model, x, y, eps, alpha, steps, random_start,
                                     gradient=lambda xa: _naive_input_grad(model, xa, y))
    return x_adv


def _naive_fgsm(model, x, y, eps):
    return _naive_attack(model, x, y, eps, eps, 1, random_start=False)


def _naive_pgd(model, x, y, eps, alpha, steps):
    return _naive_attack(model, x, y, eps, alpha, steps, random_start=True)


def _naive_loader(x_cpu, y_cpu, batch, device, augment: str):
    """Endless (xb, yb) from a CPU DataLoader, CPU augmentation, a copy to the device per batch."""
    from torch.utils.data import DataLoader, TensorDataset
    loader = DataLoader(TensorDataset(x_cpu, y_cpu), batch_size=batch, shuffle=True, drop_last=True)
    gen = torch.Generator().manual_seed(0)
    while True:
        for xb, yb in loader:
            xb = augment_batch(xb, augment, gen)
            yield xb.to(device), yb.to(device)


def reference_step_fn(case, model, p, batches, device, amp: bool = False,
                      channels_last: bool = False) -> Callable[[], None]:
    """A plain PyTorch training step; ``amp``/``channels_last``: the same loop with bf16 autocast
    around the update and channels_last tensors (what a careful plain script would add)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum,
                          weight_decay=p.weight_decay)
    k = p.pgd_steps_choices[0]

    def step():
        xb, yb = next(batches)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        if case == "benign":
            xin, yin = xb, yb
        elif case == "fgsm":
            xin, yin = _naive_fgsm(model, xb, yb, attacks.pick(p.fgsm_eps_choices)), yb
        elif case == "pgd":
            xin, yin = _naive_pgd(model, xb, yb, p.pgd_eps, p.pgd_alpha, k), yb
        else:  # mixture
            x_f = _naive_fgsm(model, xb, yb, attacks.pick(p.fgsm_eps_choices))
            x_p = _naive_pgd(model, xb, yb, p.pgd_eps, p.pgd_alpha, k)
            xin, yin = torch.cat([xb, x_f, x_p]), torch.cat([yb, yb, yb])
        model.train()
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(xin).float(), yin)
        loss.backward()
        opt.step()
        loss.item()
    return step


# ------------------------------------------------------------- the fast path --
def device_batches(x, y, batch, augment, seed=0):
    epoch = 0
    while True:
        for _, xb, yb in iterate_batches(x, y, batch, augment=augment, seed=seed, epoch=epoch):
            yield xb, yb
        epoch += 1


def fast_step_fn(case, model, p, rt: Runtime, batches) -> Callable[[], None]:
    kind = case
    model = rt.prepare(model)
    params = trainable_parameters(model, kind)
    opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                          **({"fused": True} if rt.device.type == "cuda" else {}))
    forward = wrap_for_update(model, kind, rt)
    g = [0]

    def step():
        xb, yb = next(batches)
        gen, gen_dev = rt.step_generators(0, 1, g[0])
        train_step(kind, model, opt, xb, yb, p, rt, gen, gen_dev, p.lr, forward)
        g[0] += 1
    return step


def attack_step_fn(model, rt: Runtime | None, x, y) -> Callable[[], None]:
    """One attack step (forward + input gradient) against ``model``; rt None = the reference."""
    if rt is None:
        return lambda: _naive_input_grad(model, x, y)
    x = rt.inputs(x)

    def step():
        with rt.autocast(), attacks.attack_mode(model):
            attacks.input_gradient(model, x, y)
    return step


# ------------------------------------------------------------------ timing --
def measure(fn: Callable[[], None], warmup: int, steps: int, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return {"seconds_per_step": dt, "peak_memory_bytes": peak, "warmup": warmup, "steps": steps}


def _rates(m: dict, images: int, flops: float, peak: float | None) -> dict:
    dt = m["seconds_per_step"]
    tflops = flops / dt / 1e12
    return {**m, "images_per_s": images / dt, "tflops": tflops,
            "fraction_of_peak": (tflops / peak) if peak else None}


# -------------------------------------------------------------- projection --
def project_paper(t: dict[str, float], measured: Profile) -> dict:
    """Wall time of the ``paper`` profile (one seed, CIFAR-10) from per-step seconds.

    ``t`` holds seconds per step for benign, fgsm, pgd and mixture, measured under the profile
    ``measured`` (its PGD steps). Each becomes seconds per pass (the course's cost model,
    :func:`dwf_lab.course.cost.passes_per_image`); a stage of the paper profile runs its kind's
    passes at the rate of the measured step in :data:`MEASURED_AS` (so PGD is scaled to the
    profile's mean steps, the baselines attack part of the batch, and the gate-only phase, its
    experts forward-only, runs at the mixture's rate).
    """
    per_pass = {c: t[c] / passes(c, measured) for c in set(MEASURED_AS.values())}
    p = get_profile("paper")
    stages = []
    for st in plan_stages(p):
        steps = st.epochs * (CIFAR10_TRAIN // st.batch_size)
        per_step = per_pass[MEASURED_AS[st.kind]] * passes(st.kind, p)
        stages.append({"stage": st.name, "kind": st.kind, "epochs": st.epochs, "steps": steps,
                       "seconds_per_step": per_step, "hours": steps * per_step / 3600})
    total = sum(s["hours"] for s in stages)
    gate = sum(s["hours"] for s in stages if s["kind"] == "gate")
    return {"stages": stages, "hours_per_seed": total, "hours_per_seed_without_gate": total - gate,
            "seeds": len(p.seeds), "hours_all_seeds": total * len(p.seeds),
            "hours_all_seeds_without_gate": (total - gate) * len(p.seeds)}


def protocol_flops(fwd_e: float, fwd_m: float) -> dict:
    """FLOPs of the paper protocol for one seed (CIFAR-10), by :func:`step_flops`."""
    p = get_profile("paper")
    out: dict[str, float] = {}
    for st in plan_stages(p):
        n = st.epochs * (CIFAR10_TRAIN // st.batch_size) * st.batch_size
        out[st.kind] = out.get(st.kind, 0.0) + step_flops(st.kind, p, fwd_e, fwd_m, n)
    core = sum(v for k_, v in out.items() if k_ in ("benign", "fgsm", "pgd", "mixture"))
    return {"by_kind": out, "experts_and_mixture": core, "with_baselines_and_gate": sum(out.values())}


# -------------------------------------------------------------------- main --
def run_bench(size: str = "tiny", device: str = "auto", out: Path | None = None,
              compile: bool = False, amp: str = "auto", channels_last: str = "auto",
              warmup: int | None = None, steps: int | None = None, quiet: bool = False) -> dict:
    t_start = time.time()
    sz = SIZES[size]
    warmup = sz.warmup if warmup is None else warmup
    steps = sz.steps if steps is None else steps
    p = get_profile("paper", width=sz.width, gate_hidden=sz.gate_hidden, device=device, amp=amp,
                    channels_last=channels_last, compile=compile, pgd_steps_choices=(sz.pgd_k,),
                    expert_batch=sz.batch, mixture_batch=sz.batch)
    rt = training_runtime(p)      # on a CPU, "auto" is what the probe measured fastest
    dev = rt.device
    cudnn_benchmark = torch.backends.cudnn.benchmark
    peak_key, peak = peak_bf16_tflops(dev)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    n_img = sz.batch * (warmup + steps + 1)
    g = torch.Generator().manual_seed(0)
    x_cpu = torch.rand(n_img, 3, 32, 32, generator=g)
    y_cpu = torch.randint(0, 10, (n_img,), generator=g)
    x_dev, y_dev = x_cpu.to(dev), y_cpu.to(dev)

    def expert():
        torch.manual_seed(0)
        return build_model("resnet18", width=sz.width, dataset="cifar10")

    def mixture():
        torch.manual_seed(0)
        return build_model("dwf_mixture", n_experts=N_EXPERTS, width=sz.width, dataset="cifar10",
                           gate_hidden=sz.gate_hidden)

    fwd_e = forward_flops(expert())
    fwd_m = forward_flops(mixture())
    k = sz.pgd_k
    results: dict[str, dict] = {}
    for case in CASES:
        make = mixture if case == "mixture" else expert
        flops = step_flops(case, p, fwd_e, fwd_m, sz.batch)
        row = {"flops_per_step": flops, "images_per_step": sz.batch}
        say(f"[bench] {case}: reference ...")
        torch.backends.cudnn.benchmark = False                 # plain PyTorch defaults
        ref_model = make().to(dev)
        m = measure(reference_step_fn(case, ref_model, p, _naive_loader(x_cpu, y_cpu, sz.batch, dev,
                                                                          "crop_flip"), dev),
                    warmup, steps, dev)
        row["reference"] = _rates(m, sz.batch, flops, peak)
        del ref_model
        if dev.type == "cpu" and rt.fast_path is not None and rt.fast_path["choice"] != "fp32":
            # the best plain loop on this CPU: the reference with the path the probe chose
            amp_, cl_ = PATHS[rt.fast_path["choice"]]
            say(f"[bench] {case}: reference, {rt.fast_path['choice']} ...")
            ref_model = make().to(dev)
            m = measure(reference_step_fn(case, ref_model, p, _naive_loader(x_cpu, y_cpu, sz.batch, dev,
                                                                              "crop_flip"), dev, amp_, cl_),
                        warmup, steps, dev)
            row["reference_best"] = _rates(m, sz.batch, flops, peak)
            del ref_model
        torch.backends.cudnn.benchmark = cudnn_benchmark
        variants = [("fast", "loop")] + ([("fast_vmap", "vmap")] if case == "mixture" else [])
        for label, batching in variants:
            say(f"[bench] {case}: {label} ...")
            model = make()
            if case == "mixture":
                model.expert_batching = batching
            fn = fast_step_fn(case, model, p, rt, device_batches(x_dev, y_dev, sz.batch, "crop_flip"))
            row[label] = _rates(measure(fn, warmup, steps, dev), sz.batch, flops, peak)
            del model, fn
        row["speedup"] = row["reference"]["seconds_per_step"] / row["fast"]["seconds_per_step"]
        best_plain = row.get("reference_best", row["reference"])
        row["ratio_to_best_plain"] = best_plain["seconds_per_step"] / row["fast"]["seconds_per_step"]
        if "fast_vmap" in row:
            row["speedup_vmap"] = row["reference"]["seconds_per_step"] / row["fast_vmap"]["seconds_per_step"]
        results[case] = row

    # one attack step against the mixture: reference, and the fast path with a loop / vmap
    flops = step_flops("mixture_attack", p, fwd_e, fwd_m, sz.batch)
    xa, ya = x_dev[:sz.batch], y_dev[:sz.batch]
    row = {"flops_per_step": flops, "images_per_step": sz.batch}
    torch.backends.cudnn.benchmark = False
    say("[bench] mixture attack step: reference ...")
    ref_model = mixture().to(dev)
    row["reference"] = _rates(measure(attack_step_fn(ref_model, None, xa, ya), warmup + 1, steps, dev),
                              sz.batch, flops, peak)
    del ref_model
    torch.backends.cudnn.benchmark = cudnn_benchmark
    for batching in ("loop", "vmap"):
        say(f"[bench] mixture attack step: fast, {batching} ...")
        model = rt.prepare(mixture())
        model.expert_batching = batching
        row[f"fast_{batching}"] = _rates(measure(attack_step_fn(model, rt, xa, ya), warmup + 1, steps,
                                                 dev), sz.batch, flops, peak)
        del model
    row["fast"] = min(row["fast_loop"], row["fast_vmap"], key=lambda r: r["seconds_per_step"])
    row["vmap_speedup_over_loop"] = (row["fast_loop"]["seconds_per_step"]
                                     / row["fast_vmap"]["seconds_per_step"])
    row["winner"] = "vmap" if row["vmap_speedup_over_loop"] > 1 else "loop"
    row["speedup"] = row["reference"]["seconds_per_step"] / row["fast"]["seconds_per_step"]
    results["mixture_attack"] = row

    # projection of the paper profile
    def secs(which: str) -> dict[str, float]:
        return {c: results[c][which]["seconds_per_step"] for c in results}
    best_mix = "fast_vmap" if results["mixture"]["fast_vmap"]["seconds_per_step"] < \
        results["mixture"]["fast"]["seconds_per_step"] else "fast"
    fast_t = secs("fast")
    fast_t["mixture"] = results["mixture"][best_mix]["seconds_per_step"]
    mean_k = statistics.mean(get_profile("paper").pgd_steps_choices)
    projection = {
        "note": ("seconds per pass measured here (dwf_lab.course.cost.passes_per_image) x the passes of "
                 "every stage of plan_stages(get_profile('paper')) on CIFAR-10's 50,000 training images; "
                 f"PGD scaled from k={k} to the mean of {mean_k:g} steps; the gate phase at the mixture "
                 "step's rate per pass"
                 + ("" if size == "full" else
                    f"; THIS RUN USES THE {size.upper()} MODEL (width {sz.width}, batch {sz.batch}): "
                    "the projection illustrates the arithmetic, it is not a paper-size estimate")),
        "reference": project_paper(secs("reference"), p),
        "fast": project_paper(fast_t, p),
        "fast_mixture_variant": best_mix,
    }

    cuda = dev.type == "cuda"
    report = {
        "schema": SCHEMA,
        "kind": "dwf-lab benchmark",
        "measured_on": "GPU" if cuda else "CPU",
        "label": (f"{device_name(dev)}" if cuda else
                  "CPU run: these numbers describe this CPU only, not any GPU"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "size": size,
        "device": {"type": dev.type, "name": device_name(dev), "peak_key": peak_key,
                   "peak_bf16_dense_tflops": peak, "torch": torch.__version__,
                   "cuda": torch.version.cuda if cuda else None,
                   "cpu_threads": torch.get_num_threads(), "python": platform.python_version()},
        "config": {"width": sz.width, "batch": sz.batch, "pgd_k": k, "n_experts": N_EXPERTS,
                   "gate_hidden": sz.gate_hidden, "warmup": warmup, "steps": steps,
                   "fast_path": {"amp_bf16": rt.amp, "channels_last": rt.channels_last,
                                 "compile": rt.compile, "fused_sgd": cuda, "data_on_device": True,
                                 "cpu_probe": rt.fast_path}},
        "flops": {"expert_forward_per_image": fwd_e, "mixture_forward_per_image": fwd_m,
                  "paper_protocol_per_seed": protocol_flops(fwd_e, fwd_m),
                  "counting": "2 x conv/linear MACs per forward; x the passes per image of "
                              "dwf_lab.course.cost.passes_per_image, a pass = fwd+bwd = 3 x fwd (an attack "
                              "step = 2 x fwd; a forward-only pass counted at the cost model's FORWARD); "
                              "mixture = 9 experts + gate"},
        "cases": results,
        "projection_paper_profile": projection,
        "seconds_total": None,
    }
    report["seconds_total"] = time.time() - t_start
    if not quiet:
        print(format_table(report))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        say(f"[bench] wrote {out}")
    return report


def format_table(r: dict) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)
    lines = [f"dwf-lab bench: {r['device']['name']} | torch {r['device']['torch']} | size {r['size']} "
             f"(width {r['config']['width']}, batch {r['config']['batch']}, PGD-{r['config']['pgd_k']})"]
    if r["measured_on"] == "CPU":
        lines.append("CPU RUN: no GPU figures here.")
    head = (f"{'step':<16}{'impl':<11}{'s/step':>10}{'img/s':>10}{'TFLOP/s':>10}{'%peak':>8}"
            f"{'mem GiB':>9}{'speed-up':>10}")
    lines += [head, "-" * len(head)]
    for case, row in r["cases"].items():
        impls = [k for k in ("reference", "reference_best", "fast", "fast_vmap", "fast_loop") if k in row]
        if case == "mixture_attack":
            impls = ["reference", "fast_loop", "fast_vmap"]
        for impl in impls:
            m = row[impl]
            sp = row["reference"]["seconds_per_step"] / m["seconds_per_step"]
            mem = None if m["peak_memory_bytes"] is None else m["peak_memory_bytes"] / 2 ** 30
            frac = None if m["fraction_of_peak"] is None else 100 * m["fraction_of_peak"]
            lines.append(f"{case:<16}{impl:<11}{m['seconds_per_step']:>10.4f}{m['images_per_s']:>10.1f}"
                         f"{m['tflops']:>10.4f}{fmt(frac, '.1f'):>8}{fmt(mem, '.2f'):>9}{sp:>9.2f}x")
    pr = r["projection_paper_profile"]
    lines.append("")
    ref, fast = pr["reference"], pr["fast"]
    lines.append("projected 'paper' profile, one seed: reference "
                 f"{ref['hours_per_seed']:.1f} h ({ref['hours_per_seed_without_gate']:.1f} h "
                 f"without the gate phase); fast {fast['hours_per_seed']:.1f} h "
                 f"({pr['fast']['hours_per_seed_without_gate']:.1f} h without the gate phase); "
                 f"x{pr['fast']['seeds']} seeds: fast {pr['fast']['hours_all_seeds']:.1f} h")
    if r["size"] != "full":
        lines.append(f"(size {r['size']}: not the paper's model; "
                     "the projection only illustrates the arithmetic)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path's update")
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run_bench(args.size, args.device, args.out, compile=args.compile, amp=args.amp,
              channels_last=args.channels_last, warmup=args.warmup, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
