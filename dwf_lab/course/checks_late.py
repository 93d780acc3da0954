"""The checks of notebooks 05-08's exercises, graded as :mod:`dwf_lab.course.exercises` grades
notebooks 00-04's (the learner's cell, this check, then the solution that runs only with
``solutions = True``).

Each ``check_*(n, answer, ...)`` prints ``Exercise n: not attempted`` for an answer not given
yet (``None``, ``...``, a function that returns None or raises ``NotImplementedError``), raises
:class:`~dwf_lab.course.exercises.ExerciseFailed` with ONE line naming the mistake for a wrong
one, and prints ``Exercise n: correct — ...`` (and returns True) for a right one. Each is held to
the package's own function (named in its docstring); the mistakes it names are the ones the
learner is likely to make there, each recognised by recomputing what that mistake produces.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.course.exercises import (
    NOT_ATTEMPTED,
    Diagnosis,
    attempted,
    differing_share,
    not_attempted,
    same_images,
    verdict,
)
from dwf_lab.evaluation.keys import DERIVED
from dwf_lab.evaluation.metrics import worst_case, worst_case_keys
from dwf_lab.evaluation.steering import gate_steering_pgd as gate_steering
from dwf_lab.mixture.moe import MixtureOfExperts
from dwf_lab.reporting.noise import paired_difference


# ============================================================ verdicts ==
def _call(fn: Callable, *args):
    """(result, None) or (None, Diagnosis) for a learner's function that is not written yet or fails."""
    try:
        out = fn(*args)
    except NotImplementedError:
        return None, Diagnosis("not_attempted", NOT_ATTEMPTED)
    except Exception as e:   # the learner's code failed: say how, in one line
        return None, Diagnosis("error", f"your function raised {type(e).__name__}: {' '.join(str(e).split())}")
    if out is None or out is Ellipsis:
        return None, Diagnosis("not_attempted", NOT_ATTEMPTED)
    return out, None


def _as_mask(out, n: int) -> torch.Tensor | None:
    t = torch.as_tensor(out).detach().cpu()
    if t.shape != (n,):
        return None
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            return None
        t = t.bool()
    return t


# ======================================================== 05: worst case ==
def worst_case_mistakes(correct: Mapping[str, torch.Tensor], eps: float) -> dict[str, object]:
    """What :func:`dwf_lab.evaluation.metrics.worst_case` returns (``"ok"``) and what the usual
    mistakes return instead: ``"any"`` (robust under *some* attack), ``"min_columns"`` (the lowest
    column accuracy, a number), ``"lowest_column"`` (that column's images), ``"all_keys"`` (every
    column, FGSM at an ε above ``eps`` included)."""
    keys = worst_case_keys(correct, eps)
    every = [k for k in correct if k not in DERIVED]
    acc = {k: 100.0 * float(correct[k].float().mean()) for k in keys}
    lowest = min(keys, key=lambda k: acc[k])
    return {"ok": worst_case(correct, eps), "any": torch.stack([correct[k].bool().cpu() for k in keys]).any(0),
            "min_columns": acc[lowest], "lowest_column": correct[lowest].bool().cpu(), "lowest_key": lowest,
            "all_keys": torch.stack([correct[k].bool().cpu() for k in every]).all(0), "keys": keys}


