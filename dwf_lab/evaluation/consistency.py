"""The consistency rules two attacks on one model must obey (:data:`RULES`), held to one threshold.

Notebook 05's reading (:func:`~dwf_lab.reporting.readings.protocol_reading`), notebook 08's audit
(:mod:`~dwf_lab.reporting.audit`) and the checklist (:mod:`~dwf_lab.evaluation.checklist`) all call
them: one row, one verdict. A row: accuracies (%) keyed ``fgsm:<ε>``, ``pgd:<k>``, ``pgd:<L>-ms``,
``pgd:<L>-a`` (PGD at ``pgd_eps``) or ``pgd@<ε>`` (PGD at ε, the checklist's grid); ``n``: its test
images (one number, or one per key). A :class:`Check` holds a stronger attack against a weaker one:
``excess`` = acc[stronger] − acc[weaker] ≤ 0 is ``"ok"``, up to ``limit`` = max(:data:`Z` · SE, one
image = 100/n points) ``"within noise"``, beyond it ``"flagged"``; SE = sqrt(SE_a² + SE_b²), each the
binomial (Agresti-Coull) error of one accuracy on its images. Why: 2 SE is the usual 95% two-sided
line, and both numbers come from the *same* images, so adding their errors as if independent
overstates the noise of the difference (a paired estimate is smaller): the rule errs toward silence,
not false alarms. The seeds' spread is left out on purpose: it moves both attacks on a model
together. One image is the resolution of an accuracy, never a finding (2 SE exceeds it from n = 2).
"""
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Callable, Mapping

from dwf_lab.core.config import PGD_EPS
from dwf_lab.evaluation import keys as K

Z = 2.0   # "beyond noise": a difference of more than two standard errors (about 95%, two-sided)


def binomial_se(acc: float, n: int) -> float:
    """Standard error, in points, of an accuracy of ``acc`` percent measured on ``n`` images.

    Agresti-Coull: p = (k + 2) / (n + 4) with k = acc·n/100, SE = 100·sqrt(p(1−p)/(n + 4)).
    For 35% on 200 images that is 3.3 points, as the plain sqrt(p(1−p)/n) would say."""
    if not n or n < 1:
        raise ValueError(f"an accuracy needs at least one test image, got n={n!r}")
    if not 0.0 <= acc <= 100.0:
        raise ValueError(f"accuracy must be a percentage in [0, 100], got {acc!r}")
    p = (acc / 100.0 * n + 2.0) / (n + 4.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / (n + 4.0))


Row = Mapping[str, float]
Images = int | Mapping[str, int]


@dataclass(frozen=True)
class Check:
    """``stronger`` should leave no more accuracy than ``weaker``; ``excess`` = acc[stronger] −
    acc[weaker] in points, ``se`` its standard error, ``limit`` the noise allowed."""
    stronger: str
    weaker: str
    a: float
    b: float
    se: float
    limit: float

    @property
    def excess(self) -> float:
        return self.a - self.b

    @property
    def status(self) -> str:
        return "ok" if self.excess <= 0 else "within noise" if self.excess <= self.limit else "flagged"


def check_pair(acc: Row, n: Images, stronger: str, weaker: str) -> Check:
    """The :class:`Check` of ``stronger`` against ``weaker`` in ``acc`` (module doc: the threshold)."""
    ns = [n[k] if isinstance(n, Mapping) else n for k in (stronger, weaker)]
    se = math.hypot(*(binomial_se(acc[k], m) for k, m in zip((stronger, weaker), ns)))
    return Check(stronger, weaker, acc[stronger], acc[weaker], se, max(Z * se, 100.0 / min(ns)))


def _sweep(acc: Row, attack: str) -> list[tuple[float, str]]:
    """(ε, key) for the keys of one attack over ε in ``acc`` ("fgsm", "pgd-eps"), by increasing ε."""
    return [(k.eps, k.text) for k in K.of(acc, attack)]


def pgd_columns(acc: Mapping[str, object]) -> list[str]:
    """The PGD columns at the row's ``pgd_eps``: ``pgd:<k>``, ``pgd:<L>-ms``, ``pgd:<L>-a``."""
    return [k for k in acc if K.parse(k).attack == "pgd"]


def pgd_vs_fgsm(acc: Row, n: Images, pgd_eps: float = PGD_EPS) -> Check | None:
    """The strongest PGD column (its ball holds FGSM's step) against FGSM at the largest ε ≤ ``pgd_eps``."""
    fgsm = [k for e, k in _sweep(acc, "fgsm") if e <= pgd_eps + 1e-9]
    pgd = pgd_columns(acc)
    return check_pair(acc, n, min(pgd, key=acc.get), fgsm[-1]) if fgsm and pgd else None


def eps_growth(acc: Row, n: Images, pgd_eps: float = PGD_EPS) -> Check | None:
    """The worst rise of accuracy from one ε to the next, in the FGSM and the PGD@ε sweeps."""
    checks = [check_pair(acc, n, b, a) for p in ("fgsm", "pgd-eps") for (_, a), (_, b) in pairwise(_sweep(acc, p))]
    return max(checks, key=lambda c: (c.excess - c.limit, c.excess), default=None)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str     # what a sound evaluation shows
    check: Callable[[Row, Images, float], Check | None]   # (accuracies, n images, PGD's ε); None: no columns


RULES: tuple[Rule, ...] = (
    Rule("pgd-vs-fgsm", "PGD at ε does no less damage than one FGSM step at the same or a smaller ε",
         pgd_vs_fgsm),
    Rule("eps-growth", "accuracy does not rise as ε grows", eps_growth),
)
