"""Figures and readings of the concept sections (reporting/concepts.py): every sentence follows its numbers."""
import pytest
import torch

from dwf_lab.reporting import concepts


def _sweep(w0, w1, a0, a1):
    return [{"lam": None, "accuracy": 50.0, "weights": [0.3, 0.7], "w_target": 0.3},
            {"lam": 0.0, "accuracy": a0, "weights": [w0, 1 - w0], "w_target": w0},
            {"lam": 5.0, "accuracy": a1, "weights": [w1, 1 - w1], "w_target": w1}]


def test_collapsed():
    assert concepts.collapsed("t", "body") == "<details><summary>t</summary>\n\nbody\n\n</details>"


def test_steering_figure_has_one_slider_step_per_state():
    rows = _sweep(0.3, 0.8, 40.0, 10.0)
    fig = concepts.steering_figure(rows, ["benign", "pgd-1"], k=0, steps=10)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["clean", "λ = 0", "λ = 5"]
    assert list(steps[2].args[0]["y"][0]) == pytest.approx([0.8, 0.2]) and "accuracy 10.0%" in steps[2].args[1]["title.text"]
    assert "80.0%" in steps[2].args[1]["title.text"]


def test_steering_markdown_says_what_the_numbers_do():
    assert "follows benign down" in concepts.steering_markdown(_sweep(0.3, 0.8, 40.0, 10.0), "benign")
    assert "compete" in concepts.steering_markdown(_sweep(0.3, 0.8, 10.0, 40.0), "benign")
    assert "resists" in concepts.steering_markdown(_sweep(0.3, 0.3, 10.0, 10.0), "benign")


def test_landscape_markdown():
    rise = {"plain": {"sign-gradient": 2.0, "random": 0.1, "ratio": 20.0},
            "masked": {"sign-gradient": 0.0, "random": 0.2, "ratio": 0.0},
            "flat": {"sign-gradient": 0.0, "random": 0.0, "ratio": 0.0}}
    text = concepts.landscape_markdown(rise, 8 / 255).splitlines()
    assert "points uphill" in text[0] and "masked" in text[1] and "flat" in text[2]
    fig = concepts.landscape_figure({"a": {"sign-gradient": [0, 1], "random": [0, 0.1]}}, [0, 8 / 255], 8 / 255)
    assert len(fig.data) == 2


def test_gradient_figure_and_markdown():
    study = {"robust": {"pictures": torch.rand(3, 3, 8, 8), "alignment": 0.4},
             "standard": {"pictures": torch.rand(3, 3, 8, 8), "alignment": 0.1}}
    fig = concepts.gradient_figure(torch.rand(3, 3, 8, 8), study)
    assert len(fig.data) == 9
    text = concepts.gradient_markdown(study)
    assert text.index("robust") < text.index("standard") and "robust's gradient follows the edges most" in text


def test_sandwich_markdown():
    s = {"clean": 30.0, "attacked": 20.0, "certified": 12.5, "n": 64, "eps": 8 / 255, "attack": "PGD-20"}
    text = concepts.sandwich_markdown(s)
    assert "certified 12.5% ≤ true robust accuracy ≤ 20.0% under PGD-20 ≤ 30.0% clean" in text
    assert "7.5-point gap" in text


def _bug_rows():
    base = {"model": "ResNet-18", "clean": 90.0, "FGSM 0.03": 20.0, "FGSM 8/255": 18.0}
    return [{**base, "bug": "none", "PGD-1": 30.0, "PGD-8": 1.0, "PGD-10": 0.5, "same_as_fgsm": 80.0},
            {**base, "bug": "gradient_at_x", "PGD-1": 30.0, "PGD-8": 18.0, "PGD-10": 18.0, "same_as_fgsm": 100.0},
            {**base, "bug": "normalized_eps", "PGD-1": 60.0, "PGD-8": 40.0, "PGD-10": 39.0, "same_as_fgsm": 70.0},
            {**base, "bug": "bn_train", "PGD-1": 35.0, "PGD-8": 5.0, "PGD-10": 4.0, "same_as_fgsm": 80.0}]


def test_bug_markdown_reads_its_numbers_and_the_papers():
    text = concepts.bug_markdown(_bug_rows(), "cifar10")
    assert "flat from 8 to 10 steps" in text and "on 100% of the images" in text
    assert "39.0% after 10 steps, ABOVE the pixel-ε FGSM step at 0.03 (20.0%)" in text
    assert "+3.5 points against the correct PGD — a weaker attack" in text
    assert "FGSM 0.03 40.97%, PGD-10 37.72%, PGD-50 36.95%: PGD below FGSM" in text
    rows = _bug_rows()
    rows[2]["PGD-10"] = 10.0
    assert "not above the pixel-ε FGSM step" in concepts.bug_markdown(rows, None)
    assert "same as FGSM" in concepts.bug_table_markdown(rows)


def test_headline_markdown():
    recs = [{"row": "DWF", "seed": 0, "n_test": 100, "metrics": {"pgd-20": 40.0, "autoattack": 30.0,
                                                               "worst-case (all)": 25.0}},
            {"row": "ResNet-18 (PGD-AT)", "seed": 0, "n_test": 100, "metrics": {"pgd-20": 35.0}}]
    text = concepts.headline_markdown(recs, "pgd-20")
    assert "| DWF | 40.0 | 30.0 | 25.0 | 100 |" in text and "| ResNet-18 (PGD-AT) | 35.0 | — | — | 100 |" in text
    assert "DWF: 15.0 points from PGD-20 to the worst case" in text
    assert concepts.headline_markdown([], "pgd-20").startswith("No adaptive results")
