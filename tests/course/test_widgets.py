"""The course widgets, driven the way a learner drives them: by setting ``.value`` on a control.

The ε explorer runs on the session's tiny trained ResNet-18 (``trained_model`` in
conftest.py), the gate heatmap on a small untrained mixture: the tests check that
what the widgets report moves with ε the way an attack must make it move, that
the figure shows the same numbers, that a slider position seen once never runs the
model again (forward calls counted), and that the heatmap's colours and marks mean
what they say. No kernel is needed: outside one, figures are static. (Latency is
measured by ``benchmarks/widgets.py``, never asserted here.)
"""
from __future__ import annotations

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import pytest
import torch

from dwf_lab import attacks
from dwf_lab.course.display import STATIC_ENV, live_widgets_available, make_figure, mime_bundle, static_figures
from dwf_lab.course.widgets import (
    RIGHT,
    WRONG,
    attack_images,
    colour_range,
    epsilon_explorer,
    gate_heatmap,
    heatmap_grid,
)
from dwf_lab.reporting.figures import amplify, curves_figure, image_grid, to_rgb_uint8

RESULT_KEYS = {"eps", "attack", "index", "label", "label_name", "clean_pred", "clean_pred_name",
               "clean_probs", "pred", "pred_name", "probs", "flipped", "changed", "linf", "cached"}
NAMES = ["benign", "fgsm-1", "pgd-1"]


def count_calls(*modules: torch.nn.Module) -> list[int]:
    """A one-element counter of forward calls through any of ``modules`` (a forward pre-hook)."""
    calls = [0]

    def hook(module, args):
        calls[0] += 1
    for m in modules:
        m.register_forward_pre_hook(hook)
    return calls


def mixture_calls(mixture) -> list[int]:
    """Forward calls through the mixture's gate or any expert: every attack step and every
    forward pass of the mixture (``forward_details`` included) runs them."""
    return count_calls(mixture.gate, *mixture.experts)


@pytest.fixture
def test_images(synthetic_data):
    return synthetic_data.x_test[:48], synthetic_data.y_test[:48]


def _correct_indices(model, x, y) -> list[int]:
    with torch.no_grad():
        pred = model(x).argmax(1)
    return [int(i) for i in torch.nonzero(pred == y).flatten()]


def test_epsilon_explorer_prediction_falls_as_eps_grows(trained_model, test_images, synthetic_data):
    x, y = test_images
    correct = _correct_indices(trained_model, x, y)
    assert len(correct) >= 5, "the session's trained model should get most test images right"
    ui, fig, update = epsilon_explorer(trained_model, x, y, synthetic_data.classes,
                                               index=correct[0], attack="pgd", eps_max=0.1,
                                               images=correct[:8], static=True)
    assert isinstance(fig, go.Figure) and not isinstance(fig, go.FigureWidget)
    assert "dwf-prediction" in ui.prediction._dom_classes

    flipped = 0
    for i in correct[:8]:
        ui.index.value = i
        ui.slider.value = 0.0
        clean = dict(ui.result)
        assert set(clean) >= RESULT_KEYS
        assert clean["index"] == i and clean["eps"] == 0.0 and clean["linf"] == 0.0
        assert not clean["changed"] and not clean["flipped"]
        assert clean["pred"] == clean["clean_pred"] == clean["label"]
        np.testing.assert_allclose(clean["probs"], clean["clean_probs"], atol=1e-6)
        assert ui.prediction.value.startswith(f"prediction: {clean['pred_name']} (")

        ui.slider.value = 0.1
        strong = dict(ui.result)
        assert strong["eps"] == pytest.approx(0.1)
        assert 0 < strong["linf"] <= 0.1 + 1e-6
        # PGD climbs the loss of the true class: its probability must fall
        assert strong["probs"][strong["label"]] < clean["probs"][clean["label"]]
        assert ui.prediction.value.startswith(f"prediction: {strong['pred_name']} (")
        flipped += strong["flipped"]
    assert flipped >= 1, "PGD at eps = 0.1 should flip at least one of eight correct images"


def test_epsilon_explorer_figure_and_controls(trained_model, test_images, synthetic_data):
    x, y = test_images
    ui, fig, update = epsilon_explorer(trained_model, x, y, synthetic_data.classes,
                                               precompute=False, static=True)
    assert ui.attack.value == "fgsm" and ui.result["attack"] == "fgsm"
    z_clean = np.array(fig.data[1].z)           # adversarial panel at the default eps
    ui.slider.value = 0.0
    np.testing.assert_array_equal(np.array(fig.data[1].z), np.array(fig.data[0].z))
    ui.slider.value = 0.08
    assert not np.array_equal(np.array(fig.data[1].z), np.array(fig.data[0].z))
    np.testing.assert_allclose(fig.data[4].y, ui.result["probs"], atol=1e-6)
    ui.attack.value = "pgd"
    assert ui.result["attack"] == "pgd"
    # update() with explicit arguments recomputes without touching the controls
    r = update(eps=0.0, attack="fgsm", index=3)
    assert (r["eps"], r["attack"], r["index"]) == (0.0, "fgsm", 3)
    assert ui.slider.value == pytest.approx(0.08)
    assert z_clean.shape == (32, 32, 3)


