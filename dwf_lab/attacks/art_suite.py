"""Independent attacks from a well-kept library: the Adversarial Robustness Toolbox (ART).

Why a second implementation: a defence is only as trustworthy as the attacks it
was tested with, and an attack written by the same people as the defence shares
their blind spots. ART (IBM / LF AI, ``adversarial-robustness-toolbox``) is
maintained independently of this kit, so agreement between
:func:`dwf_lab.attacks.pgd.pgd` and :func:`art_pgd` checks our PGD, and ART's
APGD and Square attacks give the evaluation attacks that we did not write.

Every function here takes a dwf model (images in [0, 1] in, logits out, the
normalization inside) and returns **per-example correctness** (a bool tensor)
computed by *our* model on the adversarial images ART returns, after checking
that they satisfy the threat model: ``||x_adv - x||_inf <= eps`` and
``x_adv`` in [0, 1]. The model is wrapped in ART's ``PyTorchClassifier`` with
``clip_values=(0, 1)`` and no preprocessing (normalization is inside the model),
and it runs in eval mode without parameter gradients (:func:`dwf_lab.attacks.base.attack_mode`).

AutoAttack (Croce & Hein 2020). The *standard* suite is APGD-CE, APGD-T
(targeted DLR, 9 target classes), FAB-T and Square (5,000 queries), run as a
cascade: each attack only sees the images that every earlier one failed on, and
the accuracy is the per-example worst case. ART 1.20's ``AutoAttack`` class does
*not* configure that suite: its default list is APGD-CE, APGD-DLR (untargeted,
5 restarts), DeepFool and Square (5 restarts), its ``targeted=True`` runs
*every* listed attack against every class, and ART has no FAB. So
``version="standard"`` builds the cascade here: ART's APGD-CE, ART's APGD-T over
the top ``n_target_classes`` classes (ART's targeted DLR-ratio loss), FAB-T
(our own, :mod:`dwf_lab.attacks.fab`, the one attack of the suite this kit had to write;
tested against the analytic answer on linear models), then ART's Square.
``version="art"`` runs ART's ``AutoAttack`` class itself with an explicit list
(APGD-CE, APGD-DLR, Square) as a cross-check of the cascade logic.

Budget knobs (``n_iter``, ``n_queries``, ``n_target_classes``, ``restarts``)
keep CPU tests to seconds; the defaults are the standard suite's.
ART draws its random numbers from NumPy's global generator: ``seed`` seeds it for
the call and the previous state is restored afterwards.
"""
import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from dwf_lab.attacks.base import attack_mode, check_batch_size, check_inputs
from dwf_lab.attacks.fab import fab_t
from dwf_lab.core.config import PGD_ALPHA, PGD_EPS

INSTALL_HINT = ("the independent attacks need the Adversarial Robustness Toolbox: "
                "pip install adversarial-robustness-toolbox   "
                "(or: pip install -e '.[attacks]' in the dwf-lab checkout)")


AA_VERSIONS = ("standard", "art")
STANDARD_SUITE = ("APGD-CE", "APGD-T", "FAB-T", "Square")   # FAB-T: dwf_lab.attacks.fab (ART has none)


class ARTUnavailableError(ImportError):
    """ART is not installed (or fails to import); the message says how to install it."""


def _art():
    """The ART modules we use, or one clear error telling how to install them."""
    try:
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, ProjectedGradientDescent, SquareAttack
        from art.estimators.classification import PyTorchClassifier
    except Exception as err:  # ImportError, or a broken install raising something else
        raise ARTUnavailableError(f"{INSTALL_HINT} (import failed: {err})") from err
    return {"AutoAttack": AutoAttack, "APGD": AutoProjectedGradientDescent,
            "PGD": ProjectedGradientDescent, "Square": SquareAttack,
            "PyTorchClassifier": PyTorchClassifier}


def version() -> str | None:
    """ART's version (recorded with every result it computed), or None when it is not installed."""
    try:
        import art
    except Exception:   # not installed, or a broken install
        return None
    return getattr(art, "__version__", "unknown")


def available() -> bool:
    """True when ART imports (the tests and notebooks skip ART attacks otherwise)."""
    try:
        _art()
        return True
    except ARTUnavailableError:
        return False


