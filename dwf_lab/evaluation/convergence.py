"""Has the worst case converged? The per-example worst case at the attacks' budget and at twice it.

The headline is a per-example worst case (:data:`~dwf_lab.evaluation.metrics.WORST`): an image
counts as robust only if every attack left it correct. A worst case that has not converged
overstates robustness, and the only evidence is to spend more: :meth:`AdaptiveSettings.twice`
doubles every attack's budget (iterations, restarts, target classes, queries:
:attr:`AdaptiveSettings.TWICE`, data beside the settings), on the same images and eps.

On ``n`` images, with per-example robustness at the budget ``w1`` (the stored worst case), the
doubled attacks' per-example results ``doubled`` and the columns no attack of the suite owns
(clean accuracy, the paper's protocol) folded into both:

- the worst case after doubling is, per example, ``w1`` and every doubled attack: the images it
  adds to the broken ones (``w1`` robust, some doubled attack broke it) are what doubling changed;
- "converged" only when that change is at most :func:`tolerance` images: one in
  :data:`ONE_IN` of the images, and at least one;
- otherwise the attacks that still bite are named: those whose doubled version broke images the
  budget did not, with how many.

:func:`assess` does this on per-example tensors and returns a :class:`Convergence`, whose
:meth:`~Convergence.rows` are robust accuracy against attack work (passes per image,
:mod:`dwf_lab.core.work`) and :meth:`~Convergence.sentence` the verdict in words.
:func:`sentence` rebuilds it from a stored summary (the report reads the numbers, not prose).
"""
from dataclasses import dataclass

import torch

ONE_IN = 500     # "converged": doubling changed the worst case by at most one image in ONE_IN
VERDICT = ("converged", "still moving")


def tolerance(n: int) -> int:
    """Images doubling may break on ``n`` images with the worst case still called converged."""
    return max(1, int(n) // ONE_IN)


def settings_change(one: dict, two: dict) -> str:
    """What doubling changed in one attack's stored settings, e.g. ``"steps 20 -> 40"`` ("" when
    nothing: an attack whose budget has no knob, such as a one-step attack)."""
    one, two = _flat(one), _flat(two)
    return ", ".join(f"{k} {one[k]} -> {two[k]}" for k in two
                     if k in one and one[k] != two[k] and k not in ("attack", "label", "standard"))


def _flat(d: dict) -> dict:
    """An attack's settings with nested ones (the official AutoAttack's ``budget``) lifted up."""
    out = {}
    for k, v in d.items():
        out.update(v if isinstance(v, dict) else {} if isinstance(v, list) else {k: v})
    return out


@dataclass
class Convergence:
    """The worst case at the budget and at twice it, per example, on the same ``n`` images.

    ``robust_1x``: the stored worst case; ``robust_2x``: the same columns with each attack at twice
    its budget; ``bites``: per attack label, the images its doubled version broke that the budget
    left robust; ``work_1x`` / ``work_2x``: the attacks' work in passes per image."""
    robust_1x: torch.Tensor
    robust_2x: torch.Tensor
    bites: dict[str, int]
    work_1x: float
    work_2x: float

    @property
    def n(self) -> int:
        return len(self.robust_1x)

    @property
    def robust_both(self) -> torch.Tensor:
        """The worst case after doubling: per example, robust at the budget and at twice it."""
        return self.robust_1x & self.robust_2x

    @property
    def changed(self) -> int:
        """Images doubling broke that the budget left robust."""
        return int((self.robust_1x & ~self.robust_2x).sum())

    @property
    def converged(self) -> bool:
        return self.changed <= tolerance(self.n)

    def rows(self) -> list[dict]:
        """Robust accuracy against attack compute: one row per budget."""
        n = self.n
        out = []
        for label, robust, work in (("1x (the profile's budget)", self.robust_1x, self.work_1x),
                                    ("2x (twice it)", self.robust_2x, self.work_2x),
                                    ("1x and 2x, per example", self.robust_both, self.work_1x + self.work_2x)):
            k = int(robust.sum())
            out.append({"budget": label, "robust accuracy (%)": round(100.0 * k / max(1, n), 2),
                        "images broken": n - k, "robust": k, "passes per image": round(work, 1)})
        return out

    def summary(self) -> dict:
        """What the convergence file keeps and the report reads (JSON types)."""
        return {"n": self.n, "rows": self.rows(), "changed": self.changed, "tolerance": tolerance(self.n),
                "converged": self.converged, "verdict": VERDICT[0] if self.converged else VERDICT[1],
                "bites": {k: v for k, v in self.bites.items() if v}, "sentence": self.sentence()}

    def sentence(self) -> str:
        return sentence({"n": self.n, "rows": self.rows(), "changed": self.changed,
                         "tolerance": tolerance(self.n), "bites": self.bites})


def assess(robust_1x: torch.Tensor, fixed: torch.Tensor, doubled: dict[str, torch.Tensor],
           work_1x: float, work_2x: float) -> Convergence:
    """The verdict on ``n`` images (module docstring). ``robust_1x``: the stored worst case at the
    budget; ``fixed``: per example, correct under the columns doubling does not touch (clean, the
    protocol's); ``doubled``: per attack label, per-example correctness at twice its budget."""
    r1 = robust_1x.bool().cpu()
    n = len(r1)
    for label, c in doubled.items():
        if len(c) != n:
            raise ValueError(f"{label} at twice the budget covers {len(c)} images, the worst case {n}")
    r2 = fixed.bool().cpu().clone()
    for c in doubled.values():
        r2 &= c.bool().cpu()
    bites = {label: int((r1 & ~c.bool().cpu()).sum()) for label, c in doubled.items()}
    return Convergence(r1, r2, bites, float(work_1x), float(work_2x))


def sentence(summary: dict) -> str:
    """The verdict in words, from a :meth:`Convergence.summary` (the numbers only). The word
    "converged" appears only when doubling changed the worst case by at most the tolerance."""
    n, changed, tol = int(summary["n"]), int(summary["changed"]), int(summary["tolerance"])
    one, _, both = summary["rows"]   # the budget, twice it, both per example
    acc1, acc12 = one["robust accuracy (%)"], both["robust accuracy (%)"]
    bites = sorted(((k, v) for k, v in (summary.get("bites") or {}).items() if v), key=lambda kv: -kv[1])
    named = ", ".join(f"{k} ({v} image{'s' if v != 1 else ''})" for k, v in bites)
    work = f"{summary['rows'][1]['passes per image']:g} passes per image, from {one['passes per image']:g}"
    if changed <= tol:
        what = "broke no image" if changed == 0 else f"broke {changed} more image{'s' if changed != 1 else ''}"
        return (f"Converged: twice every attack's budget ({work}) {what} of the {n} the budget ran on "
                f"(at most {tol} allowed: one in {ONE_IN}, at least one); the worst case stays at "
                f"{acc12:.1f}% robust" + (f" (from {acc1:.1f}%; {named})" if changed else "") + ".")
    return (f"Not settled at this budget: twice every attack's budget ({work}) broke {changed} more of the "
            f"{n} images (more than the {tol} one in {ONE_IN} allows), robust accuracy {acc1:.1f}% -> "
            f"{acc12:.1f}%. Still biting at twice the budget: {named or 'the attacks together'}. Report "
            f"{acc12:.1f}% at most, and raise the budget of "
            + ("that attack" if len(bites) == 1 else "those attacks") + " until doubling stops breaking images.")
