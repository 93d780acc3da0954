"""The course's exercises, graded the way an autograder grades them (nbgrader's habits).

Every exercise of a notebook is three cells, in this order:

1. **the learner's cell** (tagged ``exercise``): a stub to fill in, a function that does nothing
   (``def my_fgsm(model, x, y, eps): ...  # your code here``) or a variable still ``None``;
2. **the check**: one call into this module on the learner's answer. An answer not given yet (the
   variable is ``None`` or ``...``, the function returns ``None`` or raises ``NotImplementedError``)
   prints ``Exercise N: not attempted`` and the notebook goes on; a wrong one raises
   :class:`ExerciseFailed`, whose message is ONE line naming the mistake; a right one prints
   ``Exercise N: correct — ...``;
3. **the solution** (tagged ``solution``, its source hidden): ``if solutions:`` and the answer,
   then the same check on it. ``solutions`` is a papermill parameter, False in every notebook's
   parameters cell: a learner's Run All never runs an answer nobody asked for; the headless course
   (:func:`dwf_lab.course.runner.run_course`) and its tests set it True, so every solution is run
   and checked there.

:func:`check_attack` grades a write-it-yourself attack (FGSM, PGD, FGSM from a random start, a
targeted FGSM; a plain model or a mixture): it runs the learner's function on a copy of the
model handed over in train mode, watches it with hooks, and compares its images with the kit's
attack (:func:`dwf_lab.attacks.fgsm` / :func:`~dwf_lab.attacks.pgd`: images in [0, 1],
normalisation inside the model, ε in pixels, eval mode). :func:`diagnose_attack` returns the
verdict as a :class:`Diagnosis` (the key of :data:`MISTAKES`) without printing or raising. The other
``check_*`` functions grade the notebooks' other exercises. :mod:`dwf_lab.course.student` writes the course
with every solution removed (``python -m dwf_lab course --student-copy DIR``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.models.common import Normalize

NOT_ATTEMPTED = "not attempted"
EXERCISE_TAG = "exercise"

# the mistakes a write-it-yourself attack is checked for: key -> what the one line says first
MISTAKES = {
    "bn_train": "BatchNorm in train mode during the attack",
    "zero_gradient": "zero gradient (detached?)",
    "detached_gate": "detached gate",
    "clamp": "missing clamp to [0, 1]",
    "normalized_eps": "ε applied to normalized inputs",
    "projection": "missing projection onto the ε-ball",
    "gradient_at_x": "gradient taken at x, not at the iterate",
    "softmax": "softmax probabilities in the loss",
    "wrong_sign": "step in the wrong direction",
    "no_random_start": "no random start",
    "mode_not_restored": "the model is not given back in train mode",
}
ATTACK_KINDS = ("fgsm", "pgd", "fgsm_rs", "targeted")
RS_STEP = 1.25          # FGSM from a random start (Wong et al. 2020) steps 1.25 ε
SAME_TOL = 1e-5         # two pixels are equal up to this
SAME_SHARE = 1e-3       # two attacks agree when at most this share of pixels differ (a sign of ~0)


class ExerciseFailed(AssertionError):
    """A wrong answer: the message is one line that names the mistake. In a notebook it shows as
    that line alone (IPython's ``_render_traceback_``), not as a traceback into this module."""

    def _render_traceback_(self):
        return [f"\x1b[0;31mExerciseFailed\x1b[0m: {self}"]


@dataclass
class Diagnosis:
    """The verdict on a learner's answer: ``key`` is "ok", "not_attempted", "error", "shape",
    "differs" or one of :data:`MISTAKES`; ``line`` says it in one line (without "Exercise N: ")."""
    key: str
    line: str
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.key == "ok"


# ============================================================== answers ==
def attempted(answer) -> bool:
    """False for an answer not given yet: ``None`` or ``...`` (a function is judged by its result)."""
    return answer is not None and answer is not Ellipsis


class Checked(int):
    """What a check returns: true when the answer is right, false when there is none yet (a wrong
    one raises). A notebook cell that ends with the check shows the check's own line only, not a
    bare ``True`` / ``False`` under it."""

    def __new__(cls, ok: bool):
        return super().__new__(cls, bool(ok))

    def __repr__(self) -> str:
        return repr(bool(self))

    def _ipython_display_(self) -> None:
        pass


def not_attempted(n) -> Checked:
    print(f"Exercise {n}: {NOT_ATTEMPTED}")
    return Checked(False)


def verdict(n, d: Diagnosis) -> Checked:
    """Print or raise: the one place a check's verdict reaches the learner."""
    if d.key == "not_attempted":
        return not_attempted(n)
    if d.ok:
        print(f"Exercise {n}: correct — {d.line}")
        return Checked(True)
    raise ExerciseFailed(f"Exercise {n}: {d.line}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _percent(values) -> list[float]:
    return [float(v) for v in values]


# ============================================================ attacks ==
def _norm_std(model: nn.Module) -> torch.Tensor | None:
    """σ per channel of the model's own normalisation (its first :class:`Normalize`), or None."""
    for m in model.modules():
        if isinstance(m, Normalize):
            return m.std.detach().flatten().cpu()
    return None


class _Probe:
    """Hooks on a model while the learner's attack runs: BatchNorm's mode at each call, the points
    the gradient is taken at (the inputs of the model's first layers that require grad), and for a
    mixture whether any gradient reached the gate's and the experts' outputs."""

    def __init__(self, model: nn.Module):
        self.bn_train = False
        self.points: list[torch.Tensor] = []
        self.reached: set[str] = set()
        self.mixture = False
        self._handles = []
        first = [m for m in model.modules() if isinstance(m, Normalize)] or [model]
        for m in first:
            self._handles.append(m.register_forward_pre_hook(self._point))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                self._handles.append(m.register_forward_pre_hook(self._bn))
        gate, experts = getattr(model, "gate", None), getattr(model, "experts", None)
        if isinstance(gate, nn.Module) and isinstance(experts, nn.ModuleList) \
                and getattr(model, "routing", "soft") != "uniform":
            self.mixture = True
            self._handles.append(gate.register_forward_hook(self._watch("gate")))
            for e in experts:
                self._handles.append(e.register_forward_hook(self._watch("experts")))

    def _bn(self, module, inputs):
        if module.training:
            self.bn_train = True

    def _point(self, module, inputs):
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            x = x.detach()
            if not any(p.shape == x.shape and torch.equal(p, x) for p in self.points[-12:]):
                self.points.append(x.clone())

    def _watch(self, key: str):
        def hook(module, inputs, out):
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: self.reached.add(key) if bool(g.abs().sum() > 0) else None)
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def softmax_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mistaken loss: cross-entropy of the softmax probabilities (softmax applied twice)."""
    return F.cross_entropy(F.softmax(model(x), dim=1), y, reduction="none")


def signed_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
                 start: torch.Tensor, loss="ce", at_x: bool = False, direction: float = 1.0) -> torch.Tensor:
    """``steps`` signed-gradient steps of size ``step`` from ``start``, each projected onto the
    ε-ball around x and [0, 1] (Eq. 4-5), in eval mode: every attack an exercise asks for, and the
    variants a mistake makes of it (the gradient at x, the other direction, another loss)."""
    with attacks.attack_mode(model):
        x_adv = start.detach()
        for _ in range(steps):
            g = attacks.input_gradient(model, x if at_x else x_adv, y, loss)
            x_adv = attacks.project(x_adv + direction * step * g.sign(), x, eps)
    return x_adv


def _start(kind: str, x: torch.Tensor, eps: float, seed: int, random: bool = True) -> torch.Tensor:
    if kind in ("pgd", "fgsm_rs") and random:
        return attacks.random_start_in_ball(x, eps, torch.Generator(x.device).manual_seed(seed))
    return x.clone()


def reference_attack(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                     alpha: float | None = None, steps: int | None = None, seed: int = 0, loss="ce",
                     at_x: bool = False, direction: float = 1.0, random_start: bool = True) -> torch.Tensor:
    """What an exercise's attack must return (``kind`` in :data:`ATTACK_KINDS`; the targeted attack
    descends the loss of the labels ``y``), or one mistaken variant of it. The plain FGSM and PGD are
    the kit's own :func:`~dwf_lab.attacks.fgsm` and :func:`~dwf_lab.attacks.pgd` (the PGD's random
    start from ``torch.Generator().manual_seed(seed)``)."""
    plain = loss == "ce" and not at_x and direction == 1.0 and random_start
    if kind == "fgsm" and plain:
        return attacks.fgsm(model, x, y, eps)
    if kind == "pgd" and plain:
        return attacks.pgd(model, x, y, eps, alpha, steps, generator=torch.Generator(x.device).manual_seed(seed))
    start = _start(kind, x, eps, seed, random_start)
    if kind == "pgd":
        return signed_steps(model, x, y, eps, alpha, steps, start, loss, at_x, direction)
    if kind == "fgsm_rs":
        return signed_steps(model, x, y, eps, RS_STEP * eps, 1, start, loss, at_x, direction)
    sign = -direction if kind == "targeted" else direction
    return signed_steps(model, x, y, eps, eps, 1, start, loss, at_x, sign)


def differing_share(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of pixels where two batches of images differ (by more than float rounding)."""
    return float(((a - b).abs() > SAME_TOL).float().mean())


