"""What the course notebooks compute and show (everything two notebooks need lives here, not in
the notebooks): training curves and stage times from a run's metrics, clean/FGSM/PGD accuracy of
several models, the per-epoch "catastrophic overfitting watch", and single adversarial examples
(accuracy against eps), the quick classifier notebook 00 attacks
before the run has its own, and the checks behind the "write it here" cells (a hand-written
training step against the package's, :func:`same_state`). Disagreement, transfer and gate
statistics are in :mod:`dwf_lab.evaluation.diagnostics`; readings in :mod:`dwf_lab.reporting.readings`.
"""
import copy
import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks.pgd import pgd_trajectory
from dwf_lab.core.config import PROFILES, Profile
from dwf_lab.core.io import atomic_write_text, file_sha256
from dwf_lab.core.runtime import Runtime
from dwf_lab.core.work import ATTACK_STEP
from dwf_lab.course.exercises import ExerciseFailed
from dwf_lab.course.setup import fgsm_label, pgd_label
from dwf_lab.course.widgets import attack_images
from dwf_lab.data import ImageData, iterate_batches, steps_per_epoch
from dwf_lab.evaluation.diagnostics import class_probabilities
from dwf_lab.models.registry import build_model
from dwf_lab.reporting.figures import adversarial_example_figure
from dwf_lab.reporting.readings import overfitting_verdicts
from dwf_lab.store.checkpoints import load_model
from dwf_lab.training.builders import expert_arch
from dwf_lab.training.fast_path import for_evaluation
from dwf_lab.training.loop import cosine_lr, train_step
from dwf_lab.training.recipes import recipe
from dwf_lab.training.side_runs import side_run as train_side_run
from dwf_lab.training.side_runs import side_run_settings


# ======================================================== training curves ==
def training_curves(run, seed: int, stages: Sequence[str] | None = None) -> dict[str, dict]:
    """Per-epoch training loss and accuracy from the run's metrics log.

    ``{stage: {"epoch": [...], "train_loss": [...], "train_acc": [...], "seconds": [...]}}``
    in the order of ``stages`` (default: every stage with epochs). If an epoch was
    logged twice (a stage retrained), the last record wins.
    """
    recs: dict[str, dict[int, dict]] = {}
    for r in run.metrics(seed):
        if r.get("event") == "epoch":
            recs.setdefault(r["stage"], {})[int(r["epoch"])] = r
    order = list(stages) if stages is not None else list(recs)
    out = {}
    for s in order:
        if s not in recs:
            continue
        eps = sorted(recs[s])
        out[s] = {"epoch": eps,
                  "train_loss": [recs[s][e]["train_loss"] for e in eps],
                  "train_acc": [recs[s][e]["train_acc"] for e in eps],
                  "seconds": [recs[s][e].get("seconds") for e in eps]}
    return out


def stage_seconds(run, seed: int) -> dict[str, float]:
    """Training time per stage (seconds) as logged (``stage_time`` events)."""
    out: dict[str, float] = {}
    for r in run.metrics(seed):
        if r.get("event") == "stage_time":
            out[r["stage"]] = float(r["seconds"])
    return out


def robustness(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
               fgsm_eps: Sequence[float] = (0.03,), pgd_steps: Sequence[int] = (10,),
               pgd_eps: float = 8 / 255, pgd_alpha: float = 2 / 255, batch_size: int = 256,
               seed: int = 0) -> list[dict]:
    """Clean, FGSM and PGD accuracy (%) of each model on (x, y): one row per model.

    Columns: "clean", "FGSM <ε>" per ε, "PGD-<k>" per k (one PGD trajectory read at
    each k, uniform random start, ε/α in pixel units). White-box against each model.
    """
    rows = []
    for name, model in models.items():
        dev = next(model.parameters()).device
        model.eval()
        counts: dict[str, float] = {}
        for b in range(0, len(x), batch_size):
            xb, yb = x[b:b + batch_size].to(dev), y[b:b + batch_size].to(dev)
            with torch.no_grad():
                counts["clean"] = counts.get("clean", 0) + (model(xb).argmax(1) == yb).sum().item()
            for e in fgsm_eps:
                xa = attacks.fgsm(model, xb, yb, e, check=False)
                with torch.no_grad():
                    c = (model(xa).argmax(1) == yb).sum().item()
                counts[fgsm_label(e)] = counts.get(fgsm_label(e), 0) + c
            if pgd_steps:
                g = torch.Generator(dev).manual_seed(seed * 1000 + b)
                traj = pgd_trajectory(model, xb, yb, pgd_eps, pgd_alpha, tuple(pgd_steps), True, g)
                for k in pgd_steps:
                    counts[pgd_label(k)] = counts.get(pgd_label(k), 0) + traj[k].sum().item()
        rows.append({"model": name, **{k: 100.0 * v / max(1, len(x)) for k, v in counts.items()}})
    return rows


