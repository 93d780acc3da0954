"""How far a measured accuracy can move by chance, and when two accuracies differ by more than that.

An accuracy measured on n test images is a binomial proportion: another n images would give
another number. :func:`~dwf_lab.evaluation.consistency.binomial_se` is its standard error in
points (Agresti-Coull: two successes and two failures added, so a 0% or 100% on few images still
has an error); :func:`accuracy_se` adds the seed-to-seed spread when a number is a mean over
training runs, and :func:`run_cells` gives every number of a run's records with its error.

A difference between two accuracies is "beyond noise" past :data:`Z` standard errors of the
difference. Two ways to get that error:

- :func:`paired_difference` / :func:`paired_compare`: both accuracies measured on the *same*
  images, from the per-image results (``per_example`` bits of the records): the standard error
  of the mean of the per-image differences a_i − b_i. Two models that agree on most images make
  correlated errors, and this error is much smaller than the unpaired one: use it where the bits
  are there;
- :func:`compare`: the two errors combined as if the numbers came from independent images,
  sqrt(se_a² + se_b²). Conservative (it overstates the noise of a difference on shared images);
  the fallback where per-image results are missing or cover different images.
"""
import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dwf_lab.evaluation.consistency import Z, binomial_se
from dwf_lab.evaluation.records import key_n, stored_correct, validated
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
    """``a`` − ``b`` in points, with the standard error of the difference: ``paired`` when it comes
    from per-image results on the same ``n`` images (:func:`paired_compare`), else the two errors
    combined as if independent (:func:`compare`)."""
    a: float
    b: float
    se: float
    paired: bool = False
    n: int | None = None

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
    """The difference a − b and its unpaired standard error sqrt(se_a² + se_b²)."""
    return Comparison(a, b, math.sqrt(se_a ** 2 + se_b ** 2))


def _bits(correct) -> np.ndarray:
    a = np.asarray(correct, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"per-image results must be one value per image, got shape {a.shape}")
    return a


def paired_difference(correct_a, correct_b) -> tuple[float, float, int]:
    """``(difference, se, n)``: accuracy of a minus accuracy of b on the same ``n`` images, in
    points, with its paired standard error 100 · std(a_i − b_i) / sqrt(n) (sample std, ddof=1).

    ``correct_a``, ``correct_b``: one True/False (or 1/0) per image, in the same image order (a
    tensor, an array or a list). Images both models get right, or both wrong, add nothing to the
    difference and little to its error: only the images where they disagree count."""
    a, b = _bits(correct_a), _bits(correct_b)
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same images: {len(a)} results against {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired standard error needs at least two images, got {n}")
    d = a - b
    return 100.0 * float(d.mean()), 100.0 * float(d.std(ddof=1)) / math.sqrt(n), n


def _seed_bits(results: Sequence[dict], row: str, metric: str) -> dict[int, np.ndarray] | None:
    """{seed: per-image bits} of ``row``'s ``metric``; None when a record that measured it has no
    bits, or two records share a seed (nothing to pair them by)."""
    out: dict[int, np.ndarray] = {}
    for r in results:
        if r["row"] != row or metric not in r["metrics"]:
            continue
        seed = r.get("seed")
        if seed in out or metric not in (r.get("per_example") or {}) or not r.get("n_test"):
            return None
        out[seed] = _bits(stored_correct(r, metric))
    return out


def paired_compare(results: Iterable[dict], a: tuple[str, str], b: tuple[str, str]) -> Comparison | None:
    """``a`` − ``b``, each a (row, metric) of a run's evaluation records, from their per-image
    results on the same images; None when that cannot be done (fall back on :func:`compare`).

    Needs, for both, per-image bits in every record that measured the metric, the same seeds, and
    the same number of images everywhere (a run's records cover the first n images of its one
    test set). With one seed this is :func:`paired_difference`. Over k seeds, the per-image
    difference is averaged over the seeds first; its standard error over the images is then
    combined with the spread of the per-seed differences, sqrt(se_images² + std_seeds²/k), as
    :func:`accuracy_se` does for one accuracy."""
    results = validated(results)
    bits_a, bits_b = _seed_bits(results, *a), _seed_bits(results, *b)
    if not bits_a or not bits_b or set(bits_a) != set(bits_b):
        return None
    seeds = sorted(bits_a, key=str)
    sizes = {len(bits_a[s]) for s in seeds} | {len(bits_b[s]) for s in seeds}
    if len(sizes) != 1 or min(sizes) < 2:
        return None
    d = np.stack([bits_a[s] - bits_b[s] for s in seeds])          # seeds x images
    _, se, n = paired_difference(d.mean(0), np.zeros(d.shape[1]))
    if len(seeds) > 1:
        per_seed = [100.0 * float(row.mean()) for row in d]
        se = math.sqrt(se ** 2 + statistics.stdev(per_seed) ** 2 / len(seeds))
    mean_a = 100.0 * float(np.mean([bits_a[s].mean() for s in seeds]))
    mean_b = 100.0 * float(np.mean([bits_b[s].mean() for s in seeds]))
    return Comparison(mean_a, mean_b, se, paired=True, n=n)


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