def diagnose_worst_case(fn: Callable, correct: Mapping[str, torch.Tensor], eps: float) -> Diagnosis:
    n = len(next(iter(correct.values())))
    given = {k: v.clone() for k, v in correct.items()}
    out, bad = _call(fn, given)
    if bad is not None:
        return bad
    m = worst_case_mistakes(correct, eps)
    if isinstance(out, (int, float)) or (isinstance(out, torch.Tensor) and out.dim() == 0):
        v = float(out)
        if abs(v - m["min_columns"]) < 1e-6 or abs(100 * v - m["min_columns"]) < 1e-4:
            return Diagnosis("min_columns", "took the minimum of the column accuracies — that is the best single attack "
                             f"({m['lowest_key']}: {m['min_columns']:.1f}%), not the worst case: give one True/False per "
                             "image, True where the image survives every attack")
        return Diagnosis("shape", f"give one True/False per image ({n} of them), not a number")
    mask = _as_mask(out, n)
    if mask is None:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return Diagnosis("shape", f"give one True/False per image, a tensor of shape ({n},), got {got}")
    if torch.equal(mask, m["ok"]):
        acc = 100.0 * float(mask.float().mean())
        gap = int((m["lowest_column"] & ~mask).sum())
        return Diagnosis("ok", f"the per-image worst case over {len(m['keys'])} attacks is {acc:.1f}% of {n} images; the "
                         f"lowest column ({m['lowest_key']}) is {m['min_columns']:.1f}%: {gap} image(s) survive it and "
                         "fall to another attack")
    if torch.equal(mask, m["any"]) and not torch.equal(m["any"], m["ok"]):
        return Diagnosis("any", "used any() instead of all() — an image is robust only if it survives every attack: "
                         "torch.stack(...).all(0)")
    if torch.equal(mask, m["all_keys"]):
        return Diagnosis("all_keys", f"included FGSM at ε above {eps * 255:.0f}/255 — a larger ball is another threat "
                         "model: take the worst case over the attacks inside the ε-ball only")
    if torch.equal(mask, m["lowest_column"]):
        return Diagnosis("lowest_column", f"these are the images of the lowest column alone ({m['lowest_key']}): the "
                         "worst case asks, per image, for every attack at once")
    off = int((mask != m["ok"]).sum())
    return Diagnosis("differs", f"your mask differs from metrics.worst_case on {off} of {n} images (all of the attacks "
                     f"inside the ball, {len(m['keys'])} of them: {', '.join(m['keys'])})")


def check_worst_case(n, fn, correct: Mapping[str, torch.Tensor], eps: float) -> bool:
    """``fn(correct) -> bool per image``: the per-image worst case over the attacks of ``correct``
    (``{metric key: bool per image}``) inside the ε-ball, against :func:`~dwf_lab.evaluation.metrics.worst_case`."""
    if not attempted(fn):
        return not_attempted(n)
    return verdict(n, diagnose_worst_case(fn, correct, eps))


def check_survivor_counts(n, answer, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("DWF", "PGD-AT")) -> bool:
    """``{"only <A>": k, "only <B>": k, "both": k, "neither": k}`` from the per-image worst cases
    ``a`` and ``b`` of two models on the same images."""
    if not attempted(answer):
        return not_attempted(n)
    keys = [f"only {names[0]}", f"only {names[1]}", "both", "neither"]
    if not isinstance(answer, Mapping) or set(answer) != set(keys):
        return verdict(n, Diagnosis("shape", f"give a dict with the keys {keys}"))
    a, b = a.bool().cpu(), b.bool().cpu()
    want = dict(zip(keys, (int((a & ~b).sum()), int((b & ~a).sum()), int((a & b).sum()), int((~a & ~b).sum()))))
    got = {k: int(answer[k]) for k in keys}
    if sum(got.values()) != len(a):
        return verdict(n, Diagnosis("sum", f"your four counts add up to {sum(got.values())}: every one of the {len(a)} "
                                     "images falls in exactly one of them"))
    if got[keys[0]] == want[keys[1]] and got[keys[1]] == want[keys[0]] and want[keys[0]] != want[keys[1]]:
        return verdict(n, Diagnosis("swapped", f"'only {names[0]}' and 'only {names[1]}' are swapped: 'only "
                                     f"{names[0]}' counts the images {names[0]} survives and {names[1]} does not"))
    if got != want:
        k = next(k for k in keys if got[k] != want[k])
        return verdict(n, Diagnosis("differs", f"{k}: you have {got[k]}, the per-image results give {want[k]}"))
    return verdict(n, Diagnosis("ok", ", ".join(f"{k}: {v}" for k, v in want.items()) + f" of {len(a)} images"))