# ============================================ catastrophic overfitting watch ==
def epoch_checkpoints(run, seed: int, stage: str) -> list[tuple[int, Path]]:
    """(epoch, path) of the stage's per-epoch model checkpoints, in order."""
    d = run.ckpt_dir(seed, stage)
    out = []
    for path in sorted(d.glob("epoch-*.safetensors")):
        m = re.match(r"epoch-(\d+)\.safetensors$", path.name)
        if m:
            out.append((int(m.group(1)), path))
    return out


def checkpoint_watch(run, seed: int, stages: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                     fgsm_eps: float = 8 / 255, pgd_steps: int = 10, pgd_eps: float = 8 / 255,
                     pgd_alpha: float = 2 / 255, max_points: int = 20, device=None) -> dict:
    """Clean / FGSM / PGD accuracy (%) of every epoch checkpoint of each stage.

    The catastrophic-overfitting watch: an FGSM-trained model can suddenly become
    robust to FGSM only, with PGD accuracy collapsing to ~0 within an epoch (Wong et
    al. 2020). At most ``max_points`` evenly spaced epochs are evaluated (the last
    one always). Returns ``{stage: {"epoch", "clean", "fgsm", "pgd", "labels"}}``.
    """
    out = {}
    for stage in stages:
        cks = epoch_checkpoints(run, seed, stage)
        if not cks:
            continue
        if len(cks) > max_points:
            idx = sorted({round(i * (len(cks) - 1) / (max_points - 1)) for i in range(max_points)})
            cks = [cks[i] for i in idx]
        w = {"epoch": [], "clean": [], "fgsm": [], "pgd": [],
             "labels": {"clean": "clean", "fgsm": fgsm_label(fgsm_eps), "pgd": pgd_label(pgd_steps)}}
        for epoch, path in cks:
            model = for_evaluation(load_model(path, map_location=device or "cpu"), run.profile, device or "cpu")
            r = robustness({stage: model}, x, y, (fgsm_eps,), (pgd_steps,), pgd_eps, pgd_alpha,
                           seed=seed)[0]
            w["epoch"].append(epoch)
            w["clean"].append(r["clean"])
            w["fgsm"].append(r[fgsm_label(fgsm_eps)])
            w["pgd"].append(r[pgd_label(pgd_steps)])
        out[stage] = w
    return out


def pick_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int = 0) -> int:
    """Index of the first test image (from ``start``) the model classifies correctly,
    preferring a confident one; ``start`` if none is correct."""
    dev = next(model.parameters()).device
    p = class_probabilities(model, x.to(dev)).cpu()
    ok = (p.argmax(1) == y.cpu())
    conf = p.max(1).values
    idx = [i for i in range(start, len(x)) if ok[i]]
    if not idx:
        return start
    confident = [i for i in idx if conf[i] >= 0.5]
    return (confident or idx)[0]


