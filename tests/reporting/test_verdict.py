"""The measured verdict (dwf_lab.reporting.readings.verdict) and the noise it rests on (reporting.noise).

Records are made up in memory: the verdict must say what the numbers say (beyond noise or
not, with the right standard errors: paired on the same images where the records hold
per-image results, and saying so), compare like with like (the worst case both rows have),
and list what the run lacks instead of failing.
"""
import math
import statistics

import pytest
import torch

from dwf_lab.evaluation.metrics import WORST, pack_bits
from dwf_lab.reporting.noise import accuracy_se, binomial_se, compare, paired_compare, paired_difference
from dwf_lab.reporting.readings import verdict, verdict_reading


def rec(row, metrics, n=200, seed=0):
    return {"model": row.lower(), "row": row, "seed": seed, "dataset": "cifar10-subset", "n_test": n,
            "metrics": metrics}


# ------------------------------------------------------------------- noise --
def test_binomial_standard_errors():
    assert binomial_se(35.0, 200) == pytest.approx(100 * math.sqrt(0.35 * 0.65 / 200), abs=0.1)
    assert binomial_se(0.0, 64) > 1.0           # none right of 64 is not "exactly 0%"
    assert binomial_se(50.0, 10000) < binomial_se(50.0, 100)
    assert accuracy_se(50.0, 200, std=4.0, runs=4) == pytest.approx(math.hypot(binomial_se(50.0, 200), 2.0))
    assert accuracy_se(50.0, 200, std=4.0, runs=1) == binomial_se(50.0, 200)
    for bad in ((50.0, 0), (120.0, 10)):
        with pytest.raises(ValueError):
            binomial_se(*bad)


def test_a_difference_is_beyond_noise_past_two_standard_errors():
    assert compare(21.0, 2.0, 16.5, 2.0).reading() == "within noise"      # 4.5 < 2 * 2.83
    c = compare(30.0, 2.0, 16.5, 2.0)
    assert c.reading("up", "down") == "up" and c.z == pytest.approx(13.5 / math.hypot(2, 2))
    assert compare(10.0, 1.0, 30.0, 1.0).reading() == "lower"


# ----------------------------------------------------------------- verdict --
def test_the_verdict_compares_dwf_with_its_baselines_and_the_uniform_average():
    v = verdict([rec("DWF", {"SA": 40.0, "worst-case": 21.0}),
                 rec("ResNet-18 (PGD-AT)", {"SA": 35.0, "worst-case": 16.5}),
                 rec("Uniform ensemble", {"SA": 38.0, "worst-case": 5.0})])
    rows = {r["model"]: r for r in v["rows"]}
    assert rows["ResNet-18 (PGD-AT)"]["reading"] == "within noise"
    assert rows["Uniform ensemble"]["reading"] == "DWF higher"
    assert rows["Uniform ensemble"]["DWF − model"] == pytest.approx(16.0)
    assert rows["ResNet-18 (PGD-AT)"]["± SE"] == pytest.approx(math.hypot(binomial_se(21.0, 200),
                                                                          binomial_se(16.5, 200)))
    missing = {m["model"]: m["why"] for m in v["missing"]}
    assert set(missing) == {"ResNet-18 (FGSM-AT)", "SoE", "ADVMoE", "ResNet-18"}
    assert "notebook 07" in missing["SoE"]
    text = verdict_reading(v)
    assert "**DWF keeps 21.0% ±" in text and "+16.0 ±" in text and "within noise" in text
    assert "the gate and the end-to-end phase, together, add 16.0 points" in text
    assert "unpaired standard error" in text          # no per-image results: the errors combined
    assert "`routing-uniform`" in text                # the gate alone is another comparison
    assert "Missing: SoE" in text


def test_both_rows_are_held_to_the_same_attacks():
    v = verdict([rec("DWF", {"worst-case": 30.0, WORST: 10.0}),
                 rec("ResNet-18 (PGD-AT)", {"worst-case": 25.0}),             # no adaptive attacks yet
                 rec("Uniform ensemble", {"worst-case": 28.0, WORST: 12.0})])
    rows = {r["model"]: r for r in v["rows"]}
    assert rows["ResNet-18 (PGD-AT)"]["metric"] == "worst-case" and rows["ResNet-18 (PGD-AT)"]["DWF"] == 30.0
    assert rows["Uniform ensemble"]["metric"] == WORST and rows["Uniform ensemble"]["DWF"] == 10.0
    assert "over every attack the run made" in verdict_reading(v)


def test_seeds_widen_the_error_and_a_row_without_a_worst_case_is_named():
    one = verdict([rec("DWF", {"worst-case": 20.0})])["dwf"]["worst-case"]["se"]
    two = verdict([rec("DWF", {"worst-case": 14.0}, seed=0), rec("DWF", {"worst-case": 26.0}, seed=1),
                   rec("ResNet-18", {"SA": 50.0})])
    assert two["seeds"] == 2 and two["dwf"]["worst-case"]["se"] > one
    why = {m["model"]: m["why"] for m in two["missing"]}["ResNet-18"]
    assert why.startswith("evaluated, but without a per-image worst case")