def same_images(a: torch.Tensor, b: torch.Tensor, share: float = SAME_SHARE) -> bool:
    """Equal up to float rounding, allowing a few pixels whose gradient was about 0 (its sign then
    depends on the order the terms were summed in)."""
    if a.shape != b.shape:
        return False
    return float(((a - b).abs() > SAME_TOL).float().mean()) <= share


def _signature(kind: str) -> str:
    return {"fgsm": "fn(model, x, y, eps)", "targeted": "fn(model, x, t, eps)",
            "pgd": "fn(model, x, y, eps, alpha, steps, generator)",
            "fgsm_rs": "fn(model, x, y, eps, generator)"}[kind]


def _name(kind: str) -> str:
    return {"fgsm": "dwf_lab.attacks.fgsm", "pgd": "dwf_lab.attacks.pgd",
            "fgsm_rs": "FGSM from a random start (1.25 ε step, projected)",
            "targeted": "the targeted FGSM step"}[kind]


def _run_learner(kind, fn, m, x, y, eps, alpha, steps, seed):
    if kind in ("fgsm", "targeted"):
        return fn(m, x, y, eps)
    gen = torch.Generator(x.device).manual_seed(seed)
    if kind == "pgd":
        return fn(m, x, y, eps, alpha, steps, gen)
    return fn(m, x, y, eps, gen)


DETACHED_ERRORS = ("does not require grad", "not have been used in the graph", "does not have a grad_fn")