# ------------------------------------------------------------- plumbing --
@contextlib.contextmanager
def _numpy_seed(seed: int | None):
    """Seed NumPy's global generator (ART's source of randomness) and restore it after."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(int(seed) % (2 ** 32))
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _art_session(model: nn.Module):
    """attack_mode (eval, no parameter gradients) and the parameters' .grad kept intact.

    ART's ``loss_gradient`` calls ``model.zero_grad()``; an attack must not touch
    the caller's accumulated gradients, so they are stashed and put back.
    """
    grads = [(p, p.grad) for p in model.parameters()]
    with attack_mode(model):
        try:
            yield model
        finally:
            for p, g in grads:
                p.grad = g


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def art_classifier(model: nn.Module, x: torch.Tensor, nb_classes: int | None = None):
    """ART's PyTorchClassifier around a dwf model: [0, 1] in, logits out, no preprocessing."""
    art = _art()
    device = next(model.parameters()).device
    return art["PyTorchClassifier"](
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=nb_classes or _num_classes(model, x), clip_values=(0.0, 1.0),
        preprocessing=None, device_type="gpu" if device.type == "cuda" else "cpu")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, tol: float = 1e-6) -> None:
    """Refuse adversarial images outside the eps-ball or the image box (a broken attack)."""
    if x_adv.shape != x.shape:
        raise AssertionError(f"adversarial batch has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AssertionError("adversarial images contain NaN or inf")
    dist = (x_adv - x).abs().amax().item() if x.numel() else 0.0
    if dist > eps + tol:
        raise AssertionError(f"adversarial images leave the eps-ball: ||x_adv - x||_inf = {dist:.6g} > "
                             f"eps = {eps:.6g} (+{tol:g})")
    lo, hi = (x_adv.min().item(), x_adv.max().item()) if x.numel() else (0.0, 1.0)
    if lo < -tol or hi > 1.0 + tol:
        raise AssertionError(f"adversarial images leave [0, 1]: values in [{lo:.6g}, {hi:.6g}]")


def correctness(model: nn.Module, x_adv, x: torch.Tensor, y: torch.Tensor, eps: float,
                batch_size: int = 512) -> torch.Tensor:
    """Per-example correctness of OUR model on ``x_adv``, after checking the threat model."""
    check_batch_size(batch_size)
    if isinstance(x_adv, np.ndarray):
        x_adv = torch.from_numpy(x_adv)
    x_adv = x_adv.to(device=x.device, dtype=x.dtype)
    check_threat_model(x_adv, x, eps)
    x_adv = x_adv.clamp(0.0, 1.0)   # only float noise below tol can be outside here
    out = []
    with torch.no_grad(), attack_mode(model):
        for i in range(0, len(x), batch_size):
            out.append(model(x_adv[i:i + batch_size]).argmax(1) == y[i:i + batch_size])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def _prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int,
             alpha: float | None = None):
    """The attack's inputs checked once (:func:`~dwf_lab.attacks.base.check_inputs`), on the model's device."""
    x = check_inputs(x, eps, model, alpha=alpha)
    check_batch_size(batch_size)
    device = next(model.parameters()).device
    return x.detach().to(device), y.detach().to(device)


# -------------------------------------------------------------- attacks --
def art_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
            alpha: float = PGD_ALPHA, steps: int = 10, random_start: bool = False,
            restarts: int = 1, batch_size: int = 256, seed: int | None = 0) -> torch.Tensor:
    """ART's ProjectedGradientDescent (L-inf, CE loss, true labels): per-example correctness.

    ``random_start=False`` starts at x (then the same settings give the same
    trajectory as :func:`dwf_lab.attacks.pgd.pgd` up to float rounding);
    ``random_start=True`` draws ``restarts`` uniform starts in the eps-ball and
    keeps a successful one per example, as ART does.
    """
    x, y = _prepare(model, x, y, eps, batch_size, alpha)
    if eps == 0 or steps == 0 and not random_start:
        return correctness(model, x, x, y, eps)
    art = _art()
    with _art_session(model), _numpy_seed(seed):
        clf = art_classifier(model, x)
        atk = art["PGD"](clf, norm=np.inf, eps=float(eps), eps_step=float(alpha), max_iter=int(steps),
                         targeted=False, num_random_init=int(restarts) if random_start else 0,
                         batch_size=int(batch_size), verbose=False)
        x_adv = atk.generate(_np(x), y=y.cpu().numpy())
    return correctness(model, x_adv, x, y, eps)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
           max_iter: int = 5000, p_init: float = 0.8, restarts: int = 1,
           batch_size: int = 256, seed: int | None = 0) -> torch.Tensor:
    """ART's Square attack (score-based black box; ``max_iter`` ~ queries): per-example correctness.

    It never looks at a gradient, so a model that only *hides* its gradients
    (gradient masking) loses to it while still looking robust to PGD.
    """
    x, y = _prepare(model, x, y, eps, batch_size)
    if eps == 0 or len(x) == 0:
        return correctness(model, x, x, y, eps)
    art = _art()
    with _art_session(model), _numpy_seed(seed):
        clf = art_classifier(model, x)
        atk = art["Square"](clf, norm=np.inf, max_iter=int(max_iter), eps=float(eps), p_init=float(p_init),
                            nb_restarts=int(restarts), batch_size=int(batch_size), verbose=False)
        x_adv = atk.generate(_np(x), y=y.cpu().numpy())
    return correctness(model, x_adv, x, y, eps)


