"""How far a measured accuracy can move by chance, and when two accuracies differ by more than that.

An accuracy measured on n test images is a binomial proportion: another n images would give
another number. :func:`binomial_se` is its standard error in points (Agresti-Coull: two
successes and two failures added, so a 0% or 100% on few images still has an error);
:func:`accuracy_se` adds the seed-to-seed spread when a number is a mean over training runs.
:func:`compare` says whether a difference is beyond noise: more than :data:`Z` standard errors
of the difference, the errors of the two numbers combined as if independent. Two models
evaluated on the *same* images make correlated errors, so this is the conservative choice (a
paired estimate from per-image results is smaller; notebook 08 computes one).
"""
import math
from dataclasses import dataclass

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


def accuracy_se(acc: float, n: int, std: float | None = None, runs: int = 1) -> float:
    """Standard error of a mean accuracy over ``runs`` training runs, each evaluated on the same
    ``n`` images: sqrt(binomial² + std²/runs). The first term is the test-set sampling all runs
    share, the second the spread between training runs (``std``: their sample standard deviation)."""
    se = binomial_se(acc, n)
    if std is not None and runs > 1:
        se = math.sqrt(se ** 2 + std ** 2 / runs)
    return se


@dataclass(frozen=True)
class Comparison:
    """``a`` − ``b`` in points, with the standard error of the difference."""
    a: float
    b: float
    se: float

    @property
    def difference(self) -> float:
        return self.a - self.b

    @property
    def z(self) -> float:
        return self.difference / self.se if self.se > 0 else math.copysign(math.inf, self.difference)

    @property
    def within_noise(self) -> bool:
        return abs(self.difference) <= Z * self.se

    def reading(self, above: str = "higher", below: str = "lower") -> str:
        """'within noise', or ``above`` / ``below`` (beyond noise)."""
        if self.within_noise:
            return "within noise"
        return above if self.difference > 0 else below


def compare(a: float, se_a: float, b: float, se_b: float) -> Comparison:
    """The difference a − b and its standard error sqrt(se_a² + se_b²)."""
    return Comparison(a, b, math.sqrt(se_a ** 2 + se_b ** 2))