def diagnose_attack(fn: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                    kind: str = "fgsm", alpha: float | None = None, steps: int | None = None,
                    seed: int = 0, train_mode: bool = True, restores_mode: bool = False) -> Diagnosis:
    """Run the learner's attack ``fn`` and say what, if anything, is wrong with it (module doc).

    ``fn`` is called as :func:`_signature` says: ``fn(model, x, y, eps)`` for "fgsm" and
    "targeted" (``y`` holds the targets), ``fn(model, x, y, eps, alpha, steps, generator)`` for
    "pgd" and ``fn(model, x, y, eps, generator)`` for "fgsm_rs"; the generator is seeded with
    ``seed`` and must draw the random start (:func:`dwf_lab.attacks.random_start_in_ball`). It gets
    a copy of ``model``, in train mode when ``train_mode`` (as a training loop hands it over: the
    attack must switch to eval mode itself), and copies of ``x`` and ``y``. ``restores_mode``: it
    must also give the model back in the mode it came in. The mistakes are looked for in this
    order, the first found named: an error or no answer; BatchNorm in train mode; no change at all
    (a zero gradient); a gate no gradient reached (a mixture); pixels outside [0, 1]; a change of
    ε·σ (ε applied to normalized inputs); a change above ε; every gradient at one point; then the
    images compared with the kit's attack and with the attack a mistake makes: softmax in the loss,
    the wrong direction, no random start, the gradient at x.
    """
    if kind not in ATTACK_KINDS:
        raise ValueError(f"kind must be one of {ATTACK_KINDS}, got {kind!r}")
    if kind == "pgd" and (alpha is None or steps is None):
        raise ValueError("a PGD exercise needs alpha and steps")
    alpha = RS_STEP * eps if kind == "fgsm_rs" else alpha
    x = attacks.check_inputs(x, eps, model).detach()
    ref_model = copy.deepcopy(model)
    if getattr(ref_model, "expert_batching", None) == "vmap":   # hooks see each expert in the loop
        ref_model.expert_batching = "loop"
    m = copy.deepcopy(ref_model).train(train_mode)
    with _Probe(m) as probe:
        try:
            out = _run_learner(kind, fn, m, x.clone(), y.clone(), eps, alpha, steps, seed)
        except NotImplementedError:
            return Diagnosis("not_attempted", NOT_ATTEMPTED)
        except Exception as e:   # the learner's code failed: say how, in one line
            text = _one_line(f"{type(e).__name__}: {e}")
            if any(s in str(e) for s in DETACHED_ERRORS):
                return Diagnosis("zero_gradient", f"{MISTAKES['zero_gradient']} — {text[:160]}: keep the graph "
                                 "from x to the loss (x.clone().requires_grad_(True), no .detach() or "
                                 "torch.no_grad() on the way)")
            return Diagnosis("error", f"your function raised {text[:200]}")
    if not attempted(out):
        return Diagnosis("not_attempted", NOT_ATTEMPTED)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return Diagnosis("shape", f"your function must return a batch of images shaped like x {tuple(x.shape)}, "
                                  f"got {got} (signature {_signature(kind)})")
    out = out.detach().float()
    delta = out - x
    linf = float(delta.abs().max())
    info = {"linf": linf}
    if probe.bn_train:
        return Diagnosis("bn_train", f"{MISTAKES['bn_train']} — the model came in train mode and your attack ran "
                         "it so (BatchNorm then normalises with the batch's statistics and updates its running "
                         "ones): call model.eval() first, or attack inside `with attacks.attack_mode(model):`", info)
    start = _start(kind, x, eps, seed)
    if linf <= SAME_TOL or (kind in ("pgd", "fgsm_rs") and same_images(out, start, 0.0)):
        return Diagnosis("zero_gradient", f"{MISTAKES['zero_gradient']} — x_adv is "
                         f"{'x' if linf <= SAME_TOL else 'the random start'} unchanged: no gradient reached "
                         "the input (a .detach(), torch.no_grad() or a loss not computed from x)", info)
    if probe.mixture and "experts" in probe.reached and "gate" not in probe.reached:
        return Diagnosis("detached_gate", f"{MISTAKES['detached_gate']} — the gradient reached the experts but not "
                         "the gate's scores: the attacker differentiates through the gate weights w(x) too (no "
                         ".detach() or torch.no_grad() on them)", info)
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        return Diagnosis("clamp", f"{MISTAKES['clamp']} — your pixels range over [{lo:.3f}, {hi:.3f}]: an image "
                         "stays in [0, 1], end with .clamp(0, 1)", info)
    sigma = _norm_std(model)
    if sigma is not None and len(sigma) == x.shape[1] and float((sigma - 1).abs().max()) > 0.05:
        per_channel = delta.abs().amax(dim=(0, 2, 3)).cpu()
        for scaled, how in ((eps * sigma, "ε·σ"), (eps / sigma, "ε/σ")):
            if torch.allclose(per_channel, scaled, rtol=0.02, atol=1e-6):
                return Diagnosis("normalized_eps", f"{MISTAKES['normalized_eps']} — your largest change per "
                                 f"channel is {how} = {', '.join(f'{v:.4f}' for v in per_channel.tolist())} (σ: the "
                                 f"model's normalisation std), not ε = {eps:.4f}: ε is in pixel units, perturb the "
                                 "[0, 1] images (the model normalises inside)", info)
    if linf > eps + 1e-6:
        return Diagnosis("projection", f"{MISTAKES['projection']} — max |x_adv - x| = {linf:.4f} > ε = {eps:.4f}: "
                         "after each step clip to [x - ε, x + ε] (Eq. 5, attacks.project), then to [0, 1]", info)
    if kind in ("pgd", "fgsm_rs") and probe.points:
        at_x = all(p.shape == x.shape and torch.equal(p, x) for p in probe.points)
        one_point = all(p.shape == probe.points[0].shape and torch.equal(p, probe.points[0]) for p in probe.points)
        if at_x or (kind == "pgd" and steps >= 2 and one_point):
            where = "x" if at_x else "one point"
            return Diagnosis("gradient_at_x", f"{MISTAKES['gradient_at_x']} — every gradient was taken at {where} "
                             f"(the paper's printed Eq. 4): take ∇ℓ at the current "
                             f"{'iterate x_adv' if kind == 'pgd' else 'random start x0'}", info)
    if restores_mode and train_mode and not m.training:
        return Diagnosis("mode_not_restored", f"{MISTAKES['mode_not_restored']} — it came in train mode and left in "
                         "eval mode, so the training step after it would update in eval mode: restore it "
                         "(`with attacks.attack_mode(model):` does)", info)
    ref = reference_attack(kind, ref_model, x, y, eps, alpha, steps, seed)
    off = differing_share(out, ref)
    if off == 0.0:
        return Diagnosis("ok", _ok_line(kind, ref_model, x, y, out, eps), info)
    # the attack a mistake makes, nearest first: named when it is much nearer than the reference
    # (a sign-gradient attack hides some mistakes on most pixels: softmax in the loss changes ~0.1%)
    which = ("your step climbs the loss of the target t: a targeted step descends it (x - ε·sign(∇))"
             if kind == "targeted" else "your step descends the loss: an attack climbs it (x + ε·sign(∇))")
    variants = [("softmax", {"loss": softmax_ce}, "F.cross_entropy takes logits (it applies log-softmax itself): "
                 "pass model(x), not its softmax"),
                ("wrong_sign", {"direction": -1.0}, which)]
    if kind in ("pgd", "fgsm_rs"):
        variants += [("no_random_start", {"random_start": False}, "your attack starts at x: start at "
                      "attacks.random_start_in_ball(x, eps, generator)"),
                     ("gradient_at_x", {"at_x": True}, "(the paper's printed Eq. 4): take ∇ℓ at the current iterate")]
    scored = []
    for key, kw, line in variants:
        share = differing_share(out, reference_attack(kind, ref_model, x, y, eps, alpha, steps, seed, **kw))
        scored.append((share, key, line))
        if share == 0.0:
            break
    share, key, line = min(scored, key=lambda t: t[0])
    if share <= SAME_SHARE and share < off / 4:
        return Diagnosis(key, f"{MISTAKES[key]} — {line}", info)
    if off <= SAME_SHARE:   # a few pixels whose gradient was about 0: summed in another order
        return Diagnosis("ok", _ok_line(kind, ref_model, x, y, out, eps), info)
    bad = ((out - ref).abs() > SAME_TOL).flatten(1).any(1)
    return Diagnosis("differs", f"your images differ from {_name(kind)}'s on {int(bad.sum())} of {len(x)} images "
                     f"(largest pixel difference {float((out - ref).abs().max()):.4f}) and match none of the usual "
                     "mistakes: compare your lines with the equations above", info)