def test_epsilon_explorer_live_figure_is_a_child(trained_model, test_images, synthetic_data):
    if not live_widgets_available():
        pytest.skip("plotly FigureWidget needs anywidget and plotly >= 6")
    x, y = test_images
    ui, fig, _ = epsilon_explorer(trained_model, x, y, synthetic_data.classes,
                                          precompute=False, static=False)
    assert isinstance(fig, go.FigureWidget)
    assert fig in ui.children
    ui.slider.value = 0.05
    np.testing.assert_allclose(fig.data[4].y, ui.result["probs"], atol=1e-6)


def test_epsilon_explorer_rejects_bad_input(trained_model, test_images, synthetic_data):
    x, y = test_images
    with pytest.raises(ValueError, match="eps_max"):
        epsilon_explorer(trained_model, x, y, synthetic_data.classes, eps_max=0)
    with pytest.raises(ValueError, match="attack"):
        attack_images(trained_model, x[:2], y[:2], "cw", 0.03)


def test_gate_heatmap_weights_move_with_eps(make_mixture, test_images):
    x, y = test_images
    mixture = make_mixture(n_experts=3).eval()
    names = ["benign", "fgsm-1", "pgd-1"]
    ui, fig, update = gate_heatmap(mixture, x, y, names, eps_max=0.1, n=12, pgd_steps=3,
                                           static=True)
    ui.slider.value = 0.0
    r0 = ui.result
    for kind in ("clean", "fgsm", "pgd"):
        w = r0["weights"][kind]
        assert w.shape == (12, 3)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
        assert (w >= 0).all()
    # eps = 0: the attacks leave the inputs alone, so the gate sees the same images
    np.testing.assert_allclose(r0["weights"]["fgsm"], r0["weights"]["clean"], atol=1e-6)
    np.testing.assert_allclose(r0["weights"]["pgd"], r0["weights"]["clean"], atol=1e-6)

    ui.slider.value = 0.1
    r1 = ui.result
    assert r1["eps"] == pytest.approx(0.1)
    np.testing.assert_allclose(r1["weights"]["clean"], r0["weights"]["clean"])
    for kind in ("fgsm", "pgd"):
        assert np.abs(r1["weights"][kind] - r0["weights"][kind]).max() > 1e-4, kind
        assert r1["entropy"][kind] != pytest.approx(r0["entropy"][kind], abs=1e-6)
    # the figure shows the numbers update() returned
    np.testing.assert_allclose(np.array(fig.data[1].z), r1["weights"]["fgsm"])
    np.testing.assert_allclose(np.array(fig.data[2].z), r1["weights"]["pgd"])
    assert list(fig.data[0].x) == names
    assert "ε=0.100" in fig.layout.annotations[1].text
    assert "dwf-gate-summary" in ui.summary._dom_classes
    assert set(r1["accuracy"]) == {"clean", "fgsm", "pgd"}


def test_gate_heatmap_rejects_bad_input(make_mixture, trained_model, test_images):
    x, y = test_images
    with pytest.raises(ValueError, match="expert names"):
        gate_heatmap(make_mixture(n_experts=3), x, y, ["a", "b"], static=True)
    with pytest.raises(TypeError, match="MixtureOfExperts"):
        gate_heatmap(trained_model, x, y, static=True)


# ------------------------------------------------ interactive: the caches --
def test_epsilon_explorer_answers_a_revisit_from_memory(trained_model, test_images, synthetic_data):
    x, y = test_images
    calls = count_calls(trained_model)
    ui, _, update = epsilon_explorer(trained_model, x, y, synthetic_data.classes, index=2, attack="pgd",
                                     pgd_steps=3, precompute=False, static=True)
    assert calls[0] > 0 and not ui.result["cached"]
    ui.slider.value = 0.05                 # a first visit attacks: PGD-3 runs the model
    before = calls[0]
    assert before > 0 and not ui.result["cached"]
    first = dict(ui.result)
    ui.slider.value = 0.08
    ui.attack.value = "fgsm"
    ui.index.value = 5
    seen = calls[0]
    assert seen > before
    # every position already reached answers without a forward pass, with the same numbers
    ui.index.value = 2
    ui.attack.value = "pgd"
    ui.slider.value = 0.05
    assert calls[0] == seen
    assert ui.result["cached"]
    np.testing.assert_array_equal(ui.result["probs"], first["probs"])
    assert update(eps=0.08, attack="fgsm", index=5)["cached"] and calls[0] == seen
    assert ui.cache.hits > 0


