"""The cost banner: computed from the run directory, before anything trains.

On an empty smoke run notebook 04's banner lists every stage it will train (the benign, FGSM
and PGD experts and the mixture) with a probe-based estimate; once a stage is trained the
banner says it will load it, and estimates the rest from the run's own measured time without
probing again. Scope switches what 06 and 07 plan; 08 reads only.
"""
import json

import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.course import cost
from dwf_lab.course.banner import compact, duration, notebook_banner
from dwf_lab.course.plan import NOTEBOOK_PLANS, inventory, notebook_steps
from dwf_lab.course.setup import setup_notebook
from dwf_lab.evaluation.protocol import EvalSettings
from dwf_lab.pipeline.reproduce import train_run
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.stages import plan_stages


@pytest.fixture
def smoke(monkeypatch, tmp_path):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    p = get_profile("smoke")
    return p, Run("banner", p), load_data(p)


def _no_probe(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the banner probed although the run has measured times")
    monkeypatch.setattr(cost, "_probe", refuse)


def test_empty_run_lists_everything_notebook_04_trains(smoke):
    p, run, data = smoke
    b = notebook_banner("04", p, run, data)
    assert b.trains == ["benign", "fgsm-1", "pgd-1", "mixture"]
    text = b.text()
    for words in ("will train", "the benign expert", "FGSM expert", "PGD expert", "the mixture", "an estimate"):
        assert words in text, words
    assert "throughput probe" in text and b.total_s > 0
    assert not b.loads
    bundle = b._repr_mimebundle_()
    assert "dwf-banner" in bundle["text/html"] and bundle["text/plain"] == text


def test_after_training_it_loads_and_scales_from_measured_times(smoke, monkeypatch):
    p, run, data = smoke
    train_run(run, p.seeds[0], data, "benign", progress=False)
    _no_probe(monkeypatch)
    b01 = notebook_banner("01", p, run, data)
    assert b01.trains == [] and b01.loads == ["benign"] and b01.total_s == 0
    assert "will load" in b01.text() and "nothing to train" in b01.text()
    b02 = notebook_banner("02", p, run, data)
    assert b02.trains == ["fgsm-1"] and b02.loads == ["benign"]
    assert "scaled from this run's training times (benign)" in b02.text()


def test_the_estimate_follows_the_work(smoke, monkeypatch):
    """Seconds scale with the recipe's passes per image (from a measured stage), with the epochs
    (from a probe), and a mixture counts its experts."""
    p, run, data = smoke
    inv = inventory(run)
    inv.trained[0] = ["benign"]
    inv.stage_seconds[(0, "benign")] = 2.0
    _no_probe(monkeypatch)
    fg = next(c for c in cost.estimate(notebook_steps("02", p, inv), p, data, inv) if c.step.name == "fgsm-1")
    assert fg.rate.source == "scaled"
    assert fg.seconds == pytest.approx(2.0 * cost.passes_per_image("fgsm", p) / cost.passes_per_image("benign", p))
    monkeypatch.setattr(cost, "_probe", lambda *a: {"fp32": 100.0, "train": 100.0, "batch": 32, "seconds": 0.1})
    empty = inventory(run)
    one = cost.estimate(notebook_steps("01", p, empty), p, data, empty)[0]
    p2 = p.replace(expert_epochs=2)
    two = cost.estimate(notebook_steps("01", p2, empty), p2, data, empty)[0]
    assert one.rate.source == "probe" and two.seconds == pytest.approx(2 * one.seconds)
    assert one.seconds == pytest.approx(256 / 100.0)          # 256 images, 1 epoch, 1 pass, 100 images/s
    assert cost.passes_per_image("pgd", p) > cost.passes_per_image("fgsm", p) > cost.passes_per_image("benign", p)
    mixture = next(s for s in plan_stages(p) if s.kind == "mixture")
    per_image = cost.train_work(mixture, p, 256) / (256 // mixture.batch_size * mixture.batch_size)
    assert per_image == pytest.approx(p.n_experts * cost.passes_per_image("mixture", p))


def test_scope_switches_what_06_and_07_plan(smoke):
    p, run, data = smoke
    inv = inventory(run)
    core = {s.name for s in notebook_steps("06", p, inv, "core") if s.action == "attack"}
    full = {s.name for s in notebook_steps("06", p, inv, "full") if s.action == "attack"}
    assert core == {"benign", "fgsm-at", "pgd-at", "mixture"}
    assert full == core | {"fgsm-1", "pgd-1"}
    trains_core = {s.name for s in notebook_steps("07", p, inv, "core") if s.action == "train"}
    trains_full = {s.name for s in notebook_steps("07", p, inv, "full") if s.action == "train"}
    assert {"soe", "advmoe"} <= trains_full and not {"soe", "advmoe"} & trains_core
    assert "scope" in dict(notebook_banner("07", p, run, data, "core").has)


def test_08_reads_only_and_says_what_is_missing(smoke):
    p, run, data = smoke
    b = notebook_banner("08", p, run, data)
    assert b.costs == [] and b.total_s == 0
    assert "reads the run's results" in b.text() and "no evaluation results yet" in b.text()
    assert NOTEBOOK_PLANS["08"].reads_only


def test_measured_evaluation_times_are_used(smoke, monkeypatch):
    p, run, data = smoke
    inv = inventory(run)
    for n in [s.name for s in plan_stages(p)]:
        inv.trained.setdefault(0, []).append(n)
    inv.records[(0, "benign")] = {"stage_kind": "benign", "n_test": len(data.x_test), "elapsed_s": 3.0,
                                  "settings": {"fgsm_eps": [0.03], "pgd_steps": [2], "long": False},
                                  "metrics": {"SA": 80.0, "fgsm:0.03": 50.0, "pgd:2": 40.0, "worst-case": 40.0}}
    _no_probe(monkeypatch)
    costs = cost.estimate(notebook_steps("05", p, inv), p, data, inv)
    ev = {c.step.name: c for c in costs if c.step.action == "evaluate"}
    assert ev["benign"].seconds == 0 and ev["benign"].step.done
    assert ev["fgsm-1"].rate.source == "scaled" and ev["fgsm-1"].seconds > 0
    assert ev["mixture"].seconds > ev["fgsm-1"].seconds     # three networks


def test_setup_notebook_prints_the_banner_before_anything_trains(smoke, capsys):
    p, run, data = smoke
    ctx = setup_notebook("smoke", "banner", {}, notebook="04")
    out = capsys.readouterr().out
    assert out.startswith("Notebook 04: will train benign, fgsm-1, pgd-1, mixture") and "will train" in out
    for label in ("profile", "scope", "precision", "seed", "device"):   # "about this run", in the details
        assert any(line.split()[:1] == [label] for line in out.splitlines()[1:]), label
    assert dict(ctx.banner.about)["seed"] == "0"
    assert ctx.banner.trains == ["benign", "fgsm-1", "pgd-1", "mixture"]
    assert not run.is_done(0, "benign")
    assert ctx.scope == "core" and ctx.selection["adaptive"] == ["benign", "fgsm-at", "pgd-at", "mixture"]
    with pytest.raises(ValueError, match="course scope"):
        setup_notebook("smoke", "other", {}, notebook="04", scope="everything")
    assert not (run.root.parent / "other").exists()


def test_a_notebook_without_a_plan_still_opens(smoke):
    p, run, data = smoke
    b = notebook_banner("42", p, run, data)
    assert b.costs == [] and "has no plan for notebook 42" in b.text()


def test_last_headless_time_is_quoted(smoke):
    p, run, data = smoke
    (run.root / "course_times.json").write_text(json.dumps(
        {"notebooks": {"01": {"seconds": 95.0, "trained": ["benign (seed 0)"]}}}))
    assert "took 2 min" in notebook_banner("01", p, run, data).text()


def test_formatting():
    assert compact(["benign", "fgsm-1", "fgsm-2", "fgsm-3", "fgsm-4", "pgd-1", "pgd-2"]) == \
        "benign, fgsm-1..4, pgd-1, pgd-2"
    assert duration(0.4) == "under a second" and duration(42) == "42 s" and duration(600) == "10 min"
    assert duration(3900) == "1 h 05 min"


def test_the_protocol_work_counts_only_the_images_it_attacks():
    """The protocol attacks the correctly classified images (FGSM, one PGD trajectory that the
    first PGD-100 restart continues) and restarts only the images every earlier attack left."""
    s = EvalSettings(fgsm_eps=(0.01, 0.03), pgd_steps=(10, 20), long=True, long_steps=100, restarts=3)
    f, a = cost.FORWARD, cost.ATTACK_STEP
    assert cost.eval_passes(s, clean=0.0, surviving=0.0) == pytest.approx(f)
    attacked = 2 * (a + f) + 100 * a + 3 * f          # FGSM x2; 100 steps read at 10, 20 and 100
    later = 2 * (100 * a + f)                          # restarts 2 and 3
    assert cost.eval_passes(s, clean=0.5, surviving=0.2) == pytest.approx(f + 0.5 * attacked + 0.2 * later)
    assert cost.record_shares({"metrics": {"SA": 50.0, "pgd:100-a": 20.0, "worst-case": 18.0}}) == (0.5, 0.2)
    assert cost.record_shares({"metrics": {}}) is None


def test_only_one_or_two_lines_are_visible_the_rest_is_collapsed(smoke):
    """Whatever the run holds, the banner's visible part is at most two lines; what the run has,
    each step's estimate, how it was made and "about this run" sit in a closed <details> block."""
    p, run, data = smoke
    about = [("profile", "smoke: ..."), ("seed", "0")]
    banners = [notebook_banner(n, p, run, data, about=about) for n in ("00", "04", "07", "08")]
    train_run(run, p.seeds[0], data, "benign", progress=False)
    banners += [notebook_banner(n, p, run, data, about=about) for n in ("00", "01", "02")]
    for b in banners:
        head = b.headline()
        assert 1 <= len(head) <= 2, head
        assert b.text().splitlines()[:len(head)] == head
        page = b.html()
        visible, _, collapsed = page.partition("<details")
        assert collapsed and "<details open" not in page
        assert visible.count("dwf-headline") == len(head) and "throughput probe" not in visible
        assert "about this run" in collapsed and "seed" in collapsed


def test_notebook_00_says_it_trains_its_own_quick_classifier_and_nothing_else(smoke):
    p, run, data = smoke
    head = " ".join(notebook_banner("00", p, run, data).headline())
    assert "quick classifier of its own" in head and "nothing of the run's is trained" in head
    assert "will train" not in head and "nothing yet" not in head
    train_run(run, p.seeds[0], data, "benign", progress=False)
    b = notebook_banner("00", p, run, data)
    head = " ".join(b.headline())
    assert "quick classifier" not in head and "It loads benign" in head and b.trains == []


def test_06_plans_and_prices_the_convergence_check_until_the_run_has_it(smoke):
    """Notebook 06 checks DWF's worst case at twice the attacks' budget: the banner lists that step,
    prices it at more than the adaptive attacks themselves (every attack of the worst case, doubled),
    and marks it done once the run holds its convergence file."""
    p, run, data = smoke
    inv = inventory(run)
    steps = notebook_steps("06", p, inv)
    conv = [s for s in steps if s.action == "converge"]
    assert [(s.name, s.done) for s in conv] == [("mixture", False)]
    costs = {(c.step.action, c.step.name): c for c in cost.estimate(steps, p, data, inv)}
    doubled, once = costs[("converge", "mixture")], costs[("attack", "mixture")]
    assert doubled.seconds > once.seconds > 0 and "twice the budget" in doubled.detail
    row = next(ln for ln in notebook_banner("06", p, run, data).text().splitlines() if ln.startswith("  will attack again"))
    assert row.startswith("  will attack again at twice the budget mixture: about ")   # a long label, then a space
    inv.convergences = {(p.seeds[0], "mixture")}
    assert [s.done for s in notebook_steps("06", p, inv) if s.action == "converge"] == [True]