def _ok_line(kind, model, x, y, out, eps) -> str:
    acc_clean, acc_adv = attacks.accuracy(model, x, y), attacks.accuracy(model, out, y)
    if kind == "targeted":
        return (f"your targeted step equals the reference on {len(x)} images; {100 * acc_adv:.0f}% of them now "
                f"classified as their target (before: {100 * acc_clean:.0f}%)")
    line = (f"your attack equals {_name(kind)} on {len(x)} images; accuracy {100 * acc_clean:.0f}% clean, "
            f"{100 * acc_adv:.0f}% under it")
    if kind == "fgsm_rs":
        edge = float(((out - x).abs() > eps - 1e-6).float().mean())
        line += f"; {100 * edge:.0f}% of its pixels on the ball's edge (plain FGSM: all that the box allows)"
    return line


def check_attack(n, fn: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 kind: str = "fgsm", alpha: float | None = None, steps: int | None = None, seed: int = 0,
                 train_mode: bool = True, restores_mode: bool = False) -> bool:
    """Exercise ``n``, a write-it-yourself attack: prints "not attempted" or "correct", or raises
    :class:`ExerciseFailed` naming the mistake (:func:`diagnose_attack`). Returns True when correct."""
    if not attempted(fn):
        return not_attempted(n)
    return verdict(n, diagnose_attack(fn, model, x, y, eps, kind=kind, alpha=alpha, steps=steps, seed=seed,
                                       train_mode=train_mode, restores_mode=restores_mode))


# =========================================================== numbers ==
def _fraction_mistake(values: Sequence[float], expected: Sequence[float]) -> bool:
    """Accuracies given as fractions in [0, 1] where percentages were asked for."""
    return (all(0 <= v <= 1 for v in values) and any(e > 1 for e in expected)
            and all(abs(100 * v - e) <= 1e-6 + 1e-3 * abs(e) for v, e in zip(values, expected)))


def _compare_percentages(values, expected, labels, tol: float, what: str) -> Diagnosis:
    values = _percent(values)
    if _fraction_mistake(values, expected):
        return Diagnosis("fraction", f"these are fractions in [0, 1]: give {what} in %, 100 × attacks.accuracy(...)")
    for v, e, label in zip(values, expected, labels):
        if abs(v - e) > tol:
            return Diagnosis("differs", f"at {label} you have {v:.2f}%, the kit's attack gives {e:.2f}% "
                             f"({what}; same images, same attack?)")
    return Diagnosis("ok", ", ".join(f"{label}: {e:.1f}%" for label, e in zip(labels, expected)))


def fgsm_accuracies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: Sequence[float]) -> list[float]:
    """FGSM accuracy (%) of ``model`` on (x, y) at each ε (0: clean), the kit's attack."""
    return [100 * attacks.accuracy(model, attacks.fgsm(model, x, y, e) if e > 0 else x, y) for e in eps_grid]


def check_fgsm_accuracies(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps_grid: Sequence[float], tol: float = 1e-6) -> bool:
    """FGSM accuracy (%) at each ε of ``eps_grid``, in that order, against :func:`fgsm_accuracies`."""
    if not attempted(answer):
        return not_attempted(n)
    values = list(answer.values()) if isinstance(answer, Mapping) else list(answer)
    if len(values) != len(eps_grid):
        return verdict(n, Diagnosis("shape", f"give one accuracy per ε: {len(eps_grid)} numbers, got {len(values)}"))
    expected = fgsm_accuracies(model, x, y, eps_grid)
    return verdict(n, _compare_percentages(values, expected, [f"ε = {e:g}" for e in eps_grid], tol, "FGSM accuracy"))


def pgd_readings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                 read_at: Sequence[int], seed: int) -> dict[int, float]:
    """Accuracy (%) after each step count in ``read_at`` of one PGD run from the random start of
    ``torch.Generator(x.device).manual_seed(seed)`` (:func:`dwf_lab.attacks.pgd_trajectory`)."""
    traj = attacks.pgd_trajectory(model, x, y, eps, alpha, tuple(read_at), True,
                                  torch.Generator(x.device).manual_seed(seed))
    return {k: 100 * float(traj[k].float().mean()) for k in read_at}


def check_pgd_readings(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       read_at: Sequence[int], seed: int, tol: float | None = None) -> bool:
    """``{k: accuracy % after k steps}`` of one PGD trajectory, against :func:`pgd_readings`
    (``tol``: default one image, for a GPU that sums gradients in another order)."""
    if not attempted(answer):
        return not_attempted(n)
    if not isinstance(answer, Mapping) or sorted(int(k) for k in answer) != sorted(read_at):
        got = sorted(answer) if isinstance(answer, Mapping) else type(answer).__name__
        return verdict(n, Diagnosis("shape", f"give a dict {{steps: accuracy %}} for steps {list(read_at)}, got {got}"))
    expected = pgd_readings(model, x, y, eps, alpha, read_at, seed)
    values = [answer[k] for k in sorted(read_at)]
    tol = 100 / max(1, len(x)) + 1e-6 if tol is None else tol
    d = _compare_percentages(values, [expected[k] for k in sorted(read_at)],
                             [f"PGD-{k}" for k in sorted(read_at)], tol, "PGD accuracy")
    return verdict(n, d)