def test_epsilon_explorer_at_zero_is_the_clean_prediction(trained_model, test_images, synthetic_data):
    x, y = test_images
    ui, _, update = epsilon_explorer(trained_model, x, y, synthetic_data.classes, precompute=False, static=True)
    with torch.no_grad():
        clean = trained_model(x[:12]).argmax(1)
    for i in range(12):
        for attack in ("fgsm", "pgd"):
            r = update(eps=0.0, attack=attack, index=i)
            assert r["pred"] == r["clean_pred"] == int(clean[i]), (i, attack)
            assert ui.prediction.value.startswith(f"prediction: {synthetic_data.classes[int(clean[i])]} (")


def test_gate_heatmap_answers_a_revisit_from_memory(make_mixture, test_images):
    x, y = test_images
    mixture = make_mixture(n_experts=3).eval()
    calls = mixture_calls(mixture)
    ui, _, update = gate_heatmap(mixture, x, y, NAMES, n=6, pgd_steps=2, precompute=False, static=True)
    assert ui.slider.options[-1][1] == pytest.approx(0.1) and ui.slider.value == pytest.approx(8 / 255)
    assert not ui.slider.continuous_update     # a first visit takes a while: compute on release only
    ui.slider.value = 4 / 255
    assert not ui.result["cached"]
    seen = calls[0]
    ui.slider.value = 8 / 255
    ui.slider.value = 4 / 255
    assert calls[0] == seen and ui.result["cached"]
    update(16 / 255)                           # off the slider is fine too, and kept
    seen = calls[0]
    assert update(16 / 255)["cached"] and calls[0] == seen


def test_gate_heatmap_precomputes_every_stop(make_mixture, test_images, capsys):
    x, y = test_images
    mixture = make_mixture(n_experts=3).eval()
    calls = mixture_calls(mixture)
    grid = [0.0, 2 / 255, 0.05]
    ui, fig, _ = gate_heatmap(mixture, x, y, NAMES, n=6, pgd_steps=2, grid=grid, eps=0.05,
                              precompute=True, static=True)
    out = capsys.readouterr().out
    assert "gate heatmap: computing FGSM and PGD-2 on 6 inputs through 3 experts at 3 values of ε" in out
    assert "done: 3 values of ε in " in out
    assert len(ui.cache) == 3 and ui.slider.continuous_update
    assert "computed up front" in ui.summary.value
    seen = calls[0]
    for e in (0.0, 2 / 255, 0.05, 0.0):
        ui.slider.value = e
        assert ui.result["cached"] and ui.result["eps"] == e
    assert calls[0] == seen


def test_gate_heatmap_live_figure_is_a_child(make_mixture, test_images):
    if not live_widgets_available():
        pytest.skip("plotly FigureWidget needs anywidget and plotly >= 6")
    x, y = test_images
    mixture = make_mixture(n_experts=3).eval()
    ui, fig, _ = gate_heatmap(mixture, x, y, NAMES, n=4, pgd_steps=1, grid=[0.0, 0.05], eps=0.0,
                              precompute=False, static=False)
    assert isinstance(fig, go.FigureWidget) and fig in ui.children
    ui.slider.value = 0.05
    np.testing.assert_allclose(np.array(fig.data[2].z), ui.result["weights"]["pgd"])
    assert list(fig.data[5].text) == [RIGHT if ok else WRONG for ok in ui.result["right"]["pgd"]]


def test_heatmap_grid():
    assert heatmap_grid(0.1) == pytest.approx([k / 255 for k in (0, 2, 4, 8, 12, 16)] + [0.1])
    assert heatmap_grid(4 / 255) == pytest.approx([k / 255 for k in (0, 2, 4)])
    assert heatmap_grid(0.002) == [0.0, 0.002]


