"""Interactive widgets of the course: the ε explorer and the gate-weight heatmap.

Each factory returns ``(ui, figure, update)``:

- ``ui``: an ipywidgets box to ``display(ui)`` in a notebook. Its controls are
  attributes (``ui.slider``, ``ui.attack``, ...), so a test drives it by
  setting ``ui.slider.value = 0.05`` exactly like a learner dragging it;
- ``figure``: the plotly figure the widget redraws in place: a live
  ``go.FigureWidget`` inside ``ui`` when a front end can show one, else a plain
  ``go.Figure`` displayed beside the controls and re-drawn through its display
  handle (headless runs: papermill, nbval; see :func:`dwf_lab.course.display.static_figures`);
- ``update(...)``: returns the numbers behind the picture as a dict (also kept as
  ``ui.result``), so tests never have to read figures.

**A table of states, computed once.** Each widget computes every state its controls can
reach up front (the ε explorer: every ε stop × both attacks × the images it offers, batched;
the gate heatmap: every ε stop of its grid) and keeps them in ``ui.cache`` (a :class:`Memo`):
a move answers from memory, without running the model. What a state shows is one
:class:`~dwf_lab.course.static.Patch` (the figure's attributes and the HTML lines), made by the
same function for a live move and for the **static twin**: ``ui.state_table()`` lists every
state, ``ui.static_twin()`` / :func:`dwf_lab.course.static.static_twin` writes them out for a
page without a kernel, and ``display(ui)`` carries that twin beside the widget view (the
course's static site renders it: sliders that work offline). ``precompute=False`` computes a
state the first time it is asked for instead (tests; the twin then fills the rest).
A value off the grid (``update(0.09)``) is computed on demand and kept too.
``python benchmarks/widgets.py`` measures the moves.

The attacks are the package's own (:func:`attack_images`: :func:`dwf_lab.attacks.fgsm`
and :func:`dwf_lab.attacks.pgd`): inputs in [0, 1], ε in pixel units, model in eval mode.

The prediction line of the ε explorer is an HTML widget with the CSS class
``dwf-prediction`` whose text always starts ``prediction: <class>`` (the class
predicted for the current adversarial image), for browser tests; its twin's line has the
same class and text.
"""
import functools
import html
import time
from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
from IPython.display import display
from plotly.subplots import make_subplots

from dwf_lab import attacks
from dwf_lab.course.display import make_figure, mime_bundle, static_figures
from dwf_lab.course.static import (
    TWIN_MIME,
    WIDGET_FIGURE_META,
    Control,
    Patch,
    StateTable,
    apply_patch,
    flatten,
    resolved_figure,
    state_table,
    static_twin,
)
from dwf_lab.evaluation.diagnostics import class_probabilities
from dwf_lab.mixture.moe import gate_entropy
from dwf_lab.reporting.figures import TEMPLATE, adversarial_example_figure, amplify, to_rgb_uint8

PIXEL = 1 / 255
# the gate heatmap's slider stops below its eps_max, in pixel levels (k/255); eps_max is the last.
# Few on purpose: each costs an FGSM and a PGD through every expert (seconds on a CPU) once
HEATMAP_LEVELS = (0, 2, 4, 8, 12, 16)
# diverging colours: blue below the uniform weight 1/n, white at it, red above
DIVERGING = "RdBu_r"
RIGHT, WRONG = "✓", "✗"
RIGHT_COLOR, WRONG_COLOR = "#1a7f37", "#cf222e"


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as e:  # pragma: no cover - the notebooks extra installs it
        raise ImportError("the course widgets need ipywidgets: pip install 'dwf-lab[notebooks]'") from e
    return ipywidgets


def eps_label(eps: float) -> str:
    """'0.0314 (8/255)' — ε in pixel units with its nearest k/255 when that is exact-ish."""
    k = eps * 255
    frac = f" ≈ {round(k)}/255" if abs(k - round(k)) < 0.05 and eps > 0 else ""
    return f"{eps:.4f}{frac}"


