"""Adaptive attacks, the ART bridge, diagnostics and the run integration, on tiny models.

Tiny CIFAR ResNet-18s (width 1/16) trained for a few seconds on generated data:
clean accuracy near 100 %, so the attacks have something to take away.
"""
import dataclasses
import importlib.util
import json
import sys

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.attacks.art_suite import ARTUnavailableError, apgd, art_pgd, available, correctness, square
from dwf_lab.attacks.gate import long_pgd, routing_loss, routing_pgd, transfer_attack, uniform_mixture
from dwf_lab.core.config import get_profile
from dwf_lab.data import load_dataset
from dwf_lab.evaluation import adaptive as ev_adaptive
from dwf_lab.evaluation.adaptive import AdaptiveSettings, _run_batch, evaluate_adaptive, routing_sweep
from dwf_lab.evaluation.checklist import ChecklistSettings
from dwf_lab.evaluation.diagnostics import (
    DiagnosticSettings,
    class_probabilities,
    diagnose_mixture,
    gate_weights,
    logit_scale,
    predictions,
    transfer_matrix,
)
from dwf_lab.evaluation.metrics import WORST, unpack_bits, worst_case_keys
from dwf_lab.evaluation.records import key_n, stored_correct
from dwf_lab.mixture.moe import MixtureOfExperts
from dwf_lab.models.registry import build_model
from dwf_lab.pipeline import adaptive as pipe_adaptive
from dwf_lab.pipeline.adaptive import evaluate_adaptive_run, stored_autoattack_is_standard
from dwf_lab.pipeline.reproduce import evaluate_run
from dwf_lab.pipeline.run_all import report_run
from dwf_lab.reporting.figures import expert_accuracy_bar, transfer_heatmap, weights_bar
from dwf_lab.reporting.readings import adaptive_reading, gate_reading
from dwf_lab.reporting.tables import autoattack_stage_rows, build_tables, comparison_rows
from dwf_lab.store.checkpoints import save_model
from dwf_lab.store.runs import Run

EPS, ALPHA = 4 / 255, 1 / 255
from tinymodels import tiny_trained  # noqa: E402  (tests/ is on sys.path)

_no_art = pytest.mark.skipif(importlib.util.find_spec("art") is None,
                             reason="adversarial-robustness-toolbox not installed")
_art_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # ART's numpy-2 shims


def needs_art(fn):
    return _no_art(_art_warnings(fn))


needs_aa = pytest.mark.skipif(importlib.util.find_spec("pyautoattack") is None, reason="pyautoattack not installed")


def tiny_mixture(n_experts: int = 2, seed: int = 0) -> MixtureOfExperts:
    """Trained experts (copies of tiny_trained models) behind an untrained gate."""
    torch.manual_seed(seed + 10)
    mix = build_model("dwf_mixture", n_experts=n_experts, width=0.0625, dataset="synthetic", gate_hidden=16)
    for i, e in enumerate(mix.experts):
        e.load_state_dict(tiny_trained(i % 2)[0].state_dict())
    return mix.eval()


def tiny_settings(**kw) -> AdaptiveSettings:
    kw = {"eps": EPS, "alpha": ALPHA, "pgd_steps": 4, "long_steps": 6, "long_restarts": 2, "aa_iter": 3,
          "aa_targets": 1, "aa_queries": 5, "square_queries": 5, **kw}
    return AdaptiveSettings.smoke(**kw)


# ------------------------------------------------------------ ART bridge --
@needs_art
def test_our_pgd_agrees_with_art_pgd():
    model, data = tiny_trained(0)
    x, y = data.x_test, data.y_test           # 200 images
    eps, alpha, steps = 2 / 255, 0.5 / 255, 10
    ours = attacks.pgd(model, x, y, eps, alpha, steps, random_start=False)
    with torch.no_grad():
        acc_ours = 100 * (model(ours).argmax(1) == y).float().mean().item()
    acc_art = 100 * art_pgd(model, x, y, eps, alpha, steps, random_start=False).float().mean().item()
    clean = 100 * attacks.accuracy(model, x, y)
    assert acc_ours < clean - 3, "the comparison needs an attack that changes something"
    assert abs(acc_ours - acc_art) <= 1.0, (acc_ours, acc_art)