def first_flip(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, max_k: int = 25) -> int | None:
    """The smallest k in 1..max_k for which the attack at ε = k/255 changes the prediction of the one
    image x (FGSM; PGD: 10 steps of 2.5·ε/10 from x, as the ε slider), None if none does."""
    with torch.no_grad():
        clean = model(x).argmax(1)
    for k in range(1, max_k + 1):
        e = k / 255
        x_a = attacks.fgsm(model, x, y, e) if attack == "FGSM" else \
            attacks.pgd(model, x, y, e, 2.5 * e / 10, 10, random_start=False)
        with torch.no_grad():
            if bool((model(x_a).argmax(1) != clean).any()):
                return k
    return None


def check_first_flip(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_k: int = 25) -> bool:
    """``{"FGSM": k, "PGD": k}`` (k: ε = k/255, None for no change up to max_k), against :func:`first_flip`."""
    if not attempted(answer):
        return not_attempted(n)
    if not isinstance(answer, Mapping) or set(answer) != {"FGSM", "PGD"}:
        return verdict(n, Diagnosis("shape", 'give a dict {"FGSM": k, "PGD": k} (ε = k/255; None: no change up '
                                     f"to {max_k}/255)"))
    expected = {a: first_flip(model, x, y, a, max_k) for a in ("FGSM", "PGD")}
    for a in ("FGSM", "PGD"):
        got = answer[a]
        if got is not None and not isinstance(got, (int, float)):
            return verdict(n, Diagnosis("shape", f"{a}: give k as a number, got {got!r}"))
        if got is not None and 0 < got < 1 and expected[a] is not None and abs(got * 255 - expected[a]) < 0.5:
            return verdict(n, Diagnosis("units", f"{a}: {got:.4f} is ε; give k, the number of pixel levels "
                                         f"(ε = k/255)"))
        if got != expected[a]:
            say = "no change up to 25/255" if expected[a] is None else f"{expected[a]}/255"
            return verdict(n, Diagnosis("differs", f"{a}: you have {got}, the kit's attack first changes the "
                                         f"prediction at {say} (clean prediction compared, not the label?)"))
    line = ", ".join(f"{a} at {'no ε up to 25/255' if k is None else f'{k}/255'}" for a, k in expected.items())
    return verdict(n, Diagnosis("ok", line))


def check_images(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]) -> bool:
    """One FGSM image (C, H, W) of the one image x per ε of ``eps_list`` (0: x itself), in order."""
    if not attempted(answer):
        return not_attempted(n)
    answer = list(answer)
    if len(answer) != len(eps_list):
        return verdict(n, Diagnosis("shape", f"give {len(eps_list)} images, one per ε, got {len(answer)}"))
    for img, e in zip(answer, eps_list):
        want = attacks.fgsm(model, x, y, e)[0].cpu()
        img = torch.as_tensor(img).detach().cpu().float()
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.shape != want.shape:
            return verdict(n, Diagnosis("shape", f"at ε = {e:g}: an image is {tuple(want.shape)}, got {tuple(img.shape)}"))
        if not same_images(img, want):
            linf = float((img - x[0].cpu()).abs().max())
            return verdict(n, Diagnosis("differs", f"at ε = {e:g} your image differs from attacks.fgsm's "
                                         f"(its largest change is {linf:.4f}, FGSM's is {e:.4f} or less)"))
    return verdict(n, Diagnosis("ok", f"{len(answer)} images, ε = " + ", ".join(f"{e:.3f}" for e in eps_list)))


UPPER_BOUND_KEYS = ("FGSM", "PGD-10", "PGD-10, 3 restarts", "worst case")


def upper_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Per image, still right after FGSM, PGD-10, PGD-10 with 3 restarts (each PGD from
    ``torch.Generator().manual_seed(seed)``) and after all three (the worst case)."""
    def gen():
        return torch.Generator(x.device).manual_seed(seed)
    ok = {"FGSM": attacks.correct_mask(model, attacks.fgsm(model, x, y, eps), y),
          "PGD-10": attacks.correct_mask(model, attacks.pgd(model, x, y, eps, alpha, 10, generator=gen()), y),
          "PGD-10, 3 restarts": attacks.correct_mask(
              model, attacks.pgd(model, x, y, eps, alpha, 10, restarts=3, generator=gen()), y)}
    ok["worst case"] = ok["FGSM"] & ok["PGD-10"] & ok["PGD-10, 3 restarts"]
    return ok


def check_upper_bounds(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       seed: int = 0) -> bool:
    """``{"FGSM": %, "PGD-10": %, "PGD-10, 3 restarts": %, "worst case": %}``, against :func:`upper_bounds`."""
    if not attempted(answer):
        return not_attempted(n)
    if not isinstance(answer, Mapping) or set(answer) != set(UPPER_BOUND_KEYS):
        return verdict(n, Diagnosis("shape", f"give a dict with the keys {list(UPPER_BOUND_KEYS)}"))
    masks = upper_bounds(model, x, y, eps, alpha, seed)
    expected = {k: 100 * float(v.float().mean()) for k, v in masks.items()}
    values = {k: float(answer[k]) for k in UPPER_BOUND_KEYS}
    attacks_only = [values[k] for k in UPPER_BOUND_KEYS[:3]]
    if abs(values["worst case"] - min(attacks_only)) < 1e-6 < abs(expected["worst case"] - min(expected[k] for k in UPPER_BOUND_KEYS[:3])):
        return verdict(n, Diagnosis("min_not_and", "the worst case is not the lowest of the three accuracies: an "
                                     "image counts only if every attack failed on it (the per-image AND of the masks)"))
    d = _compare_percentages([values[k] for k in UPPER_BOUND_KEYS], [expected[k] for k in UPPER_BOUND_KEYS],
                             UPPER_BOUND_KEYS, 1e-6, "accuracy; PGD from torch.Generator().manual_seed(0)")
    if d.ok:
        d.line += f" on {len(x)} images: the worst case is the tightest upper bound"
    return verdict(n, d)


# ============================================================ mixtures ==
def check_routing(n, answer, mixture: nn.Module, routing: str, k: int | None = None) -> bool:
    """A copy of ``mixture`` switched to ``routing`` ("uniform", or "topk" with ``k``)."""
    if not attempted(answer):
        return not_attempted(n)
    if answer is mixture:
        return verdict(n, Diagnosis("same_object", "that is the trained mixture itself: switch a copy "
                                     "(copy.deepcopy(mixture)), or every later cell uses the changed one"))
    if getattr(mixture, "routing", None) != "soft":
        return verdict(n, Diagnosis("changed", f"the trained mixture's routing is now {mixture.routing!r}: you "
                                     "changed the original, set it back to 'soft' and switch a copy"))
    if getattr(answer, "routing", None) != routing or (k is not None and getattr(answer, "k", None) != k):
        return verdict(n, Diagnosis("differs", f"routing should be {routing!r}" + (f" with k = {k}" if k else "")
                                     + f", got {getattr(answer, 'routing', None)!r}"
                                     + (f" with k = {getattr(answer, 'k', None)}" if k else "")))
    same = all(torch.equal(a, b) for a, b in zip(answer.state_dict().values(), mixture.state_dict().values()))
    if not same:
        return verdict(n, Diagnosis("differs", "your copy's weights differ from the trained mixture's: copy it, "
                                     "change only the routing"))
    return verdict(n, Diagnosis("ok", f"a copy with routing {routing!r}" + (f", k = {k}" if k else "")))


def topk_by_hand(mixture: nn.Module, x: torch.Tensor, k: int = 2, renormalise: bool = True,
                 probabilities: bool = False) -> torch.Tensor:
    """The top-k mixture's logits written out (and two mistaken variants: weights not renormalised,
    experts' softmax probabilities mixed instead of their logits)."""
    with torch.no_grad():
        w = torch.softmax(mixture.gate(x), dim=1)
        kept = w.topk(k, dim=1).indices
        wk = torch.zeros_like(w).scatter(1, kept, w.gather(1, kept))
        if renormalise:
            wk = wk / wk.sum(dim=1, keepdim=True)
        f = torch.stack([e(x) for e in mixture.experts], dim=1)
        if probabilities:
            f = f.softmax(dim=2)
        return (wk[:, :, None] * f).sum(dim=1)


