"""The course widgets, driven the way a learner drives them: by setting ``.value`` on a control.

The ε explorer runs on the session's tiny trained ResNet-18 (``trained_model`` in
conftest.py), the gate heatmap on a small untrained mixture: the tests check that
what the widgets report moves with ε the way an attack must make it move, and that
the figure shows the same numbers. No kernel is needed: outside one, figures are static.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from dwf_lab.course.display import STATIC_ENV, live_widgets_available, make_figure, mime_bundle, static_figures
from dwf_lab.course.widgets import attack_images, epsilon_explorer, gate_heatmap
from dwf_lab.reporting.figures import amplify, curves_figure, image_grid, to_rgb_uint8

RESULT_KEYS = {"eps", "attack", "index", "label", "label_name", "clean_pred", "clean_pred_name",
               "clean_probs", "pred", "pred_name", "probs", "flipped", "changed", "linf"}


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
                                               static=True)
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
                                               static=True)
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
                                          static=False)
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
