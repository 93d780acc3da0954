"""What notebooks 00 and 04 add to the kit, checked without running the notebooks.

- 00's case: the paper's claim (91.2 % clean, 64.7 % under PGD-20 for DWF on CIFAR-10) is read from
  the packaged tables, never typed;
- 00's linear warm-up: the check of the closed-form worst perturbation fails on each seeded
  mistake with its one-line name and passes on the reference; a logistic regression's ε‖w‖₁ grows
  with the input dimension, and the reading says so only when it did;
- 04 §3: the logit spread of the experts inside a mixture (a benign expert whose logits are scaled
  up is found k times wider, and the reading says "the weighted sum follows" only when the
  numbers support it); the trade-off reading says whether the mixture escapes its experts'
  trade-off, from the numbers.
"""
import pytest
import torch

from dwf_lab.course import analyses, exercises
from dwf_lab.course.exercises import ExerciseFailed
from dwf_lab.models.registry import build_model
from dwf_lab.reporting import figures, readings
from dwf_lab.reporting.paper import paper_value

EPS = 8 / 255


# ----------------------------------------------------------------- the case --
def test_the_claim_is_read_from_the_papers_tables():
    claim = readings.paper_claim("cifar10")
    assert claim["clean"] == paper_value("table2", "cifar10", "DWF", "SA")
    assert claim["pgd20"] == paper_value("table3", "cifar10", "DWF", "pgd:20")
    assert "91.2 %" in claim["text"] and "64.7 %" in claim["text"] and "CIFAR-10" in claim["text"]
    assert readings.paper_claim("cifar10-subset")["clean"] == claim["clean"]
    with pytest.raises(ValueError, match="no DWF row"):
        readings.paper_claim("mnist")


# ------------------------------------------------------- the linear model --
@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, generator=g), torch.tensor([1.0, -1.0, -1.0, 1.0])


def _seeded(w, y):
    ys = y[:, None]
    return {
        "wrong_sign": lambda w, y, e: e * y[:, None] * w.sign()[None, :],
        "label_ignored": lambda w, y, e: (-e * w.sign())[None, :].repeat(len(y), 1),
        "no_sign": lambda w, y, e: -e * y[:, None] * w[None, :],
        "no_eps": lambda w, y, e: -y[:, None] * w.sign()[None, :],
        "projection": lambda w, y, e: -2 * e * ys * w.sign()[None, :] * (w.abs() > 1)[None, :],
        "shape": lambda w, y, e: -e * w.sign(),
        "differs": lambda w, y, e: -e * y[:, None] * w.sign()[None, :] * (w.abs() > 0.5)[None, :],
    }


def test_the_linear_check_passes_the_closed_form(linear, capsys):
    w, y = linear
    assert exercises.check_linear_worst(1, lambda w, y, e: -e * y[:, None] * w.sign()[None, :], w, y, EPS)
    assert "Exercise 1: correct" in capsys.readouterr().out
    d = exercises.linear_worst_delta(w, y, EPS)
    assert torch.allclose((y[:, None] * d * w).sum(1), torch.full((4,), -EPS * float(w.abs().sum())))


@pytest.mark.parametrize("answer", [None, ..., lambda w, y, e: None, lambda w, y, e: ...])
def test_the_linear_check_says_not_attempted(linear, answer, capsys):
    w, y = linear
    assert not exercises.check_linear_worst(1, answer, w, y, EPS)
    assert "Exercise 1: not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", ["wrong_sign", "label_ignored", "no_sign", "no_eps", "projection", "shape",
                                     "differs"])
def test_the_linear_check_names_each_seeded_mistake(linear, mistake):
    w, y = linear
    fn = _seeded(w, y)[mistake]
    words = {"wrong_sign": "wrong direction", "label_ignored": "label is ignored", "no_sign": "sign(w)",
             "no_eps": "no ε", "projection": "outside the ε-ball", "shape": "shape", "differs": "lowers y·w·x by"}
    with pytest.raises(ExerciseFailed) as e:
        exercises.check_linear_worst(1, fn, w, y, EPS)
    line = str(e.value)
    assert line.startswith("Exercise 1: ") and "\n" not in line and words[mistake] in line, line