def check_topk_logits(n, answer, mixture: nn.Module, x: torch.Tensor, k: int = 2) -> bool:
    """The logits of top-``k`` routing written by hand on ``x``, against the package's
    ``routing = "topk"`` on a copy of the mixture."""
    if not attempted(answer):
        return not_attempted(n)
    want_model = copy.deepcopy(mixture).eval()
    want_model.routing, want_model.k = "topk", k
    with torch.no_grad():
        want = want_model(x)
    got = torch.as_tensor(answer).detach().to(want.device).float()
    if got.shape != want.shape:
        return verdict(n, Diagnosis("shape", f"give the logits of the {len(x)} images, shape {tuple(want.shape)}, "
                                     f"got {tuple(got.shape)}"))
    if torch.allclose(got, want, atol=1e-5):
        return verdict(n, Diagnosis("ok", f"your top-{k} equals the package's routing='topk', k={k}"))
    named = [("not_renormalised", topk_by_hand(mixture, x, k, renormalise=False),
              "the kept weights are not renormalised: divide them by their sum, so they sum to 1"),
             ("probabilities", topk_by_hand(mixture, x, k, probabilities=True),
              "you mixed the experts' softmax probabilities: Eq. 1 mixes their logits"),
             ("soft", mixture(x).detach(), f"this is the soft mixture of every expert: keep only the {k} largest weights")]
    for key, variant, line in named:
        if torch.allclose(got, variant.to(got.device), atol=1e-5):
            return verdict(n, Diagnosis(key, line))
    return verdict(n, Diagnosis("differs", f"your logits differ from routing='topk', k={k} by up to "
                                 f"{float((got - want).abs().max()):.4f}"))


# ======================================================= training runs ==
def check_fixed_eps_run(n, answer, run, seed: int, eps: float = 0.09, stage: str = "fgsm-1") -> bool:
    """A separate run (another name than ``run``) whose FGSM expert ``stage`` trained with ε fixed at ``eps``."""
    if not attempted(answer):
        return not_attempted(n)
    prof = getattr(answer, "profile", None)
    if prof is None or not hasattr(answer, "is_done"):
        return verdict(n, Diagnosis("shape", f"give the Run you trained in (Run(name, profile)), got "
                                     f"{type(answer).__name__}"))
    if Path(answer.root).resolve() == Path(run.root).resolve():
        return verdict(n, Diagnosis("same_run", "that is this notebook's run: train in a run of another name, "
                                     "or its FGSM experts are replaced"))
    if tuple(prof.fgsm_eps_choices) != (eps,):
        return verdict(n, Diagnosis("eps", f"its FGSM ε is drawn from {tuple(prof.fgsm_eps_choices)}: fix it with "
                                     f"p.replace(fgsm_eps_choices=({eps},))"))
    if not answer.is_done(seed, stage):
        return verdict(n, Diagnosis("untrained", f"its {stage} is not trained yet: train_run(run_fixed, seed, data, "
                                     "'fgsm')"))
    return verdict(n, Diagnosis("ok", f"run {answer.name!r}: {stage} trained {prof.expert_epochs} epoch(s) at "
                                 f"fixed ε = {eps}"))


__all__ = ["ATTACK_KINDS", "Diagnosis", "ExerciseFailed", "MISTAKES", "NOT_ATTEMPTED",
           "attempted", "best_epoch", "check_attack", "check_best_epoch", "check_epoch_cost",
           "check_inner_max_at_x", "check_first_flip", "check_fixed_eps_run", "check_fgsm_accuracies",
           "check_images", "check_pgd_readings", "check_routing", "check_topk_logits", "check_upper_bounds",
           "diagnose_attack", "fgsm_accuracies", "not_attempted", "verdict", "first_flip", "pgd_readings", "reference_attack", "same_images",
           "signed_steps", "softmax_ce", "upper_bounds"]


