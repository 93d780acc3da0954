"""The widgets' static twins (dwf_lab/course/static.py): one table of states, used by the live
widget and written out for a page without a kernel.

The ε explorer runs on the session's tiny trained ResNet-18, the gate heatmap on a small
untrained mixture (both as in test_widgets.py). Checked: the twin holds every state (ε stops ×
attacks × images; ε stops), each state is what the live widget shows for the same control
positions (the same function paints both), a live move answers from the table without a
forward pass, images are stored once, and any object answering ``state_table()`` gets a twin
(test_site.py: the site renders it without code of its own).
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import plotly.graph_objects as go
import pytest
from test_widgets import NAMES, count_calls  # the forward-call counter and the experts' names, once

from dwf_lab.course.static import (
    ASSET,
    Control,
    Patch,
    StateTable,
    apply_patch,
    page_twin,
    png_data_uri,
    resolved_figure,
    state_table,
    static_twin,
    twin_html,
)
from dwf_lab.course.widgets import epsilon_explorer, explorer_grid, gate_heatmap, heatmap_grid, offered_images


@pytest.fixture
def test_images(synthetic_data):
    return synthetic_data.x_test[:48], synthetic_data.y_test[:48]


def test_explorer_twin_holds_every_stop_attack_and_image(trained_model, test_images, synthetic_data):
    x, y = test_images
    ui, fig, update = epsilon_explorer(trained_model, x, y, synthetic_data.classes, index=5, images=4,
                                       eps_max=0.05, pgd_steps=2, static=True)
    stops = explorer_grid(0.05)
    assert stops[:3] == pytest.approx([0, 1 / 255, 2 / 255]) and stops[-1] == 0.05 and len(stops) == 14
    assert ui.images == [0, 1, 2, 5] == offered_images(5, 48, 4)
    twin = static_twin(ui)
    assert len(twin["states"]) == len(stops) * 2 * 4          # ε stops × attacks × images
    assert [c["name"] for c in twin["controls"]] == ["eps", "attack", "index"]
    assert [c["size"] for c in twin["controls"]] == [len(stops), 2, 4]
    # the state shown first is the widget's: ε = 8/255, FGSM, image 5
    assert twin["active"] == [8, 0, 3]
    json.dumps(twin)                                            # JSON as it is

    # every state is what the live widget shows at the same positions
    for k_eps, k_att, k_img in [(0, 0, 0), (13, 1, 3), (5, 1, 2), (8, 0, 3)]:
        state = twin["states"][f"{k_eps},{k_att},{k_img}"]
        r = update(eps=stops[k_eps], attack=("fgsm", "pgd")[k_att], index=ui.images[k_img])
        assert state["text"]["prediction"] == ui.prediction.value
        assert state["text"]["prediction"].startswith(f"prediction: {r['pred_name']} (")
        assert state["layout"]["title.text"] == fig.layout.title.text
        probs = dict(state["data"])[4]["y"]
        np.testing.assert_allclose(probs, r["probs"], rtol=1e-4, atol=1e-6)

    # images are stored once: each state refers to its three pictures, the clean one shared
    refs = [d[1]["source"][ASSET] for s in twin["states"].values() for d in s["data"] if "source" in d[1]]
    assert len(refs) == 3 * len(twin["states"])
    assert len(twin["assets"]) == len(set(refs))
    assert len(set(refs)) <= len(refs) - len(twin["states"]) + 4      # at most one clean picture per image
    clean = {dict(s["data"])[0]["source"][ASSET] for key, s in twin["states"].items() if key.endswith(",3")}
    assert len(clean) == 1


def test_explorer_moves_answer_from_the_table(trained_model, test_images, synthetic_data, capsys):
    x, y = test_images
    calls = count_calls(trained_model)
    ui, _, update = epsilon_explorer(trained_model, x, y, synthetic_data.classes, index=2, images=[7, 9],
                                     eps_max=0.03, pgd_steps=2, static=True)
    assert "states) computed in" in capsys.readouterr().out
    seen = calls[0]
    for i in (7, 2, 9):
        ui.index.value = i
        for attack in ("pgd", "fgsm"):
            ui.attack.value = attack
            for e in (0.0, 3 / 255, 7 / 255, 0.03):
                ui.slider.value = e
                assert ui.result["cached"] and ui.result["index"] == i and ui.result["attack"] == attack
    assert calls[0] == seen, "a move on the table ran the model"
    assert not update(eps=0.0123)["cached"] and calls[0] > seen     # off the table: computed, then kept
    assert update(eps=0.0123)["cached"]


def test_heatmap_twin_holds_every_stop(make_mixture, test_images):
    x, y = test_images
    mixture = make_mixture(n_experts=3).eval()
    ui, fig, update = gate_heatmap(mixture, x, y, NAMES, n=5, pgd_steps=1, static=True)
    stops = heatmap_grid(0.1)
    twin = static_twin(ui)
    assert len(twin["states"]) == len(stops)
    assert twin["controls"] == [{"name": "eps", "kind": "slider", "index": 0, "size": len(stops)}]
    assert [t["class"] for t in twin["texts"]] == ["dwf-gate-summary"]
    calls = count_calls(mixture.gate, *mixture.experts)
    for k, e in enumerate(stops):
        ui.slider.value = e
        assert ui.result["cached"]
        state = twin["states"][str(k)]
        np.testing.assert_allclose(dict(state["data"])[2]["z"], ui.result["weights"]["pgd"], rtol=1e-4, atol=1e-6)
        assert state["text"]["summary"] == ui.summary.value
        assert state["layout"]["annotations[1].text"] == fig.layout.annotations[1].text
    assert calls[0] == 0
    assert len(set(json.dumps(s["data"][0][1]["zmax"]) for s in twin["states"].values())) == 1   # one colour range


def test_a_lazy_widget_fills_its_table_for_the_twin(make_mixture, test_images):
    x, y = test_images
    mixture = make_mixture(n_experts=3).eval()
    ui, _, _ = gate_heatmap(mixture, x, y, NAMES, n=4, pgd_steps=1, grid=[0.0, 0.02, 0.05], eps=0.02,
                            precompute=False, static=True)
    assert len(ui.cache) == 1
    assert len(static_twin(ui)["states"]) == 3 and len(ui.cache) == 3


def test_static_figure_is_the_first_state(trained_model, test_images, synthetic_data):
    x, y = test_images
    ui, fig, _ = epsilon_explorer(trained_model, x, y, synthetic_data.classes, images=2, eps_max=0.02,
                                  pgd_steps=1, static=True)
    f = ui.static_figure()
    assert isinstance(f, go.Figure) and f.layout.title.text == fig.layout.title.text
    assert len(f.layout.sliders) == 1 and len(f.layout.updatemenus) == 2
    assert [s.label for s in f.layout.sliders[0].steps][:3] == ["0", "1/255", "2/255"]
    assert all(s.method == "skip" for s in f.layout.sliders[0].steps)
    assert f.data[1].source.startswith("data:image/png;base64,") and f.data[1].z is None


# ------------------------------------------------- any widget: one function --
class ToyWidget:
    """A widget the site has never heard of: two controls, a bar chart and one line of text."""

    def state_table(self) -> StateTable:
        fig = go.Figure(go.Bar(x=["a", "b"], y=[0, 0]))
        controls = [Control("k", "k", [("1", 1), ("2", 2), ("3", 3)]),
                    Control("sign", "sign", [("+", 1), ("−", -1)], kind="dropdown")]

        def state(v):
            return Patch(data={0: {"y": [v["k"] * v["sign"], v["k"]]}}, layout={"title.text": f"k = {v['k']}"},
                         text={"line": f"<b>{v['k'] * v['sign']}</b>"})
        return state_table(fig, controls, state, texts={"line": "toy-line"})


def test_any_widget_gets_a_twin():
    twin = static_twin(ToyWidget())
    assert len(twin["states"]) == 6 and twin["states"]["2,1"]["data"] == [[0, {"y": [-3, 3]}]]
    assert twin["states"]["0,0"]["text"] == {"line": "<b>1</b>"} and twin["texts"][0]["class"] == "toy-line"


def test_a_table_needs_every_combination():
    c = [Control("a", "a", [("0", 0), ("1", 1)])]
    with pytest.raises(ValueError, match="every combination"):
        StateTable(go.Figure(), c, {(0,): Patch()})
    with pytest.raises(ValueError, match="kind"):
        Control("a", "a", [("0", 0)], kind="knob")


def test_apply_patch_sets_paths_on_figures_and_live_widgets():
    fig = go.Figure([go.Scatter(x=[1], y=[1], mode="text", text=["a"])])
    fig.update_layout(annotations=[{"text": "x"}, {"text": "y"}])
    patch = Patch(data={0: {"textfont.color": ["red"], "y": [2]}}, layout={"annotations[1].text": "z", "title.text": "t"})
    for f in (fig, go.FigureWidget(fig)):
        apply_patch(f, patch)
        assert f.data[0].textfont.color == ("red",) and f.data[0].y == (2,)
        assert f.layout.annotations[1].text == "z" and f.layout.title.text == "t"


def test_png_data_uri_round_trips():
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    uri = png_data_uri(rgb)
    assert uri.startswith("data:image/png;base64,")
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    np.testing.assert_array_equal(back, rgb)


def test_twin_html_is_safe_inside_a_page():
    twin = static_twin(ToyWidget())
    twin["states"]["0,0"]["text"]["line"] = "</script><script>alert(1)</script>"
    page = twin_html(twin, "t1")
    assert page.count("</script>") == 2          # the table's own </ cannot close its element
    assert "class='dwf-twin-plot plotly-graph-div'" in page
    fig = resolved_figure(static_twin(ToyWidget()))
    assert list(fig.data[0].y) == [1, 1] and fig.layout.title.text == "k = 1"


def test_a_page_draws_pictures_as_layout_images(trained_model, test_images, synthetic_data):
    x, y = test_images
    ui, _, _ = epsilon_explorer(trained_model, x, y, synthetic_data.classes, images=2, eps_max=0.02,
                                pgd_steps=1, static=True)
    twin = static_twin(ui)
    page = page_twin(twin)
    layout = page["figure"]["layout"]
    assert [t["type"] for t in page["figure"]["data"][:3]] == ["scatter"] * 3 and len(layout["images"]) == 3
    assert layout["images"][1]["xref"] == "x2" and layout["images"][1]["sizex"] == 32
    assert layout["yaxis2"]["range"] == [31.5, -0.5] and layout["yaxis2"]["scaleanchor"] == "x2"
    for key, st in page["states"].items():
        assert [i for i, _ in st["data"]] == [3, 4]                       # the bars; the pictures are layout
        assert st["layout"]["images[1].source"] == dict(twin["states"][key]["data"])[1]["source"]
    assert "images[1].source" in twin_html(twin, "p")
