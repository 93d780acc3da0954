"""Each kind of thing lives in one place: a recipe and an adaptive attack are each one registration.

A toy recipe registered here (and nowhere else) trains, is priced by the cost banner, gets its
label in the banner and its sentence on the model card; a toy attack registered here runs in the
adaptive evaluation, is priced, shows as a column in notebook 06's table and enters the per-example
worst case (or stays out of it when it says so). A stage whose recipe has no cost model does not
stop any notebook's setup.
"""
import dataclasses

import pytest
import torch

from dwf_lab.core.config import get_profile
from dwf_lab.course import cost
from dwf_lab.course.banner import _kind_label
from dwf_lab.course.plan import Step, inventory
from dwf_lab.evaluation import keys as K
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_adaptive
from dwf_lab.evaluation.metrics import WORST, worst_case_keys
from dwf_lab.evaluation.suite import ATTACKS, AdaptiveAttack, column_label, register_attack, unregister_attack
from dwf_lab.reporting.model_cards import _how_trained
from dwf_lab.reporting.tables import adaptive_keys, comparison_rows
from dwf_lab.store.runs import Run
from dwf_lab.training import recipes
from dwf_lab.training.builders import build_expert, load_data, stage_arch
from dwf_lab.training.loop import train_stage
from dwf_lab.training.stages import Stage
from tests.tinymodels import tiny_trained

EPS = 8 / 255


# ------------------------------------------------------------------ recipe --
def _noisy_batch(model, x, y, p, gen, gen_dev):
    """Gaussian noise of std eps on every image: a toy 'augmentation' recipe."""
    noise = torch.randn(x.shape, generator=gen_dev, device=x.device) * p.pgd_eps
    return (x + noise).clamp(0, 1), y


@pytest.fixture
def toy_recipe():
    r = recipes.register_recipe("toy_noise", _noisy_batch, passes=lambda p: 1.25,
                                label=("the toy noise expert", "toy noise experts"),
                                card="training on clean images plus Gaussian noise of std eps (a toy)",
                                attacks=lambda p: f"none; Gaussian noise of std {p.pgd_eps:.4f}")
    yield r
    recipes.RECIPES.pop("toy_noise", None)