# ====================================================== the linear model ==
def linear_worst_delta(w: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The closed-form inner maximum for a linear score ``w·x + b`` and labels ``y`` in {-1, +1}:
    the logistic loss log(1 + exp(-y (w·x + b))) grows as y·w·δ falls, and over the L∞ ball
    ``y·w·δ`` is smallest at the corner δ* = -ε·y·sign(w) (it falls by ε‖w‖₁): one row per label."""
    return -eps * y.to(w.dtype)[:, None] * torch.sign(w)[None, :]


def check_linear_worst(n, fn: Callable, w: torch.Tensor, y: torch.Tensor, eps: float) -> bool:
    """Exercise ``n``: ``fn(w, y, eps)`` -> the (len(y), d) perturbations that raise each example's
    logistic loss the most inside the L∞ ball, against :func:`linear_worst_delta`, naming the
    mistake (the wrong direction, the label ignored, the gradient instead of its sign, outside
    the ball)."""
    if not attempted(fn):
        return not_attempted(n)
    try:
        got = fn(w.clone(), y.clone(), eps)
    except NotImplementedError:
        return not_attempted(n)
    if not attempted(got):
        return not_attempted(n)
    want = linear_worst_delta(w, y, eps)
    got = torch.as_tensor(got).detach().to(want.dtype)
    if got.shape != want.shape:
        return verdict(n, Diagnosis("shape", f"give one perturbation per example, shape {tuple(want.shape)}, "
                                     f"got {tuple(got.shape)}"))
    if torch.allclose(got, want, atol=1e-6):
        gain = float(eps * w.abs().sum())
        return verdict(n, Diagnosis("ok", f"δ* = -ε·y·sign(w): each example's margin y(w·x + b) falls by "
                                     f"ε‖w‖₁ = {gain:.3f}, the most the ε-ball allows"))
    ys = y.to(w.dtype)[:, None]
    named = [("wrong_sign", -want, "step in the wrong direction: that raises y·(w·x + b), so it lowers the loss"),
             ("label_ignored", (-eps * torch.sign(w))[None, :].expand_as(want),
              "the label is ignored: for y = -1 the loss grows when the score rises, so δ* = -ε·y·sign(w)"),
             ("label_ignored", (eps * torch.sign(w))[None, :].expand_as(want),
              "the label is ignored: for y = +1 the loss grows when the score falls, so δ* = -ε·y·sign(w)"),
             ("no_sign", -eps * ys * w[None, :],
              "ε times w, not ε times sign(w): a linear function is maximised over the L∞ ball at a corner, "
              "every coordinate at ±ε"),
             ("no_sign", -eps * ys * w[None, :] / w.abs().max(),
              "w rescaled into the ball is not the corner: every coordinate should move by the full ε, "
              "δ* = -ε·y·sign(w)"),
             ("no_eps", -ys * torch.sign(w)[None, :], "no ε: the perturbation must stay in the ε-ball")]
    for key, variant, line in named:
        if torch.allclose(got, variant, atol=1e-6):
            return verdict(n, Diagnosis(key, line))
    if float(got.abs().max()) > eps + 1e-6:
        return verdict(n, Diagnosis("projection", f"outside the ε-ball: the largest |δ_i| is "
                                     f"{float(got.abs().max()):.4f} > ε = {eps:.4f}"))
    lost = float((ys * (got @ w[:, None])).mean())
    return verdict(n, Diagnosis("differs", f"your δ lowers y·w·x by {-lost:.4f} on average; the corner "
                                 f"δ* = -ε·y·sign(w) lowers it by ε‖w‖₁ = {float(eps * w.abs().sum()):.4f}"))


__all__ += ["check_linear_worst", "linear_worst_delta"]


# ================================================= PGD training (notebook 03) ==
def _epoch_seconds(curves: Mapping, stage: str) -> list[float] | None:
    secs = (curves.get(stage) or {}).get("seconds") or []
    secs = [float(s) for s in secs if isinstance(s, (int, float))]
    return secs or None


def check_epoch_cost(n, answer, curves: Mapping, pgd_stage: str, model_ratio: float,
                     benign_stage: str = "benign", rel_tol: float = 0.02) -> bool:
    """A PGD expert's seconds per epoch over the benign expert's, measured on the run (``curves``:
    :func:`dwf_lab.course.analyses.training_curves`, per-epoch seconds), against the mean over each
    stage's epochs. Named mistakes: the stages' total times divided (they train different numbers of
    epochs), the ratio upside down, the cost model's ``model_ratio`` given instead of the measurement."""
    if not attempted(answer):
        return not_attempted(n)
    pgd, benign = _epoch_seconds(curves, pgd_stage), _epoch_seconds(curves, benign_stage)
    if pgd is None or benign is None:
        missing = pgd_stage if pgd is None else benign_stage
        print(f"Exercise {n}: cannot be checked — the run's metrics have no epoch times for {missing} "
              "(a stage copied from elsewhere?)")
        return Checked(False)
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return verdict(n, Diagnosis("shape", f"give one number (a ratio), got {type(answer).__name__}"))
    want = (sum(pgd) / len(pgd)) / (sum(benign) / len(benign))
    got = float(answer)

    def near(a: float, b: float) -> bool:
        return abs(a - b) <= rel_tol * abs(b)
    if near(got, want):
        return verdict(n, Diagnosis("ok", f"a {pgd_stage} epoch takes {want:.2f}x a benign epoch "
                                     f"({sum(pgd) / len(pgd):.1f} s against {sum(benign) / len(benign):.1f} s); "
                                     f"the cost model says {model_ratio:.2f}x"))
    total = sum(pgd) / sum(benign)
    named = [(total, "total", f"you divided the stages' total times: {pgd_stage} trained {len(pgd)} epochs, "
              f"{benign_stage} {len(benign)}; divide the seconds per epoch"),
             (1 / want, "inverted", "your ratio is upside down: the PGD expert's epoch over the benign expert's"),
             (model_ratio, "model", f"{model_ratio:.2f} is the cost model's prediction: measure the run's "
              "seconds per epoch (analyses.training_curves)")]
    for value, key, line in named:
        if near(got, value) and not near(value, want):
            return verdict(n, Diagnosis(key, line))
    return verdict(n, Diagnosis("differs", f"you have {got:.3f}, the run's seconds per epoch give {want:.3f} "
                                 f"(the mean over each stage's epochs)"))


# a watch on which each usual mistake of early stopping picks another epoch (best PGD: epoch 3)
_EARLY_STOP_PROBE = {"epoch": [1, 2, 3, 4, 5, 6, 7, 8],
                     "pgd": [10.0, 18.0, 25.0, 22.0, 20.0, 19.0, 17.0, 16.0],
                     "clean": [30.0, 35.0, 38.0, 40.0, 47.0, 45.0, 44.0, 43.0],
                     "fgsm": [12.0, 20.0, 27.0, 30.0, 33.0, 36.0, 35.0, 34.0],
                     "train_adv": [11.0, 20.0, 30.0, 40.0, 50.0, 60.0, 82.0, 81.0]}


def best_epoch(watch: Mapping) -> int:
    """Early stopping (Rice et al. 2020): the epoch with the highest held-out PGD accuracy, the
    earliest of equals."""
    pgd = list(watch["pgd"])
    return int(watch["epoch"][max(range(len(pgd)), key=lambda i: (pgd[i], -i))])


def _early_stop_mistake(got, watch: Mapping) -> str | None:
    """The usual mistake an answer ``got`` on ``watch`` makes, if one fits it alone."""
    ep = list(watch["epoch"])

    def best(key):
        v = list(watch[key])
        return ep[max(range(len(v)), key=lambda i: (v[i], -i))]
    pgd = list(watch["pgd"])
    i_best = max(range(len(pgd)), key=lambda i: (pgd[i], -i))
    want = ep[i_best]
    options = [(ep[-1], "you kept the last epoch: early stopping keeps the epoch with the best held-out PGD accuracy"),
               (best("train_adv"), "you selected on accuracy on the training attack's examples, which keeps rising "
                                   "as the model overfits: select on held-out PGD accuracy"),
               (best("clean"), "you selected on held-out clean accuracy: select on held-out PGD accuracy, the "
                               "robustness you keep"),
               (best("fgsm"), "you selected on held-out FGSM accuracy: a single step overrates robustness, select "
                              "on PGD"),
               (i_best, "that is the position in the list, not the epoch number: return watch['epoch'][i]"),
               (ep[min(range(len(pgd)), key=lambda i: pgd[i])], "that is the epoch with the LOWEST held-out PGD "
                                                                 "accuracy: take the highest")]
    for value, line in options:
        if got == value and value != want:
            return line
    return None


def check_best_epoch(n, fn: Callable, watch: Mapping) -> bool:
    """The learner's ``fn(watch) -> epoch`` (early stopping on held-out PGD accuracy), run on a probe
    watch that tells the usual mistakes apart, then on ``watch`` (the robust-overfitting side run),
    against :func:`best_epoch`."""
    if not attempted(fn):
        return not_attempted(n)
    for w in (_EARLY_STOP_PROBE, watch):
        try:
            got = fn({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in w.items()})
        except NotImplementedError:
            return not_attempted(n)
        except Exception as e:   # the learner's code failed: say how, in one line
            return verdict(n, Diagnosis("error", f"your function raised {_one_line(f'{type(e).__name__}: {e}')[:200]}"))
        if not attempted(got):
            return not_attempted(n)
        if isinstance(got, bool) or not isinstance(got, (int, float)) or got != int(got):
            return verdict(n, Diagnosis("shape", f"return one epoch number (an int from watch['epoch']), got {got!r}"))
        got, want = int(got), best_epoch(w)
        if got != want:
            line = _early_stop_mistake(got, w)
            return verdict(n, Diagnosis("differs", line or f"you picked epoch {got}, the best held-out PGD "
                                                           f"accuracy is at epoch {want}"))
    ep, pgd = list(watch["epoch"]), list(watch["pgd"])
    i = ep.index(best_epoch(watch))
    return verdict(n, Diagnosis("ok", f"early stopping keeps epoch {ep[i]}: held-out PGD {pgd[i]:.1f}%, against "
                                 f"{pgd[-1]:.1f}% at the last epoch ({pgd[i] - pgd[-1]:+.1f} points)"))


def check_inner_max_at_x(n, fn: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                         alpha: float, steps: int, seed: int = 0) -> bool:
    """"Break it": PGD with every gradient taken at x (the paper's printed Eq. 4), written by the
    learner as ``fn(model, x, y, eps, alpha, steps, generator)`` from the random start. Correct when it
    equals that variant; the correct PGD (gradient at the iterate) is named as not what was asked,
    the other mistakes as :func:`diagnose_attack` names them. The verdict says on how many pixels the
    result equals plain FGSM (all of them when steps·α ≥ 2ε)."""
    if not attempted(fn):
        return not_attempted(n)
    d = diagnose_attack(fn, model, x, y, eps, kind="pgd", alpha=alpha, steps=steps, seed=seed)
    if d.key == "ok":
        return verdict(n, Diagnosis("iterate", "that is the correct PGD, the gradient at each iterate: this "
                                     "exercise asks for the printed Eq. 4, every gradient taken at x"))
    if d.key != "gradient_at_x":
        return verdict(n, d)
    m = copy.deepcopy(model)
    gen = torch.Generator(x.device).manual_seed(seed)
    out = fn(copy.deepcopy(m).train(), x.clone(), y.clone(), eps, alpha, steps, gen).detach().float()
    for random_start, key in ((True, None), (False, "no_random_start")):
        ref = reference_attack("pgd", m, x, y, eps, alpha, steps, seed, at_x=True, random_start=random_start)
        if same_images(out, ref):
            break
    else:
        return verdict(n, Diagnosis("differs", "every gradient is at x, but your images differ from the printed "
                                     "Eq. 4's: from the random start, steps of α·sign(∇ℓ(x)), each projected"))
    if key is not None:
        return verdict(n, Diagnosis(key, f"{MISTAKES[key]} — your attack starts at x: start at "
                                    "attacks.random_start_in_ball(x, eps, generator), as Algorithm 2's PGD does"))
    fgsm = attacks.fgsm(m, x, y, eps)
    same = 100 * (1 - differing_share(out, fgsm))
    line = (f"every gradient at x: after {steps} steps of α = {alpha * 255:.0f}/255 (together "
            f"{steps * alpha * 255:.0f}/255, the ball is {2 * eps * 255:.0f}/255 wide) {same:.1f}% of the pixels "
            f"equal plain FGSM's at ε = {eps * 255:.0f}/255")
    if same < 100:
        line += " (the others include every pixel whose gradient at x is 0: it keeps its random start)"
    return verdict(n, Diagnosis("ok", line))
