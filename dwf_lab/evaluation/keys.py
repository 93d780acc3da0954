"""Metric keys: the names results are stored under, one parser and one formatter.

A result's ``metrics`` map keys to accuracies in percent. Every key the kit writes is one of:

| key                  | attack                                                            | family    |
|----------------------|-------------------------------------------------------------------|-----------|
| ``SA``               | clean accuracy                                                    | both      |
| ``fgsm:<eps>``       | FGSM at eps (Table 2)                                             | protocol  |
| ``pgd:<k>``          | PGD-k, cross-entropy, the k-th iterate (Table 3)                   | protocol  |
| ``pgd:<L>-ms``       | PGD-L with restarts, per-example worst case ("100 (MS)")          | protocol  |
| ``pgd:<L>-a``        | the paper's "adaptive" PGD-L, EoT = 1 ("100 (A)")                 | protocol  |
| ``worst-case``       | per example, every protocol attack inside the eps ball            | protocol  |
| ``pgd@<eps>``        | PGD at another eps (the checklist's eps sweep)                    | checklist |
| ``pgd-<k>``          | PGD-k, cross-entropy (the adaptive battery's own run)             | adaptive  |
| ``pgd-<L>x<R>``      | PGD-L with R restarts                                             | adaptive  |
| ``<name>``           | a registered attack (:mod:`dwf_lab.evaluation.suite`)             | adaptive  |
| ``worst-case (all)`` | per example, every attack that ran inside the eps ball            | adaptive  |

``pgd:20`` and ``pgd-20`` are the same attack run twice (the protocol's trajectory and the
adaptive battery's own draw); :attr:`MetricKey.label` gives both the same column label.
:func:`parse` is the only place a key's text is taken apart; code asks the parsed key.
"""
import re
from dataclasses import dataclass

CLEAN = "SA"
PROTOCOL_WORST = "worst-case"
WORST = "worst-case (all)"
DERIVED = (PROTOCOL_WORST, WORST)   # derived from the others: never part of a worst case

_PATTERNS = (
    ("fgsm", re.compile(r"fgsm:(?P<eps>\d+(?:\.\d+)?(?:e-?\d+)?)")),
    ("pgd", re.compile(r"pgd:(?P<steps>\d+)(?:-(?P<variant>ms|a))?")),
    ("pgd-eps", re.compile(r"pgd@(?P<eps>\d+(?:\.\d+)?(?:e-?\d+)?)")),
    ("pgd-long", re.compile(r"pgd-(?P<steps>\d+)x(?P<restarts>\d+)")),
    ("pgd-adaptive", re.compile(r"pgd-(?P<steps>\d+)")),
)


@dataclass(frozen=True)
class MetricKey:
    """A parsed metric key. ``attack``: "clean", "fgsm", "pgd" (the protocol's), "pgd-adaptive",
    "pgd-long", "worst-case", or a registered attack's own key."""
    text: str
    attack: str
    eps: float | None = None
    steps: int | None = None
    restarts: int | None = None
    variant: str | None = None      # "ms" / "a" for the protocol's PGD-L columns

    @property
    def derived(self) -> bool:
        return self.text in DERIVED

    @property
    def label(self) -> str:
        """The column label: 'FGSM 0.03', 'PGD-20', 'PGD-100 (MS)', 'PGD-500 x 5'."""
        if self.attack == "fgsm":
            return f"FGSM {self.eps:g}"
        if self.attack == "pgd-eps":
            return f"PGD at eps {self.eps:g}"
        if self.attack in ("pgd", "pgd-adaptive"):
            return f"PGD-{self.steps}" + (f" ({self.variant.upper()})" if self.variant else "")
        if self.attack == "pgd-long":
            return f"PGD-{self.steps} x {self.restarts}"
        return self.text

    def __str__(self) -> str:
        return self.text


def parse(key: str) -> MetricKey:
    """The one parser of metric keys; any other text is a registered attack's key (or derived)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a metric key is a non-empty string, got {key!r}")
    if key == CLEAN:
        return MetricKey(key, "clean")
    if key in DERIVED:
        return MetricKey(key, "worst-case")
    for attack, pat in _PATTERNS:
        m = pat.fullmatch(key)
        if m:
            g = m.groupdict()
            return MetricKey(key, attack, eps=float(g["eps"]) if g.get("eps") else None,
                             steps=int(g["steps"]) if g.get("steps") else None,
                             restarts=int(g["restarts"]) if g.get("restarts") else None,
                             variant=g.get("variant"))
    return MetricKey(key, key)


# ---- the formatters (the only places a key's text is put together)
def fgsm(eps: float) -> str:
    return f"fgsm:{eps:g}"


def pgd(steps: int, variant: str | None = None) -> str:
    """The protocol's PGD column: ``pgd:<k>``, or ``pgd:<L>-ms`` / ``pgd:<L>-a``."""
    return f"pgd:{int(steps)}" + (f"-{variant}" if variant else "")


def adaptive_pgd(steps: int) -> str:
    return f"pgd-{int(steps)}"


def long_pgd(steps: int, restarts: int) -> str:
    return f"pgd-{int(steps)}x{int(restarts)}"


# ---- selections over a record's keys
def of(keys, attack: str, variant: str | None = None) -> list[MetricKey]:
    """The keys of one attack family (and variant), sorted by eps / steps / restarts."""
    found = [k for k in map(parse, keys) if k.attack == attack and k.variant == variant]
    return sorted(found, key=lambda k: (k.eps or 0.0, k.steps or 0, k.restarts or 0))


def label(key: str) -> str:
    return parse(key).label