def adversarial_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int,
                        classes: Sequence[str], eps: float = 8 / 255, attack: str = "fgsm",
                        pgd_steps: int = 10) -> dict:
    """Attack one test image and describe the result (and a figure of it).

    Returns ``{"x", "x_adv", "delta", "label", "clean_pred", "adv_pred", "clean_probs",
    "adv_probs", "linf", "figure", "text"}``; names are class names.
    """
    dev = next(model.parameters()).device
    xi, yi = x[index:index + 1].to(dev), y[index:index + 1].to(dev)
    x_adv = attack_images(model, xi, yi, attack, eps, pgd_steps)
    pc, pa = class_probabilities(model, xi)[0].cpu(), class_probabilities(model, x_adv)[0].cpu()
    names = list(classes)
    label, cp, ap = names[int(yi)], names[int(pc.argmax())], names[int(pa.argmax())]
    name = "FGSM" if attack == "fgsm" else f"PGD-{pgd_steps}"
    text = (f"true label: {label}. Clean image → {cp} ({100 * float(pc.max()):.0f}%); "
            f"{name} at ε = {eps:.4f} → {ap} ({100 * float(pa.max()):.0f}%). "
            f"Largest pixel change: {float((x_adv - xi).abs().max()):.4f} "
            f"(= {float((x_adv - xi).abs().max()) * 255:.1f}/255).")
    fig = adversarial_example_figure(xi[0].cpu(), x_adv[0].cpu(), pc.numpy(), pa.numpy(), names,
                                     eps, title=f"{name}: {cp} → {ap} (true: {label})")
    return {"x": xi[0].cpu(), "x_adv": x_adv[0].cpu(), "delta": (x_adv - xi)[0].cpu(),
            "label": label, "clean_pred": cp, "adv_pred": ap, "clean_probs": pc.numpy(),
            "adv_probs": pa.numpy(), "linf": float((x_adv - xi).abs().max()), "figure": fig,
            "text": text}


def accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    eps_grid: Sequence[float]) -> list[float]:
    """FGSM accuracy (%) at each ε of ``eps_grid`` (0 = clean)."""
    dev = next(model.parameters()).device
    xs, ys = x.to(dev), y.to(dev)
    out = []
    for e in eps_grid:
        xa = attacks.fgsm(model, xs, ys, e, check=False) if e > 0 else xs
        with torch.no_grad():
            out.append(100.0 * float((model(xa).argmax(1) == ys).float().mean()))
    return out


# ===================================================== a classifier, quickly ==
QUICK_WIDTH = 0.125    # the quick classifier's ResNet-18 width (or the profile's, if narrower)
QUICK_BATCH = 64       # more updates per second of budget than the experts' 128
QUICK_LR = 0.05        # a schedule of a few hundred steps needs more than the paper's 0.01


def quick_classifier(p: Profile, data: ImageData, seconds: float = 30.0, max_epochs: int = 3,
                     seed: int = 0, warmup_steps: int = 8) -> tuple[nn.Module, dict]:
    """A small ResNet-18 trained on clean images for about ``seconds`` (at most ``max_epochs``).

    Notebook 00 attacks it when the run has no benign expert yet, so a learner sees a real
    adversarial example within a minute instead of after the expert's training. It is the
    benign recipe through the kit's own training step (:func:`dwf_lab.training.loop.train_step`:
    SGD with the profile's momentum and weight decay, cosine learning rate from
    :data:`QUICK_LR`), at width ``min(p.width, QUICK_WIDTH)``, batches of :data:`QUICK_BATCH`
    clean training images without augmentation (it speeds up learning in a short budget), in
    fp32. The number of steps is planned from the measured time of steps 3 to
    ``warmup_steps``, so the learning rate still anneals to 0 inside the budget. Nothing is
    written to the run. Returns (model in eval mode, info) with info
    ``{"width", "steps", "epochs", "images", "seconds"}``.
    """
    if not seconds > 0 or max_epochs < 1 or warmup_steps < 3:
        raise ValueError(f"need seconds > 0, max_epochs >= 1 and warmup_steps >= 3, got seconds={seconds}, "
                         f"max_epochs={max_epochs}, warmup_steps={warmup_steps}")
    t0 = time.perf_counter()
    rt = Runtime.from_profile(p.replace(amp="off", channels_last="off"))
    arch, kw = expert_arch(p, data)
    width = min(p.width, QUICK_WIDTH)
    torch.manual_seed(seed)
    model = rt.prepare(build_model(arch, **{**kw, "width": width}))
    opt = torch.optim.SGD(model.parameters(), lr=QUICK_LR, momentum=p.momentum, weight_decay=p.weight_decay)
    batch = min(QUICK_BATCH, len(data.x_train))
    cap = max_epochs * steps_per_epoch(len(data.x_train), batch)
    total = cap                           # planned from the measured speed after the warm-up
    gen = torch.Generator().manual_seed(seed)
    step, t_warm = 0, 0.0
    for epoch in range(max_epochs):
        for _, xb, yb in iterate_batches(data.x_train, data.y_train, batch, seed=seed, epoch=epoch,
                                         device=rt.device):
            if step >= total:
                break
            train_step("benign", model, opt, xb, yb, p, rt, gen, gen, cosine_lr(step, total, QUICK_LR))
            step += 1
            now = time.perf_counter()
            if step == 2:
                t_warm = now                  # the first steps pay for warm-up: not timed
            elif step >= warmup_steps and (step - warmup_steps) % 10 == 0:
                # replan every 10 steps from the speed so far (a shared machine's speed changes)
                per_step = (now - t_warm) / (step - 2)
                total = max(step, min(cap, step + int((seconds - (now - t0)) / per_step)))
    model.eval()
    return model, {"width": width, "steps": step, "epochs": step * batch / len(data.x_train),
                   "images": step * batch, "seconds": time.perf_counter() - t0}