def _apgd(art, clf, eps: float, n_iter: int, loss: str, targeted: bool, restarts: int, batch_size: int):
    return art["APGD"](clf, norm=np.inf, eps=float(eps), eps_step=2.0 * float(eps), max_iter=int(n_iter),
                       targeted=targeted, nb_random_init=int(restarts), batch_size=int(batch_size),
                       loss_type=loss, verbose=False)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
         loss: str = "dlr", n_iter: int = 100, restarts: int = 1, batch_size: int = 256,
         seed: int | None = 0) -> torch.Tensor:
    """ART's APGD (untargeted; ``loss`` "ce" or "dlr"): per-example correctness.

    APGD adapts its step size and keeps the best point found; with the DLR loss
    (Croce & Hein 2020) it is insensitive to the scale of the logits, so a model
    cannot look robust just by saturating its softmax.
    """
    losses = {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}
    if loss not in losses:
        raise ValueError(f"loss must be one of {sorted(losses)}, got {loss!r}")
    x, y = _prepare(model, x, y, eps, batch_size)
    if eps == 0 or n_iter == 0 or len(x) == 0:
        return correctness(model, x, x, y, eps)
    art = _art()
    with _art_session(model), _numpy_seed(seed):
        clf = art_classifier(model, x)
        atk = _apgd(art, clf, eps, n_iter, losses[loss], False, restarts, batch_size)
        x_adv = atk.generate(_np(x), y=_one_hot(y, clf.nb_classes))
    return correctness(model, x_adv, x, y, eps)


