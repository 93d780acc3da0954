"""Has the worst case converged? The verdict on constructed per-example results (converged within one
image in 500; not converged, naming the attacks whose doubled version broke images the budget left),
what "twice the budget" means per setting, and the step on a tiny model at the smoke profile: it
stores the doubled attacks, resumes without rerunning them, and the report shows the curve."""
import json

import pytest
import torch
from tinymodels import smoke_run  # tests/ is on sys.path

from dwf_lab.__main__ import main
from dwf_lab.course import battery
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.convergence import assess, sentence, settings_change, tolerance
from dwf_lab.pipeline import convergence as step
from dwf_lab.pipeline.run_all import report_run


def _robust(n: int, broken: list[int]) -> torch.Tensor:
    r = torch.ones(n, dtype=torch.bool)
    r[broken] = False
    return r


def test_tolerance_is_one_image_in_500_and_at_least_one():
    assert [tolerance(n) for n in (64, 100, 499, 500, 999, 1000, 10_000)] == [1, 1, 1, 1, 1, 2, 20]


def test_converged_when_doubling_breaks_at_most_the_tolerance():
    n = 1000
    w1 = _robust(n, list(range(600)))
    doubled = {"PGD-40": _robust(n, list(range(600)) + [700]),       # one more
               "AutoAttack": _robust(n, list(range(590)) + [800])}   # fewer of the old ones, one more
    c = assess(w1, torch.ones(n, dtype=torch.bool), doubled, work_1x=10, work_2x=20)
    assert c.changed == 2 == tolerance(n) and c.converged
    assert c.bites == {"PGD-40": 1, "AutoAttack": 1}
    s = c.summary()
    assert s["verdict"] == "converged" and s["sentence"].startswith("Converged")
    assert [r["images broken"] for r in s["rows"]] == [600, 602, 602]
    assert [r["passes per image"] for r in s["rows"]] == [10, 20, 30]
    assert sentence(json.loads(json.dumps(s))) == s["sentence"], "the report rebuilds it from the stored numbers"


def test_not_converged_names_the_attacks_that_still_bite_and_never_says_converged():
    n = 100
    w1 = _robust(n, list(range(70)))
    doubled = {"PGD-40": _robust(n, list(range(70))),                       # bites nowhere
               "PGD-DLR": _robust(n, list(range(70)) + [80, 81, 82]),       # three more
               "AutoAttack": _robust(n, list(range(70)) + [82, 90])}        # two more, one shared
    c = assess(w1, torch.ones(n, dtype=torch.bool), doubled, 5, 10)
    assert c.changed == 4 > tolerance(n) and not c.converged
    text = c.sentence()
    assert "converged" not in text.lower()
    assert "PGD-DLR (3 images)" in text and "AutoAttack (2 images)" in text and "PGD-40" not in text
    assert "30.0% -> 26.0%" in text
    assert c.summary()["bites"] == {"PGD-DLR": 3, "AutoAttack": 2}


def test_columns_doubling_does_not_touch_count_in_both():
    n = 10
    w1 = _robust(n, [0, 1])              # the protocol's PGD broke 0, an attack 1
    fixed = _robust(n, [0])
    c = assess(w1, fixed, {"PGD-40": _robust(n, [1])}, 1, 2)
    assert c.changed == 0 and torch.equal(c.robust_2x, w1)
    with pytest.raises(ValueError, match="covers 9 images"):
        assess(w1, fixed, {"PGD-40": torch.ones(9, dtype=torch.bool)}, 1, 2)


def test_twice_doubles_every_budget_field_and_caps_the_target_classes():
    s = AdaptiveSettings.laptop()
    t = s.twice(10)
    for k in AdaptiveSettings.TWICE:
        assert getattr(t, k) == (min(2 * getattr(s, k), 9) if k == "aa_targets" else 2 * getattr(s, k)), k
    assert (t.eps, t.alpha, t.n_examples, t.precision) == (s.eps, s.alpha, s.n_examples, s.precision)
    paper = AdaptiveSettings.paper()
    assert paper.twice(10).aa_targets == 9 and paper.twice(10).aa_iter == 200
    change = settings_change(s.attack_settings("autoattack", 0), t.attack_settings("autoattack", 0))
    assert "apgd_t_targets 3 -> 6" in change and "square_queries 500 -> 1000" in change and "eps" not in change


