"""Side runs: small training runs beside a run's stages, each made to show one phenomenon that the
profile's own stages may be too short or too gentle to show.

- ``"catastrophic"``: single-step FGSM training *without* a random start at a large fixed ε
  (16/255, twice the threat model's), a constant learning rate, on a few training images,
  starting from the run's benign expert (a network that has learned features: from scratch, a
  minute of training on a few hundred images learns too little to overfit in any way). The
  model learns to make its own FGSM step useless: accuracy under FGSM climbs while accuracy
  under PGD stays at or falls to about 0 (Wong et al. 2020; Andriushchenko & Flammarion 2020;
  de Jorge et al. 2022). Algorithm 1's experts draw ε up to 0.09 ≈ 23/255.
- ``"robust"``: PGD training (the profile's largest training iteration count and step) for many
  epochs on very few training images, the learning rate divided by 10 halfway: training robust
  accuracy keeps rising while held-out PGD accuracy peaks and falls (robust overfitting, Rice et
  al. 2020, whose fix is early stopping on held-out PGD accuracy).

Both train one ResNet-18 of the profile's width through the kit's own
:func:`~dwf_lab.training.loop.train_step` (the ``fgsm`` and ``pgd`` recipes of Algorithms 1 and 2,
at the side run's settings), on the CPU or the profile's device, in fp32, and after every epoch
measure clean, FGSM and PGD accuracy at the threat model's ε = 8/255 on *held-out* images (training
images the side run does not train on: selecting an epoch on the test set would leak it). Nothing
is written here; :func:`dwf_lab.course.analyses.side_run` keeps the result in the run folder.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.core.config import Profile
from dwf_lab.core.io import progress_bar
from dwf_lab.core.runtime import Runtime, seed_from
from dwf_lab.data import ImageData, iterate_batches, steps_per_epoch
from dwf_lab.models.registry import build_model
from dwf_lab.training.builders import expert_arch
from dwf_lab.training.loop import train_step

KINDS = ("catastrophic", "robust")
EVAL_EPS = 8 / 255      # the threat model every watch is read at


@dataclass(frozen=True)
class SideRunSettings:
    """What a side run trains and how it is watched (:func:`side_run_settings` picks them)."""
    kind: str
    recipe: str               # the kit recipe it trains with: "fgsm" or "pgd"
    eps: float                # training ε (pixel units)
    alpha: float              # training PGD step (PGD only)
    steps: int                # training PGD iterations (PGD only)
    random_start: bool        # PGD's random start (FGSM here never has one)
    n_train: int              # training images (the first of the run's training set)
    n_val: int                # held-out images (the training images after them)
    epochs: int
    batch: int
    lr: float
    decay_at: float | None    # the learning rate is divided by 10 after this share of the epochs
    eval_steps: int           # PGD iterations of the held-out watch (ε 8/255, α 2.5 ε / steps, random start)
    eval_every: int = 1       # the held-out watch after every this many epochs (and the last)
    warm_start: bool = False  # start from the run's benign expert (epoch 0 is then watched too)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def side_run_settings(kind: str, p: Profile, data: ImageData) -> SideRunSettings:
    """The side run ``kind`` at profile ``p``: the sizes of the laptop profile (about a minute on a
    2-core CPU), shrunk to seconds where the profile is the smoke one (a narrow model, little
    data)."""
    if kind not in KINDS:
        raise ValueError(f"side run must be one of {', '.join(KINDS)}, got {kind!r}")
    small = p.width <= 0.0625 or len(data.x_train) < 1000
    if kind == "catastrophic":
        s = SideRunSettings(kind, "fgsm", eps=16 / 255, alpha=0.0, steps=1, random_start=False,
                            n_train=512, n_val=128, epochs=6, batch=32, lr=p.lr, decay_at=None, eval_steps=4,
                            warm_start=True)
    else:
        s = SideRunSettings(kind, "pgd", eps=p.pgd_eps, alpha=p.pgd_alpha, steps=max(p.pgd_steps_choices),
                            random_start=p.random_start, n_train=128, n_val=128, epochs=30, batch=16,
                            lr=p.lr, decay_at=0.5, eval_steps=4, eval_every=2)
    if small:
        s = dataclasses.replace(s, n_train=min(s.n_train, 64), n_val=min(s.n_val, 32), epochs=min(s.epochs, 2),
                                batch=32, eval_steps=2, eval_every=1)
    if s.n_train + s.n_val > len(data.x_train):
        raise ValueError(f"side run {kind!r} needs {s.n_train + s.n_val} training images, the data has "
                         f"{len(data.x_train)}")
    return s


def _lr(s: SideRunSettings, epoch: int) -> float:
    return s.lr / 10 if s.decay_at is not None and epoch >= round(s.decay_at * s.epochs) else s.lr


def _training_profile(s: SideRunSettings, p: Profile) -> Profile:
    """The profile the kit's recipe reads its attack from: the side run's ε, step and iterations."""
    if s.recipe == "fgsm":
        return p.replace(fgsm_eps_choices=(s.eps,))
    return p.replace(pgd_eps=s.eps, pgd_alpha=s.alpha, pgd_steps_choices=(s.steps,), random_start=s.random_start)


def eval_alpha(eval_steps: int) -> float:
    """The held-out PGD's step: 2.5 ε / steps (Madry et al.'s rule: the steps can cross the ball)."""
    return 2.5 * EVAL_EPS / eval_steps


def watch_accuracies(model, x: torch.Tensor, y: torch.Tensor, eval_steps: int, seed: int) -> dict[str, float]:
    """Clean, FGSM and PGD-``eval_steps`` accuracy (%) at ε = 8/255 (:func:`eval_alpha`, a seeded
    random start)."""
    gen = torch.Generator(x.device).manual_seed(seed)
    x_f = attacks.fgsm(model, x, y, EVAL_EPS)
    x_p = attacks.pgd(model, x, y, EVAL_EPS, eval_alpha(eval_steps), eval_steps, True, generator=gen)
    return {"clean": 100 * attacks.accuracy(model, x, y), "fgsm": 100 * attacks.accuracy(model, x_f, y),
            "pgd": 100 * attacks.accuracy(model, x_p, y)}


def side_run(kind: str, p: Profile, data: ImageData, seed: int, progress: bool = True,
             settings: SideRunSettings | None = None, log: Callable[[dict], None] | None = None,
             start: nn.Module | None = None) -> dict:
    """Train the side run ``kind`` and watch it epoch by epoch.

    Returns ``{"kind", "epoch", "clean", "fgsm", "pgd", "train_adv", "labels", "settings",
    "seconds"}``: per epoch (1, 2, ...) the held-out clean / FGSM / PGD accuracy (%) and the
    accuracy on the epoch's own training attack examples (``train_adv``, as the training loop
    logs it); ``labels`` name the lines the way :func:`dwf_lab.reporting.figures.checkpoint_watch_figure`
    reads them. ``settings``: other settings than :func:`side_run_settings`'s; ``log`` is called with
    each watched epoch's numbers as they come. ``start``: the model a warm-started side run copies
    its weights from (the run's benign expert); it is watched at epoch 0, and on test images, which
    it never trained on."""
    s = settings or side_run_settings(kind, p, data)
    t0 = time.perf_counter()
    rt = Runtime.from_profile(p.replace(amp="off", channels_last="off"))
    tp = _training_profile(s, p)
    arch, kw = expert_arch(p, data)
    torch.manual_seed(seed_from(seed, 7001, KINDS.index(kind)))
    model = rt.prepare(build_model(arch, **kw))
    if s.warm_start:
        if start is None:
            raise ValueError(f"side run {kind!r} starts from a trained model: pass start=")
        model.load_state_dict(start.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    x_tr, y_tr = data.x_train[:s.n_train], data.y_train[:s.n_train]
    if s.warm_start:     # the start trained on every training image: watch on test images
        x_val, y_val = data.x_test[:s.n_val].to(rt.device), data.y_test[:s.n_val].to(rt.device)
    else:
        x_val = data.x_train[s.n_train:s.n_train + s.n_val].to(rt.device)
        y_val = data.y_train[s.n_train:s.n_train + s.n_val].to(rt.device)
    spe = steps_per_epoch(s.n_train, s.batch)
    label = f"FGSM {round(s.eps * 255)}/255" if s.recipe == "fgsm" else f"PGD-{s.steps}"
    out = {"kind": kind, "epoch": [], "clean": [], "fgsm": [], "pgd": [], "train_adv": [],
           "labels": {"clean": "held-out clean", "fgsm": "held-out FGSM 8/255",
                      "pgd": f"held-out PGD-{s.eval_steps} 8/255", "train_adv": f"training {label} examples"},
           "settings": s.as_dict()}

    def watch(epoch: int, train_adv: float) -> None:
        model.eval()
        acc = watch_accuracies(model, x_val, y_val, s.eval_steps, seed)
        out["epoch"].append(epoch)
        out["train_adv"].append(train_adv)
        for key, value in acc.items():
            out[key].append(value)
        if log is not None:
            log({"epoch": epoch, "train_adv": train_adv, **acc, "seconds": time.perf_counter() - t0})

    if s.warm_start:
        watch(0, float("nan"))
    bar = progress_bar(total=s.epochs * spe, desc=f"side run: {kind} overfitting", disable=not progress)
    for epoch in range(s.epochs):
        right, seen = 0, 0
        for step, xb, yb in iterate_batches(x_tr, y_tr, s.batch, augment="none", seed=seed_from(seed, 7002),
                                            epoch=epoch, device=rt.device):
            gen, gen_dev = rt.step_generators(seed, 7000 + KINDS.index(kind), epoch * spe + step)
            _, logits, yin = train_step(s.recipe, model, opt, xb, yb, tp, rt, gen, gen_dev, _lr(s, epoch))
            right += int((logits.argmax(1) == yin).sum())
            seen += len(yin)
            bar.update(1)
        if (epoch + 1) % s.eval_every and epoch + 1 < s.epochs:
            continue
        watch(epoch + 1, 100 * right / max(1, seen))
    bar.close()
    out["seconds"] = time.perf_counter() - t0
    return out


__all__ = ["EVAL_EPS", "eval_alpha", "KINDS", "SideRunSettings", "side_run", "side_run_settings",
           "watch_accuracies"]