def test_a_linear_models_gain_grows_with_the_dimension(synthetic_data):
    rows = analyses.linear_model_gain(synthetic_data, sides=(4, 8, 16))
    assert [r["d"] for r in rows] == [48, 192, 768]
    for r in rows:
        assert r["eps*|w|_1"] == pytest.approx(EPS * r["mean |w_i|"] * r["d"], rel=1e-4)
        assert r["attacked %"] <= r["clean %"]
    made_up = [{"d": 48, "eps*|w|_1": 1.0, "median |margin|": 1.0, "attacked %": 40.0},
               {"d": 3072, "eps*|w|_1": 11.0, "median |margin|": 3.0, "attacked %": 0.0}]
    assert "a tiny ε is enough" in readings.linear_gain_reading(made_up)
    made_up[1]["median |margin|"] = 20.0
    assert "margin grew as fast" in readings.linear_gain_reading(made_up)
    made_up[1]["eps*|w|_1"] = 0.5
    assert "did not grow" in readings.linear_gain_reading(made_up)


# ------------------------------------------------------ the logit scale --
def _mixture(scale_benign: float) -> torch.nn.Module:
    torch.manual_seed(0)
    mix = build_model("dwf_mixture", n_experts=3, width=0.0625, dataset="synthetic", gate_hidden=8).eval()
    with torch.no_grad():   # the first expert's last layer scaled: its logits spread that much wider
        last = [m for m in mix.experts[0].modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(scale_benign)
        last.bias.mul_(scale_benign)
    return mix


def test_logit_spread_finds_the_wide_expert_and_the_reading_follows_the_numbers(synthetic_data):
    x = synthetic_data.x_test[:16]
    names = ["benign", "fgsm-1", "pgd-1"]
    wide = analyses.logit_spread(_mixture(8.0), x, names)
    plain = analyses.logit_spread(_mixture(1.0), x, names)
    assert wide["ratio"] == pytest.approx(8.0 * plain["ratio"], rel=1e-3)
    assert sum(r["weight"] for r in wide["rows"]) == pytest.approx(1.0, abs=1e-5)
    assert sum(r["share"] for r in wide["rows"]) == pytest.approx(1.0, abs=1e-5)
    b = wide["rows"][0]
    assert b["share"] > b["weight"] and b["max-min"] > b["std"]
    text = readings.logit_scale_reading(wide)
    assert f"{wide['ratio']:.1f}x" in text and "the weighted sum follows them" in text
    small = {**plain, "ratio": 1.1}
    assert "does not explain" in readings.logit_scale_reading(small)
    assert "No benign expert" in readings.logit_scale_reading(analyses.logit_spread(_mixture(1.0), x, ["a", "b", "c"]))


# ------------------------------------------------------ the trade-off --
def _rows(mix_clean, mix_pgd):
    return [{"model": "DWF mixture", "clean": mix_clean, "PGD-10": mix_pgd},
            {"model": "benign", "clean": 80.0, "PGD-10": 2.0},
            {"model": "fgsm-1", "clean": 65.0, "PGD-10": 25.0},
            {"model": "pgd-1", "clean": 55.0, "PGD-10": 35.0}]


def test_the_trade_off_reading_says_what_the_numbers_say():
    dominated = readings.tradeoff_reading(_rows(50.0, 20.0), "PGD-10", n=500)
    assert "as the trade-off predicts" in dominated and "does not escape" in dominated
    assert "fgsm-1, pgd-1 are more accurate and more robust" in dominated
    above = readings.tradeoff_reading(_rows(75.0, 30.0), "PGD-10", n=500)
    assert "above the line joining its experts" in above and "escapes" in above
    on = readings.tradeoff_reading(_rows(70.0, 15.0), "PGD-10", n=500)
    assert "trades like they do" in on
    noisy = readings.tradeoff_reading(_rows(70.0, 19.0), "PGD-10", n=50)   # within ± 6.8 points: not "above"
    assert "trades like they do" in noisy and "± 6.8 points" in noisy
    fig = figures.tradeoff_scatter(_rows(75.0, 30.0), "PGD-10")
    assert len(fig.data) == 4 and fig.data[0].marker.symbol == "star"
