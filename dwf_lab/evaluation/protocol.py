"""The evaluation protocol of Tables 2-4 (:func:`evaluate_model`), with per-example results.

Metrics (accuracy in percent, over the same test images):

- ``SA``: clean accuracy;
- ``fgsm:<eps>``: FGSM at each eps of {0.01, ..., 0.09} (Table 2);
- ``pgd:<k>``: PGD with eps 8/255, alpha 2/255, k in {10, ..., 50} (Table 3), read off one
  trajectory: PGD-k from the same random start *is* the first k steps of the longest run, so
  this equals five separate runs sharing their starts, at a third of the cost;
- ``pgd:<L>-ms``: PGD-L (L = 100) with 3 restarts, per-example worst case ("100 (MS)"). The
  first restart is the same trajectory run on to L steps; each later restart, from its own
  random start, attacks only the images every earlier restart left correct;
- ``pgd:<L>-a``: the paper's "adaptive" PGD-L with EoT samples = 1 ("100 (A)"). On a
  deterministic model that is one PGD-100 run from a random start (docs/paper-notes.md,
  gap 4), the first restart of "100 (MS)"; with ``eot_samples > 1`` a separate
  EoT-PGD run. It adapts nothing: the adaptive attacks are in :mod:`dwf_lab.evaluation.adaptive`;
- ``worst-case``: correct under *every* attack above inside the L-inf ball of eps = 8/255
  (clean, FGSM with eps <= 8/255, every PGD), per example: the honest headline. FGSM at
  larger eps (up to 0.09 = 23/255) is another threat model, never pooled into it.

Every attack runs on the images the model classifies correctly (a misclassified clean image
counts as not robust under every attack, by the definition of robust accuracy), which saves
the work a wrong image would cost. The attacks run in the settings' ``precision``: fp32, or bf16
autocast (convolutions in bf16, heads, gate and combination in fp32) where that is checked to agree with fp32 (:mod:`dwf_lab.attacks.precision`);
the stored result says which. Inputs and settings are checked once, up front (:func:`check_settings`, :func:`dwf_lab.attacks.base.check_inputs`):
every eps of the settings, alpha, the batch size, NaN pixels, the model's input shape.
:func:`evaluate_soe` runs it under each gradient mode; :func:`evaluate_and_write` stores it.
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks.base import check_batch_size, check_eps, correct_mask
from dwf_lab.attacks.pgd import pgd_trajectory
from dwf_lab.attacks.precision import check_precision, compute_precision
from dwf_lab.core.config import Profile
from dwf_lab.core.precision import evaluation_precision
from dwf_lab.evaluation.metrics import over_gradient_modes, per_example, unpack_bits, worst_case_keys
from dwf_lab.evaluation.model_checks import NOT_VALID, validity
from dwf_lab.evaluation.records import write_result
from dwf_lab.mixture.soe import SoE
from dwf_lab.training.recipes import RECIPES


@dataclass
class EvalSettings:
    fgsm_eps: tuple[float, ...] = attacks.FGSM_EPSILONS
    pgd_eps: float = attacks.PGD_EPS
    pgd_alpha: float = attacks.PGD_ALPHA
    pgd_steps: tuple[int, ...] = attacks.PGD_STEPS
    long_steps: int = 100
    restarts: int = 3
    eot_samples: int = 1
    random_start: bool = True
    long: bool = True            # run the two PGD-L columns
    batch_size: int = 500
    precision: str = "fp32"      # the attacks' arithmetic (dwf_lab.attacks.precision)

    @classmethod
    def from_profile(cls, p: Profile, long: bool = True) -> "EvalSettings":
        tm = p.threat_model
        return cls(tuple(p.eval_fgsm_eps), tm.eps, tm.alpha, tuple(p.eval_pgd_steps),
                   p.eval_long_steps, p.eval_restarts, p.eval_eot_samples, True, long, p.eval_batch,
                   evaluation_precision(p))

    def metric_names(self) -> list[str]:
        names = ["SA"] + [f"fgsm:{e:g}" for e in self.fgsm_eps] + [f"pgd:{k}" for k in self.pgd_steps]
        if self.long:
            names += [f"pgd:{self.long_steps}-ms", f"pgd:{self.long_steps}-a"]
        return names


def protocol_settings(p: Profile, kind: str) -> EvalSettings:
    """The protocol a model of training kind ``kind`` is evaluated with: the long PGD columns for
    the recipes the paper compares (:attr:`~dwf_lab.training.recipes.Recipe.key`), or for every
    model when the profile says ``eval_long_for="all"``."""
    r = RECIPES.get(kind)
    return EvalSettings.from_profile(p, long=p.eval_long_for == "all" or (r is not None and r.key))


def check_settings(s: EvalSettings) -> None:
    """Every eps of the settings (each FGSM eps, PGD's), alpha, the step counts and the batch size,
    checked like the attacks check theirs, before anything runs."""
    for e in s.fgsm_eps:
        check_eps(e, "fgsm_eps")
    check_eps(s.pgd_eps, "pgd_eps")
    check_eps(s.pgd_alpha, "pgd_alpha")
    check_batch_size(s.batch_size)
    check_precision(s.precision)
    if any(int(k) < 1 for k in s.pgd_steps):
        raise ValueError(f"pgd_steps must all be >= 1, got {tuple(s.pgd_steps)}")
    if s.long and (s.long_steps < 0 or s.restarts < 1 or s.eot_samples < 1):
        raise ValueError(f"need long_steps >= 0, restarts >= 1 and eot_samples >= 1; got long_steps="
                         f"{s.long_steps}, restarts={s.restarts}, eot_samples={s.eot_samples}")


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: EvalSettings,
                   seed: int = 0, device: torch.device | str | None = None,
                   progress: bool = True, desc: str = "evaluate") -> tuple[dict, dict]:
    """Run the protocol; returns (metrics in percent, per-example correctness per metric).

    The settings (:func:`check_settings`) and the images (NaN, range, dtype, the model's
    input shape: :func:`dwf_lab.attacks.base.check_inputs`) are checked once here; the
    attacks run on each batch unchecked. float64 images are evaluated as float32.
    """
    check_settings(s)
    x = attacks.check_inputs(x, s.pgd_eps, model)

    def attacked(xb, yb, gen):
        res = {}
        for e in s.fgsm_eps:
            res[f"fgsm:{e:g}"] = correct_mask(model, attacks.fgsm(model, xb, yb, e, check=False), yb)
        # one trajectory from one random start serves PGD-10..50 and, when the long columns run,
        # the first PGD-L restart: PGD-k is the first k steps of the longest run
        long_read = (s.long_steps,) if s.long and s.long_steps >= 1 else ()
        read_at = tuple(s.pgd_steps) + long_read
        traj = pgd_trajectory(model, xb, yb, s.pgd_eps, s.pgd_alpha, read_at, s.random_start, gen(1),
                              check=False) if read_at else {}
        for k in s.pgd_steps:
            res[f"pgd:{k}"] = traj[k]
        if s.long:
            first = traj[s.long_steps] if long_read else correct_mask(
                model, attacks.pgd(model, xb, yb, s.pgd_eps, s.pgd_alpha, s.long_steps, s.random_start,
                                   generator=gen(2), check=False), yb)
            # "100 (MS)": per-example worst case over restarts, each from its own random start. An
            # image broken by an earlier restart stays broken, so a later restart only attacks the
            # images that survived all before it (as AutoAttack does): the same worst case, less work.
            ms = first.clone()
            for r in range(1, s.restarts):
                alive = ms.nonzero().squeeze(1)
                if len(alive) == 0:
                    break
                x_adv = attacks.pgd(model, xb[alive], yb[alive], s.pgd_eps, s.pgd_alpha, s.long_steps,
                                    s.random_start, generator=gen(2 + r), check=False)
                ms[alive] = correct_mask(model, x_adv, yb[alive])
            res[f"pgd:{s.long_steps}-ms"] = ms
            if s.eot_samples == 1:
                # "100 (A)", EoT = 1: on a deterministic model this is exactly one PGD-100
                # run from a random start, i.e. the first restart above (docs/paper-notes.md, gap 4)
                res[f"pgd:{s.long_steps}-a"] = first
            else:
                a = attacks.eot_pgd(model, xb, yb, s.pgd_eps, s.pgd_alpha, s.long_steps,
                                    eot_samples=s.eot_samples, random_start=s.random_start,
                                    generator=gen(99), check=False)
                res[f"pgd:{s.long_steps}-a"] = correct_mask(model, a, yb)
        return res

    def one_batch(b, xb, yb, gen):
        # Robust accuracy counts an image only if it is classified correctly everywhere in the
        # eps-ball, the image itself included: a misclassified clean image is not robust under any
        # attack, so the attacks run on the correctly classified images only (AutoAttack does the same).
        clean = correct_mask(model, xb, yb)
        keep = clean.nonzero().squeeze(1)
        res = {"SA": clean}
        if len(keep) == 0:
            return {**res, **{k: torch.zeros_like(clean) for k in s.metric_names() if k != "SA"}}
        for k, v in attacked(xb[keep], yb[keep], gen).items():
            full = torch.zeros_like(clean)
            full[keep] = v.to(full.device)
            res[k] = full
        return res

    with compute_precision(model, s.precision):
        correct = per_example(model, x, y, s.batch_size, device, seed, one_batch, desc, progress)
    if len(correct) > 1:
        keys = worst_case_keys(correct, s.pgd_eps)
        correct["worst-case"] = torch.stack([correct[k] for k in keys]).all(0)
    metrics = {k: 100.0 * v.float().mean().item() for k, v in correct.items()}
    return metrics, correct


def evaluate_and_write(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: EvalSettings, path: Path,
                       *, name: str, row: str, seed: int, dataset: str, device=None,
                       progress: bool = True, extra: dict | None = None) -> dict:
    """Evaluate ``model`` (:func:`evaluate_model`) and store its record at ``path``. Before any attack
    its outputs are checked (:func:`dwf_lab.evaluation.model_checks.validity`): a model that outputs
    probabilities or saturated logits is said to be "not a valid evaluation" on stderr, and its
    record carries the reasons, which the report's rows and headline repeat."""
    t0 = time.time()
    valid = validity(model, x, y)
    if not valid["valid"]:
        print(f"dwf-lab: warning: {name}: {NOT_VALID}: {'; '.join(valid['reasons'])}", file=sys.stderr)
        extra = {**(extra or {}), "validity": valid}
    metrics, correct = evaluate_model(model, x, y, s, seed=seed, device=device, progress=progress,
                                      desc=f"eval {name}")
    return write_result(path, model=name, row=row, seed=seed, dataset=dataset, metrics=metrics,
                        correct=correct, settings=s, elapsed_s=time.time() - t0, extra=extra)


# ============================================================== evaluation ==
def evaluate_soe(model: SoE, x, y, s, *, seed: int = 0, device=None, progress: bool = True,
                 modes=SoE.gradient_modes):
    """Every attack with each gradient mode; per example, correct only if correct under all.

    ``"hard"``: the deployed model's own gradient (through the selected expert;
    blind to the selection). ``"bpda"``: the soft relaxation's gradient with
    the hard model's forward value, i.e. attacks made on the relaxed model and
    judged on the hard one. Clean accuracy is the same in every mode.
    Returns (metrics, per-example correct, {mode: metrics}).
    """

    def one(mode):
        m, c = evaluate_model(model, x, y, s, seed=seed, device=device, progress=progress,
                              desc=f"eval soe ({mode})")
        return c, m
    combined, per_mode = over_gradient_modes(model, one, modes)
    metrics = {k: 100.0 * v.float().mean().item() for k, v in combined.items()}
    return metrics, combined, per_mode


def stored_subset(rec: dict, s: EvalSettings, n_test: int, seed: int) -> tuple[dict, dict] | None:
    """``(metrics, per-example correct)`` of the protocol with settings ``s``, read off a stored
    result ``rec`` of the same model, or None when ``rec`` does not hold exactly that.

    It holds it when ``rec`` was run with the same eps, alpha, random start, batch size, precision
    and seed on the same ``n_test`` images, its FGSM eps and PGD-k columns include those of ``s``, and ``s``
    asks for no long PGD (or for the same one): PGD-k is read off one trajectory whose random
    start depends only on the seed and the batch, so its PGD-20 *is* the PGD-20 these settings
    would compute. The worst case is recomputed over the columns of ``s`` only. The caller
    vouches that ``rec`` is the same model.
    """
    have = rec.get("settings") or {}
    same = ("pgd_eps", "pgd_alpha", "random_start", "batch_size")
    if (rec.get("seed") != seed or have.get("precision", "fp32") != s.precision or rec.get("n_test") != n_test
            or any(have.get(k) != getattr(s, k) for k in same)
            or not set(s.fgsm_eps) <= set(have.get("fgsm_eps") or ())
            or not set(s.pgd_steps) <= set(have.get("pgd_steps") or ())):
        return None
    if s.long and not (have.get("long") and all(have.get(k) == getattr(s, k)
                                                 for k in ("long_steps", "restarts", "eot_samples"))):
        return None
    keys = s.metric_names()
    bits = rec.get("per_example") or {}
    if any(k not in bits for k in keys if k != "worst-case"):
        return None
    correct = {k: unpack_bits(bits[k], n_test) for k in keys if k != "worst-case"}
    if len(correct) > 1:
        correct["worst-case"] = torch.stack([correct[k] for k in worst_case_keys(correct, s.pgd_eps)]).all(0)
    return {k: 100.0 * v.float().mean().item() for k, v in correct.items()}, correct


def ablation_eval_settings(p: Profile) -> EvalSettings:
    return EvalSettings(fgsm_eps=(), pgd_steps=(20,), long=False, batch_size=p.eval_batch,
                        precision=evaluation_precision(p))
