"""The notebook-facing helpers of 06 and 07 (course/battery.py, course/ablation_views.py) on a
run directory built by hand (the smoke course runs them end to end)."""
import json

import pytest
import torch

from dwf_lab.core.config import get_profile
from dwf_lab.course import ablation_views, battery
from dwf_lab.evaluation.metrics import pack_bits
from dwf_lab.store.runs import RUNS_DIR_ENV, Run


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path))
    return Run("views", get_profile("smoke"))


def _ablation(run, variant, bits):
    folder = run.ablation_dir(0, variant)
    folder.mkdir(parents=True, exist_ok=True)
    t = torch.tensor(bits, dtype=torch.bool)
    rec = {"variant": variant, "row": variant, "seed": 0, "n_test": len(bits), "question": "-",
           "metrics": {"SA": 100.0, "pgd:20": 100 * float(t.float().mean()), "worst-case": 0.0},
           "per_example": {"pgd:20": pack_bits(t)}}
    (folder / "eval.json").write_text(json.dumps(rec))


def test_ablation_differences_are_paired_on_the_same_images(run):
    assert ablation_views.ablation_differences(run, 0) == ({}, {})
    _ablation(run, "reference", [1, 1, 0, 0, 1, 0, 1, 0])
    _ablation(run, "frozen-experts", [1, 1, 0, 0, 1, 0, 1, 1])
    paired, unpaired = ablation_views.ablation_differences(run, 0)
    d, se = paired["frozen-experts"]
    assert d == pytest.approx(12.5) and se == pytest.approx(12.5)       # one image of eight differs
    assert unpaired["frozen-experts"] > se
    assert set(ablation_views.ablation_records(run, 0)) == {"reference", "frozen-experts"}


def test_stored_record_and_expert_names(run):
    assert ablation_views.stored_record(run, 0, "mixture") is None
    assert ablation_views.expert_names(run.profile)[0] == "benign"
    assert battery.expert_names(run.profile) == ["benign", "fgsm-1", "pgd-1"]


def test_battery_settings_follow_the_scope(run):
    core = battery.settings(run.profile, run, 0, "core", ["mixture"])
    full = battery.settings(run.profile, run, 0, "full", ["mixture"])
    assert core.aa_budget() != full.aa_budget() == full.standard_autoattack().aa_budget()
    assert "AutoAttack here:" in battery.settings_markdown(core, 0)
