"""A gradient-masking checklist (after Carlini et al. 2019, "On Evaluating Adversarial Robustness").

A model can look robust because the attack cannot *see* how to fool it
(vanishing, shattered or randomised gradients) rather than because it cannot be
fooled. Such "robustness" falls to attacks that do not need the model's
gradients. Each check below is computed, reported as pass/fail, and comes with
the numbers it was decided on:

1. ``eps-growth``: robust accuracy falls as eps grows, to ~0 at a large eps
   (eps = 0.3 can turn most images into another class's image);
2. ``iterative-vs-single-step``: PGD is at least as strong as FGSM at the same eps;
3. ``more-steps-help-attacker``: PGD with many more steps and restarts is at least
   as strong as the short PGD ...
4. ``pgd-converged``: ... and breaks few images the short one left, counted per example
   (``per_example_tol`` points plus one example; an aggregate gap would let images the long
   attack breaks hide behind others only the short one broke);
5. ``white-box-vs-black-box``: white-box PGD beats the black-box Square attack;
6. ``white-box-vs-transfer``: white-box PGD beats PGD transferred from a surrogate
   (for a mixture: the uniform average of its experts);
7. ``non-zero-gradients``: few examples have an all-zero input gradient;
8. ``deterministic-forward``: two forward passes on the same input agree
   (a randomised model needs EoT, and its numbers mean something else);
9. ``batchnorm-eval``: every BatchNorm (and Dropout) runs in eval mode during every forward
   pass of the model the checklist makes, its attacks and the model's own forward alike
   (:class:`ModeWatch`: forward pre-hooks on the layers, and a torch function mode that sees
   ``F.batch_norm`` / ``F.dropout`` called in training mode outside any layer).

Two more are read off a model's stored evaluation (``eval/<name>_seed<k>.json``)
once the adaptive attacks are in it, so they cost nothing and are refreshed
whenever attacks are added (:func:`stored_checks`):

10. ``pgd-vs-worst-case``: counted per example on the same images, the other attacks
    (AutoAttack's margin losses, Square, the attacks made for mixtures) break at most
    ``per_example_tol`` points plus one example of the images the paper's attack
    (cross-entropy PGD-20) left: otherwise the PGD numbers measure the attack's limits, not the
    model's. The evidence names how many of them each attack broke;
11. ``own-vs-relaxed-gradient`` (only models with a non-differentiable selection,
    e.g. SoE): the model's own gradient is as strong as the BPDA relaxation's.

12. ``precision-agrees`` (only when the attacks ran in bf16, ``precision``): the checklist's
    PGD-20, run again in fp32 on the same images, breaks at most ``precision_tol`` percent of the
    images plus one that the low-precision attack left robust (per example;
    :mod:`dwf_lab.attacks.precision`).

A run's models were already attacked by the protocol on the same images: checks 2–4 (and the
grid point at 8/255 of check 1) read its stored PGD-20 and PGD-100 x restarts instead of
attacking again, where eps, step size and random start match (:func:`stored_pgd`).

Tolerances: checks 1 (monotone part) and 2 are :mod:`dwf_lab.evaluation.consistency`'s rules (two
binomial SEs), as in notebooks 05 and 08; other attack comparisons allow ``tol`` points plus one
example. A check that cannot run (no surrogate, ART missing) is not run (``passed=None``), never passed.
"""
import contextlib
from dataclasses import asdict, dataclass, fields
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dwf_lab import attacks
from dwf_lab.attacks import art_suite
from dwf_lab.attacks import autoattack as official
from dwf_lab.attacks.base import check_batch_size, check_eps, correct_mask
from dwf_lab.attacks.gate import uniform_mixture
from dwf_lab.attacks.precision import compute_precision
from dwf_lab.core.config import SizedSettings
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.consistency import eps_growth, pgd_vs_fgsm
from dwf_lab.evaluation.metrics import WORST, accuracy_pct, batched, worst_case_keys
from dwf_lab.evaluation.records import key_n, stored_correct

MODE_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


