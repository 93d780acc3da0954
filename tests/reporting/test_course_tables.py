"""The small tables notebook 07 shows, built by dwf_lab.reporting.tables (not in the notebook)."""
from dwf_lab.core.config import get_profile
from dwf_lab.reporting.tables import ablation_plan_rows, gradient_mode_rows, metric_rows


def test_the_ablation_plan_says_what_runs_and_why_not():
    p = get_profile("smoke")                       # 3 experts
    rows = {r["variant"]: r["runs here"] for r in ablation_plan_rows(p, ["reference", "experts-1"])}
    assert rows["reference"] == "yes" and rows["experts-1"] == "yes"
    assert rows["experts-5"].startswith("no: needs 5 experts")
    assert rows["routing-top1"] == 'with scope="full"'
    assert rows["fixed-strengths-full"].startswith("opt-in")


def test_metric_rows_and_gradient_modes():
    recs = [{"row": "SoE", "metrics": {"SA": 45.0, "pgd:20": 12.5},
             "gradient_modes": {"hard": {"SA": 45.0, "pgd:20": 21.0}, "bpda": {"SA": 45.0, "pgd:20": 13.5}}},
            {"model": "uniform-ensemble", "metrics": {"SA": 38.0}}]
    assert metric_rows(recs, ["SA", "pgd:20"]) == [{"model": "SoE", "SA": 45.0, "pgd:20": 12.5},
                                                    {"model": "uniform-ensemble", "SA": 38.0, "pgd:20": None}]
    g = gradient_mode_rows(recs[0], ["pgd:20"])
    assert g == [{"metric": "pgd:20", "hard gradient": 21.0, "bpda gradient": 13.5, "worst of both": 12.5}]