def test_a_toy_recipe_trains_is_priced_labelled_and_described(toy_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    p = get_profile("smoke", expert_epochs=1)
    data = load_data(p)
    run = Run("toy", p)
    stage = Stage("toy-1", "toy_noise", 1, p.expert_batch, "Toy expert")
    assert stage_arch(p, data, stage)[0] == "resnet18"                 # its model: one ResNet-18
    torch.manual_seed(0)
    model = build_expert(p, data)
    before = [q.detach().clone() for q in model.parameters()]
    train_stage(model, data, stage, p, seed=0, ckpt_dir=run.ckpt_dir(0, stage.name),
                final_path=run.model_path(0, stage.name), progress=False, log=run.logger(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))      # it trained
    # the cost banner prices it from the recipe's own passes
    est = cost.Estimator(p, data, inventory(run), "cpu", 1)
    c = est.cost(Step("train", stage.name, 0, False, stage=stage, kind=stage.kind))
    images = len(data.x_train) // p.expert_batch * p.expert_batch
    assert c.seconds == pytest.approx(images * 1.25 * c.rate.seconds_per_pass)
    assert _kind_label("toy_noise", 1) == "the toy noise expert" and _kind_label("toy_noise", 3) == "3 toy noise experts"
    card = "\n".join(_how_trained(run, 0, stage, {}, data.name))
    assert "Gaussian noise of std eps (a toy)" in card and f"std {p.pgd_eps:.4f}" in card


def test_a_stage_without_a_cost_model_never_stops_a_notebook_setup(tmp_path, monkeypatch):
    """The PGD experts' recipe loses its cost model after pgd-1 trained: every notebook's setup
    still runs, and its banner says 'no estimate' where it cannot price a step."""
    from dwf_lab.course.setup import setup_notebook
    from dwf_lab.pipeline.reproduce import train_run
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    p = get_profile("smoke")
    data = load_data(p)
    train_run(Run("unknown", p), 0, data, "benign,pgd-1", progress=False)
    monkeypatch.setitem(recipes.RECIPES, "pgd", dataclasses.replace(recipes.RECIPES["pgd"], passes=None))
    monkeypatch.setitem(recipes.RECIPES, "fgsm", dataclasses.replace(recipes.RECIPES["fgsm"], passes=None))
    for nb in ("00", "01", "02", "03", "04", "05", "06", "07", "08"):
        ctx = setup_notebook(p, "unknown", notebook=nb, verbose=False)
        assert ctx.banner is not None, nb
    b = setup_notebook(p, "unknown", notebook="02", verbose=False).banner
    assert "no estimate" in b.text() and "without a cost model not counted" in b.text()


# ------------------------------------------------------------------ attack --
def _noise_attack(b):
    """Uniform sign noise at eps: per-example correctness (a weak toy attack)."""
    g = b.gen(901)
    delta = (torch.randint(0, 2, b.x.shape, generator=g, device=b.x.device) * 2 - 1) * b.s.eps
    with torch.no_grad():
        return b.model((b.x + delta).clamp(0, 1)).argmax(1) == b.y


@pytest.fixture
def toy_attacks():
    for name, in_worst in (("toy-noise", True), ("toy-off", False)):
        register_attack(AdaptiveAttack(
            name, name.upper(), "random sign noise at eps", key=lambda s, n=name: n,
            settings=lambda s, seed: {"attack": "sign noise (a toy)"}, run=_noise_attack,
            work=lambda s, m, robust: 7.0 * m, worst_case=in_worst, iterate="any"))
    yield
    unregister_attack("toy-noise")
    unregister_attack("toy-off")


def test_a_toy_attack_runs_is_priced_tabled_and_counted_in_the_worst_case(toy_attacks):
    model, data = tiny_trained(0)
    x, y = data.x_test[:64], data.y_test[:64]
    s = AdaptiveSettings.smoke(dlr=False, routing=False, transfer=False, long_steps=0, autoattack=False,
                               pgd_steps=2)
    assert s.attack_names(False) == ["pgd-2", "toy-noise", "toy-off"]
    metrics, correct, info = evaluate_adaptive(model, x, y, s, progress=False, return_info=True)
    assert {"toy-noise", "toy-off"} <= set(metrics)
    assert info["attack_settings"]["toy-noise"]["attack"] == "sign noise (a toy)"
    # the worst case counts the toy attack and leaves out the one that says it stays out
    assert worst_case_keys(correct, EPS) == ["SA", "pgd-2", "toy-noise"]
    assert torch.equal(correct[WORST], correct["SA"] & correct["pgd-2"] & correct["toy-noise"])
    # priced by its own work, and a column of notebook 06's table with its label
    assert cost.attack_work("toy-noise", s, "benign", get_profile("smoke"), 10) == pytest.approx(70.0)
    assert adaptive_keys(list(metrics)) == ["pgd-2", "toy-noise", "toy-off"]
    rows, cols = comparison_rows([{"model": "benign", "row": "ResNet-18", "seed": 0, "metrics": metrics}])
    assert "toy-noise" in cols and rows[0]["toy-noise"] == metrics["toy-noise"]
    assert column_label("toy-noise") == "TOY-NOISE" and column_label("pgd-2") == "PGD-2"
    assert "toy-noise" in ATTACKS


def test_metric_keys_have_one_parser_and_one_formatter():
    for text in ("SA", "fgsm:0.03", "pgd:20", "pgd:100-ms", "pgd:100-a", "pgd-20", "pgd-500x5",
                 "worst-case", WORST, "routing"):
        assert K.parse(text).text == text
    assert K.parse(K.fgsm(0.03)).eps == 0.03 and K.parse(K.pgd(100, "ms")).variant == "ms"
    assert K.label("pgd:20") == K.label("pgd-20") == "PGD-20"        # one attack, one label
    assert K.parse("pgd-500x5").restarts == 5 and K.parse(WORST).derived
    assert [k.text for k in K.of(["pgd:50", "pgd:10", "pgd:100-ms", "fgsm:0.02"], "pgd")] == ["pgd:10", "pgd:50"]
    with pytest.raises(ValueError, match="non-empty"):
        K.parse("")