def pick_fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255) -> dict:
    """A test image the model gets right and FGSM at ``eps`` fools (the most confident such
    one), and how common that is: ``{"index", "right", "fooled", "n"}`` — ``right`` images of
    ``n`` classified correctly, ``fooled`` of them misclassified after FGSM. ``index`` is
    :func:`pick_example`'s choice when FGSM fools none."""
    dev = next(model.parameters()).device
    xs, ys = x.to(dev), y.to(dev)
    right = attacks.correct_mask(model, xs, ys)
    fooled = right & ~attacks.correct_mask(model, attacks.fgsm(model, xs, ys, eps), ys)
    if fooled.any():
        conf = class_probabilities(model, xs).max(1).values
        index = int(torch.where(fooled, conf, torch.full_like(conf, -1.0)).argmax())
    else:
        index = pick_example(model, x, y)
    return {"index": index, "right": int(right.sum()), "fooled": int(fooled.sum()), "n": len(x)}


def accuracy_text(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    """Clean accuracy with its binomial standard error: '41.5% ± 3.5% on 200 test images'."""
    dev = next(model.parameters()).device
    acc = attacks.accuracy(model, x.to(dev), y.to(dev))
    se = math.sqrt(acc * (1 - acc) / max(1, len(x)))
    return f"{100 * acc:.1f}% ± {100 * se:.1f}% on {len(x)} test images"


# =============================================== "write it here" checks ==
def reference_runtime(p: Profile) -> Runtime:
    """The runtime a hand-written training step is compared under: the profile's, on the CPU,
    in fp32 and contiguous memory (no bf16, no channels_last), where every operation is
    deterministic, so the package's :func:`~dwf_lab.training.loop.train_step` must give the
    same numbers as the same step written out by hand."""
    return Runtime.from_profile(p.replace(device="cpu", amp="off", channels_last="off"))


def first_difference(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-7) -> str | None:
    """The name of the first parameter or buffer in which two models differ (``torch.allclose`` on
    floating tensors, integer buffers such as BatchNorm's step counter compared exactly; a name one
    model lacks or a shape that differs counts); None when they hold the same state."""
    sa, sb = a.state_dict(), b.state_dict()
    for k in [*sa, *(k for k in sb if k not in sa)]:
        if k not in sa or k not in sb or sa[k].shape != sb[k].shape:
            return k
    for k, ta in sa.items():
        tb = sb[k].to(ta.device, ta.dtype)
        same = torch.allclose(ta, tb, rtol=rtol, atol=atol) if torch.is_floating_point(ta) else torch.equal(ta, tb)
        if not same:
            return k
    return None


def same_state(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-7) -> bool:
    """True when two models hold the same parameters and buffers (:func:`first_difference`): the
    check that a hand-written training step did what the package's step does."""
    return first_difference(a, b, rtol, atol) is None


def check_matches_package(kind: str, by_hand: nn.Module, loss: torch.Tensor, start: nn.Module,
                          xb: torch.Tensor, yb: torch.Tensor, ctx, step: int = 0) -> float:
    """A training step written by hand against the package's: ``start`` is the model before the
    step, ``by_hand`` after the learner's step, ``loss`` the loss it minimised. The package's
    :func:`~dwf_lab.training.loop.train_step` of ``kind`` runs on a copy of ``start`` with the
    same batch, learning rate and the draws of ``ctx.step_draws(kind, step)``, on the CPU in
    fp32; the two must agree in loss and in every weight and BatchNorm statistic, and the step
    must have moved something. A disagreement raises one line naming what differs. Returns the
    package's loss."""
    p = ctx.profile
    by_package = copy.deepcopy(start).cpu()
    opt = torch.optim.SGD(by_package.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    gen, gen_dev = ctx.step_draws(kind, step)
    loss_package, _, _ = train_step(kind, by_package, opt, xb.cpu(), yb.cpu(), p, reference_runtime(p),
                                    gen, gen_dev, lr=p.lr)
    if all(torch.equal(a, b.to(a.device)) for a, b in zip(by_hand.parameters(), start.parameters())):
        raise ExerciseFailed("your step changed no weight: is the optimizer's step() missing, or did it "
                             "run on another copy of the model?")
    if not torch.allclose(loss.detach().cpu().float(), loss_package.detach().cpu().float(), rtol=1e-5, atol=1e-6):
        raise ExerciseFailed(f"your loss {loss.item():.6f} differs from the package's {loss_package.item():.6f}: "
                             "check the batch (which images, in which mode), the draws' order and the loss")
    where = first_difference(by_hand, by_package)
    if where is not None:
        raise ExerciseFailed(f"same loss, but after the step {where!r} differs from the package's: check the "
                             "optimizer's settings and that the update ran in train mode")
    n = sum(q.numel() for q in by_hand.parameters())
    print(f"your step equals dwf_lab's train_step({kind!r}): loss {loss_package.item():.4f}, "
          f"{n:,} parameters and every BatchNorm statistic the same")
    return float(loss_package.detach())


# ======================================================== the linear model ==
LINEAR_SIDES = (4, 8, 16, 32)   # the same images at 4x4 ... 32x32 pixels: d = 48 ... 3072


def linear_model_gain(data: ImageData, eps: float = 8 / 255, sides: Sequence[int] = LINEAR_SIDES,
                      classes: tuple[int, int] = (0, 1), l2: float = 1e-3, max_iter: int = 200) -> list[dict]:
    """Goodfellow et al. (2015)'s "why", measured: a logistic regression ``w·x + b`` separating two
    classes, fit (L-BFGS, L2 penalty ``l2``) on the training images of ``classes`` averaged down to
    ``side`` x ``side`` pixels, for each side of ``sides`` (input dimension d = channels x side²).
    The worst perturbation in the L∞ ball of radius ``eps`` moves every example's margin
    y·(w·x + b) by exactly ε‖w‖₁ = ε·m·d (m: the mean |w_i|), in closed form (the [0, 1] box
    ignored); on the test images of those classes. One row per d: ``{"d", "side", "mean |w_i|",
    "eps*|w|_1", "median |margin|", "clean %", "attacked %"}``. A few seconds on a CPU."""
    a, b = classes

    def pick(x, y):
        keep = (y == a) | (y == b)
        return x[keep].float().cpu(), torch.where(y[keep] == a, 1.0, -1.0).cpu()

    x, y = pick(data.x_train, data.y_train)
    xt, yt = pick(data.x_test, data.y_test)
    if len(x) == 0 or len(xt) == 0:
        raise ValueError(f"no images of classes {classes} in {data.name}")
    rows = []
    for side in sides:
        z = torch.nn.functional.adaptive_avg_pool2d(x, side).flatten(1)
        zt = torch.nn.functional.adaptive_avg_pool2d(xt, side).flatten(1)
        mu = z.mean(0)                                    # centred: the bias need not carry the mean
        w = torch.zeros(z.shape[1], requires_grad=True)
        bias = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.softplus(-y * ((z - mu) @ w + bias)).mean() + l2 * (w * w).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            margin = yt * ((zt - mu) @ w + bias)
            gain = eps * float(w.abs().sum())
            rows.append({"d": z.shape[1], "side": side, "mean |w_i|": float(w.abs().mean()), "eps*|w|_1": gain,
                         "median |margin|": float(margin.abs().median()),
                         "clean %": 100 * float((margin > 0).float().mean()),
                         "attacked %": 100 * float((margin - gain > 0).float().mean())})
    return rows


# ======================================================= inside a mixture ==
def logit_spread(mixture: nn.Module, x: torch.Tensor, names: Sequence[str], benign: str = "benign",
                 batch_size: int = 256) -> dict:
    """How wide each expert's logits spread inside a trained mixture, on the images ``x``: per
    expert the mean over images of the standard deviation of its logits over the classes
    (``std``), its mean gate weight (``weight``) and its mean share of the mixture's logit scale,
    w_i·std_i / Σ_j w_j·std_j (``share``). Eq. 1 sums logits, so an expert whose logits spread
    k times wider weighs k times more in the sum than its gate weight says. Returns ``{"rows",
    "benign", "robust_std" (the mean std of the other experts), "ratio" (benign std / robust_std,
    None without a benign expert)}``."""
    dev = next(mixture.parameters()).device
    mixture.eval()
    stds, ranges, weights = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            f = torch.stack([e(xb).float() for e in mixture.experts], dim=1).cpu()   # (images, experts, classes)
            stds.append(f.std(dim=2))
            ranges.append(f.max(dim=2).values - f.min(dim=2).values)
            weights.append(torch.softmax(mixture.gate(xb).float(), dim=1).cpu())
    std, spread, w = torch.cat(stds), torch.cat(ranges), torch.cat(weights)   # (images, experts)
    share = (w * std) / (w * std).sum(dim=1, keepdim=True)
    names = list(names)
    rows = [{"expert": n, "std": float(std[:, i].mean()), "max-min": float(spread[:, i].mean()),
             "weight": float(w[:, i].mean()), "share": float(share[:, i].mean())} for i, n in enumerate(names)]
    others = [r["std"] for r in rows if r["expert"] != benign]
    robust_std = sum(others) / len(others) if others else None
    has_benign = benign in names and robust_std
    return {"rows": rows, "benign": benign, "robust_std": robust_std,
            "ratio": rows[names.index(benign)]["std"] / robust_std if has_benign else None}


# ============================================ side runs (notebooks 02, 03) ==
SIDE_RUNS_DIR = "side-runs"     # under the run's seed folder: seed-<k>/side-runs/<kind>.json


def side_run(ctx, kind: str, progress: bool = True) -> dict:
    """The side run ``kind`` ("catastrophic", "robust") of :mod:`dwf_lab.training.side_runs` for the
    notebook's run and seed, kept in the run folder (``seed-<k>/side-runs/<kind>.json``): a re-run
    with the same settings loads it instead of training again. The result is the watch
    :func:`dwf_lab.training.side_runs.side_run` returns, with ``"loaded"`` True when it was read. A
    side run that starts from the run's benign expert trains it first if the run has none (``ctx.train``)
    and is redone when that expert's file changes."""
    p, data = ctx.profile, ctx.data
    s = side_run_settings(kind, p, data)
    key = {"settings": s.as_dict(), "seed": int(ctx.seed), "dataset": data.name, "n_train_data": len(data.x_train),
           "width": p.width, "momentum": p.momentum, "weight_decay": p.weight_decay}
    start = None
    if s.warm_start:
        start = ctx.train("benign")["benign"]
        key["start"] = file_sha256(ctx.run.model_path(ctx.seed, "benign"))
    path = ctx.run.seed_dir(ctx.seed) / SIDE_RUNS_DIR / f"{kind}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("result"), dict):
        return {**stored["result"], "loaded": True}
    result = train_side_run(kind, p, data, ctx.seed, progress=progress, start=start)
    atomic_write_text(path, json.dumps({"key": key, "result": result}, indent=1))
    return {**result, "loaded": False}


def side_run_series(result: Mapping) -> dict[str, list[float]]:
    """A side run's lines by their labels, for :func:`dwf_lab.reporting.figures.curves_figure` over
    ``result["epoch"]``: accuracy on the training attack's examples, then held-out clean, FGSM, PGD."""
    return {result["labels"][k]: list(result[k]) for k in ("train_adv", "clean", "fgsm", "pgd")}


def _binomial_se(percent: float, n: int) -> float:
    q = min(max(percent / 100, 0.0), 1.0)
    return 100 * math.sqrt(q * (1 - q) / max(1, n))


def side_run_verdict(result: Mapping) -> list[str]:
    """What a side run's numbers show, one sentence each, every number read off ``result`` (a claim
    the numbers do not support is never made: "collapsed" and "peaked, then fell" need the drop
    to clear the held-out images' binomial noise as well as the thresholds below).

    catastrophic: PGD accuracy "collapsed" when the last epoch's is under half its best and at least
    10 points lower, while FGSM accuracy did not fall (:func:`dwf_lab.reporting.readings.overfitting_verdicts`).
    robust: held-out PGD accuracy "peaked, then fell" when its mean over the last third of the
    watched epochs after the best is at least 2 binomial standard errors (and 3 points) under the
    best, and training robust accuracy rose by at least 5 points since that best epoch."""
    s = result["settings"]
    ep, pgd, fgsm, clean, train = (result[k] for k in ("epoch", "pgd", "fgsm", "clean", "train_adv"))
    n = int(s["n_val"])
    best = max(range(len(pgd)), key=lambda i: (pgd[i], -i))     # the earliest best
    what = (f"FGSM training at a fixed ε = {round(s['eps'] * 255)}/255, no random start" if s["recipe"] == "fgsm"
            else f"PGD-{s['steps']} training (α = {s['alpha'] * 255:.0f}/255) at ε = {round(s['eps'] * 255)}/255")
    decay = f", the learning rate divided by 10 after epoch {round(s['decay_at'] * s['epochs'])}" \
        if s.get("decay_at") is not None else ""
    origin = "from the run's benign expert" if s.get("warm_start") else "from scratch"
    held = "test images" if s.get("warm_start") else "held-out training images"
    lines = [f"Side run: {what}, {origin}, {s['n_train']} training images, {s['epochs']} epochs at lr {s['lr']:g}"
             f"{decay}; watched on {n} {held} at ε = 8/255."]
    if result["kind"] == "catastrophic":
        lines += overfitting_verdicts({f"FGSM training at {round(s['eps'] * 255)}/255, no random start": result})
        gap = fgsm[-1] - pgd[-1]
        if gap >= 20 and gap > 3 * _binomial_se(fgsm[-1], n):
            lines.append(f"Under FGSM its accuracy went from {fgsm[0]:.1f}% (epoch {ep[0]}) to {fgsm[-1]:.1f}% "
                         f"(epoch {ep[-1]}), under PGD-{s['eval_steps']} from {pgd[0]:.1f}% to {pgd[-1]:.1f}%, "
                         f"on {n} held-out images: it has learned to defeat its own single step, not the ε-ball.")
        if fgsm[-1] > clean[-1] + 2 * _binomial_se(clean[-1], n):
            lines.append(f"It even classifies FGSM images better than clean ones ({fgsm[-1]:.1f}% against "
                         f"{clean[-1]:.1f}%): the FGSM step now carries the label (label leaking), another "
                         "symptom of catastrophic overfitting.")
        return lines
    # "late": the mean of the last third of the watched epochs after the best (at least the last one),
    # less noisy than the last epoch alone
    after = list(range(best + 1, len(pgd)))
    tail = after[-max(1, len(after) // 3):] if after else [best]
    late = sum(pgd[i] for i in tail) / len(tail)
    drop, se = pgd[best] - late, _binomial_se(pgd[best], n)
    rise = train[-1] - train[best]
    span = f"epoch {ep[tail[0]]}" if len(tail) == 1 else f"epochs {ep[tail[0]]}–{ep[tail[-1]]}"
    if drop >= max(3.0, 2 * se) and rise >= 5:
        lines.append(f"Robust overfitting: held-out PGD-{s['eval_steps']} accuracy peaked at {pgd[best]:.1f}% "
                     f"(epoch {ep[best]}) and fell to {late:.1f}% on average over {span} ({drop:.1f} points, "
                     f"{drop / se:.1f} standard errors on {n} images), while accuracy on the training attack's "
                     f"examples rose from {train[best]:.1f}% to {train[-1]:.1f}%.")
        lines.append(f"Early stopping on held-out PGD accuracy (Rice et al. 2020) would keep epoch {ep[best]}.")
    else:
        lines.append(f"No robust overfitting to read here: held-out PGD-{s['eval_steps']} accuracy best "
                     f"{pgd[best]:.1f}% (epoch {ep[best]}), {late:.1f}% on average over {span} (a drop of "
                     f"{drop:.1f} points; one standard error is {se:.1f} on {n} images); accuracy on the training "
                     f"attack's examples {train[best]:.1f}% → {train[-1]:.1f}%.")
    return lines


def phenomenon_note(p: Profile, which: str) -> str:
    """Whether this profile's own experts can show catastrophic ("fgsm") or robust ("pgd")
    overfitting, in one sentence computed from the profile (the side runs show each in any case)."""
    if which == "fgsm":
        hi = max(p.fgsm_eps_choices)
        likely = p.expert_epochs >= 15
        return (f"This profile trains each FGSM expert for {p.expert_epochs} epochs with ε drawn up to "
                f"{hi:g} ≈ {hi * 255:.0f}/255 and no random start: "
                + ("long enough for catastrophic overfitting to appear if it will, so the watch below can show it."
                   if likely else
                   "catastrophic overfitting may or may not appear in so few epochs, so the watch below may show "
                   "nothing. Section 4b trains a small side run meant to show it, and says whether it did."))
    k = max(p.pgd_steps_choices)
    likely = p.expert_epochs >= 30 and k >= 5
    return (f"This profile trains each PGD expert for {p.expert_epochs} epochs with {min(p.pgd_steps_choices)}–{k} "
            f"PGD steps of α = {p.pgd_alpha * 255:.0f}/255: "
            + ("enough epochs for robust overfitting to appear after the learning rate decays; the watch below "
               "can show it." if likely else
               "robust overfitting appears over tens of epochs, so it cannot appear here and the watch below "
               "will not show it. Section 4b trains a small side run meant to show it, and says whether it did."))


def pgd_cost(p: Profile) -> dict:
    """The kit's cost model of a PGD expert's batch, read from the registered recipes (their cost in
    passes, :mod:`dwf_lab.core.work`): a PGD step is a forward and a backward to the input, no
    weight gradients, ``attack_step`` (⅔) of a training step, so a PGD-k batch costs ⅔k + 1 clean
    steps. ``{"attack_step", "mean_k", "per_batch", "paper_mean_k", "paper_per_batch",
    "paper_naive"}``: ``per_batch`` this profile's average over its iteration draws, ``paper_*``
    the paper's (k from {10, ..., 50}), ``paper_naive`` the k + 1 that counts an attack step as a
    whole training step."""
    paper = PROFILES["paper"]

    def ratio(q: Profile) -> float:
        return recipe("pgd").passes(q) / recipe("benign").passes(q)

    return {"attack_step": ATTACK_STEP, "mean_k": statistics.mean(p.pgd_steps_choices), "per_batch": ratio(p),
            "paper_mean_k": statistics.mean(paper.pgd_steps_choices), "paper_per_batch": ratio(paper),
            "paper_naive": statistics.mean(paper.pgd_steps_choices) + 1}
