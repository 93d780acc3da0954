"""The ablation variants: applicability, wiring, the adversarial-only recipe, one end-to-end row."""
from __future__ import annotations

import json

import pytest
import torch
from tinymodels import fake_trained_experts  # tests/ is on sys.path

from dwf_lab.core.config import get_profile
from dwf_lab.course.plan import inventory
from dwf_lab.mixture.moe import MixtureOfExperts, dwf_mixture
from dwf_lab.pipeline.ablations import run_ablations
from dwf_lab.reporting.figures import ablation_bar_chart
from dwf_lab.reporting.render import ablation_section, to_markdown
from dwf_lab.reporting.tables import ablation_table
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.recipes import RECIPES, recipe
from dwf_lab.training.stages import expert_stage_names
from dwf_lab.training.variants import (
    ABLATIONS,
    build_variant,
    composition_order,
    get_ablation,
    select_ablations,
    skip_reason,
    variant_profile,
)


def smoke_run(tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    base = dict(n_train=64, n_test=32, mixture_batch=32, ckpt_every=0, keep_epoch_checkpoints=False)
    base.update(kw)
    p = get_profile("smoke", **base)
    return Run("t", p), load_data(p)


def test_ablation_list_is_well_formed():
    names = [a.name for a in ABLATIONS]
    assert len(names) == len(set(names)) and names[0] == "reference"
    assert all(a.kind in RECIPES or a.kind == "none" for a in ABLATIONS)
    assert all(a.description and a.label and a.question for a in ABLATIONS)
    assert "fixed-strengths-full" not in [a.name for a in select_ablations()]
    assert [a.name for a in select_ablations("experts-1, adv-only-batch")] == ["experts-1", "adv-only-batch"]
    with pytest.raises(ValueError):
        get_ablation("nope")


def test_which_variants_apply_to_which_profile():
    paper = get_profile("paper")
    assert all(skip_reason(a, paper) is None for a in ABLATIONS)
    assert composition_order(paper)[:5] == ["benign", "fgsm-1", "pgd-1", "fgsm-2", "pgd-2"]
    smoke = get_profile("smoke")             # 3 experts
    assert skip_reason(get_ablation("experts-3"), smoke).startswith("identical")
    assert skip_reason(get_ablation("experts-5"), smoke).startswith("needs 5")
    assert skip_reason(get_ablation("routing-top2"), smoke) is None
    fixed = variant_profile(paper, get_ablation("fixed-strengths"))
    assert fixed.fgsm_eps_choices == (0.05,) and fixed.pgd_steps_choices == (30,)
    assert variant_profile(paper, get_ablation("reference")) is paper


def test_every_variant_builds(tmp_path, monkeypatch):
    run, data = smoke_run(tmp_path, monkeypatch, n_fgsm_experts=2, n_pgd_experts=2)
    fake_trained_experts(run, 0, data)
    x = data.x_test[:4]
    for a in ABLATIONS:
        if skip_reason(a, run.profile) or a.retrain_experts:
            continue
        paths = [run.model_path(0, n) for n in
                 (composition_order(run.profile)[:a.experts] if a.experts
                  else expert_stage_names(run.profile))]
        m = build_variant(run.profile, data, a, paths, 0).eval()
        assert isinstance(m, MixtureOfExperts) and m.n_experts == (a.experts or 5)
        assert m.routing == a.routing
        with torch.no_grad():
            w = m.gate_weights(x)
            assert m(x).shape == (4, 10)
        assert torch.allclose(w.sum(1), torch.ones(4), atol=1e-5)
        if a.routing == "topk":
            assert ((w > 0).sum(1) == a.k).all()


def test_adversarial_only_batch_is_the_mixed_batch_without_its_clean_third():
    torch.manual_seed(0)
    p = get_profile("smoke")
    m = dwf_mixture(n_experts=2, width=0.0625, dataset="synthetic", gate_hidden=8)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def gens():
        return torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    mixed, ym = recipe("mixture").make_batch(m, x, y, p, *gens())
    adv, ya = recipe("mixture_adv_only").make_batch(m, x, y, p, *gens())
    assert adv.shape[0] == 8 and torch.equal(adv, mixed[4:]) and torch.equal(ya, ym[4:])


def test_one_variant_trains_and_evaluates_end_to_end(tmp_path, monkeypatch):
    run, data = smoke_run(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError):
        run_ablations(run, 0, data, names=["experts-1"], progress=False)
    fake_trained_experts(run, 0, data)
    rows = run_ablations(run, 0, data, names=["experts-1", "experts-5", "uniform-untrained"],
                           progress=False)
    assert [r["variant"] for r in rows] == ["experts-1", "uniform-untrained"]
    for r in rows:
        for c in ("SA", "PGD-20", "worst-case"):
            assert 0.0 <= r[c] <= 100.0
        assert r["worst-case"] <= min(r["SA"], r["PGD-20"])
    vdir = run.ablation_dir(0, "experts-1")
    assert (vdir / "model.safetensors").exists() and (vdir / "eval.json").exists()
    rec = json.loads((vdir / "eval.json").read_text())
    assert rec["settings"]["pgd_steps"] == [20] and rec["settings"]["fgsm_eps"] == []
    # its training time is logged as every stage's is, so the cost banner can scale from it
    assert (0, "experts-1") in inventory(run).ablation_seconds
    rep = json.loads((run.report_dir / "ablations.json").read_text())
    assert [r["variant"] for r in rep["rows"]] == ["experts-1", "uniform-untrained"]
    assert "experts-5" in rep["skipped"]
    md = (run.report_dir / "ablations.md").read_text()
    assert "| 1 expert |" in md and "PGD-20" in md
    mtime = (vdir / "eval.json").stat().st_mtime
    again = run_ablations(run, 0, data, names=["experts-1"], progress=False)   # idempotent
    assert again[0]["SA"] == rows[0]["SA"] and (vdir / "eval.json").stat().st_mtime == mtime
    fig = ablation_bar_chart(ablation_table(run))
    assert len(fig.data) == 3
    sec = ablation_section(run)        # the table as a section of the run's main report
    assert [r[0] for r in sec["rows"]] == ["1 expert", "Uniform average, untrained"]
    assert sec["columns"][3:6] == ["SA", "PGD-20", "Worst case"]
    assert "## Ablations the paper left open (%)" in to_markdown({}, sections=[sec])


def test_uniform_average_row_is_read_off_the_uniform_ensemble_and_equals_attacking_again(tmp_path, monkeypatch):
    """The untrained uniform average *is* the "Uniform ensemble" baseline: its PGD-20 row is read
    off that stored evaluation (same settings, same random starts), equal to attacking it again."""
    from dwf_lab.pipeline.ablations import run_variant
    from dwf_lab.pipeline.baselines import train_and_evaluate_baselines
    run, data = smoke_run(tmp_path, monkeypatch, eval_pgd_steps=(10, 20))
    fake_trained_experts(run, 0, data)
    train_and_evaluate_baselines(run, 0, data, which=("uniform-ensemble",), progress=False)
    a = get_ablation("uniform-untrained")
    read = run_variant(run, 0, data, a, progress=False)
    rec = json.loads((run.ablation_dir(0, a.name) / "eval.json").read_text())
    assert rec["reused_from"].startswith("eval/uniform-ensemble_seed0.json") and rec["elapsed_s"] == 0.0
    (run.ablation_dir(0, a.name) / "eval.json").unlink()
    attacked = run_variant(run, 0, data, a, progress=False, reuse=False)
    again = json.loads((run.ablation_dir(0, a.name) / "eval.json").read_text())
    assert "reused_from" not in again
    assert {k: read[k] for k in ("SA", "PGD-20", "worst-case")} == \
           {k: attacked[k] for k in ("SA", "PGD-20", "worst-case")}
    assert again["per_example"] == rec["per_example"]


def test_a_stored_result_with_other_settings_is_not_read_off():
    from dwf_lab.evaluation.metrics import pack_bits
    from dwf_lab.evaluation.protocol import EvalSettings, stored_subset
    s = EvalSettings(fgsm_eps=(), pgd_steps=(20,), long=False, batch_size=64)
    bits = {k: pack_bits(torch.tensor([True, False, True, True])) for k in ("SA", "pgd:10", "pgd:20")}
    rec = {"seed": 0, "n_test": 4, "per_example": bits,
           "settings": {"pgd_eps": s.pgd_eps, "pgd_alpha": s.pgd_alpha, "random_start": True,
                        "batch_size": 64, "fgsm_eps": [], "pgd_steps": [10, 20], "long": False}}
    metrics, correct = stored_subset(rec, s, 4, 0)
    assert metrics == {"SA": 75.0, "pgd:20": 75.0, "worst-case": 75.0} and set(correct) == {"SA", "pgd:20", "worst-case"}
    assert stored_subset(rec, s, 4, 1) is None                                  # another seed
    assert stored_subset(rec, s, 5, 0) is None                                  # other images
    assert stored_subset({**rec, "settings": {**rec["settings"], "batch_size": 32}}, s, 4, 0) is None
    assert stored_subset({**rec, "settings": {**rec["settings"], "pgd_steps": [10]}}, s, 4, 0) is None
    assert stored_subset({**rec, "settings": {**rec["settings"], "pgd_alpha": 1 / 255}}, s, 4, 0) is None
