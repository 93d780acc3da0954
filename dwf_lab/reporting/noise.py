"""How far a measured accuracy can move by chance, and when two accuracies differ by more than that.

An accuracy measured on n test images is a binomial proportion: another n images would give
another number. :func:`~dwf_lab.evaluation.consistency.binomial_se` is its standard error in
points (Agresti-Coull: two successes and two failures added, so a 0% or 100% on few images still
has an error); :func:`accuracy_se` adds the seed-to-seed spread when a number is a mean over
training runs, and :func:`run_cells` gives every number of a run's records with its error.
:func:`compare` says whether a difference is beyond noise: more than :data:`Z` standard errors
of the difference, the errors of the two numbers combined as if independent. Two models
evaluated on the *same* images make correlated errors, so this is the conservative choice (a
paired estimate from per-image results is smaller; notebook 08 computes one).
"""
import math
from dataclasses import dataclass
from typing import Iterable

from dwf_lab.evaluation.consistency import Z, binomial_se
from dwf_lab.evaluation.records import key_n, validated
from dwf_lab.reporting.tables import aggregate


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

    def reading(self, above: str = "higher", below: str = "lower") -> str:
        """'within noise' (up to :data:`Z` standard errors), or ``above`` / ``below``."""
        if abs(self.difference) <= Z * self.se:
            return "within noise"
        return above if self.difference > 0 else below


def compare(a: float, se_a: float, b: float, se_b: float) -> Comparison:
    """The difference a − b and its standard error sqrt(se_a² + se_b²)."""
    return Comparison(a, b, math.sqrt(se_a ** 2 + se_b ** 2))


@dataclass(frozen=True)
class Cell:
    """A mean accuracy (%) over ``seeds`` training runs, its standard error (points) and the test images behind it."""
    mean: float
    se: float
    n: int
    seeds: int = 1


def run_cells(results: Iterable[dict], dataset: str | None = None) -> dict[str, dict[str, Cell]]:
    """``{row: {metric: Cell}}`` of a run's evaluation records: the mean over seeds
    (:func:`~dwf_lab.reporting.tables.aggregate`) with its :func:`accuracy_se` on the fewest test
    images the metric covers in the row's records (attacks may run on fewer), the seeds' spread
    included. A row with no test size (``n_test``) is left out: its noise is unknown."""
    results = validated(results)
    out: dict[str, dict[str, Cell]] = {}
    for row, metrics in aggregate(results, dataset).items():
        recs = [r for r in results if r["row"] == row and r.get("n_test")]
        if recs:
            n = {m: min(key_n(r, m) for r in recs) for m in metrics}
            out[row] = {m: Cell(c["mean"], accuracy_se(c["mean"], n[m], c["std"], c["n"]), n[m], c["n"])
                        for m, c in metrics.items()}
    return out
