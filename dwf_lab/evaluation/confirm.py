"""The headline in fp32, per example, with the image that shows it.

A stored worst case (``"worst-case (all)"``, :mod:`dwf_lab.evaluation.adaptive`) may have been
computed in bf16 autocast (``eval_precision``, :mod:`dwf_lab.attacks.precision`), and it keeps one
bit per image, not the image. :func:`confirm_fp32` turns it into the fp32 model's verdict, image by
image, each broken image with a *witness*: an image in the eps-ball and [0, 1] that the fp32 model
misclassifies (what :mod:`dwf_lab.pipeline.bundles` hands on, and ``python -m dwf_lab verify``
checks with one forward pass):

1. every test image is classified in fp32; a wrong one is its own witness (not robust);
2. every other image is attacked in fp32 by the suite's strongest stages (:data:`CONFIRM_STAGES`:
   PGD-CE, PGD-DLR and the official AutoAttack, at the settings' budget), which confirms the
   images the stored verdict broke and attacks again the ones it left robust;
3. an image the stored verdict broke that step 2 did not break in fp32 is attacked by every other
   registered attack of the suite (the routing, transfer and mixture-aware ones included), then by
   long PGD with restarts (:data:`FALLBACK_STEPS` x :data:`FALLBACK_RESTARTS`);
4. what is left disagrees: broken in the stored verdict but not in fp32, or the other way round.

The witnesses are recorded by :class:`Witnesses`, a forward hook on the model: every point any
attack evaluates the model on (the last iterate, any iterate, AutoAttack's and Square's queries)
that lies in the ball of one test image and is misclassified is kept, the first one per image.
So an image counts as broken in fp32 exactly when an fp32 forward pass on a point of its ball was
wrong, whichever attack produced the point. :class:`Confirmation` carries the verdicts, the
witnesses and the per-example disagreement; :meth:`Confirmation.summary` is what an evaluation
record keeps under ``"fp32_confirmation"`` and the report shows.
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks.base import correct_mask
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_any
from dwf_lab.evaluation.metrics import batched
from dwf_lab.evaluation.suite import ATTACKS

CONFIRM_STAGES = ("pgd", "pgd-dlr", "autoattack")   # registered attacks run on every image (step 2)
FALLBACK_STEPS, FALLBACK_RESTARTS = 100, 3           # long PGD for what step 3's suite leaves (the protocol's)
BALL_TOL = 1e-6        # float slack on ||x_adv - x||_inf <= eps and the [0, 1] box (what verify allows)
_SIGNATURE = 32        # pixels compared first to find which test image a point belongs to


class Witnesses:
    """A forward hook on ``model`` that keeps, per test image of ``x``, the first point the model
    was run on that lies in its eps-ball and [0, 1] and is misclassified (``images[i]``, ``found[i]``).

    Which test image a point belongs to is found by its pixels: the nearest of ``x`` in L-inf over
    a fixed set of pixels, then checked on all of them (two test images closer than 2 eps are
    duplicates in any real data set). Use as a context manager; the hook is removed on exit."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float):
        self.model, self.eps = model, float(eps)
        self.x, self.y = x.detach().float(), y
        self.images = self.x.clone()
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        flat = self.x.flatten(1)
        gen = torch.Generator().manual_seed(0)
        self._pix = torch.randperm(flat.shape[1], generator=gen)[:_SIGNATURE].to(x.device)
        self._sig = flat[:, self._pix]
        self._handle = None

    def _nearest(self, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L-inf distance over the signature pixels, index) of the nearest test image, in chunks."""
        best = torch.full((len(sig),), float("inf"), device=sig.device)
        idx = torch.zeros(len(sig), dtype=torch.long, device=sig.device)
        for start in range(0, len(self._sig), 1024):
            d, i = (sig[:, None, :] - self._sig[None, start:start + 1024]).abs().amax(-1).min(1)
            better = d < best
            best, idx = torch.where(better, d, best), torch.where(better, i + start, idx)
        return best, idx

    def _hook(self, module, inputs, output) -> None:
        xin = inputs[0] if inputs else None
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if not isinstance(xin, torch.Tensor) or logits is None or xin.shape[1:] != self.x.shape[1:]:
            return
        with torch.no_grad():
            xi = xin.detach().to(self.x.device, torch.float32)
            near, idx = self._nearest(xi.flatten(1)[:, self._pix])
            dist = (xi - self.x[idx]).abs().flatten(1).amax(1)
            inside = (near <= self.eps + BALL_TOL) & (dist <= self.eps + BALL_TOL) \
                & (xi.flatten(1).amin(1) >= -BALL_TOL) & (xi.flatten(1).amax(1) <= 1 + BALL_TOL)
            wrong = logits.detach().argmax(1).to(self.y.device) != self.y[idx]
            new = inside & wrong & ~self.found[idx]
            if new.any():
                self.images[idx[new]] = xi[new].clamp(0.0, 1.0)
                self.found[idx[new]] = True

    def __enter__(self) -> "Witnesses":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@dataclass
class Confirmation:
    """The fp32 verdict per example beside the stored one (``precision``: what the stored one was
    computed in), and a witness per example (``images``: the misclassified point of its ball, the
    clean image where the model is already wrong or where nothing broke it)."""
    precision: str
    stored_robust: torch.Tensor
    robust: torch.Tensor
    clean: torch.Tensor
    images: torch.Tensor
    stages: dict

    @property
    def n(self) -> int:
        return len(self.robust)

    @property
    def broken_only_stored(self) -> list[int]:
        """Images the stored verdict broke that no fp32 attack broke: the stored number is too low there."""
        return (~self.stored_robust & self.robust).nonzero().squeeze(1).tolist()

    @property
    def broken_only_fp32(self) -> list[int]:
        """Images the stored verdict left robust that an fp32 attack broke: the stored number is too high there."""
        return (self.stored_robust & ~self.robust).nonzero().squeeze(1).tolist()

    def summary(self) -> dict:
        """What an evaluation record keeps (``"fp32_confirmation"``): counts, the disagreeing images'
        indices (into the first ``n`` test images) and what each step broke."""
        n = self.n
        return {"stored_precision": self.precision, "n": n,
                "clean_fp32": int(self.clean.sum()), "robust_stored": int(self.stored_robust.sum()),
                "robust_fp32": int(self.robust.sum()),
                "robust_stored_pct": round(100.0 * self.stored_robust.float().mean().item(), 4),
                "robust_fp32_pct": round(100.0 * self.robust.float().mean().item(), 4),
                "broken_only_stored": self.broken_only_stored, "broken_only_fp32": self.broken_only_fp32,
                "agree": not self.broken_only_stored and not self.broken_only_fp32, "stages": self.stages,
                "note": "per example: the stored worst case against the fp32 model's, every broken image "
                        "with a misclassified fp32 witness in its eps-ball (dwf_lab.evaluation.confirm)"}


def _suite(model, x, y, s: AdaptiveSettings, names, seed: int, device, progress: bool, desc: str) -> None:
    """The registered attacks ``names`` (those the settings plan for this model) on (x, y), in fp32;
    their per-example results are not needed: the witnesses hooked on the model record what broke."""
    skip = [a.key(s) for a in ATTACKS.values() if a.name not in names]
    evaluate_any(model, x, y, s, seed, device, progress, skip, desc)


def confirm_fp32(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stored_robust: torch.Tensor,
                 s: AdaptiveSettings, *, precision: str, seed: int = 0, device=None,
                 progress: bool = False) -> Confirmation:
    """The fp32 verdict and a witness for each of the images ``x`` (module docstring), against
    ``stored_robust``, the stored worst case on the same images, computed in ``precision``."""
    if len(stored_robust) != len(x):
        raise ValueError(f"the stored worst case covers {len(stored_robust)} images, the images are {len(x)}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    s = dataclasses.replace(s, precision="fp32", n_examples=None)
    x = attacks.check_inputs(x, s.eps, model, alpha=s.alpha).to(dev)
    y, stored_robust = y.to(dev), stored_robust.bool().to(dev)
    model.eval()
    clean = batched(lambda xb, yb, b: correct_mask(model, xb, yb), x, y, s.batch_size)
    stages = {"clean (fp32)": int((~clean).sum())}
    with Witnesses(model, x, y, s.eps) as w:
        w.found |= ~clean                       # a wrong image is its own witness
        first = [n for n in CONFIRM_STAGES if n in ATTACKS]
        before = int(w.found.sum())
        _suite(model, x, y, s, first, seed, dev, progress, "fp32 confirmation")
        stages[", ".join(first) + " (fp32, every image)"] = int(w.found.sum()) - before
        left = (~stored_robust & ~w.found).nonzero().squeeze(1)
        if len(left):
            rest = [n for n in ATTACKS if n not in first]
            before = int(w.found.sum())
            _suite(model, x[left], y[left], s, rest, seed_from(seed, 1), dev, progress, "fp32, the rest")
            stages[", ".join(rest) + " (fp32, images only the stored verdict broke)"] = int(w.found.sum()) - before
        left = (~stored_robust & ~w.found).nonzero().squeeze(1)
        if len(left):
            before = int(w.found.sum())
            gen = torch.Generator(dev).manual_seed(seed_from(seed, 2))
            with attacks.attack_mode(model):
                attacks.pgd(model, x[left], y[left], s.eps, s.alpha, FALLBACK_STEPS, True, FALLBACK_RESTARTS,
                            generator=gen, check=False)
            stages[f"PGD-{FALLBACK_STEPS} x {FALLBACK_RESTARTS} (fp32, what is still left)"] = \
                int(w.found.sum()) - before
    return Confirmation(precision, stored_robust.cpu(), (~w.found).cpu(), clean.cpu(), w.images.cpu(), stages)