@needs_art
def test_art_attacks_return_checked_per_example_correctness():
    model, data = tiny_trained(0)
    x, y = data.x_test[:24], data.y_test[:24]
    clean = attacks.correct_mask(model, x, y)   # eval mode, whatever an earlier test left
    sq = square(model, x, y, EPS, max_iter=5)
    assert sq.dtype == torch.bool and sq.shape == (24,)
    assert not (sq & ~clean).any(), "an attack only counts images that are correct when clean"
    pgd_rs = art_pgd(model, x, y, EPS, ALPHA, 3, random_start=True, restarts=2)
    apgd_dlr = apgd(model, x, y, EPS, loss="dlr", n_iter=3)
    assert pgd_rs.shape == apgd_dlr.shape == (24,)
    # the threat model is enforced on whatever comes back
    with pytest.raises(AssertionError, match="eps-ball"):
        correctness(model, (x + 2 * EPS).clamp(0, 1), x, y, EPS)
    with pytest.raises(AssertionError, match=r"\[0, 1\]"):
        correctness(model, x - 1e-3, x, y, EPS)


def test_missing_art_gives_one_clear_error(monkeypatch):
    for name in ("art", "art.attacks", "art.attacks.evasion", "art.estimators",
                 "art.estimators.classification"):
        monkeypatch.setitem(sys.modules, name, None)
    model, data = tiny_trained(0)
    with pytest.raises(ARTUnavailableError, match="pip install adversarial-robustness-toolbox"):
        square(model, data.x_test[:4], data.y_test[:4], EPS, max_iter=2)
    assert not available()