@dataclass
class CheckItem:
    name: str
    passed: bool | None          # None: the check could not run
    evidence: dict
    explanation: str
    key: str = ""

    @property
    def status(self) -> str:
        return {True: "pass", False: "FAIL", None: "not run"}[self.passed]

    @classmethod
    def from_dict(cls, d: dict) -> "CheckItem":
        """An item back from :func:`items_to_json`'s output (a saved checklist)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class ChecklistSettings(SizedSettings):
    eps: float = attacks.PGD_EPS
    alpha: float = attacks.PGD_ALPHA
    steps: int = 20
    long_steps: int = 100
    long_restarts: int = 2
    eps_grid: tuple[float, ...] = (2 / 255, 8 / 255, 16 / 255, 32 / 255, 0.3)
    eps_grid_steps: int = 20
    large_eps_max_acc: float = 10.0      # percent, at the largest eps of the grid
    square_queries: int = 1000
    tol: float = 2.0                     # percentage points (plus one example) of noise (checks 3, 5, 6, 11)
    per_example_tol: float = 2.0         # % of images (plus one) a longer / other attack may break that PGD left
    zero_grad_max_frac: float = 0.1
    det_tol: float = 1e-5
    n_examples: int | None = 500         # the checklist runs on the first n test images
    batch_size: int = 500
    precision: str = "fp32"              # the attacks' arithmetic; bf16 is checked against fp32 (item 12)
    precision_tol: float = 1.0           # percent of the images (plus one) bf16 may leave robust that fp32 breaks
    name: str = "paper"
    SIZES: ClassVar[dict[str, dict]] = {
        "paper": dict(square_queries=5000, long_steps=500, long_restarts=5, n_examples=1000),
        "laptop": dict(name="laptop", n_examples=100, square_queries=500, long_restarts=1),
        "smoke": dict(steps=5, long_steps=6, long_restarts=2, eps_grid=(8 / 255, 0.3), eps_grid_steps=5,
                      square_queries=10, n_examples=32, batch_size=256, name="smoke")}


@dataclass
class StoredPGD:
    """Per-example correctness of a short and a long PGD already run on the checklist's images
    (eps, alpha and a random start as the checklist's own), so the checklist need not run them
    again: ``short`` after ``steps`` steps, ``long`` the worst case of ``restarts`` runs of
    ``long_steps`` steps; ``source`` says where they come from."""
    short: torch.Tensor
    long: torch.Tensor
    steps: int
    long_steps: int
    restarts: int
    source: str


def stored_pgd(rec: dict, s: ChecklistSettings, n: int) -> StoredPGD | None:
    """The protocol's PGD-``s.steps`` and PGD-100 x restarts from an evaluation record, when they
    were run at the checklist's eps, alpha and precision with a random start on at least the first ``n``
    images and the long one is at least as long as the checklist's (None otherwise: attack)."""
    cfg = rec.get("settings") or {}
    short_key, long_key = f"pgd:{s.steps}", f"pgd:{cfg.get('long_steps')}-ms"
    per = rec.get("per_example") or {}
    same_ball = (abs(float(cfg.get("pgd_eps", -1)) - s.eps) < 1e-9
                 and abs(float(cfg.get("pgd_alpha", -1)) - s.alpha) < 1e-9 and cfg.get("random_start") is True
                 and cfg.get("precision", "fp32") == s.precision)
    long_enough = (int(cfg.get("long_steps") or 0) >= s.long_steps
                   and int(cfg.get("restarts") or 0) >= s.long_restarts)
    if not (same_ball and long_enough and short_key in per and long_key in per):
        return None
    if min(key_n(rec, short_key), key_n(rec, long_key)) < n:
        return None
    return StoredPGD(stored_correct(rec, short_key)[:n], stored_correct(rec, long_key)[:n], s.steps,
                     int(cfg["long_steps"]), int(cfg["restarts"]),
                     f"the protocol's stored {short_key} and {long_key} (eval/{rec.get('model')}_seed{rec.get('seed')}.json)")


# ------------------------------------------------------------- helpers --
def _pgd_correct(model, x, y, eps, alpha, steps, restarts, s: ChecklistSettings, seed: int, tag: int,
                 source: nn.Module | None = None) -> torch.Tensor:
    """Per example of ``x``: is ``model`` right under PGD (crafted on ``source`` if given: transfer)?
    Only the images ``model`` classifies correctly are attacked: a misclassified image is not
    robust by definition (as in the protocol), so attacking it would only cost time."""
    src = source if source is not None else model
    keep = batched(lambda xb, yb, b: correct_mask(model, xb, yb), x, y, s.batch_size)
    if not keep.any():
        return keep

    def run(xb, yb, b):
        g = torch.Generator(xb.device).manual_seed(seed_from(seed, b, tag))
        return attacks.pgd(src, xb, yb, eps, alpha, steps, True, restarts, generator=g, check=False)
    x_adv = batched(run, x[keep], y[keep], s.batch_size)
    out = torch.zeros_like(keep)
    out[keep] = batched(lambda xb, yb, b: correct_mask(model, xb, yb), x_adv, y[keep], s.batch_size)
    return out


def _pgd_acc(model, x, y, eps, alpha, steps, restarts, s: ChecklistSettings, seed: int, tag: int,
             source: nn.Module | None = None) -> float:
    """:func:`_pgd_correct` as an accuracy in percent of all of ``x``."""
    return _pct(_pgd_correct(model, x, y, eps, alpha, steps, restarts, s, seed, tag, source))


def _pct(correct: torch.Tensor) -> float:
    return 100.0 * correct.float().mean().item() if len(correct) else 0.0


def _slack(s: ChecklistSettings, n: int) -> float:
    return s.tol + 100.0 / max(1, n)


def _r(v: float) -> float:
    return round(float(v), 2)


def _at_most(a: float, b: float) -> bool:
    """a <= b for accuracies in %, blind to float noise: 100 * mean() of 17 hits in 100 is not
    always exactly 17.0, and a gap equal to its limit must pass."""
    return a <= b + 1e-6


# ------------------------------------------------------------- checks --
def check_eps_growth(model, x, y, s: ChecklistSettings, seed: int = 0,
                     known: dict[float, float] | None = None) -> CheckItem:
    """``known``: accuracies (%) already measured at some eps of the grid with the grid's steps
    and step size (the checklist's own PGD at 8/255), used instead of attacking again."""
    grid = sorted(set(s.eps_grid))
    accs = []
    for i, e in enumerate(grid):
        alpha = max(e / 4, 2.5 * e / max(1, s.eps_grid_steps))
        if known and e in known and abs(alpha - s.alpha) < 1e-12:
            accs.append(known[e])
            continue
        accs.append(_pgd_acc(model, x, y, e, alpha, s.eps_grid_steps, 1, s, seed, 300 + i))
    rise = eps_growth({f"pgd@{e!r}": a for e, a in zip(grid, accs)}, len(x))
    monotone = rise is None or rise.status != "flagged"
    low = accs[-1] <= s.large_eps_max_acc
    return CheckItem(
        "Robust accuracy falls to ~0 as eps grows", monotone and low,
        {"eps": [_r(e * 255) for e in grid], "eps_unit": "/255", "pgd_steps": s.eps_grid_steps,
         "pgd_acc": [_r(a) for a in accs], "max_acc_at_largest_eps": s.large_eps_max_acc,
         "monotone": monotone},
        "A large enough perturbation can turn any image into another class's image, so an "
        "attack that still leaves accuracy high at a large eps (or gets weaker as eps grows) is "
        "not finding the adversarial examples that exist: the gradients are masked.", "eps-growth")


def run_checklist(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  settings: ChecklistSettings | None = None, *, surrogate: nn.Module | None = None,
                  seed: int = 0, square: bool = True, stored: StoredPGD | None = None) -> list[CheckItem]:
    """Every check on ``model`` over (x, y); returns the items in the order of the module docstring.

    ``surrogate``: a model to transfer PGD from (default for a mixture: the
    uniform average of its experts; otherwise the transfer check is not run).
    ``square=False`` skips the Square attack (ART) and reports it as not run.
    ``stored``: the short and long PGD already run on these images at the checklist's eps and
    alpha (:func:`stored_pgd`: the protocol's PGD-20 and PGD-100 x restarts of a run's model),
    read instead of attacking again; the checks then say so.
    """
    s = settings or ChecklistSettings()
    x = attacks.check_inputs(x, s.eps, model, alpha=s.alpha)   # once, on the whole data
    for e in s.eps_grid:
        check_eps(e, "eps_grid")
    check_batch_size(s.batch_size)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if s.n_examples:
        x, y = x[:s.n_examples], y[:s.n_examples]
    n = len(x)
    slack = _slack(s, n)
    was_training = model.training
    model.eval()
    items: list[CheckItem] = []
    low = contextlib.ExitStack()             # the attacks below run in s.precision
    low.enter_context(compute_precision(model, s.precision))
    watch = low.enter_context(ModeWatch())   # every forward pass below, for check 9
    try:
        clean = accuracy_pct(model, x, y)
        fgsm_x = batched(lambda xb, yb, b: attacks.fgsm(model, xb, yb, s.eps, check=False), x, y,
                          s.batch_size)
        fgsm = accuracy_pct(model, fgsm_x, y)
        base = {"eps": f"{s.eps * 255:.3g}/255", "n": n, "clean": _r(clean)}
        known = None                     # accuracies the eps-growth grid need not measure again
        if stored is not None:
            if len(stored.short) != n or len(stored.long) != n:
                raise ValueError(f"stored PGD results cover {len(stored.short)} images, the checklist {n}: "
                                 "read them with stored_pgd(rec, settings, n) for the same images")
            short_ok, long_ok = stored.short.to(device), stored.long.to(device)
            k_short, k_long = f"pgd-{stored.steps}", f"pgd-{stored.long_steps}x{stored.restarts}"
            base["pgd_from"] = stored.source
            if stored.steps == s.eps_grid_steps:
                known = {s.eps: _pct(short_ok)}
        else:
            short_ok = _pgd_correct(model, x, y, s.eps, s.alpha, s.steps, 1, s, seed, 1)
            long_ok = _pgd_correct(model, x, y, s.eps, s.alpha, s.long_steps, s.long_restarts, s, seed, 2)
            k_short, k_long = f"pgd-{s.steps}", f"pgd-{s.long_steps}x{s.long_restarts}"

        pgd, long = _pct(short_ok), _pct(long_ok)
        slack_pe = s.per_example_tol + 100.0 / max(1, n)
        items.append(check_eps_growth(model, x, y, s, seed, known))
        vs = pgd_vs_fgsm({f"fgsm:{s.eps!r}": fgsm, f"pgd:{s.steps}": pgd}, n, s.eps)
        items.append(CheckItem(
            "Iterative attacks beat single-step attacks", vs.status != "flagged",
            {**base, "fgsm": _r(fgsm), k_short: _r(pgd), "tolerance": _r(vs.limit)},
            "PGD takes many small steps along the gradient and FGSM one: PGD should never do "
            "worse. If it does, the loss surface is not what the gradient says it is (shattered "
            "or noisy gradients).", "iterative-vs-single-step"))
        items.append(CheckItem(
            "More steps and restarts do not help the defender", long <= pgd + slack,
            {**base, k_short: _r(pgd), k_long: _r(long), "tolerance": _r(slack)},
            "A longer attack with restarts keeps, per example, its best result: it can only be "
            "stronger. Higher accuracy under it means the attack is erratic.",
            "more-steps-help-attacker"))
        only_long = int((short_ok & ~long_ok).sum())
        items.append(CheckItem(
            f"PGD-{s.steps} has converged", _at_most(100.0 * only_long / max(1, n), slack_pe),
            {**base, k_short: _r(pgd), k_long: _r(long), "broken_only_by_long": only_long,
             "broken_only_by_short": int((~short_ok & long_ok).sum()), "max_broken_only_by_long": _r(slack_pe)},
            "If many more steps and restarts still break images the short attack left, the short attack "
            "had not converged and numbers measured with it overstate robustness (the paper's "
            "tables use 10-100 steps). Counted per example: a net drop can hide them behind "
            "images only the short attack broke.", "pgd-converged"))

        # white-box vs black-box
        sq_item = CheckItem("White-box attacks beat the black-box Square attack", None,
                            {**base, k_short: _r(pgd)},
                            "Square never looks at a gradient. If it beats white-box PGD, the model's "
                            "gradients are hiding its adversarial examples (gradient masking).",
                            "white-box-vs-black-box")
        if square:
            try:
                # the original authors' Square where pyautoattack is installed (it queries only the
                # images still correct), else ART's
                square_fn, by = ((official.official_square, "pyautoattack") if official.available()
                                 else (art_suite.square, "ART"))
                sq = 100.0 * batched(
                    lambda xb, yb, b: square_fn(model, xb, yb, s.eps, max_iter=s.square_queries,
                                                batch_size=s.batch_size, seed=seed_from(seed, b, 4) % 2 ** 31),
                    x, y, s.batch_size).float().mean().item()
                sq_item.passed = _at_most(pgd, sq + slack)
                sq_item.evidence.update(square=_r(sq), square_queries=s.square_queries, square_by=by,
                                        tolerance=_r(slack))
            except ImportError as err:
                sq_item.evidence["not_run"] = str(err)
        else:
            sq_item.evidence["not_run"] = "square=False"
        items.append(sq_item)

        # white-box vs transfer
        src, src_name = surrogate, "given surrogate"
        if src is None and hasattr(model, "experts") and isinstance(model.experts, nn.ModuleList):
            src, src_name = uniform_mixture(model), "uniform average of the experts"
        tr_item = CheckItem("White-box attacks beat transfer attacks", None,
                            {**base, k_short: _r(pgd)},
                            "An attack crafted on another model never differentiates through this one. "
                            "If it does better than attacking this model directly, this model's own "
                            "gradients are misleading (gradient masking).", "white-box-vs-transfer")
        if src is not None:
            tr = _pgd_acc(model, x, y, s.eps, s.alpha, s.steps, 1, s, seed, 5, source=src)
            tr_item.passed = _at_most(pgd, tr + slack)
            tr_item.evidence.update(transfer=_r(tr), source=src_name, tolerance=_r(slack))
        else:
            tr_item.evidence["not_run"] = "no surrogate model to transfer from"
        items.append(tr_item)

        items.append(check_gradients(model, x, y, s))
        items.append(check_deterministic(model, x, s))
        items.append(check_bn_eval(model, x[:min(n, 16)], y[:min(n, 16)], eps=s.eps, alpha=s.alpha, watch=watch))
        low.close()                          # the fp32 reference runs outside it
        if s.precision != "fp32":
            items.append(check_precision_agrees(model, x, y, s, short_ok, seed))
    finally:
        low.close()
        model.train(was_training)
    return items


def check_precision_agrees(model, x, y, s: ChecklistSettings, low_ok: torch.Tensor, seed: int = 0) -> CheckItem:
    """PGD-``s.steps`` in fp32 on the checklist's images against the same attack in ``s.precision``
    (``low_ok``: the checklist's own per-example result), compared image by image: at most
    ``s.precision_tol`` percent of the images plus one may be left robust by the low-precision
    attack and broken in fp32, or the low-precision numbers overstate the model. Rounding moves a
    few borderline images either way; both directions are counted and shown, and the one that
    flatters the model decides (an aggregate can agree while the images do not)."""
    ref_ok = _pgd_correct(model, x, y, s.eps, s.alpha, s.steps, 1, s, seed, 1)
    return precision_item(low_ok.to(ref_ok.device), ref_ok, s)


def precision_item(low_ok: torch.Tensor, ref_ok: torch.Tensor, s: ChecklistSettings) -> CheckItem:
    """Check 12's verdict from the two per-example results (True: still right under the attack)."""
    n = len(ref_ok)
    only_low, only_ref = low_ok & ~ref_ok, ref_ok & ~low_ok    # robust in one precision only
    differ = int((only_low | only_ref).sum())
    tol = s.precision_tol + 100.0 / max(1, n)
    return CheckItem(
        f"{s.precision} attacks agree with fp32, image by image",
        _at_most(100.0 * int(only_low.sum()) / max(1, n), tol),
        {"n": n, f"pgd-{s.steps} ({s.precision})": _r(_pct(low_ok)), f"pgd-{s.steps} (fp32)": _r(_pct(ref_ok)),
         "images with another verdict": differ, f"robust only in {s.precision}": int(only_low.sum()),
         "robust only in fp32": int(only_ref.sum()),
         "which": only_low.nonzero().flatten()[:8].tolist() + only_ref.nonzero().flatten()[:8].tolist(),
         f"max_robust_only_in_{s.precision}": _r(tol * n / 100.0)},
        "The attacks ran in low precision (bf16 autocast) because it is about twice as fast on this CPU. "
        "Rounding can blunt a gradient attack, so the same attack is run again in fp32 and each image's "
        "verdict compared: more images left robust in low precision but broken in fp32 than the "
        "tolerance means the low-precision numbers measure the arithmetic, not the model.",
        "precision-agrees")


def check_gradients(model, x, y, s: ChecklistSettings | None = None) -> CheckItem:
    s = s or ChecklistSettings()
    check_batch_size(s.batch_size)
    grads = []
    with attacks.attack_mode(model):
        for i in range(0, len(x), s.batch_size):
            grads.append(attacks.input_gradient(model, x[i:i + s.batch_size], y[i:i + s.batch_size]))
    g = torch.cat(grads).flatten(1)
    zero = (g.abs().amax(1) == 0)
    nan = ~torch.isfinite(g).all(1)
    frac = (zero | nan).float().mean().item()
    l1 = g.abs().sum(1)
    return CheckItem(
        "Input gradients are non-zero", frac <= s.zero_grad_max_frac,
        {"n": len(x), "fraction_zero_gradient": _r(frac), "fraction_nan": _r(nan.float().mean().item()),
         "median_l1_norm": float(f"{l1.median().item():.3g}") if len(l1) else 0.0,
         "max_fraction": s.zero_grad_max_frac},
        "A gradient-based attack cannot move an image whose loss gradient is exactly zero (a "
        "non-differentiable step such as rounding, a detached output, saturated softmax). Such "
        "examples look robust to PGD whether they are or not.", "non-zero-gradients")


def check_deterministic(model, x, s: ChecklistSettings | None = None) -> CheckItem:
    s = s or ChecklistSettings()
    check_batch_size(s.batch_size)
    with torch.no_grad(), attacks.attack_mode(model):
        xb = x[:s.batch_size]
        a, b = model(xb).float(), model(xb).float()
    diff = (a - b).abs().max().item() if len(xb) else 0.0
    same_pred = (a.argmax(1) == b.argmax(1)).float().mean().item() if len(xb) else 1.0
    return CheckItem(
        "The forward pass is deterministic", diff <= s.det_tol,
        {"n": len(xb), "max_abs_logit_diff": float(f"{diff:.3g}"), "same_prediction": _r(same_pred),
         "tolerance": s.det_tol},
        "A randomised model gives a different answer each call; a single-sample gradient then "
        "points nowhere in particular and robustness must be measured with EoT (averaged "
        "gradients) and the expected prediction.", "deterministic-forward")


# the functional forms a layer (or a model's own forward) normalises or drops out with, and where
# each takes its ``training`` flag: (position, default)
_MODE_FUNCTIONS = {F.batch_norm: (5, False), F.dropout: (2, True), F.dropout1d: (2, True),
                   F.dropout2d: (2, True), F.dropout3d: (2, True), F.alpha_dropout: (2, False),
                   F.feature_alpha_dropout: (2, False)}


class ModeWatch(TorchFunctionMode):
    """Counts, while active, every BatchNorm and Dropout evaluation and those in training mode
    (batch statistics, random masks), whoever makes them: a layer, the model's own forward that
    switched a layer to train mode, or a call to ``F.batch_norm(..., training=True)`` outside any
    layer. It sees the functional call each of those ends in, so nothing a forward pass does
    around the kit's attacks escapes it."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.train_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = _MODE_FUNCTIONS.get(func)
        if where is not None:
            pos, default = where
            training = kwargs["training"] if "training" in kwargs else args[pos] if len(args) > pos else default
            self.calls += 1
            self.train_calls += int(bool(training))
        return func(*args, **kwargs)


def check_bn_eval(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  eps: float = attacks.PGD_EPS, alpha: float = attacks.PGD_ALPHA,
                  watch: ModeWatch | None = None) -> CheckItem:
    """Every BatchNorm/Dropout evaluation during ``attack`` (and, with ``watch``, everything that
    watch saw before: the checklist's other attacks) must be in eval mode (:class:`ModeWatch`).

    ``attack(model, x, y)`` defaults to 2 steps of :func:`dwf_lab.attacks.pgd.pgd` and
    FGSM. The model's mode must also be the same after the attack as before.
    """
    if attack is None:
        def attack(m, xb, yb):
            attacks.fgsm(m, xb, yb, eps)
            return attacks.pgd(m, xb, yb, eps, alpha, steps=2)
    layers = [m for m in model.modules() if isinstance(m, MODE_LAYERS)]
    before = [m.training for m in model.modules()]
    seen = watch if watch is not None else ModeWatch()
    with seen if watch is None else contextlib.nullcontext():
        attack(model, x, y)
    restored = before == [m.training for m in model.modules()]
    passed = seen.train_calls == 0 and restored
    return CheckItem(
        "BatchNorm runs in eval mode during attacks", passed,
        {"mode_layers": len(layers), "calls": seen.calls, "calls_in_train_mode": seen.train_calls,
         "mode_restored": restored, "watched": "every forward pass of the checklist" if watch is not None
         else "the attack"},
        "In train mode BatchNorm normalises with the statistics of the attacked batch itself, so "
        "the attack optimises against a different function from the one evaluated (and updates "
        "the running statistics). Attacks must run the model in eval mode and give its mode back; "
        "a model that switches its own layers to train mode inside forward fails this too.",
        "batchnorm-eval")


# ------------------------------------------------- checks on stored results --
STORED_CHECKS = ("pgd-vs-worst-case", "own-vs-relaxed-gradient")


def _pgd_key(metrics: dict, s: ChecklistSettings) -> str | None:
    """The paper's PGD column (``pgd:<steps>``), else the adaptive run's ``pgd-<steps>``."""
    for k in (f"pgd:{s.steps}", f"pgd-{s.steps}"):
        if k in metrics:
            return k
    return None


def check_pgd_vs_worst_case(rec: dict, s: ChecklistSettings | None = None) -> CheckItem:
    """PGD (cross-entropy, ``s.steps`` steps) against the per-example worst case over every
    stored attack in the same eps-ball (``rec``: an evaluation record with adaptive attacks)."""
    s = s or ChecklistSettings()
    m = rec.get("metrics", {})
    n = key_n(rec, WORST)
    pk = _pgd_key(m, s)
    item = CheckItem(
        f"PGD-{s.steps} is close to the worst case over all attacks", None, {"n": n},
        "The paper measures robustness with cross-entropy PGD. If other attacks (AutoAttack's "
        "margin losses and targeted runs, the black-box Square attack, attacks made for the "
        "model) break many more images, numbers measured with PGD show the limits of the attack "
        "rather than of the model, and the per-example worst case is the number to report.",
        "pgd-vs-worst-case")
    if pk is None or WORST not in m:
        item.evidence["not_run"] = ("no adaptive attacks stored: python -m dwf_lab adaptive"
                                    if WORST not in m else f"no PGD-{s.steps} result stored")
        return item
    per = rec.get("per_example") or {}
    if pk not in per or WORST not in per or key_n(rec, pk) < n:
        item.evidence["not_run"] = f"no per-example {pk} and worst case stored on the same images"
        return item
    pgd_ok, worst_ok = stored_correct(rec, pk)[:n], stored_correct(rec, WORST)[:n]
    left = pgd_ok & ~worst_ok                 # images PGD left that another attack broke
    others = [k for k in worst_case_keys(m, s.eps) if k not in ("SA", pk) and k in per and key_n(rec, k) >= n]
    broke = {k: int((left & ~stored_correct(rec, k)[:n]).sum()) for k in others}
    broke = {k: v for k, v in sorted(broke.items(), key=lambda kv: -kv[1]) if v}
    limit = s.per_example_tol + 100.0 / max(1, n)
    share = 100.0 * int(left.sum()) / max(1, n)
    item.passed = _at_most(share, limit)
    item.evidence.update({pk: _r(100.0 * pgd_ok.float().mean().item()),
                          "worst_case_all": _r(100.0 * worst_ok.float().mean().item()),
                          "broken_only_by_others": int(left.sum()), "broken_only_by_others_pct": _r(share),
                          "broken_by": broke, "max_pct": _r(limit)})
    return item


def check_own_vs_relaxed_gradient(rec: dict, s: ChecklistSettings | None = None) -> CheckItem | None:
    """For a model evaluated under several gradient modes (``rec["gradient_modes"]``, the first
    being its own gradient): PGD with its own gradient is as strong as with each relaxation.
    None for a model with a single gradient."""
    s = s or ChecklistSettings()
    modes = rec.get("gradient_modes") or {}
    if len(modes) < 2:
        return None
    own, *relaxed = list(modes)
    pk = _pgd_key(modes[own], s)
    n = int(rec.get("n_test") or 0)
    item = CheckItem(
        "The model's own gradient is as strong as a relaxed one (BPDA)", None,
        {"n": n, "own_gradient": own},
        "A hard (argmax) selection has no gradient: the model's own gradient is blind to which "
        "expert answers. If attacking a smooth relaxation of the selection (BPDA, Athalye et al. "
        "2018) does better, the hard selection is masking gradients and numbers measured with "
        "the model's own gradient overstate its robustness.", "own-vs-relaxed-gradient")
    if pk is None:
        item.evidence["not_run"] = f"no PGD-{s.steps} result per gradient mode"
        return item
    slack = _slack(s, n)
    best = min(relaxed, key=lambda mode: modes[mode].get(pk, float("inf")))
    item.passed = _at_most(modes[own][pk], modes[best][pk] + slack)
    item.evidence.update({f"{pk} ({own})": _r(modes[own][pk]), f"{pk} ({best})": _r(modes[best][pk]),
                          "tolerance": _r(slack)})
    return item


def stored_checks(rec: dict, s: ChecklistSettings | None = None) -> list[CheckItem]:
    """The checks read off an evaluation record (items 10-11 of the module docstring)."""
    items = [check_pgd_vs_worst_case(rec, s), check_own_vs_relaxed_gradient(rec, s)]
    return [it for it in items if it is not None]


def with_stored_checks(items: list[CheckItem], rec: dict, s: ChecklistSettings | None = None) -> list[CheckItem]:
    """``items`` with the stored-result checks recomputed from ``rec`` (any earlier ones dropped,
    the fresh ones last)."""
    return [it for it in items if it.key not in STORED_CHECKS] + stored_checks(rec, s)


# ------------------------------------------------------------- output --
def items_to_json(items: list[CheckItem]) -> list[dict]:
    return [{**asdict(it), "status": it.status} for it in items]


def summary(items: list[CheckItem]) -> dict:
    return {"passed": sum(it.passed is True for it in items),
            "failed": sum(it.passed is False for it in items),
            "not_run": sum(it.passed is None for it in items),
            "failed_checks": [it.key or it.name for it in items if it.passed is False]}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if (v != 0 and abs(v) < 0.01) else f"{v:.2f}".rstrip("0").rstrip(".")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(u) for u in v) + "]"
    return str(v)


def checklist_markdown(items: list[CheckItem], title: str | None = "Gradient-masking checklist") -> str:
    """A markdown table (check, result, evidence) and the reasoning behind each check."""
    sm = summary(items)
    lines = [f"## {title}", ""] if title else []
    verdict = ("every check that ran passed" if sm["failed"] == 0 else
               f"**{sm['failed']} check(s) FAILED**: the robust accuracy of this model is not "
               "trustworthy until they are explained")
    lines += [f"{sm['passed']} passed, {sm['failed']} failed, {sm['not_run']} not run: {verdict}.", "",
              "| # | check | result | evidence |", "|---|---|---|---|"]
    for i, it in enumerate(items, 1):
        ev = "; ".join(f"{k} = {_fmt(v)}" for k, v in it.evidence.items())
        res = {True: "✅ pass", False: "❌ **FAIL**", None: "➖ not run"}[it.passed]
        lines.append(f"| {i} | {it.name} | {res} | {ev.replace('|', '/')} |")
    lines += ["", "Why each check:", ""]
    lines += [f"{i}. **{it.name}**: {it.explanation}" for i, it in enumerate(items, 1)]
    lines += ["", "After Carlini et al. 2019, *On Evaluating Adversarial Robustness* (arXiv:1902.06705), "
              "and Athalye, Carlini & Wagner 2018, *Obfuscated Gradients Give a False Sense of Security*."]
    return "\n".join(lines) + "\n"