def check_stronger_attack(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                          survivors: int, n_test: int) -> bool:
    """``answer``: adversarial images for the survivors ``x`` (each inside the ε-ball around its
    image, pixels in [0, 1]); says how many the attack broke and what that does to the worst case
    (``survivors`` of ``n_test`` images survived the protocol)."""
    if not attempted(answer):
        return not_attempted(n)
    if len(x) == 0:
        return verdict(n, Diagnosis("ok", "no image survived the protocol: there is nothing left to break"))
    x_adv = torch.as_tensor(answer).detach().to(x.device).float()
    if x_adv.shape != x.shape:
        return verdict(n, Diagnosis("shape", f"give the attacked images, shaped like x_s {tuple(x.shape)}, got "
                                     f"{tuple(x_adv.shape)}"))
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        return verdict(n, Diagnosis("clamp", f"pixels range over [{lo:.3f}, {hi:.3f}]: images stay in [0, 1]"))
    linf = float((x_adv - x).abs().max())
    if linf > eps + 1e-6:
        return verdict(n, Diagnosis("projection", f"max |x_adv - x| = {linf:.4f} > ε = {eps:.4f}: outside the threat "
                                     "model, so a broken image proves nothing"))
    with torch.no_grad():
        broken = int((model(x_adv).argmax(1) != y).sum())
    return verdict(n, Diagnosis("ok", f"inside the ε-ball; {broken} of the {len(x)} survivors broken: the worst case "
                                 f"falls from {100 * survivors / n_test:.1f}% to at most "
                                 f"{100 * (survivors - broken) / n_test:.1f}%"))