# -------------------------------------------------------- mixture attacks --
def test_routing_loss_pushes_weight_onto_the_target_expert():
    mix = tiny_mixture(2)
    _, data = tiny_trained(0)
    x, y = data.x_test[:48], data.y_test[:48]
    with torch.no_grad():
        target = int(mix.gate_weights(x).mean(0).argmin())   # the expert the gate likes least
    plain = attacks.pgd(mix, x, y, EPS, ALPHA, 8)
    routed = attacks.pgd(mix, x, y, EPS, ALPHA, 8, loss=routing_loss(target, lam=1.0))
    with torch.no_grad():
        w_plain = mix.gate_weights(plain)[:, target].mean().item()
        w_routed = mix.gate_weights(routed)[:, target].mean().item()
    assert w_routed > w_plain + 0.02, (w_plain, w_routed)
    # the evaluation's balanced routing attack steers the gate too, and breaks images (at a
    # larger eps: at 8/255 this tiny mixture keeps every image on some CPUs' arithmetic)
    last, kept = routing_pgd(mix, x, y, target, 1.0, 4 * EPS, 4 * ALPHA, 8, True,
                                       torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert mix.gate_weights(last)[:, target].mean().item() > w_plain + 0.02
        assert kept.dtype == torch.bool and not (kept & (mix(last).argmax(1) != y)).any()
        assert kept.float().mean() < (mix(x).argmax(1) == y).float().mean()
    rows = routing_sweep(mix, x, y, target, lams=(0.0, 1.0),
                                  settings=tiny_settings(), seed=0)
    assert [r["inputs"] for r in rows] == ["clean", "PGD-4", "PGD-4, routing lam=1"]
    assert rows[2]["weight on target"] > rows[1]["weight on target"]
    # a model without a gate gets plain cross-entropy
    model = tiny_trained(0)[0]
    assert torch.allclose(routing_loss(0)(model, x, y), attacks.ce_loss(model, x, y))
    with pytest.raises(ValueError, match="target_expert"):
        routing_loss(5)(mix, x, y)


def test_uniform_average_shares_experts_and_leaves_the_mixture_untouched():
    mix = tiny_mixture(3)
    mix.set_frozen(True)
    mix.train()
    flags = [p.requires_grad for p in mix.parameters()]
    modes = [m.training for m in mix.modules()]
    uni = uniform_mixture(mix)
    assert [p.requires_grad for p in mix.parameters()] == flags
    assert [m.training for m in mix.modules()] == modes
    assert uni.experts[0] is mix.experts[0]
    mix.eval()
    x = tiny_trained(0)[1].x_test[:8]
    with torch.no_grad():
        expected = torch.stack([f(x) for f in mix.experts]).mean(0)
        assert torch.allclose(uni(x), expected, atol=1e-5)


class _Louder(torch.nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.factor * self.model(x)


def test_logit_scale_measures_how_loudly_a_member_speaks_in_a_plain_average():
    a, data = tiny_trained(0)
    b = tiny_trained(1)[0]
    x = data.x_test[:32]
    loud = _Louder(b, 100.0)
    loud.train()
    scale = logit_scale({"a": a, "b": b, "loud b": loud}, x)
    assert loud.training                                     # the mode is restored
    assert scale["loud b"]["logit_std"] == pytest.approx(100 * scale["b"]["logit_std"], rel=1e-4)
    assert scale["loud b"]["top_prob"] >= scale["b"]["top_prob"]
    # in a plain average of logits the loud member decides every prediction
    avg = MixtureOfExperts([a, loud], None, routing="uniform").eval()
    preds = predictions({"avg": avg, "b": b}, x)
    assert torch.equal(preds["avg"], preds["b"])


def test_transfer_is_weaker_than_white_box():
    source, data = tiny_trained(0)
    target, _ = tiny_trained(1)
    x, y = data.x_test[:96], data.y_test[:96]
    g = torch.Generator().manual_seed(0)
    transfer = transfer_attack(source, target, x, y, EPS, ALPHA, 8, generator=g)
    white = transfer_attack(target, target, x, y, EPS, ALPHA, 8,
                                     generator=torch.Generator().manual_seed(0))
    assert transfer.float().mean() >= white.float().mean()
    # long PGD is never weaker than its own first restart would be on average
    long = long_pgd(target, x, y, EPS, ALPHA, steps=8, restarts=2,
                             generator=torch.Generator().manual_seed(0))
    assert long.float().mean() <= white.float().mean() + 0.03


@needs_aa
@needs_art
def test_worst_case_is_below_every_attack():
    mix = tiny_mixture(2)
    _, data = tiny_trained(0)
    x, y = data.x_test[:32], data.y_test[:32]
    s = tiny_settings(square=True)
    metrics, correct = evaluate_adaptive(mix, x, y, s, progress=False)
    assert list(metrics) == s.metric_names(mixture=True)
    assert {"pgd-4", "pgd-dlr", "routing", "transfer-best", "pgd-6x2", "autoattack", "square",
            "worst-case (all)"} <= set(metrics)
    wc = metrics[WORST]
    for k, v in metrics.items():
        assert wc <= v + 1e-9, k
        assert correct[k].shape == (32,)
    assert torch.equal(correct[WORST],
                       torch.stack([correct[k] for k in metrics if k != WORST]).all(0))
    # a single network gets no gate-aware keys
    single = evaluate_adaptive(tiny_trained(0)[0], x, y, tiny_settings(autoattack=False, square=False),
                                        progress=False)[0]
    assert "routing" not in single and "transfer-best" not in single and WORST in single


def test_settings_sizes_and_keys():
    s = AdaptiveSettings.from_profile(get_profile("smoke"))
    assert s.name == "smoke" and s.long_key == f"pgd-{s.long_steps}x{s.long_restarts}"
    p = AdaptiveSettings.paper()
    assert (p.pgd_key, p.long_key) == ("pgd-20", "pgd-500x5")
    assert p.metric_names(True) == ["SA", "pgd-20", "pgd-dlr", "routing", "transfer-best", "pgd-500x5",
                                    "autoattack", "fixed-gate", "gated-margin", "routing-dlr", "worst-case (all)"]
    assert "routing" not in p.metric_names(False) and "fixed-gate" not in p.metric_names(False)
    assert p.attack_names("soe")[-1] == "soe-transfer" and p.attack_names("advmoe")[-1] == "route-fixed"
    assert p.attack_settings("autoattack", 0)["standard"] is True     # the paper size: the standard suite
    assert s.attack_settings("autoattack", 0)["standard"] is False    # smoke: a reduced budget, said so
    with pytest.raises(ValueError, match="aa_version"):
        AdaptiveSettings(aa_version="plus")


# ------------------------------------------------------------ diagnostics --
def test_diagnostics_of_a_mixture():
    mix = tiny_mixture(3)
    _, data = tiny_trained(0)
    s = DiagnosticSettings.smoke(eps=EPS, alpha=ALPHA, steps=2, n_examples=16)
    names = ["benign", "fgsm-1", "pgd-1"]
    mix.train()
    d = diagnose_mixture(mix, data.x_test, data.y_test, s, names=names)
    assert mix.training and all(m.training for m in mix.modules())   # modes left as found
    assert [r["expert"] for r in d["experts"]] == names + ["mixture"]
    assert set(d["gate"]["inputs"]) == {"clean", "fgsm", "pgd"}
    assert [r["inputs"] for r in d["gate"]["rows"]] == ["clean", f"FGSM {s.fgsm_eps:.3f}", "PGD-2"]
    for st in d["gate"]["inputs"].values():
        assert abs(sum(st["mean_weights"]) - 1) < 1e-4
        assert 0 <= st["entropy"] <= d["gate"]["max_entropy"] + 1e-6
        assert len(st["expert_accuracy"]) == 3 and set(st["group_weight"]) == {"benign", "fgsm", "pgd"}
        assert abs(sum(st["group_weight"].values()) - 1) < 1e-4
    clean = d["gate"]["inputs"]["clean"]
    assert clean["expert_accuracy"][0] == d["experts"][0]["clean"]
    assert clean["accuracy"] == d["experts"][-1]["clean"]
    assert "PGD-2 inputs" in gate_reading(d["gate"])
    tm = torch.tensor(d["transfer"]["accuracy"])
    assert tm.shape == (5, 5) and d["transfer"]["sources"][-2:] == ["uniform average", "mixture"]
    assert transfer_heatmap(tm, d["transfer"]["sources"]).data[0].type == "heatmap"
    assert len(weights_bar(d["gate"]).data) == 3
    assert len(expert_accuracy_bar(d["experts"]).data) == 2
    fg = transfer_matrix(dict(zip(names, mix.experts)), data.x_test, data.y_test, "fgsm", s)
    assert fg.shape == (3, 3) and mix.training
    mix.eval()
    x = data.x_test[:8]
    assert torch.allclose(gate_weights(mix, x, batch_size=3), mix.gate_weights(x).detach())
    assert torch.allclose(class_probabilities(mix, x).sum(1), torch.ones(8))


# ------------------------------------------------------- run integration --
def tiny_run(root, mixture: bool = True):
    """A smoke-sized run on synthetic data with a trained tiny benign model (and a one-expert
    mixture around it), evaluated under the paper's protocol. Returns (run, data)."""

    p = get_profile("smoke", n_fgsm_experts=0, n_pgd_experts=0, baselines=False, n_test=24,
                    eval_fgsm_eps=(0.03,), eval_pgd_steps=(2,), eval_long_steps=3, eval_restarts=1,
                    device="cpu", pgd_eps=EPS, eval_pgd_alpha=ALPHA)   # the run's threat model = the tests'
    run = Run("adaptive-test", p, root=root)
    model, _ = tiny_trained(0)
    data = load_dataset("synthetic", n_train=16, n_test=24)
    save_model(run.model_path(0, "benign"), model)
    if mixture:
        mix = build_model("dwf_mixture", n_experts=1, width=0.0625, dataset="synthetic", gate_hidden=8)
        mix.experts[0].load_state_dict(model.state_dict())
        save_model(run.model_path(0, "mixture"), mix)
    evaluate_run(run, 0, data, which=None if mixture else "benign", progress=False)
    return run, data


def test_evaluate_adaptive_run_merges_and_is_idempotent(tmp_path, monkeypatch):

    run, data = tiny_run(tmp_path / "run")

    s = tiny_settings(autoattack=False, square=False)
    cs = ChecklistSettings.smoke(eps=EPS, alpha=ALPHA, steps=2, long_steps=3, long_restarts=1,
                                 eps_grid=(EPS, 0.3), eps_grid_steps=2, n_examples=8)
    evaluate_adaptive_run(run, 0, data, s, progress=False, checklist_settings=cs)
    rec = json.loads(run.eval_path(0, "mixture").read_text())
    for k in ["pgd-4", "pgd-dlr", "routing", "transfer-best", "pgd-6x2", WORST]:
        assert k in rec["metrics"] and k in rec["per_example"], k
    assert "routing" not in json.loads(run.eval_path(0, "benign").read_text())["metrics"]
    n = rec["n_test"]
    wc = unpack_bits(rec["per_example"][WORST], n)
    for k in worst_case_keys(rec["per_example"], EPS):     # every attack inside the run's eps ball
        assert not (wc & ~unpack_bits(rec["per_example"][k], n)).any(), k
        assert rec["metrics"][WORST] <= rec["metrics"][k] + 1e-9
    assert "fgsm:0.03" not in worst_case_keys(rec["per_example"], EPS)   # a larger ball: not pooled
    assert rec["metrics"][WORST] <= rec["metrics"]["worst-case"]
    for stage in ("benign", "mixture"):
        md = run.report_dir / f"checklist_{stage}_seed0.md"
        assert md.exists() and "| # | check | result | evidence |" in md.read_text()
        assert json.loads(md.with_suffix(".json").read_text())["items"]

    # the last check is read off the stored attacks: PGD against the worst case over all of them
    saved = json.loads((run.report_dir / "checklist_mixture_seed0.json").read_text())
    last = saved["items"][-1]
    assert last["key"] == "pgd-vs-worst-case" and last["passed"] is not None
    assert last["evidence"]["worst_case_all"] == round(rec["metrics"][WORST], 2)

    # idempotent: nothing stored is recomputed, the stored-result checks are refreshed, not repeated
    monkeypatch.setattr(ev_adaptive, "_evaluate", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(pipe_adaptive, "run_checklist", lambda *a, **k: pytest.fail("checklist rerun"))
    evaluate_adaptive_run(run, 0, data, s, progress=False, checklist_settings=cs)
    assert json.loads(run.eval_path(0, "mixture").read_text())["metrics"] == rec["metrics"]
    again = json.loads((run.report_dir / "checklist_mixture_seed0.json").read_text())
    assert [it["key"] for it in again["items"]] == [it["key"] for it in saved["items"]]
    # a damaged checklist is refused with what to do, and left as it is
    js = run.report_dir / "checklist_benign_seed0.json"
    js.write_text("{not json")
    with pytest.raises(ValueError, match="delete it"):
        evaluate_adaptive_run(run, 0, data, s, progress=False, checklist_settings=cs)
    assert js.read_text() == "{not json"
    js.write_text(json.dumps(saved | {"model": "benign", "row": "ResNet-18"}))
    # the report puts the new keys into its "Beyond the paper" table
    beyond = build_tables([json.loads(run.eval_path(0, st).read_text()) for st in ("benign", "mixture")])["beyond"]
    assert WORST in beyond["columns"] and "routing" in beyond["columns"]
    # and the run's report shows the checklists: a row per check, a column per model
    report_run(run)
    md = (run.report_dir / "report.md").read_text()
    assert "## Gradient-masking checklist" in md and "BatchNorm runs in eval mode during attacks" in md
    secs = json.loads((run.report_dir / "report.json").read_text())["sections"]
    sec = next(x for x in secs if x["title"].startswith("Gradient-masking checklist"))
    assert sec["columns"][0] == "check" and len(sec["columns"]) == 3
    assert all(c in ("✅", "❌", "➖") for row in sec["rows"] for c in row[1:])
    assert "<h2>Gradient-masking checklist" in (run.report_dir / "report.html").read_text()


def test_attacks_on_the_first_images_only_are_stated_and_pooled_on_those_images(tmp_path):
    # a profile may run the adaptive attacks on the first N test images only: each result says so,
    # the worst case over all attacks covers exactly those N, and the paper's columns keep all images
    run, data = tiny_run(tmp_path / "run", mixture=False)
    before = json.loads(run.eval_path(0, "benign").read_text())
    s = tiny_settings(autoattack=False, dlr=False, long_steps=0, n_examples=10)
    evaluate_adaptive_run(run, 0, data, s, progress=False, which="benign", checklist=False)
    rec = json.loads(run.eval_path(0, "benign").read_text())
    n = rec["n_test"]
    assert n == 24 and rec["per_example_n"] == {"pgd-4": 10, WORST: 10}
    assert key_n(rec, "pgd-4") == 10 and key_n(rec, "SA") == 24 and key_n(rec, "pgd:2") == 24
    assert rec["attack_settings"]["pgd-4"]["n"] == 10
    for k in before["metrics"]:                                    # the paper's columns: untouched
        assert rec["metrics"][k] == before["metrics"][k] and rec["per_example"][k] == before["per_example"][k]
    pgd = stored_correct(rec, "pgd-4")
    assert len(pgd) == 10 and rec["metrics"]["pgd-4"] == pytest.approx(100 * pgd.float().mean().item())
    # the attack ran only on clean-correct images: a wrong clean image is wrong under the attack too
    sa = stored_correct(rec, "SA")[:10]
    assert not (pgd & ~sa).any()
    wc = stored_correct(rec, WORST)
    want = torch.stack([stored_correct(rec, k)[:10] for k in worst_case_keys(rec["per_example"], EPS)]).all(0)
    assert torch.equal(wc, want)
    # the shareable entry and the tables give each number its own count
    assert build_tables([rec])["meta"]["adaptive_images"] == [10]
    rows = comparison_rows([rec])[0]
    assert rows[0]["images (paper / adaptive)"] == "24 / 10"
    assert "the strongest single attack is" in adaptive_reading(rows)   # the text column is no accuracy
    # asking for another number of images is refused with the difference, and nothing changes
    stored = run.eval_path(0, "benign").read_text()
    with pytest.raises(ValueError, match=r"n 10 \(stored\) vs 24 \(asked\)"):
        evaluate_adaptive_run(run, 0, data, dataclasses.replace(s, n_examples=None), progress=False,
                              which="benign", checklist=False)
    assert run.eval_path(0, "benign").read_text() == stored


def test_a_bad_number_of_attacked_images_is_one_line():
    with pytest.raises(ValueError, match="n_examples must be a number of test images >= 1"):
        tiny_settings(n_examples=0)


@needs_aa
def test_redo_reruns_only_the_named_attack_and_records_autoattacks_stages(tmp_path, monkeypatch):
    run, data = tiny_run(tmp_path / "run", mixture=False)
    s = tiny_settings(long_steps=0)
    evaluate_adaptive_run(run, 0, data, s, progress=False, which="benign", checklist=False)
    rec = json.loads(run.eval_path(0, "benign").read_text())
    # the official suite's robust accuracy after each attack: from clean down to the stored number
    st = rec["autoattack_stages"]
    assert list(st) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    vals = list(st.values())
    assert vals[0] == pytest.approx(rec["metrics"]["SA"], abs=0.01)
    assert all(b <= a + 1e-9 for a, b in zip(vals, vals[1:]))
    assert vals[-1] == pytest.approx(rec["metrics"]["autoattack"], abs=0.01)
    aa = rec["attack_settings"]["autoattack"]
    assert aa["standard"] is False and aa["n"] == rec["n_test"] and aa["pyautoattack"] == "0.2.0"
    # ... and the run's report shows them, labelled as what they are
    report_run(run)
    md = (run.report_dir / "report.md").read_text()
    assert "## AutoAttack (the official suite) stage by stage (%)" in md
    assert "AutoAttack (official standard, reduced budget: NOT the standard suite)" in md
    soe = {"row": "SoE", "seed": 0, "metrics": {"autoattack": 30.0},
           "attack_settings": {"autoattack": {**aa, "standard": True}},
           "autoattack_stages": {"hard": {"clean": 45.0, "apgd-ce": 30.0}, "bpda": {"clean": 45.0}}}
    rows = autoattack_stage_rows([rec, soe])
    assert [r["model"] for r in rows] == ["ResNet-18", "SoE (hard gradient)", "SoE (bpda gradient)"]
    assert rows[1]["apgd-ce"] == 30.0 and "square" not in rows[2]
    assert rows[1]["suite"] == "AutoAttack (official, standard)" and "reduced budget" in rows[0]["suite"]

    # --redo autoattack: only AutoAttack runs again, and its new bits replace the old ones
    seen = []
    real = _run_batch

    def spy(model, xb, yb, s_, want, *a):
        seen.append({a.key(s_) for a in want})
        return real(model, xb, yb, s_, want, *a)
    monkeypatch.setattr(ev_adaptive, "_run_batch", spy)
    before = rec["per_example"]["autoattack"]
    rec["per_example"]["autoattack"] = "00" * len(bytes.fromhex(before))     # as if stored wrong
    rec["metrics"]["autoattack"] = 0.0
    run.eval_path(0, "benign").write_text(json.dumps(rec))
    evaluate_adaptive_run(run, 0, data, s, progress=False, which="benign", checklist=False,
                                   redo=("autoattack",))
    assert seen and all(w == {"autoattack"} for w in seen)
    after = json.loads(run.eval_path(0, "benign").read_text())
    assert after["per_example"]["autoattack"] == before      # same seeds: the same result again
    assert after["metrics"]["pgd-4"] == rec["metrics"]["pgd-4"]
    # an attack the kit does not have is refused before anything runs
    with pytest.raises(ValueError, match="cannot redo"):
        evaluate_adaptive_run(run, 0, data, s, progress=False, which="benign", redo=("pgd-7",))


@needs_aa
def test_a_result_is_never_relabelled_with_settings_it_was_not_computed_with(tmp_path, monkeypatch):
    run, data = tiny_run(tmp_path / "run", mixture=False)
    small = tiny_settings(dlr=False, long_steps=0)
    evaluate_adaptive_run(run, 0, data, small, progress=False, which="benign", checklist=False)
    path = run.eval_path(0, "benign")
    stored = path.read_text()
    rec = json.loads(stored)
    assert rec["attack_settings"]["pgd-4"]["steps"] == 4 and rec["attack_settings"]["autoattack"]["budget"][
        "apgd_iter"] == 3
    # a bigger AutoAttack budget asked after the smaller one: refused, with what differs and how to redo it
    bigger = dataclasses.replace(small, aa_iter=6)
    with pytest.raises(ValueError) as err:
        evaluate_adaptive_run(run, 0, data, bigger, progress=False, which="benign", checklist=False)
    msg = str(err.value)
    assert "'autoattack'" in msg and "budget.apgd_iter 3 (stored) vs 6 (asked)" in msg and "--redo autoattack" in msg
    assert "\n" not in msg and path.read_text() == stored, "nothing changed, nothing ran"
    # with --redo it is recomputed and stored with the settings it was computed with
    seen = []
    real = _run_batch
    monkeypatch.setattr(ev_adaptive, "_run_batch", lambda m, xb, yb, s_, want, *a: seen.append({a.key(s_) for a in want}) or
                        real(m, xb, yb, s_, want, *a))
    evaluate_adaptive_run(run, 0, data, bigger, progress=False, which="benign", checklist=False, redo=("autoattack",))
    assert seen and all(w == {"autoattack"} for w in seen)
    after = json.loads(path.read_text())
    assert after["attack_settings"]["autoattack"]["budget"]["apgd_iter"] == 6
    assert after["attack_settings"]["pgd-4"] == rec["attack_settings"]["pgd-4"]
    # another eps-preserving change (PGD's step) is caught too, for the key it concerns
    with pytest.raises(ValueError, match=r"'pgd-4'.*alpha"):
        evaluate_adaptive_run(run, 0, data, dataclasses.replace(bigger, alpha=ALPHA / 2), progress=False,
                              which="benign", checklist=False)
    # results an older dwf-lab stored without their settings are refused, not taken for the new suite,
    # all of them named at once with the one command that recomputes them
    del after["attack_settings"]
    path.write_text(json.dumps(after))
    with pytest.raises(ValueError, match=r"'pgd-4' result .*no recorded settings.*1 more stored result.*"
                                         r"--redo pgd-4,autoattack "):
        evaluate_adaptive_run(run, 0, data, bigger, progress=False, which="benign", checklist=False)


@needs_aa
def test_replace_recomputes_a_key_only_where_its_stored_settings_differ(tmp_path, monkeypatch):
    """notebook 06's full scope: a bigger AutoAttack budget replaces a smaller stored one, once; the
    other keys are still refused when they differ; a run whose AutoAttack results are all the
    standard suite is asked for the standard suite again."""
    run, data = tiny_run(tmp_path / "run", mixture=False)
    small = tiny_settings(dlr=False, long_steps=0)
    evaluate_adaptive_run(run, 0, data, small, progress=False, which="benign", checklist=False)
    bigger = dataclasses.replace(small, aa_iter=6)
    with pytest.raises(ValueError, match=r"'pgd-4'.*alpha"):            # replace names autoattack only
        evaluate_adaptive_run(run, 0, data, dataclasses.replace(bigger, alpha=ALPHA / 2), progress=False,
                              which="benign", checklist=False, replace=("autoattack",))
    seen = []
    real = _run_batch
    monkeypatch.setattr(ev_adaptive, "_run_batch", lambda m, xb, yb, s_, want, *a: seen.append({a.key(s_) for a in want}) or
                        real(m, xb, yb, s_, want, *a))
    evaluate_adaptive_run(run, 0, data, bigger, progress=False, which="benign", checklist=False,
                          replace=("autoattack",))
    assert seen and all(w == {"autoattack"} for w in seen)
    path = run.eval_path(0, "benign")
    rec = json.loads(path.read_text())
    assert rec["attack_settings"]["autoattack"]["budget"]["apgd_iter"] == 6
    seen.clear()
    evaluate_adaptive_run(run, 0, data, bigger, progress=False, which="benign", checklist=False,
                          replace=("autoattack",))
    assert seen == [], "a stored result with the settings asked for is kept"
    assert not stored_autoattack_is_standard(run, 0, ["benign"])
    rec["attack_settings"]["autoattack"]["standard"] = True      # as --aa standard stores it
    path.write_text(json.dumps(rec))
    assert stored_autoattack_is_standard(run, 0, ["benign"]) and not stored_autoattack_is_standard(run, 0, [])


def test_attacks_at_another_eps_are_refused_not_pooled(tmp_path):
    run, data = tiny_run(tmp_path / "run", mixture=False)
    before = run.eval_path(0, "benign").read_text()
    with pytest.raises(ValueError, match="cannot pool two threat models"):
        evaluate_adaptive_run(run, 0, data, tiny_settings(eps=8 / 255), progress=False, which="benign",
                              checklist=False)
    assert run.eval_path(0, "benign").read_text() == before


def test_redo_knows_every_registered_attack_whatever_model_it_is_for():
    """--redo accepts the attacks made for one kind of model (SoE's transfer, ADVMoE's fixed route,
    the mixture's gate attacks) and still refuses a key no attack has."""
    from dwf_lab.pipeline.adaptive import check_redo
    s = AdaptiveSettings.smoke()
    check_redo(s, ["soe-transfer", "route-fixed", s.pgd_key])
    assert {"soe-transfer", "route-fixed"} <= set(s.every_attack_name())
    with pytest.raises(ValueError, match="cannot redo"):
        check_redo(s, ["pgd-7"])
