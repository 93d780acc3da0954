"""The ablation variants: applicability, wiring, the adversarial-only recipe, one end-to-end row."""
from __future__ import annotations

import json

import pytest
import torch

from dwf_lab import ablations as A
from dwf_lab import pipeline
from dwf_lab.moe import MixtureOfExperts
from dwf_lab.profiles import get_profile
from dwf_lab.runs import Run
from dwf_lab.train import RECIPES, recipe
from tinymodels import fake_trained_experts  # tests/ is on sys.path


def smoke_run(tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    base = dict(n_train=64, n_test=32, mixture_batch=32, ckpt_every=0, keep_epoch_checkpoints=False)
    base.update(kw)
    p = get_profile("smoke", **base)
    return Run("t", p), pipeline.load_data(p)


def test_ablation_list_is_well_formed():
    names = [a.name for a in A.ABLATIONS]
    assert len(names) == len(set(names)) and names[0] == "reference"
    assert all(a.kind in RECIPES or a.kind == "none" for a in A.ABLATIONS)
    assert all(a.description and a.label and a.question for a in A.ABLATIONS)
    assert "fixed-strengths-full" not in [a.name for a in A.select_ablations()]
    assert [a.name for a in A.select_ablations("experts-1, adv-only-batch")] == ["experts-1", "adv-only-batch"]
    with pytest.raises(ValueError):
        A.get_ablation("nope")


def test_which_variants_apply_to_which_profile():
    paper = get_profile("paper")
    assert all(A.skip_reason(a, paper) is None for a in A.ABLATIONS)
    assert A.composition_order(paper)[:5] == ["benign", "fgsm-1", "pgd-1", "fgsm-2", "pgd-2"]
    smoke = get_profile("smoke")             # 3 experts
    assert A.skip_reason(A.get_ablation("experts-3"), smoke).startswith("identical")
    assert A.skip_reason(A.get_ablation("experts-5"), smoke).startswith("needs 5")
    assert A.skip_reason(A.get_ablation("routing-top2"), smoke) is None
    fixed = A.variant_profile(paper, A.get_ablation("fixed-strengths"))
    assert fixed.fgsm_eps_choices == (0.05,) and fixed.pgd_steps_choices == (30,)
    assert A.variant_profile(paper, A.get_ablation("reference")) is paper


def test_every_variant_builds(tmp_path, monkeypatch):
    run, data = smoke_run(tmp_path, monkeypatch, n_fgsm_experts=2, n_pgd_experts=2)
    fake_trained_experts(run, 0, data)
    x = data.x_test[:4]
    for a in A.ABLATIONS:
        if A.skip_reason(a, run.profile) or a.retrain_experts:
            continue
        paths = [run.model_path(0, n) for n in
                 (A.composition_order(run.profile)[:a.experts] if a.experts
                  else pipeline.expert_stage_names(run.profile))]
        m = A.build_variant(run.profile, data, a, paths, 0).eval()
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
    from dwf_lab.moe import dwf_mixture
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
        A.run_ablations(run, 0, data, names=["experts-1"], progress=False)
    fake_trained_experts(run, 0, data)
    rows = A.run_ablations(run, 0, data, names=["experts-1", "experts-5", "uniform-untrained"],
                           progress=False)
    assert [r["variant"] for r in rows] == ["experts-1", "uniform-untrained"]
    for r in rows:
        for c in ("SA", "PGD-20", "worst-case"):
            assert 0.0 <= r[c] <= 100.0
        assert r["worst-case"] <= min(r["SA"], r["PGD-20"])
    vdir = A.ablation_dir(run, 0, "experts-1")
    assert (vdir / "model.safetensors").exists() and (vdir / "eval.json").exists()
    rec = json.loads((vdir / "eval.json").read_text())
    assert rec["settings"]["pgd_steps"] == [20] and rec["settings"]["fgsm_eps"] == []
    rep = json.loads((run.report_dir / "ablations.json").read_text())
    assert [r["variant"] for r in rep["rows"]] == ["experts-1", "uniform-untrained"]
    assert "experts-5" in rep["skipped"]
    md = (run.report_dir / "ablations.md").read_text()
    assert "| 1 expert |" in md and "PGD-20" in md
    mtime = (vdir / "eval.json").stat().st_mtime
    again = A.run_ablations(run, 0, data, names=["experts-1"], progress=False)   # idempotent
    assert again[0]["SA"] == rows[0]["SA"] and (vdir / "eval.json").stat().st_mtime == mtime
    fig = A.bar_chart(A.ablation_table(run))
    assert len(fig.data) == 3
    sec = A.report_section(run)        # the table as a section of the run's main report
    assert [r[0] for r in sec["rows"]] == ["1 expert", "Uniform average, untrained"]
    assert sec["columns"][3:6] == ["SA", "PGD-20", "Worst case"]
    from dwf_lab.report import to_markdown
    assert "## Ablations the paper left open (%)" in to_markdown({}, sections=[sec])