# ============================================================= 06: DLR ==
def dlr_mistakes(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The DLR loss (``"ok"``: :func:`dwf_lab.attacks.base.dlr_from_logits`) and what the usual
    mistakes compute instead."""
    z = z.float()
    zs, _ = z.sort(dim=1)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    top_is_y = (zs[:, -1] == z_y).float()
    z_other = zs[:, -2] * top_is_y + zs[:, -1] * (1 - top_is_y)
    den = zs[:, -1] - zs[:, -3] + 1e-12
    return {"ok": attacks.dlr_from_logits(z, y),
            "sign": (z_y - z_other) / den,
            "max_with_y": -(z_y - zs[:, -1]) / den,
            "no_denominator": -(z_y - z_other),
            "denominator_2": -(z_y - z_other) / (zs[:, -1] - zs[:, -2] + 1e-12),
            "softmax": attacks.dlr_from_logits(z.softmax(1), y)}


DLR_LINES = {
    "sign": "sign reversed — DLR = −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3): the attacker maximises it, and it turns "
            "positive once the image is misclassified",
    "max_with_y": "the max includes the true class — take the largest logit among the OTHER classes (z_π2 when y's "
                  "logit is the largest), or the margin is 0 on every correct image",
    "no_denominator": "no denominator — divide by z_π1 − z_π3 (largest minus third largest logit): that makes the "
                      "loss scale-free",
    "denominator_2": "divided by z_π1 − z_π2 — the denominator is the largest minus the THIRD largest logit, which "
                     "stays away from 0 when the top two are close",
    "softmax": "softmax probabilities instead of logits — DLR is defined on the logits z (a ratio of logit "
               "differences); probabilities saturate",
}


def check_dlr(n, fn, z: torch.Tensor, y: torch.Tensor) -> bool:
    """``fn(z, y) -> (B,)``: the DLR loss per image from logits ``z`` (B, classes), against
    :func:`dwf_lab.attacks.base.dlr_from_logits`; also tried on the logits scaled by 10 (DLR's
    point: the same value)."""
    if not attempted(fn):
        return not_attempted(n)
    z, y = z.detach().float().cpu(), y.detach().cpu()
    out, bad = _call(fn, z.clone(), y.clone())
    if bad is not None:
        return verdict(n, bad)
    got = torch.as_tensor(out).detach().float().cpu()
    if got.dim() == 0:
        return verdict(n, Diagnosis("reduced", f"give one loss per image, shape ({len(y)},): you returned one number "
                                     "(a mean or sum over the batch?)"))
    if got.shape != (len(y),):
        return verdict(n, Diagnosis("shape", f"give one loss per image, shape ({len(y)},), got {tuple(got.shape)}"))
    variants = dlr_mistakes(z, y)
    close = lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5)   # noqa: E731
    if close(got, variants["ok"]):
        scaled, bad = _call(fn, 10 * z, y.clone())
        if bad is None and close(torch.as_tensor(scaled).detach().float().cpu(), variants["ok"]):
            wrong = (z.argmax(1) != y)
            return verdict(n, Diagnosis("ok", f"your DLR equals attacks.dlr_from_logits on {len(y)} images (and on the "
                                         f"logits ×10: scale-free); it is > 0 on exactly the {int(wrong.sum())} "
                                         "misclassified ones"))
        return verdict(n, Diagnosis("scale", "right on these logits, but not on the same logits ×10: DLR must not "
                                     "depend on the logits' scale"))
    for key, line in DLR_LINES.items():
        if close(got, variants[key]):
            return verdict(n, Diagnosis(key, line))
    off = float((got - variants["ok"]).abs().max())
    return verdict(n, Diagnosis("differs", f"your values differ from attacks.dlr_from_logits by up to {off:.4f} and "
                                 "match none of the usual mistakes: −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)"))


# =================================================== 06: gate steering ==
class _BatchNormWatch:
    def __init__(self, model: nn.Module):
        self.train_seen = False
        self._h = [m.register_forward_pre_hook(self._hook) for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _hook(self, module, inputs):
        if module.training:
            self.train_seen = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._h:
            h.remove()


def diagnose_gate_attack(fn: Callable, mixture: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, lam: float,
                         eps: float, alpha: float, steps: int, seed: int = 0) -> Diagnosis:
    """Run ``fn(model, x, y, k, lam, eps, alpha, steps, generator)`` on a copy of the mixture handed
    over in train mode, and compare its images with the package's (:func:`dwf_lab.evaluation.steering.gate_steering_pgd`) and with what a detached
    gate (λ = 0: plain PGD), a reversed λ term and no gradient at all produce."""
    ref_model = copy.deepcopy(mixture).eval()
    m = copy.deepcopy(mixture).train()
    if getattr(m, "expert_batching", None) == "vmap":   # the BatchNorm hooks see each expert in the loop
        m.expert_batching = "loop"
    x = attacks.check_inputs(x, eps, mixture).detach()
    with _BatchNormWatch(m) as watch:
        out, bad = _call(fn, m, x.clone(), y.clone(), k, lam, eps, alpha, steps,
                         torch.Generator(x.device).manual_seed(seed))
    if bad is not None:
        return bad
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return Diagnosis("shape", f"return the attacked images, shaped like x {tuple(x.shape)}, got {got}")
    out = out.detach().float()
    if watch.train_seen:
        return Diagnosis("bn_train", "BatchNorm in train mode during the attack — the mixture came in train mode: "
                         "call model.eval() first")
    lo, hi, linf = float(out.min()), float(out.max()), float((out - x).abs().max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        return Diagnosis("clamp", f"missing clamp to [0, 1] — your pixels range over [{lo:.3f}, {hi:.3f}]")
    if linf > eps + 1e-6:
        return Diagnosis("projection", f"missing projection onto the ε-ball — max |x_adv - x| = {linf:.4f} > ε")
    ref = gate_steering(ref_model, x, y, k, lam, eps, alpha, steps, seed)
    if same_images(out, ref):
        with torch.no_grad():
            w0 = ref_model.log_weights(x).exp()[:, k].mean()
            w1 = ref_model.log_weights(out).exp()[:, k].mean()
            acc = 100.0 * attacks.accuracy(ref_model, out, y)
        return Diagnosis("ok", f"your attack equals the package's routing_loss PGD on {len(x)} images: w_{k} "
                         f"{float(w0):.3f} → {float(w1):.3f}, accuracy {acc:.0f}% under it")
    start = attacks.random_start_in_ball(x, eps, torch.Generator(x.device).manual_seed(seed))
    if same_images(out, start, 0.0):
        return Diagnosis("zero_gradient", "zero gradient — x_adv is the random start unchanged: no gradient reached "
                         "the input (torch.no_grad(), a .detach(), or a loss not computed from the iterate)")
    if same_images(out, gate_steering(ref_model, x, y, k, 0.0, eps, alpha, steps, seed)):
        return Diagnosis("detached_gate", "detached gate / zero gradient of the λ term — your images are plain PGD's: "
                         "λ · log w_k added nothing (log_weights under torch.no_grad(), .detach()ed, or computed at x "
                         "instead of at the iterate)")
    if same_images(out, gate_steering(ref_model, x, y, k, -lam, eps, alpha, steps, seed)):
        return Diagnosis("lambda_sign", "sign of λ term reversed — your steps push weight OFF expert k: the attacker "
                         "climbs CE + λ · log w_k(x), so it adds the term")
    return Diagnosis("differs", f"your images differ from the package's on {differing_share(out, ref):.1%} of the pixels "
                     "and match none of the usual mistakes: per image CE(model(x_adv), y) + λ · log w_k(x_adv), summed "
                     "over the batch (both terms alike), a signed step of α, then the projection")


def check_gate_attack(n, fn, mixture: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, lam: float, eps: float,
                      alpha: float, steps: int, seed: int = 0) -> bool:
    """The gate-steering PGD ``fn(model, x, y, k, lam, eps, alpha, steps, generator)``, against
    :func:`dwf_lab.evaluation.steering.gate_steering_pgd` (:func:`diagnose_gate_attack`)."""
    if not attempted(fn):
        return not_attempted(n)
    return verdict(n, diagnose_gate_attack(fn, mixture, x, y, k, lam, eps, alpha, steps, seed))


# =============================================== 06: masking, randomness ==
def _a_copy(n, answer, model: nn.Module, same_object: str) -> bool | None:
    """The verdict when ``answer`` is not yet a model of its own (not attempted, not a module, ``model``
    itself); None when the check goes on."""
    if not attempted(answer):
        return not_attempted(n)
    if not isinstance(answer, nn.Module):
        return verdict(n, Diagnosis("shape", f"give a model (an nn.Module), got {type(answer).__name__}"))
    if answer is model:
        return verdict(n, Diagnosis("same_object", same_object))
    return None


def check_masked_model(n, answer, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """A copy of ``model`` with the same predictions on ``x`` and a zero input gradient, ``model``
    itself left as it was."""
    early = _a_copy(n, answer, model, "that is the model itself: mask a copy (copy.deepcopy(model))")
    if early is not None:
        return early
    g_orig = attacks.input_gradient(copy.deepcopy(model).eval(), x, y)
    if float(g_orig.abs().sum()) == 0:
        return verdict(n, Diagnosis("original_masked", "the original model's gradient is zero too: the hook went on "
                                     "it (or on modules it shares): register it on a deep copy"))
    with torch.no_grad():
        same = bool((answer.eval()(x).argmax(1) == model(x).argmax(1)).all())
    if not same:
        return verdict(n, Diagnosis("predictions", "your model's predictions differ from the original's: masking "
                                     "must leave the forward values alone (z * 0 + z.detach() has z's value)"))
    g = attacks.input_gradient(answer, x, y)
    if float(g.abs().sum()) != 0:
        return verdict(n, Diagnosis("gradient", f"its input gradient is not zero (mean |g| = {float(g.abs().mean()):.2e}):"
                                     " the gradient must not flow back through the logits"))
    return verdict(n, Diagnosis("ok", f"same predictions on {len(x)} images, input gradient exactly 0"))


def check_noisy_model(n, answer, model: nn.Module, x: torch.Tensor) -> bool:
    """A copy of ``model`` whose forward pass is random (two passes on ``x`` differ) but mostly
    keeps its predictions, ``model`` itself left deterministic."""
    early = _a_copy(n, answer, model, "that is the mixture itself: add the noise to a copy")
    if early is not None:
        return early
    with torch.no_grad():
        if not torch.equal(model(x), model(x)):
            return verdict(n, Diagnosis("original_noisy", "the original mixture is random too: the hook went on it; "
                                         "register it on a deep copy"))
        a, b, clean = answer(x), answer(x), model(x).argmax(1)
    if torch.equal(a, b):
        return verdict(n, Diagnosis("deterministic", "two forward passes give the same logits: draw new noise at every "
                                     "call (torch.randn_like inside the hook)"))
    kept = 100.0 * float((a.argmax(1) == clean).float().mean())
    if kept < 50:
        return verdict(n, Diagnosis("too_noisy", f"the noise changes {100 - kept:.0f}% of the predictions: keep it "
                                     "small (a standard deviation of about 0.03)"))
    return verdict(n, Diagnosis("ok", f"random (two passes differ), {kept:.0f}% of the predictions kept on {len(x)} "
                                 "images"))


# ====================================================== 07: uniform average ==
def uniform_mistakes(experts: Sequence[nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The uniform average's logits (``"ok"``: :class:`~dwf_lab.mixture.moe.MixtureOfExperts` with
    ``routing="uniform"``) and what the usual mistakes compute instead."""
    with torch.no_grad():
        z = torch.stack([e.eval()(x).float() for e in experts], dim=1)
        ok = MixtureOfExperts(list(experts), None, routing="uniform").eval()(x).float()
    return {"ok": ok, "sum": z.sum(1), "probabilities": z.softmax(2).mean(1), "log_probabilities": z.log_softmax(2).mean(1)}


UNIFORM_LINES = {
    "sum": "summed, not averaged — divide by the number of experts (the same predictions, but a loss n times as steep)",
    "probabilities": "averaged the experts' softmax probabilities — Eq. 1 (and routing='uniform') averages their logits",
    "log_probabilities": "averaged the experts' log-probabilities — Eq. 1 (and routing='uniform') averages their "
                         "logits, before any softmax",
}


def check_uniform_logits(n, fn, experts: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """``fn(experts, x) -> logits``: the uniform average of the experts' logits, against
    ``MixtureOfExperts(experts, None, routing="uniform")``."""
    if not attempted(fn):
        return not_attempted(n)
    out, bad = _call(fn, list(experts), x.clone())
    if bad is not None:
        return verdict(n, bad)
    v = uniform_mistakes(experts, x)
    got = torch.as_tensor(out).detach().float()
    if got.shape != v["ok"].shape:
        return verdict(n, Diagnosis("shape", f"give the logits of the {len(x)} images, shape {tuple(v['ok'].shape)}, "
                                     f"got {tuple(got.shape)}"))
    if torch.allclose(got, v["ok"], atol=1e-5, rtol=1e-4):
        return verdict(n, Diagnosis("ok", f"your average equals MixtureOfExperts(experts, None, routing='uniform') on "
                                     f"{len(x)} images ({len(experts)} experts)"))
    for key, line in UNIFORM_LINES.items():
        if torch.allclose(got, v[key], atol=1e-5, rtol=1e-4):
            return verdict(n, Diagnosis(key, line))
    return verdict(n, Diagnosis("differs", f"your logits differ from the uniform average by up to "
                                 f"{float((got - v['ok']).abs().max()):.4f}: (1/n) Σ_i f_i(x), the experts' logits"))


def average_pgd_accuracy(experts: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                         steps: int, seed: int = 0) -> float:
    """PGD accuracy (%) of the uniform average of ``experts`` on (x, y), from the random start of
    ``torch.Generator(x.device).manual_seed(seed)``."""
    model = MixtureOfExperts(list(experts), None, routing="uniform").eval()
    x_adv = attacks.pgd(model, x, y, eps, alpha, steps, generator=torch.Generator(x.device).manual_seed(seed))
    return 100.0 * attacks.accuracy(model, x_adv, y)


def check_average_without(n, answer, experts: Mapping[str, nn.Module], leave_out: str, x: torch.Tensor,
                          y: torch.Tensor, eps: float, alpha: float, steps: int, seed: int = 0) -> bool:
    """The PGD accuracy (%) of the uniform average of every expert but ``leave_out``, against
    :func:`average_pgd_accuracy` (computed only once an answer is given)."""
    if not attempted(answer):
        return not_attempted(n)
    try:
        v = float(answer)
    except (TypeError, ValueError):
        return verdict(n, Diagnosis("shape", f"give one accuracy in %, got {type(answer).__name__}"))
    kept = [m for name, m in experts.items() if name != leave_out]
    want = average_pgd_accuracy(kept, x, y, eps, alpha, steps, seed)
    tol = 1e-4
    if abs(v - want) <= tol:
        return verdict(n, Diagnosis("ok", f"the average of the {len(kept)} experts without {leave_out} keeps "
                                     f"{want:.1f}% of {len(x)} images under PGD-{steps}"))
    if abs(100 * v - want) <= tol:
        return verdict(n, Diagnosis("fraction", "a fraction: give the accuracy in % (100 × attacks.accuracy(...))"))
    clean = 100.0 * attacks.accuracy(MixtureOfExperts(kept, None, routing="uniform").eval(), x, y)
    if abs(v - clean) <= tol and abs(clean - want) > tol:
        return verdict(n, Diagnosis("clean", "that is its clean accuracy: attack the average with PGD first"))
    every = average_pgd_accuracy(list(experts.values()), x, y, eps, alpha, steps, seed)
    if abs(v - every) <= tol and abs(every - want) > tol:
        return verdict(n, Diagnosis("all_experts", f"that is the average of every expert: leave {leave_out} out"))
    return verdict(n, Diagnosis("differs", f"you have {v:.2f}%, the average without {leave_out} keeps {want:.2f}% "
                                 f"(PGD-{steps}, ε = {eps * 255:.0f}/255, α = {alpha * 255:.0f}/255, "
                                 f"torch.Generator().manual_seed({seed}))"))


def check_paired_rows(n, answer, paired: Mapping[str, tuple[float, float]], unpaired: Mapping[str, float],
                      z: float = 2.0) -> bool:
    """``answer``: the set of names whose difference exceeds ``z`` paired standard errors, where
    ``paired = {name: (difference, paired se)}`` (``unpaired``: each name's unpaired se)."""
    if not attempted(answer):
        return not_attempted(n)
    try:
        got = set(answer)
    except TypeError:
        return verdict(n, Diagnosis("shape", "give the names of the differences beyond noise, as a set or list"))
    want = {k for k, (d, se) in paired.items() if abs(d) > z * se}
    by_unpaired = {k for k, (d, _) in paired.items() if abs(d) > z * unpaired.get(k, math.inf)}
    if got == want:
        return verdict(n, Diagnosis("ok", f"{len(want)} of {len(paired)} beyond {z:g} paired standard errors"
                                     + (f": {', '.join(sorted(want))}" if want else "")))
    if got == by_unpaired:
        return verdict(n, Diagnosis("unpaired", "you used the unpaired error √(se₁² + se₂²): on the same images use the "
                                     "paired one, sd(a_i − b_i)/√n (reporting.noise.paired_difference)"))
    extra, missing = sorted(got - want), sorted(want - got)
    return verdict(n, Diagnosis("differs", ("not beyond noise: " + ", ".join(extra) if extra else "")
                                 + ("; " if extra and missing else "")
                                 + ("beyond noise too: " + ", ".join(missing) if missing else "")))


# ========================================================== 08: paired SE ==
def _pair_cases(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, agree in ((50, 0.9), (200, 0.7), (500, 0.95)):
        a = torch.rand(n, generator=g) < 0.5
        flip = torch.rand(n, generator=g) > agree
        cases.append((a, a ^ flip))
    return cases


def check_paired_se(n, fn, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> bool:
    """``fn(a, b) -> (difference, se)`` in points, from two per-image results on the same images,
    against :func:`dwf_lab.reporting.noise.paired_difference` (the sample std; the population one,
    dividing by n, is accepted), on ``pairs`` (the run's) and three generated pairs."""
    if not attempted(fn):
        return not_attempted(n)
    cases = [(a.bool().cpu(), b.bool().cpu()) for a, b in pairs if len(a) >= 2] + _pair_cases()
    for a, b in cases:
        out, bad = _call(fn, a.clone(), b.clone())
        if bad is not None:
            return verdict(n, bad)
        try:
            d, se = (float(v) for v in out)
        except (TypeError, ValueError):
            return verdict(n, Diagnosis("shape", f"return two numbers, (difference, se) in points, got {out!r}"))
        want_d, want_se, m = paired_difference(a, b)
        pop = want_se * math.sqrt((m - 1) / m)

        def near(v, w, scale=1.0):
            return abs(v - w * scale) <= 1e-4 * max(1.0, abs(w * scale))
        ok_d = near(d, want_d)
        ok_se = near(se, want_se) or near(se, pop)
        if ok_d and ok_se:
            continue
        pa, pb = 100 * float(a.float().mean()), 100 * float(b.float().mean())
        unpaired = math.hypot(math.sqrt(pa * (100 - pa) / m), math.sqrt(pb * (100 - pb) / m))
        if ok_d and near(se, unpaired):
            return verdict(n, Diagnosis("unpaired", "you combined the two models' own errors as if independent "
                                         "(√(SE₁² + SE₂²)): on the same images pair them, image by image: "
                                         "sd(a_i − b_i)/√n"))
        if near(d, want_d, 0.01) and (near(se, want_se, 0.01) or near(se, pop, 0.01)) and not ok_d:
            return verdict(n, Diagnosis("fraction", "these are fractions: give points (× 100)"))
        if near(d, -want_d) and want_d != 0:
            return verdict(n, Diagnosis("sign", "the difference has the wrong sign: a − b (the first model minus the "
                                         "second)"))
        if ok_d and (near(se, want_se, math.sqrt(m)) or near(se, pop, math.sqrt(m))):
            return verdict(n, Diagnosis("no_sqrt_n", "that is the standard deviation of the per-image differences: "
                                         "divide by √n for the standard error of their mean"))
        what, yours, paired = ("difference", d, want_d) if not ok_d else ("standard error", se, want_se)
        return verdict(n, Diagnosis("differs", f"on {m} images your {what} is {yours:.4f}, the paired one "
                                     f"{paired:.4f} (difference 100·mean(a_i − b_i), SE 100·sd(a_i − b_i)/√n)"))
    return verdict(n, Diagnosis("ok", f"your paired difference and standard error equal reporting.noise."
                                 f"paired_difference on {len(cases)} pairs of per-image results"))


def check_number(n, answer, expected: float, what: str, tol: float = 1e-6, rel: float = 0.0,
                 mistakes: Mapping[str, tuple[float, str]] | None = None) -> bool:
    """One number against ``expected`` (``what`` names it), within ``tol`` (absolute) or ``rel``
    (relative); ``mistakes``: ``{key: (what that mistake gives, the line naming it)}``."""
    if not attempted(answer):
        return not_attempted(n)
    try:
        v = float(answer)
    except (TypeError, ValueError):
        return verdict(n, Diagnosis("shape", f"give {what} as one number, got {type(answer).__name__}"))

    def near(a, b):
        return abs(a - b) <= max(tol, rel * abs(b))
    if near(v, expected):
        return verdict(n, Diagnosis("ok", f"{what}: {expected:.4g}"))
    for key, (value, line) in (mistakes or {}).items():
        if near(v, value) and not near(value, expected):
            return verdict(n, Diagnosis(key, line))
    return verdict(n, Diagnosis("differs", f"{what}: you have {v:.4g}, it is {expected:.4g}"))


def check_numbers(n, answer: Mapping, expected: Mapping, what: str, rel: float = 0.0, tol: float = 1e-6,
                  mistakes: Mapping[str, tuple[Mapping, str]] | None = None) -> bool:
    """A dict of numbers (one per key of ``expected``), each within ``tol`` or ``rel``;
    ``mistakes``: ``{key: (the dict that mistake gives, the line naming it)}``."""
    if not attempted(answer):
        return not_attempted(n)
    expected = {str(k): float(v) for k, v in expected.items()}
    if not isinstance(answer, Mapping) or {str(k) for k in answer} != set(expected):
        return verdict(n, Diagnosis("shape", f"give a dict with the keys {sorted(expected)}" if expected else
                                     "nothing to give here: this run has no such case (give {})"))
    try:
        got = {str(k): float(v) for k, v in answer.items()}
    except (TypeError, ValueError):
        return verdict(n, Diagnosis("shape", "give one number per key"))

    def near(a, b):
        return abs(a - b) <= max(tol, rel * abs(b))

    def matches(d):
        return all(near(got[str(k)], float(v)) for k, v in d.items())
    if matches(expected):
        return verdict(n, Diagnosis("ok", f"{what}: " + (", ".join(f"{k}: {v:.4g}" for k, v in expected.items())
                                                          or "nothing to compute in this run")))
    for key, (values, line) in (mistakes or {}).items():
        if values and matches(values) and not all(near(float(values[k]), expected[str(k)]) for k in values):
            return verdict(n, Diagnosis(key, line))
    k = next(k for k, v in expected.items() if not near(got[k], v))
    return verdict(n, Diagnosis("differs", f"{what}, {k}: you have {got[k]:.4g}, it is {expected[k]:.4g}"))


__all__ = ["DLR_LINES", "UNIFORM_LINES", "average_pgd_accuracy", "check_average_without", "check_dlr", "check_gate_attack", "check_masked_model", "check_noisy_model",
           "check_number", "check_numbers", "check_paired_rows", "check_paired_se", "check_stronger_attack",
           "check_survivor_counts", "check_uniform_logits", "check_worst_case", "diagnose_gate_attack",
           "diagnose_worst_case", "dlr_mistakes", "uniform_mistakes", "worst_case_mistakes"]