def test_no_results_say_what_is_missing():
    v = verdict([])
    assert v["dwf"] is None and v["rows"] == [] and v["missing"][0]["model"] == "DWF"
    text = verdict_reading(v)
    assert text.startswith("- DWF has no per-image worst case in this run yet")
    assert "Missing: DWF — not evaluated yet" in text


# ------------------------------------------------------------------ paired --
def bits_rec(row, correct: dict, seed=0, extra=None):
    """A record with per-image results: ``correct`` maps a metric to one bool per image."""
    n = len(next(iter(correct.values())))
    return {"model": row.lower(), "row": row, "seed": seed, "dataset": "cifar10-subset", "n_test": n,
            "metrics": {**{k: 100.0 * sum(v) / n for k, v in correct.items()}, **(extra or {})},
            "per_example": {k: pack_bits(torch.tensor(v)) for k, v in correct.items()},
            "settings": {"pgd_eps": 8 / 255}}


def agreeing(n=400, both=200, only_a=10, only_b=0):
    """Two models' per-image results that agree except on ``only_a`` + ``only_b`` images."""
    a = [True] * both + [True] * only_a + [False] * only_b
    b = [True] * both + [False] * only_a + [True] * only_b
    rest = n - len(a)
    return a + [False] * rest, b + [False] * rest


def test_the_paired_error_of_models_that_agree_is_much_smaller():
    a, b = agreeing()
    d, se, n = paired_difference(a, b)
    assert n == 400 and d == pytest.approx(2.5)
    assert se == pytest.approx(100 * statistics.stdev([x - y for x, y in zip(a, b)]) / math.sqrt(400))
    unpaired = math.hypot(binomial_se(52.5, 400), binomial_se(50.0, 400))
    assert se < unpaired / 4
    # the textbook form, 100 sqrt(b + c - (b - c)^2 / n) / n, up to n / (n - 1)
    assert se == pytest.approx(100 * math.sqrt(10 - 100 / 400) / 400 * math.sqrt(400 / 399))
    assert paired_difference(a, a)[:2] == (0.0, 0.0)
    for bad in ((a, b[:-1]), ([True], [False])):
        with pytest.raises(ValueError):
            paired_difference(*bad)


def test_the_verdict_pairs_the_same_images_and_says_so():
    a, b = agreeing()
    with_bits = verdict([bits_rec("DWF", {"worst-case": a}), bits_rec("ResNet-18 (PGD-AT)", {"worst-case": b})])
    row = with_bits["rows"][0]
    assert row["paired"] and row["images"] == 400 and row["SE of the difference"] == "paired, 400 images"
    assert row["± SE"] == pytest.approx(paired_difference(a, b)[1])
    assert row["reading"] == "DWF higher"                           # 2.5 points, about 3.2 paired SE
    text = verdict_reading(with_bits)
    assert "paired standard error on the same 400 images" in text and "beyond noise" in text

    # the same numbers without per-image results: unpaired, and within noise
    plain = verdict([rec("DWF", {"worst-case": 52.5}, n=400), rec("ResNet-18 (PGD-AT)", {"worst-case": 50.0}, n=400)])
    row = plain["rows"][0]
    assert not row["paired"] and row["SE of the difference"] == "unpaired"
    assert row["± SE"] > 4 * with_bits["rows"][0]["± SE"] and row["reading"] == "within noise"
    assert "unpaired standard error" in verdict_reading(plain)


def test_records_on_different_images_or_seeds_are_not_paired():
    a, b = agreeing()
    other_n = verdict([bits_rec("DWF", {"worst-case": a}), bits_rec("ResNet-18 (PGD-AT)", {"worst-case": b[:300]})])
    assert not other_n["rows"][0]["paired"]
    other_seed = [bits_rec("DWF", {"worst-case": a}), bits_rec("ResNet-18 (PGD-AT)", {"worst-case": b}, seed=1)]
    assert paired_compare(other_seed, ("DWF", "worst-case"), ("ResNet-18 (PGD-AT)", "worst-case")) is None


def test_several_seeds_pair_image_by_image_and_add_the_seed_spread():
    a0, b0 = agreeing(only_a=10)
    a1, b1 = agreeing(only_a=30)
    recs = [bits_rec("DWF", {"worst-case": a0}, seed=0), bits_rec("DWF", {"worst-case": a1}, seed=1),
            bits_rec("ResNet-18 (PGD-AT)", {"worst-case": b0}, seed=0),
            bits_rec("ResNet-18 (PGD-AT)", {"worst-case": b1}, seed=1)]
    c = paired_compare(recs, ("DWF", "worst-case"), ("ResNet-18 (PGD-AT)", "worst-case"))
    assert c.paired and c.n == 400 and c.difference == pytest.approx(5.0)     # (2.5 + 7.5) / 2
    per_image = [(x0 - y0 + x1 - y1) / 2 for x0, y0, x1, y1 in zip(a0, b0, a1, b1)]
    images = 100 * statistics.stdev(per_image) / math.sqrt(400)
    assert c.se == pytest.approx(math.hypot(images, statistics.stdev([2.5, 7.5]) / math.sqrt(2)))