# ----------------------------------------------- the heatmap's colours, marks --
@pytest.mark.parametrize("n_experts", [3, 4])
def test_gate_heatmap_colours_are_centred_on_uniform(make_mixture, test_images, n_experts):
    x, y = test_images
    mixture = make_mixture(n_experts=n_experts).eval()
    ui, fig, update = gate_heatmap(mixture, x, y, n=8, pgd_steps=2, precompute=False, static=True)
    r = update(0.1)
    u = 1 / n_experts
    zmin, zmax = r["colour_range"]
    assert (zmin + zmax) / 2 == pytest.approx(u) and 0 <= zmin < u < zmax <= 2 * u
    every = np.concatenate([w.ravel() for w in r["weights"].values()])
    assert zmax - u == pytest.approx(min(u, np.abs(every - u).max()))    # the farthest weight sets it
    for hm in fig.data[:3]:
        assert isinstance(hm, go.Heatmap)
        assert (hm.zmin, hm.zmax, hm.zmid) == pytest.approx((zmin, zmax, u))
        # a diverging scale: the ends differ (blue below, red above), the middle is the lightest
        colours = [c for _, c in hm.colorscale]
        rgb = [np.array(plotly_rgb(c)) for c in colours]
        assert rgb[0][2] > rgb[0][0] and rgb[-1][0] > rgb[-1][2]
        assert int(np.argmax([v.sum() for v in rgb])) == len(rgb) // 2
    ticks = fig.data[2].colorbar
    assert ticks.tickvals[1] == pytest.approx(u) and ticks.ticktext[1] == f"1/{n_experts} (uniform)"


def plotly_rgb(colour: str) -> tuple[int, ...]:
    return plotly.colors.unlabel_rgb(plotly.colors.convert_colors_to_same_type(colour, "rgb")[0][0])


def test_colour_range_of_a_uniform_gate_is_white():
    w = np.full((5, 4), 0.25)
    zmin, zmax = colour_range([w], 4)
    assert (zmin, zmax) == pytest.approx((0.249, 0.251))
    assert colour_range([np.eye(4)], 4) == pytest.approx((0.0, 0.5))   # capped at 2/n


def test_gate_heatmap_marks_are_the_experts_own_verdicts(make_mixture, test_images, synthetic_data):
    x, y = test_images
    mixture = make_mixture(n_experts=3, seed=4).eval()
    classes = synthetic_data.classes
    n, eps, steps = 10, 6 / 255, 2
    ui, fig, update = gate_heatmap(mixture, x, y, NAMES, n=n, pgd_steps=steps, classes=classes,
                                   precompute=False, static=True)
    r = update(eps)
    xs, ys = x[:n], y[:n]
    # the same attacks, computed here with the package's functions directly
    inputs = {"clean": xs, "fgsm": attacks.fgsm(mixture, xs, ys, eps),
              "pgd": attacks.pgd(mixture, xs, ys, eps, 2.5 * eps / steps, steps, random_start=False)}
    n_marks = 0
    for j, kind in enumerate(("clean", "fgsm", "pgd")):
        with torch.no_grad():
            own = torch.stack([e(inputs[kind]).argmax(1) for e in mixture.experts], 1)
            mix = mixture(inputs[kind]).argmax(1)
        right = (own == ys[:, None]).numpy()
        np.testing.assert_array_equal(r["expert_pred"][kind], own.numpy())
        np.testing.assert_array_equal(r["expert_right"][kind], right)
        np.testing.assert_array_equal(np.array(fig.data[j].text) == RIGHT, right)
        verdict = fig.data[3 + j]
        assert list(verdict.x) == ["mixture"] * n
        assert list(verdict.text) == [RIGHT if ok else WRONG for ok in (mix == ys).tolist()]
        assert r["accuracy"][kind] == pytest.approx(100 * float((mix == ys).float().mean()))
        np.testing.assert_allclose(r["expert_accuracy"][kind], 100 * right.mean(0))
        n_marks += right.sum()
    assert 0 < n_marks < 3 * n * 3, "the check needs both right and wrong cells"
    assert list(fig.layout.yaxis.ticktext)[0] == f"0 ({classes[int(ys[0])]})"


def test_static_figures_switch(monkeypatch):
    monkeypatch.setenv(STATIC_ENV, "1")
    assert static_figures() is True
    monkeypatch.setenv(STATIC_ENV, "0")
    assert static_figures() is (not live_widgets_available())
    monkeypatch.delenv(STATIC_ENV)
    assert static_figures() is True        # no kernel here: nothing could show a widget
    fig = make_figure(go.Figure(), static=True)
    assert type(fig) is go.Figure


def test_mime_bundle_of_a_static_figure():
    fig = curves_figure([1, 2], {"a": [10.0, 20.0]}, "t", "x")
    bundle = mime_bundle(fig)
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/html"}
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["name"] == "a"


def test_image_helpers():
    img = torch.rand(3, 8, 8)
    a = to_rgb_uint8(img)
    assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    assert to_rgb_uint8(torch.rand(1, 8, 8)).shape == (8, 8, 3)   # grey -> RGB
    d = amplify(torch.full((3, 4, 4), -0.01), eps=0.01)
    assert (d == 0).all()                                            # -eps is black
    grid = image_grid([img, img, img], ["a", "b", "c"], cols=2)
    assert len(grid.data) == 3
