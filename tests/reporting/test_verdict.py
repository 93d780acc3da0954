"""The measured verdict (dwf_lab.reporting.readings.verdict) and the noise it rests on (reporting.noise).

Records are made up in memory: the verdict must say what the numbers say (beyond noise or
not, with the right standard errors), compare like with like (the worst case both rows
have), and list what the run lacks instead of failing.
"""
import math

import pytest

from dwf_lab.evaluation.metrics import WORST
from dwf_lab.reporting.noise import accuracy_se, binomial_se, compare
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
    assert "the gate and the end-to-end phase add 16.0 points" in text
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