@pytest.fixture(scope="module")
def converged_run(tmp_path_factory):
    run, data, s = smoke_run(tmp_path_factory.mktemp("runs"), "conv")
    (out,) = step.convergence_run(run, 0, data, s, which="benign", progress=False)
    return run, data, s, out


def test_the_step_stores_the_doubled_attacks_and_the_verdict(converged_run):
    run, _, s, out = converged_run
    path = run.convergence_path(0, "benign")
    stored = json.loads(path.read_text())
    assert stored["sentence"] == out["sentence"] and stored["n"] == s.images(run.profile.n_test)
    assert set(stored["attacks"]) >= {"pgd", "pgd-dlr"}
    pgd = stored["attacks"]["pgd"]
    assert (pgd["key_1x"], pgd["key_2x"], pgd["change"]) == ("pgd-5", "pgd-10", "steps 5 -> 10")
    rows = stored["rows"]
    assert rows[0]["passes per image"] < rows[1]["passes per image"] < rows[2]["passes per image"]
    rec = json.loads(run.eval_path(0, "benign").read_text())
    assert rows[0]["robust accuracy (%)"] == pytest.approx(rec["metrics"]["worst-case (all)"], abs=0.01)
    assert rows[2]["robust"] <= min(rows[0]["robust"], rows[1]["robust"])
    assert ("converged" in out["sentence"].lower()) == (stored["changed"] <= stored["tolerance"])


def test_the_step_resumes_without_running_a_stored_attack(converged_run, monkeypatch):
    run, data, s, out = converged_run
    path = run.convergence_path(0, "benign")
    stored = json.loads(path.read_text())
    del stored["attacks"]["pgd-dlr"]        # as if interrupted before PGD-DLR at twice the budget
    path.write_text(json.dumps(stored))
    ran = []
    real = step.evaluate_any

    def spy(model, x, y, s2, seed, dev, progress, skip, desc):
        ran.append(desc)
        return real(model, x, y, s2, seed, dev, progress, skip, desc)
    monkeypatch.setattr(step, "evaluate_any", spy)
    (again,) = step.convergence_run(run, 0, data, s, which="benign", progress=False)
    assert ran == ["twice the budget: PGD-DLR"]
    assert again["attacks"]["pgd"]["correct_2x"] == out["attacks"]["pgd"]["correct_2x"]
    ran.clear()
    step.convergence_run(run, 0, data, s, which="benign", progress=False)
    assert ran == [], "nothing is recomputed once stored"


def test_the_report_shows_the_curve_and_the_verdict(converged_run):
    run, data, _, out = converged_run
    written = report_run(run, data=data)
    md = (run.report_dir / "report.md").read_text()
    assert "## Has the worst case converged? Robust accuracy against attack compute" in md
    assert out["sentence"] in md and "| 2x (twice it) |" in md
    assert written["convergence.html"].exists() and "plotly" in written["convergence.html"].read_text()[:5000].lower()


def test_the_cli_runs_the_step_on_a_run(converged_run, monkeypatch, capsys):
    run, *_ = converged_run
    monkeypatch.setenv("DWF_RUNS_DIR", str(run.root.parent))
    assert main(["convergence", "--run", run.name, "--model", "benign", "--quiet",
                 "--set", "n_train=64"]) == 0
    assert "ResNet-18 seed 0: " in capsys.readouterr().out


def test_notebook_06_shows_the_curve_and_the_verdict_in_one_call(converged_run):
    run, data, s, out = converged_run
    md, fig = battery.convergence(run, 0, data, s, which="benign")
    assert "| 1x (the profile's budget) |" in md and out["sentence"] in md
    assert [t.name for t in fig.data] == ["ResNet-18"] and len(fig.data[0].x) == 3