def _one_hot(labels: torch.Tensor, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[labels.cpu().numpy()]


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
               version: str = "standard", n_iter: int = 100, n_queries: int = 5000,
               n_target_classes: int = 9, restarts: int = 1, batch_size: int = 256,
               seed: int | None = 0, return_details: bool = False):
    """AutoAttack through ART: per-example correctness (and, optionally, what each stage did).

    ``version="standard"``: APGD-CE -> APGD-T -> FAB-T (both over the top
    ``n_target_classes`` classes, ``n_iter`` iterations) -> Square (``n_queries``),
    a cascade on the images still classified correctly. ``version="art"``: ART's own
    ``AutoAttack`` class with the explicit list APGD-CE, APGD-DLR, Square.
    With ``return_details=True`` returns ``(correct, details)`` where details maps
    each stage to the robust accuracy (%) after it, plus the suite actually run.
    """
    if version not in AA_VERSIONS:
        raise ValueError(f"version must be one of {AA_VERSIONS}, got {version!r}")
    x, y = _prepare(model, x, y, eps, batch_size)
    details: dict = {"version": version, "n": len(x)}
    with torch.no_grad(), attack_mode(model):
        clean_logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
            if len(x) else torch.zeros(0, 1, device=x.device)
    robust = clean_logits.argmax(1) == y if len(x) else torch.zeros(0, dtype=torch.bool, device=x.device)
    details["clean"] = 100.0 * robust.float().mean().item() if len(x) else 0.0
    if eps == 0 or len(x) == 0 or not robust.any():
        out = correctness(model, x, x, y, eps)
        return (out, details) if return_details else out
    art = _art()
    n_classes = clean_logits.shape[1]
    x_adv = x.clone()

    with _art_session(model), _numpy_seed(seed):
        clf = art_classifier(model, x, n_classes)
        if version == "art":
            suite = [_apgd(art, clf, eps, n_iter, "cross_entropy", False, restarts, batch_size),
                     _apgd(art, clf, eps, n_iter, "difference_logits_ratio", False, restarts, batch_size),
                     art["Square"](clf, norm=np.inf, max_iter=int(n_queries), eps=float(eps), p_init=0.8,
                                   nb_restarts=int(restarts), batch_size=int(batch_size), verbose=False)]
            aa = art["AutoAttack"](clf, norm=np.inf, eps=float(eps), eps_step=2.0 * float(eps),
                                   attacks=suite, batch_size=int(batch_size), targeted=False)
            try:
                x_np = aa.generate(_np(x), y=_one_hot(y, n_classes))
            except ModuleNotFoundError as err:   # ART's AutoAttack imports `multiprocess` on every call
                raise ARTUnavailableError(
                    f"ART's AutoAttack class needs the package {err.name!r} (pip install {err.name}); "
                    "version='standard' does not") from err
            x_adv = torch.from_numpy(x_np).to(x.device)
            details["suite"] = ["APGD-CE", "APGD-DLR", "Square"]
        else:
            def stage(name: str, run: Callable[[np.ndarray, np.ndarray], np.ndarray],
                      labels: torch.Tensor | None = None) -> None:
                idx = robust.nonzero().flatten()
                if len(idx) == 0:
                    return
                lab = y[idx] if labels is None else labels[idx]
                xa = torch.from_numpy(run(_np(x[idx]), _one_hot(lab, n_classes))).to(x.device)
                check_threat_model(xa, x[idx], eps)
                with torch.no_grad():
                    fooled = model(xa.clamp(0, 1)).argmax(1) != y[idx]
                x_adv[idx[fooled]] = xa[fooled].clamp(0, 1)
                robust[idx[fooled]] = False

            apgd_ce = _apgd(art, clf, eps, n_iter, "cross_entropy", False, restarts, batch_size)
            stage("APGD-CE", lambda a, b: apgd_ce.generate(a, y=b))
            details["after APGD-CE"] = 100.0 * robust.float().mean().item()
            apgd_t = _apgd(art, clf, eps, n_iter, "difference_logits_ratio", True, restarts, batch_size)
            others = clean_logits.clone()
            others[torch.arange(len(y)), y] = -float("inf")
            k = max(0, min(int(n_target_classes), n_classes - 1))
            targets = others.topk(k, dim=1).indices if k else others[:, :0].long()
            for j in range(k):
                stage(f"APGD-T {j + 1}", lambda a, b: apgd_t.generate(a, y=b), labels=targets[:, j])
            details["after APGD-T"] = 100.0 * robust.float().mean().item()
            idx = robust.nonzero().flatten()
            if len(idx) and k:
                fab_ok, fab = fab_t(model, x[idx], y[idx], eps, n_iter=n_iter, n_target_classes=k,
                                    restarts=restarts, batch_size=batch_size, seed=seed, return_details=True)
                check_threat_model(fab["x_adv"], x[idx], eps)
                x_adv[idx[~fab_ok]] = fab["x_adv"][~fab_ok]
                robust[idx[~fab_ok]] = False
            details["after FAB-T"] = 100.0 * robust.float().mean().item()
            if n_queries > 0:
                sq = art["Square"](clf, norm=np.inf, max_iter=int(n_queries), eps=float(eps), p_init=0.8,
                                   nb_restarts=int(restarts), batch_size=int(batch_size), verbose=False)
                stage("Square", lambda a, b: sq.generate(a, y=b))
            details["after Square"] = 100.0 * robust.float().mean().item()
            details["suite"] = ["APGD-CE", f"APGD-T ({k} targets)", f"FAB-T ({k} targets, dwf_lab.attacks.fab)"] + \
                (["Square"] if n_queries > 0 else [])
    details.update(n_iter=n_iter, n_queries=n_queries, restarts=restarts)
    out = correctness(model, x_adv, x, y, eps)
    details["robust"] = 100.0 * out.float().mean().item()
    return (out, details) if return_details else out