def _short_label(eps: float) -> str:
    """'8/255' when ε is a whole number of pixel levels, else '0.100' (a slider's readout)."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return "0" if round(k) == 0 else f"{round(k)}/255"
    return f"{eps:.3f}"


def eps_key(eps: float) -> float:
    """ε as a cache key: the same slider position reached twice (float noise aside) is one key."""
    return round(float(eps), 9)


class Memo:
    """What a widget computed, by key, least recently used dropped past ``maxsize``.

    ``get(key, compute)`` returns the kept value or calls ``compute()`` once and keeps it;
    ``hits`` / ``misses`` count both (the benchmark and the tests read them).
    """

    def __init__(self, maxsize: int = 4096):
        self.data: OrderedDict = OrderedDict()
        self.maxsize = maxsize
        self.hits = self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def values(self):
        return self.data.values()

    def put(self, key: Hashable, value) -> None:
        """Keep ``value`` under ``key`` (a state computed with others, in a batch)."""
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)

    def get(self, key: Hashable, compute: Callable):
        if key in self.data:
            self.hits += 1
            self.data.move_to_end(key)
            return self.data[key]
        self.misses += 1
        value = self.data[key] = compute()
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)
        return value


@functools.lru_cache(maxsize=1)
def _panel_class():
    ipw = _ipywidgets()

    class Panel(ipw.VBox):
        """Controls plus a figure. A live figure is a child of the box; a static one is
        displayed right after the box and re-drawn in place through its display handle.

        A widget that sets ``ui.table = (controls, state, texts, layout)`` (a function returning
        its :class:`~dwf_lab.course.static.Control` list at their current positions, a function
        from ``{control name: value}`` to the state's Patch, ``{line name: CSS class}`` and the
        twin's layout changes) gets ``state_table()``, ``static_twin()`` and
        ``static_figure()``, and its display carries the twin (:data:`TWIN_MIME`)."""

        def __init__(self, controls, figure, static: bool, **kw):
            children = list(controls) + ([] if static else [figure])
            super().__init__(children, **kw)
            self.figure = figure
            self.static = static
            self.result: dict = {}
            self.cache = Memo()
            self.table = None
            self._handle = None

        def state_table(self) -> StateTable:
            """Every state the controls reach, each as the Patch a move there applies."""
            if self.table is None:
                raise TypeError("this widget has no state table")
            controls, state, texts, layout = self.table
            return state_table(self.figure, controls(), state, texts, layout)

        def static_twin(self) -> dict:
            """The widget's static twin (:func:`dwf_lab.course.static.static_twin`)."""
            return static_twin(self)

        def static_figure(self) -> go.Figure:
            """The twin's plotly figure as a page first draws it (controls included; their moves
            are applied by the twin's page script, :func:`dwf_lab.course.static.twin_html`)."""
            return resolved_figure(self.static_twin())

        def _ipython_display_(self):
            bundle = dict(self._repr_mimebundle_() or {})
            if self.table is not None:
                try:
                    bundle[TWIN_MIME] = self.static_twin()
                except Exception as err:   # the live widget still works; only the static site loses it
                    print(f"(no static twin for the site: {type(err).__name__}: {err})")
            display(bundle, raw=True)
            if self.static:
                self._handle = display(mime_bundle(self.figure), raw=True, metadata=WIDGET_FIGURE_META,
                                       display_id=True)

        def redraw(self) -> None:
            if self.static and self._handle is not None:
                self._handle.update(mime_bundle(self.figure), raw=True, metadata=WIDGET_FIGURE_META)

    return Panel


def _active(options: Sequence[tuple[str, object]], value) -> int:
    """The index of the option nearest ``value`` (a slider's float noise aside)."""
    values = [v for _, v in options]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and all(
            isinstance(v, (int, float)) for v in values):
        return int(np.argmin([abs(float(v) - float(value)) for v in values]))
    return values.index(value) if value in values else 0


def _as_batch(x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() == 3:
        x = x[None]
    y = torch.as_tensor(y).reshape(-1).long()
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    return x, y


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def attack_images(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float,
                  pgd_steps: int = 10, pgd_alpha: float | None = None) -> torch.Tensor:
    """FGSM (Eq. 3) or PGD (Eq. 4-5) at ``eps`` (pixel units), deterministic for display.

    PGD here starts at x (no random start, so the picture does not flicker) and
    steps ``alpha = 2.5 ε / steps`` unless given (Madry et al.'s rule of thumb).
    """
    if attack == "fgsm":
        return attacks.fgsm(model, x, y, eps)
    if attack == "pgd":
        alpha = pgd_alpha if pgd_alpha is not None else 2.5 * eps / max(1, pgd_steps)
        return attacks.pgd(model, x, y, eps, alpha, pgd_steps, random_start=False)
    raise ValueError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")


# ------------------------------------------------------------ ε explorer --
# how many test images the ε explorer offers (its image menu), the shown one included
EXPLORER_IMAGES = 8
ATTACK_OPTIONS = (("FGSM (Eq. 3)", "fgsm"), ("PGD (Eq. 4-5)", "pgd"))


def explorer_grid(eps_max: float, step: float = PIXEL) -> list[float]:
    """The ε explorer's slider stops: 0, step, 2·step, ... below ``eps_max``, then ``eps_max``."""
    n = int(np.floor(eps_max / step + 1e-9))
    return [k * step for k in range(n + 1) if k * step < eps_max - 1e-9] + [float(eps_max)]


def offered_images(index: int, n: int, images: int | Sequence[int] = EXPLORER_IMAGES) -> list[int]:
    """The test images the ε explorer offers: ``index`` and the first others up to ``images`` in
    all (a number), or ``index`` and the listed ones; in order."""
    if not 0 <= index < n:
        raise ValueError(f"index {index} is not one of the {n} images")
    if isinstance(images, (int, np.integer)):
        if images < 1:
            raise ValueError(f"images must offer at least one image, got {images}")
        chosen = {index, *[j for j in range(n) if j != index][:int(images) - 1]}
    else:
        chosen = {index, *(int(i) for i in images)}
        if min(chosen) < 0 or max(chosen) >= n:
            raise ValueError(f"images must be indices of the {n} images, got {sorted(chosen)}")
    return sorted(chosen)


def epsilon_explorer(model: nn.Module, x: torch.Tensor, y, classes: Sequence[str], index: int = 0,
                     attack: str = "fgsm", eps_max: float = 0.1, eps: float = 8 / 255,
                     step: float = PIXEL, pgd_steps: int = 10, images: int | Sequence[int] = EXPLORER_IMAGES,
                     precompute: bool = True, static: bool | None = None):
    """Slide ε and watch one test image's prediction flip.

    ``x``, ``y``: test images in [0, 1] (N, C, H, W) and labels (or one image and
    its label); ``index`` picks the image shown first. Controls: ``ui.slider`` (ε, pixel units,
    stops :func:`explorer_grid`: steps of 1/255 up to ``eps_max``), ``ui.attack`` ("fgsm" /
    "pgd"), ``ui.index`` (a menu of the images offered: :func:`offered_images`, ``index`` and
    up to ``images`` in all). With ``precompute`` (default) every ε stop × attack × offered image
    is attacked once, up front (batched: one attack per ε and attack), so every move of the
    controls answers from ``ui.cache``; the same table is the widget's static twin.
    ``update(eps=None, attack=None, index=None)`` (any ε and any image, on the table or not)
    returns ``{"eps", "attack", "index", "label", "label_name", "clean_pred", "clean_pred_name",
    "clean_probs", "pred", "pred_name", "probs", "flipped", "changed", "linf", "cached"}`` where
    ``flipped`` means the clean image was classified correctly and the adversarial one
    is not, ``changed`` that the prediction differs from the clean one, and ``cached`` that
    this (image, attack, ε) was attacked before and answered from ``ui.cache``.
    """
    ipw = _ipywidgets()
    if eps_max <= 0:
        raise ValueError(f"eps_max must be > 0, got {eps_max}")
    static = static_figures() if static is None else static
    xs, ys = _as_batch(x, y)
    dev = _device(model)
    classes = list(classes)
    offered = offered_images(index, len(xs), images)
    stops = explorer_grid(eps_max, step)
    pgd_name = f"PGD-{pgd_steps}"
    model.eval()

    slider = ipw.FloatSlider(value=min(eps, eps_max), min=0.0, max=eps_max, step=step,
                             description="ε", readout_format=".4f", continuous_update=False,
                             layout=ipw.Layout(width="420px"))
    chooser = ipw.Dropdown(options=list(ATTACK_OPTIONS), value=attack, description="attack",
                           layout=ipw.Layout(width="220px"))
    image_options = [(f"{i} ({classes[int(ys[i])]})", i) for i in offered]
    picker = ipw.Dropdown(options=image_options, value=index, description="image",
                          layout=ipw.Layout(width="220px"))
    eps_text = ipw.HTML()
    prediction = ipw.HTML()
    prediction.add_class("dwf-prediction")

    x0 = xs[index:index + 1].to(dev)
    fig = make_figure(adversarial_example_figure(x0[0], x0[0], np.zeros(len(classes)),
                                                 np.zeros(len(classes)), classes, 0.0), static)
    fig.update_layout(title=dict(text=""))
    ui = _panel_class()([ipw.HBox([slider, chooser, picker]), eps_text, prediction], fig, static)
    ui.slider, ui.attack, ui.index, ui.prediction, ui.eps_text = slider, chooser, picker, prediction, eps_text
    ui.grid, ui.images = stops, offered
    cache = ui.cache
    cache.maxsize = max(cache.maxsize, 2 * (len(stops) + 1) * len(offered) + 1024)

    def clean(i: int):
        def compute():
            xi = xs[i:i + 1].to(dev)
            return xi, class_probabilities(model, xi)[0].cpu()
        return cache.get(("clean", i), compute)

    def attacked(a: str, i: int, e: float):
        def compute():
            xi, yi = clean(i)[0], ys[i:i + 1].to(dev)
            x_adv = attack_images(model, xi, yi, a, e, pgd_steps)
            return x_adv, class_probabilities(model, x_adv)[0].cpu()
        return cache.get((a, i, eps_key(e)), compute)

    def fill() -> None:
        """Every (attack, ε stop, offered image) not yet in the cache, one batched attack per (attack, ε)."""
        t0, n_attacks = time.perf_counter(), 0
        xb = torch.cat([clean(i)[0] for i in offered])
        yb = ys[offered].to(dev)
        for a in ("fgsm", "pgd"):
            for e in stops:
                todo = [j for j, i in enumerate(offered) if (a, i, eps_key(e)) not in cache]
                if not todo:
                    continue
                x_adv = attack_images(model, xb[todo], yb[todo], a, e, pgd_steps)
                probs = class_probabilities(model, x_adv).cpu()
                for k, j in enumerate(todo):
                    cache.put((a, offered[j], eps_key(e)), (x_adv[k:k + 1], probs[k]))
                n_attacks += 1
        if n_attacks:
            print(f"ε explorer: FGSM and {pgd_name} on {len(offered)} images at {len(stops)} values of ε "
                  f"({len(stops)} × 2 × {len(offered)} = {2 * len(stops) * len(offered)} states) computed in "
                  f"{time.perf_counter() - t0:.1f} s: every move answers from memory", flush=True)

    def state(a: str, i: int, e: float) -> tuple[dict, Patch]:
        """The numbers and the picture of one (attack, image, ε): what a move there shows."""
        if a not in ("fgsm", "pgd"):
            raise ValueError(f"attack must be 'fgsm' or 'pgd', got {a!r}")
        cached = (a, i, eps_key(e)) in cache
        xi, pc = clean(i)
        x_adv, pa = attacked(a, i, e)
        label, cp, ap = int(ys[i]), int(pc.argmax()), int(pa.argmax())
        res = {"eps": e, "attack": a, "index": i, "label": label, "label_name": classes[label],
               "clean_pred": cp, "clean_pred_name": classes[cp], "clean_probs": pc.numpy(),
               "pred": ap, "pred_name": classes[ap], "probs": pa.numpy(),
               "flipped": cp == label and ap != label, "changed": ap != cp,
               "linf": float((x_adv - xi).abs().max()), "cached": cached}
        name = "FGSM" if a == "fgsm" else pgd_name
        verdict = ("fooled: the prediction changed" if res["changed"]
                   else "not fooled at this ε")
        text = {"eps": (f"<small>{name} at ε = {eps_label(e)} (pixel units; images in [0, 1]); "
                        f"max |δ| = {res['linf']:.4f}</small>"),
                "prediction": (f"prediction: {res['pred_name']} ({100 * float(pa[ap]):.0f}%)"
                               f" | clean image: {res['clean_pred_name']} ({100 * float(pc[cp]):.0f}%)"
                               f" | true label: {html.escape(res['label_name'])} | {verdict}")}
        patch = Patch(data={0: {"z": to_rgb_uint8(xi[0])}, 1: {"z": to_rgb_uint8(x_adv[0])},
                            2: {"z": amplify((x_adv - xi)[0], e if e > 0 else None)},
                            3: {"y": pc.tolist()}, 4: {"y": pa.tolist()}},
                      layout={"annotations[1].text": f"adversarial ({name}, ε = {e:.4f})",
                              "title.text": (f"true: {res['label_name']} — clean → {res['clean_pred_name']}, "
                                             f"adversarial → {res['pred_name']}")},
                      text=text)
        return res, patch

    def update(eps: float | None = None, attack: str | None = None, index: int | None = None) -> dict:
        e = float(slider.value if eps is None else eps)
        a = chooser.value if attack is None else attack
        i = int(picker.value if index is None else index)
        res, patch = state(a, i, e)
        prediction.value, eps_text.value = patch.text["prediction"], patch.text["eps"]
        apply_patch(fig, patch)
        ui.result = res
        ui.redraw()
        return res

    def controls() -> list[Control]:
        eps_options = [(_short_label(s), s) for s in stops]
        return [Control("eps", "ε", eps_options, "slider", _active(eps_options, slider.value)),
                Control("attack", "attack", list(ATTACK_OPTIONS), "buttons",
                        _active(ATTACK_OPTIONS, chooser.value)),
                Control("index", "image", [(f"image {label}", i) for label, i in image_options], "dropdown",
                        _active(image_options, picker.value))]

    def twin_state(v: dict) -> Patch:
        fill()
        return state(v["attack"], v["index"], v["eps"])[1]

    # the twin: the legend moves to the top right, out of the way of the controls below the figure
    ui.table = (controls, twin_state, {"eps": "dwf-eps-line", "prediction": "dwf-prediction"},
                {"legend": {"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "bottom"},
                 "margin": {"t": 90}, "controls_offset": 30})
    if precompute:
        fill()
    for w in (slider, chooser, picker):
        w.observe(lambda change: update(), names="value")
    update()
    return ui, fig, update


# ---------------------------------------------------------- gate heatmap --
def heatmap_grid(eps_max: float, levels: Sequence[float] = HEATMAP_LEVELS) -> list[float]:
    """The ε values the gate heatmap's slider stops at: ``k/255`` for ``k`` in ``levels``
    up to ``eps_max``, then ``eps_max`` itself."""
    grid = sorted({k / 255 for k in levels if k / 255 < eps_max - 1e-9} | {0.0})
    return grid + [float(eps_max)]


def _mixture_view(mixture: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One forward pass: gate weights, each expert's own verdict and the mixture's, on the CPU."""
    with attacks.attack_mode(mixture), torch.no_grad():
        out = mixture.forward_details(x)
    y = y.cpu()
    expert_pred = out.expert_logits.argmax(2).cpu()
    mixture_pred = out.logits.argmax(1).cpu()
    return {"weights": out.weights.float().cpu().numpy(), "expert_pred": expert_pred.numpy(),
            "expert_right": (expert_pred == y[:, None]).numpy(), "pred": mixture_pred.numpy(),
            "right": (mixture_pred == y).numpy()}


def colour_range(weights: Sequence[np.ndarray], n_experts: int) -> tuple[float, float]:
    """(zmin, zmax) centred on the uniform weight 1/n: half-width the largest distance of any
    weight from 1/n, at most 1/n (so zmin >= 0; weights above 2/n share the darkest red) and
    at least 1e-3 (a uniform gate is all white, not noise)."""
    u = 1.0 / n_experts
    d = max((float(np.abs(np.asarray(w) - u).max()) for w in weights), default=0.0)
    d = min(max(d, 1e-3), u)
    return u - d, u + d


def _heatmap_figure(names: Sequence[str], n: int, kinds: Sequence[str], row_labels: Sequence[str]) -> go.Figure:
    """The heatmap's skeleton: per input kind, inputs × experts weights plus a 'mixture' column
    of verdict marks; :func:`_paint` fills in the numbers."""
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=list(kinds), shared_yaxes=True,
                        horizontal_spacing=0.03)
    rows = list(range(n))
    for j, k in enumerate(kinds):
        fig.add_trace(go.Heatmap(x=list(names), y=rows, z=np.zeros((n, len(names))), colorscale=DIVERGING,
                                 showscale=(j == len(kinds) - 1), xgap=1, ygap=1,
                                 texttemplate="%{text}", textfont=dict(size=11),
                                 hovertemplate="input %{y}, %{x}: w = %{z:.3f}; %{customdata}<extra>"
                                 + html.escape(k) + "</extra>"),
                      row=1, col=j + 1)
    for j, k in enumerate(kinds):
        fig.add_trace(go.Scatter(x=["mixture"] * n, y=rows, mode="text", showlegend=False,
                                 textfont=dict(size=13), hovertemplate="input %{y}: the mixture is %{customdata}"
                                 "<extra>" + html.escape(k) + "</extra>"),
                      row=1, col=j + 1)
    fig.update_xaxes(type="category", tickangle=-45)
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=rows, ticktext=list(row_labels))
    fig.update_yaxes(title_text="test input", row=1, col=1)
    fig.update_layout(title="Gate weights w_i(x): white = uniform 1/n, red above, blue below; "
                            f"{RIGHT} = that expert alone is right", title_font_size=14,
                      height=120 + 24 * n, width=min(1500, 360 * len(kinds) + 160), template=TEMPLATE,
                      margin=dict(l=10, r=10, t=80, b=10))
    return fig


def _heatmap_patch(res: dict, kinds: Sequence[str], titles: Sequence[str], class_name) -> Patch:
    """What the heatmap shows at one ε (``res``): weights, marks, colour range, panel titles."""
    n_exp = len(res["expert_names"])
    zmin, zmax = res["colour_range"]
    u = 1.0 / n_exp
    saturated = zmax < float(max(v.max() for v in res["weights"].values())) - 1e-9
    ticks = dict(tickvals=[zmin, u, zmax],
                 ticktext=[f"{zmin:.3f}", f"1/{n_exp} (uniform)", ("≥ " if saturated else "") + f"{zmax:.3f}"])
    data, layout = {}, {}
    for j, k in enumerate(kinds):
        right, pred = res["expert_right"][k], res["expert_pred"][k]
        data[j] = flatten({"z": res["weights"][k], "zmin": zmin, "zmax": zmax, "zmid": u,
                           "colorbar": {"title": {"text": "w"}, **ticks},
                           "text": np.where(right, RIGHT, "").tolist(),
                           "customdata": [[f"alone {'right' if r else 'wrong'} ({class_name(p)})"
                                           for r, p in zip(rr, pp)] for rr, pp in zip(right, pred)]})
        ok = res["right"][k]
        data[len(kinds) + j] = {"text": [RIGHT if r else WRONG for r in ok],
                                "textfont.color": [RIGHT_COLOR if r else WRONG_COLOR for r in ok],
                                "customdata": [f"{'right' if r else 'wrong'} ({class_name(p)})"
                                               for r, p in zip(ok, res["pred"][k])]}
        layout[f"annotations[{j}].text"] = titles[j]
    return Patch(data=data, layout=layout)


def gate_heatmap(mixture: nn.Module, x: torch.Tensor, y, expert_names: Sequence[str] | None = None,
                 eps_max: float = 0.1, eps: float = 8 / 255, n: int = 16, pgd_steps: int = 10,
                 grid: Sequence[float] | None = None, precompute: bool | None = None,
                 classes: Sequence[str] | None = None, static: bool | None = None):
    """Gate weights for clean, FGSM and PGD versions of ``n`` test inputs; slide ε.

    Rows are inputs, columns experts; both attacks target the whole mixture (gate
    included, white-box). Colours are centred on the uniform weight 1/n (white; red
    above, blue below: :func:`colour_range`, shared by every ε computed so far, so colours
    compare across moves). A ✓ in a cell: that expert's own logits classify that input
    correctly; the last column of each panel is the mixture's own verdict (✓ / ✗).

    The slider stops at ``grid`` (default :func:`heatmap_grid`: 0, 2, 4, 8, 12, 16/255
    and ``eps_max``); every ε computed is kept in ``ui.cache``. ``precompute``
    (default: yes) computes the whole grid before the first display, printing its progress and
    time, so every move answers from memory and the widget's static twin holds every stop;
    ``precompute=False``: each ε is computed the first time it is asked for (the twin computes
    the rest). ``classes`` (optional) names the classes in the hover text and row labels.

    ``update(eps)`` (any ε, on the grid or not) returns ``{"eps", "expert_names", "grid",
    "weights": {"clean", "fgsm", "pgd"} -> (n, n_experts) arrays, "expert_pred" / "expert_right":
    each expert's own prediction / correctness (n, n_experts), "pred" / "right": the mixture's
    (n,), "mean": per-expert mean weight, "entropy": mean gate entropy (nats), "accuracy":
    mixture accuracy (%), "expert_accuracy": each expert's own accuracy (%), "colour_range":
    (zmin, zmax), "cached"}``, every per-kind entry keyed by kind.
    """
    ipw = _ipywidgets()
    if not (hasattr(mixture, "gate_weights") and hasattr(mixture, "forward_details")):
        raise TypeError("gate_heatmap needs a MixtureOfExperts (dwf_lab.mixture.moe)")
    if eps_max <= 0:
        raise ValueError(f"eps_max must be > 0, got {eps_max}")
    static = static_figures() if static is None else static
    precompute = True if precompute is None else precompute
    xs, ys = _as_batch(x, y)
    dev = _device(mixture)
    xs, ys = xs[:n].to(dev), ys[:n].to(dev)
    n = len(xs)
    names = list(expert_names) if expert_names else [f"expert {i}" for i in range(mixture.n_experts)]
    if len(names) != mixture.n_experts:
        raise ValueError(f"{len(names)} expert names for {mixture.n_experts} experts")
    stops = sorted({float(e) for e in (grid if grid is not None else heatmap_grid(eps_max))})
    if not stops or stops[0] < 0 or stops[-1] > 1:
        raise ValueError(f"grid must list ε values in [0, 1], got {list(grid or [])}")
    e0 = min(stops, key=lambda s: abs(s - eps))
    pgd_name = f"PGD-{pgd_steps}"
    kinds = ("clean", "fgsm", "pgd")
    mixture.eval()

    def class_name(c) -> str:
        return html.escape(classes[int(c)]) if classes else f"class {int(c)}"

    row_labels = [f"{i} ({class_name(c)})" if classes else str(i) for i, c in enumerate(ys.tolist())]
    slider = ipw.SelectionSlider(options=[(_short_label(s), s) for s in stops], value=e0, description="ε",
                                 continuous_update=False, layout=ipw.Layout(width="420px"))
    summary = ipw.HTML()
    summary.add_class("dwf-gate-summary")
    fig = make_figure(_heatmap_figure(names, n, ["clean", "FGSM", pgd_name], row_labels), static)
    ui = _panel_class()([slider, summary], fig, static)
    ui.slider, ui.summary = slider, summary
    cache = ui.cache
    clean_view = _mixture_view(mixture, xs, ys)
    timing = {"seconds": [], "precomputed": False}

    def views(e: float) -> dict:
        def compute():
            t0 = time.perf_counter()
            out = {"fgsm": _mixture_view(mixture, attack_images(mixture, xs, ys, "fgsm", e), ys),
                   "pgd": _mixture_view(mixture, attack_images(mixture, xs, ys, "pgd", e, pgd_steps), ys)}
            timing["seconds"].append(time.perf_counter() - t0)
            return out
        return {"clean": clean_view, **cache.get(eps_key(e), compute)}

    def note() -> str:
        t = timing["seconds"]
        if timing["precomputed"]:
            return (f"All {len(stops)} slider stops were computed up front in {sum(t):.0f} s: "
                    "every move answers from memory.")
        per = f" (about {np.median(t):.0f} s on this machine)" if t else ""
        return f"Each ε is computed the first time it is shown{per}, then kept: going back is instant."

    def state(e: float) -> tuple[dict, Patch]:
        """The numbers and the picture at one ε: what a move there shows."""
        cached = eps_key(e) in cache
        v = views(e)
        ws = {k: v[k]["weights"] for k in kinds}
        res = {"eps": e, "expert_names": names, "grid": stops, "weights": ws,
               "expert_pred": {k: v[k]["expert_pred"] for k in kinds},
               "expert_right": {k: v[k]["expert_right"] for k in kinds},
               "pred": {k: v[k]["pred"] for k in kinds}, "right": {k: v[k]["right"] for k in kinds},
               "mean": {k: w.mean(0) for k, w in ws.items()},
               "entropy": {k: float(gate_entropy(torch.from_numpy(w)).mean()) for k, w in ws.items()},
               "accuracy": {k: 100.0 * float(v[k]["right"].mean()) for k in kinds},
               "expert_accuracy": {k: 100.0 * v[k]["expert_right"].mean(0) for k in kinds},
               "colour_range": colour_range([clean_view["weights"]] + [w[k]["weights"] for w in cache.values()
                                                                       for k in ("fgsm", "pgd")], len(names)),
               "cached": cached}
        acc = res["accuracy"]
        titles = [f"clean (mixture {acc['clean']:.0f}%)", f"FGSM ε={e:.3f} (mixture {acc['fgsm']:.0f}%)",
                  f"{pgd_name} ε={e:.3f} (mixture {acc['pgd']:.0f}%)"]
        patch = _heatmap_patch(res, kinds, titles, class_name)
        top = {k: names[int(np.argmax(res["mean"][k]))] for k in kinds}
        patch.text["summary"] = (
            f"<small>ε = {eps_label(e)}. White = the uniform weight 1/{len(names)}, red = more, blue = less; "
            f"{RIGHT} in a cell = that expert alone classifies the input correctly; the last column = the "
            f"mixture ({RIGHT} right, {WRONG} wrong). Mean gate entropy (nats; uniform = "
            f"{np.log(len(names)):.2f}): clean {res['entropy']['clean']:.2f}, FGSM "
            f"{res['entropy']['fgsm']:.2f}, PGD {res['entropy']['pgd']:.2f}. Heaviest expert on "
            f"average: clean → {html.escape(top['clean'])}, FGSM → {html.escape(top['fgsm'])}, "
            f"PGD → {html.escape(top['pgd'])}. {note()}</small>")
        return res, patch

    def update(eps: float | None = None) -> dict:
        res, patch = state(float(slider.value if eps is None else eps))
        apply_patch(fig, patch)
        summary.value = patch.text["summary"]
        ui.result = res
        ui.redraw()
        return res

    def controls() -> list[Control]:
        return [Control("eps", "ε", list(slider.options), "slider", _active(slider.options, slider.value))]

    def twin_state(v: dict) -> Patch:
        for s in stops:          # every stop first: the colour range is shared by all of them
            views(s)
        return state(v["eps"])[1]

    ui.table = (controls, twin_state, {"summary": "dwf-gate-summary"}, {"controls_offset": 90})
    if precompute:
        _precompute(views, e0, stops, n, len(names), pgd_name)
        timing["precomputed"] = True
        slider.continuous_update = True   # every stop is in memory: follow the drag
    slider.observe(lambda change: update(), names="value")
    update()
    return ui, fig, update


def _precompute(views: Callable[[float], dict], first: float, stops: Sequence[float], n: int,
                n_experts: int, pgd_name: str) -> None:
    """Compute every slider stop once (the shown one first), with one progress line and its time."""
    todo = [first] + [s for s in stops if s != first]
    print(f"gate heatmap: computing FGSM and {pgd_name} on {n} inputs through {n_experts} experts at "
          f"{len(todo)} values of ε, once, so that every move answers from memory", flush=True)
    t0 = time.perf_counter()
    for k, e in enumerate(todo, 1):
        views(e)
        spent = time.perf_counter() - t0
        left = f", about {spent / k * (len(todo) - k):.0f} s left" if k < len(todo) else ""
        print(f"\r  {k}/{len(todo)} values of ε in {spent:.0f} s{left}    ", end="", flush=True)
    print(f"\r  done: {len(todo)} values of ε in {time.perf_counter() - t0:.1f} s; every move now answers "
          "from memory", flush=True)
