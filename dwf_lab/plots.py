"""Plotly figures for the course notebooks, and how they are shown.

Every function here returns a plain ``plotly.graph_objects.Figure`` built from
numbers computed elsewhere (``dwf_lab.course``, ``dwf_lab.widgets``); nothing
here trains or attacks. :func:`show` displays a figure the same way in
JupyterLab, in a papermill/nbval run and in a plain Python session.

Images are tensors in [0, 1], (C, H, W) or (H, W, C); grey images are shown as RGB.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

STATIC_ENV = "DWF_STATIC_FIGURES"
TEMPLATE = "plotly_white"
# colours per expert kind (benign / FGSM / PGD) and for the baselines
KIND_COLORS = {"benign": "#4c78a8", "fgsm": "#f58518", "pgd": "#54a24b",
               "fgsm_at": "#e45756", "pgd_at": "#72b7b2", "mixture": "#b279a2"}


# ------------------------------------------------------- how to show figures --
def _flag(value: str | None) -> bool | None:
    if value is None or value.strip() == "":
        return None
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", "static"):
        return True
    if v in ("0", "false", "no", "off", "live", "widget"):
        return False
    return None


def live_widgets_available() -> bool:
    """True when plotly figures can be live widgets: plotly >= 6 with anywidget installed."""
    try:
        import plotly
        import anywidget  # noqa: F401
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return int(plotly.__version__.split(".")[0]) >= 6


def in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and hasattr(ip, "kernel")


def static_figures() -> bool:
    """Should figures be static (plain ``go.Figure``, re-drawn in place) rather than live widgets?

    ``$DWF_STATIC_FIGURES=1`` forces static, ``=0`` forces live widgets (when they
    can work). Otherwise: live only in a kernel that a Jupyter front end started
    (JupyterLab / Notebook set ``$JPY_SESSION_NAME``, VS Code ``$VSCODE_PID``);
    headless runs (papermill, nbval, plain Python) get static figures, which are
    stored in the executed notebook as ordinary outputs.
    """
    forced = _flag(os.environ.get(STATIC_ENV))
    if forced is True:
        return True
    if not live_widgets_available():
        return True
    if forced is False:
        return False
    if not in_kernel():
        return True
    front_end = any(os.environ.get(k) for k in ("JPY_SESSION_NAME", "VSCODE_PID"))
    return not front_end


def configure_display() -> str:
    """Pick plotly's renderer for figures a learner displays directly (``fig.show()``): the
    plotly mime type (JupyterLab, VS Code) plus HTML that loads plotly.js from its CDN (HTML
    viewers), so executed notebooks stay small. Returns the renderer string (unchanged
    outside a kernel)."""
    if in_kernel():
        pio.renderers.default = "plotly_mimetype+notebook_connected"
    return pio.renderers.default


def make_figure(fig: go.Figure, static: bool | None = None):
    """``fig`` as a live ``go.FigureWidget`` or, when static, unchanged."""
    if static is None:
        static = static_figures()
    return fig if static else go.FigureWidget(fig)


def mime_bundle(fig: go.Figure) -> dict:
    """A static figure as a notebook output: the plotly mime type (JupyterLab, VS Code) plus
    HTML loading plotly.js from its CDN (HTML viewers). Unlike plotly's own display this
    works with display ids (so a figure can be re-drawn in place) and emits no extra scripts."""
    import json
    return {"application/vnd.plotly.v1+json": {**json.loads(pio.to_json(fig, validate=False)),
                                                "config": {"responsive": True}},
            "text/html": pio.to_html(fig, include_plotlyjs="cdn", full_html=False)}


def show(fig, display_id: str | bool | None = None):
    """Display a figure in a notebook (a live widget as itself, a static figure as its mime
    bundle); returns the display handle when ``display_id`` is given. Outside a kernel: nothing."""
    if not in_kernel():
        return None
    from IPython.display import display
    if isinstance(fig, go.Figure):
        return display(mime_bundle(fig), raw=True, display_id=display_id)
    return display(fig, display_id=display_id)


# ------------------------------------------------------------------ images --
def to_rgb_uint8(img) -> np.ndarray:
    """An image in [0, 1] as an (H, W, 3) uint8 array (grey becomes RGB)."""
    a = img.detach().cpu().float().numpy() if hasattr(img, "detach") else np.asarray(img, float)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of shape {a.shape}")
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected an image (C, H, W) or (H, W, C), got shape {a.shape}")
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))  # CHW (the kit's layout) -> HWC
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def amplify(delta, eps: float | None = None) -> np.ndarray:
    """A perturbation made visible: grey = 0, white/black = +eps/-eps (per-channel)."""
    d = delta.detach().cpu().float() if hasattr(delta, "detach") else np.asarray(delta, float)
    d = np.asarray(d)
    scale = float(eps) if eps else float(np.abs(d).max())
    scale = scale if scale > 0 else 1.0
    return to_rgb_uint8(0.5 + 0.5 * np.clip(d / scale, -1.0, 1.0))


def image_grid(images: Sequence, titles: Sequence[str] | None = None, cols: int = 8,
               size: int = 110, title: str | None = None) -> go.Figure:
    """A grid of images (each in [0, 1]) with optional captions."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.01, vertical_spacing=0.08 if titles else 0.01)
    for i, img in enumerate(images):
        fig.add_trace(go.Image(z=to_rgb_uint8(img)), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(width=size * cols + 40, height=(size + (22 if titles else 0)) * rows + 60,
                      margin=dict(l=10, r=10, t=50 if title else 30, b=10), title=title,
                      template=TEMPLATE)
    if titles:
        fig.update_annotations(font_size=10)
    return fig


def adversarial_example_figure(x, x_adv, probs_clean, probs_adv, classes: Sequence[str],
                               eps: float, title: str | None = None) -> go.Figure:
    """Clean image, adversarial image, amplified perturbation, and both class distributions."""
    fig = make_subplots(rows=1, cols=4, column_widths=[0.2, 0.2, 0.2, 0.4],
                        subplot_titles=("clean image", f"adversarial (ε = {eps:.4f})",
                                        "perturbation (amplified)", "class probabilities"))
    fig.add_trace(go.Image(z=to_rgb_uint8(x), name="clean"), row=1, col=1)
    fig.add_trace(go.Image(z=to_rgb_uint8(x_adv), name="adversarial"), row=1, col=2)
    fig.add_trace(go.Image(z=amplify(x_adv - x, eps), name="perturbation"), row=1, col=3)
    names = list(classes)
    fig.add_trace(go.Bar(x=names, y=list(map(float, probs_clean)), name="clean",
                         marker_color="#4c78a8"), row=1, col=4)
    fig.add_trace(go.Bar(x=names, y=list(map(float, probs_adv)), name="adversarial",
                         marker_color="#e45756"), row=1, col=4)
    for c in (1, 2, 3):
        fig.update_xaxes(visible=False, row=1, col=c)
        fig.update_yaxes(visible=False, row=1, col=c)
    fig.update_yaxes(range=[0, 1], title_text="probability", row=1, col=4)
    fig.update_layout(barmode="group", height=330, width=1000, template=TEMPLATE, title=title,
                      margin=dict(l=10, r=10, t=60 if title else 40, b=10),
                      legend=dict(orientation="h", y=-0.25, x=0.6))
    return fig


# ------------------------------------------------------------------ curves --
def training_curves_figure(curves: Mapping[str, Mapping[str, list]],
                           title: str = "Training curves") -> go.Figure:
    """Loss and accuracy per epoch, one line per stage.

    ``curves``: ``{stage: {"epoch": [...], "train_loss": [...], "train_acc": [...]}}``
    (:func:`dwf_lab.course.training_curves`). Training accuracy is measured on
    what the stage trains on (adversarial inputs for FGSM/PGD experts).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "training accuracy"))
    for i, (stage, c) in enumerate(curves.items()):
        color = _stage_color(stage, i)
        fig.add_trace(go.Scatter(x=c["epoch"], y=c["train_loss"], mode="lines+markers", name=stage,
                                 legendgroup=stage, line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=c["epoch"], y=[100 * a for a in c["train_acc"]],
                                 mode="lines+markers", name=stage, legendgroup=stage,
                                 showlegend=False, line=dict(color=color)), row=1, col=2)
    fig.update_xaxes(title_text="epoch", dtick=1 if _max_epoch(curves) <= 20 else None)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=2)
    fig.update_layout(title=title, height=380, width=950, template=TEMPLATE)
    return fig


def _max_epoch(curves) -> int:
    return max((max(c["epoch"]) for c in curves.values() if c.get("epoch")), default=1)


_LINE_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6",
                "#9d755d", "#bab0ac", "#eeca3b"]


def _stage_color(stage: str, i: int) -> str:
    return _LINE_COLORS[i % len(_LINE_COLORS)]


def checkpoint_watch_figure(watch: Mapping[str, Mapping[str, list]],
                            title: str = "Accuracy of every epoch's checkpoint") -> go.Figure:
    """Clean / FGSM / PGD accuracy per epoch checkpoint, one colour per stage.

    ``watch``: ``{stage: {"epoch": [...], "clean": [...], "fgsm": [...], "pgd": [...],
    "labels": {"fgsm": "FGSM ε=...", "pgd": "PGD-10"}}}`` in percent
    (:func:`dwf_lab.course.checkpoint_watch`). A PGD line that drops to ~0 while the
    FGSM line climbs is catastrophic overfitting.
    """
    keys = [("clean", "solid", "circle"), ("fgsm", "dot", "diamond"), ("pgd", "dash", "x")]
    fig = go.Figure()
    for i, (stage, w) in enumerate(watch.items()):
        color = _stage_color(stage, i)
        labels = w.get("labels", {})
        for key, dash, symbol in keys:
            if key not in w:
                continue
            fig.add_trace(go.Scatter(
                x=w["epoch"], y=w[key], mode="lines+markers", legendgroup=stage,
                name=f"{stage}: {labels.get(key, key)}", line=dict(color=color, dash=dash),
                marker=dict(symbol=symbol)))
    fig.update_layout(title=title, xaxis_title="epoch (checkpoint)", yaxis_title="accuracy (%)",
                      yaxis_range=[0, 100], height=420, width=950, template=TEMPLATE)
    if max((max(w["epoch"]) for w in watch.values() if w.get("epoch")), default=1) <= 20:
        fig.update_xaxes(dtick=1)
    return fig


def accuracy_bars(rows: Sequence[Mapping], columns: Sequence[str], name_key: str = "model",
                  title: str = "Accuracy (%)") -> go.Figure:
    """Grouped bars: one group per column (clean, FGSM, PGD ...), one bar per model."""
    fig = go.Figure()
    for i, r in enumerate(rows):
        fig.add_trace(go.Bar(x=list(columns), y=[r.get(c) for c in columns], name=str(r[name_key]),
                             marker_color=_stage_color(str(r[name_key]), i)))
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy (%)",
                      yaxis_range=[0, 100], height=380, width=900, template=TEMPLATE)
    return fig


def matrix_figure(matrix, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                  row_title: str = "", col_title: str = "", zmin: float = 0, zmax: float = 100,
                  colorscale: str = "Viridis", fmt: str = ".0f") -> go.Figure:
    """A labelled heatmap with the value written in each cell."""
    z = np.asarray(matrix, dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=list(col_labels), y=list(row_labels), zmin=zmin, zmax=zmax,
                               colorscale=colorscale, texttemplate="%{z:" + fmt + "}",
                               hovertemplate="%{y} → %{x}: %{z:" + fmt + "}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=col_title, yaxis_title=row_title,
                      yaxis_autorange="reversed", template=TEMPLATE,
                      height=max(300, 60 * len(row_labels) + 160),
                      width=max(420, 70 * len(col_labels) + 260))
    return fig


def gate_weights_figure(weights: Mapping[str, np.ndarray], expert_names: Sequence[str],
                        title: str = "Gate weights w_i(x)", zmax: float = 1.0) -> go.Figure:
    """One heatmap (inputs × experts) per input kind, side by side (e.g. clean / FGSM / PGD)."""
    kinds = list(weights)
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True,
                        horizontal_spacing=0.04)
    for j, k in enumerate(kinds):
        w = np.asarray(weights[k], dtype=float)
        fig.add_trace(go.Heatmap(z=w, x=list(expert_names), y=list(range(len(w))), zmin=0,
                                 zmax=zmax, colorscale="Blues", showscale=(j == len(kinds) - 1),
                                 colorbar=dict(title="w"),
                                 hovertemplate="input %{y}, %{x}: w = %{z:.3f}<extra>" + k
                                 + "</extra>"),
                      row=1, col=j + 1)
    fig.update_yaxes(autorange="reversed", title_text="test input", row=1, col=1)
    fig.update_layout(title=title, height=460, width=min(1400, 330 * len(kinds) + 120),
                      template=TEMPLATE)
    return fig


def mean_weights_figure(mean_weights: Mapping[str, Sequence[float]], expert_names: Sequence[str],
                        title: str = "Mean gate weight per expert") -> go.Figure:
    """Grouped bars: mean gate weight of each expert, one bar colour per input kind."""
    colors = {"clean": "#4c78a8", "fgsm": "#f58518", "pgd": "#54a24b"}
    fig = go.Figure()
    for k, vals in mean_weights.items():
        key = k.split()[0].lower()
        fig.add_trace(go.Bar(x=list(expert_names), y=list(map(float, vals)), name=k,
                             marker_color=colors.get(key)))
    n = max(1, len(expert_names))
    fig.add_hline(y=1.0 / n, line_dash="dot", annotation_text="uniform 1/n",
                  annotation_position="top left")
    fig.update_layout(barmode="group", title=title, yaxis_title="mean weight", height=380,
                      width=900, template=TEMPLATE)
    return fig


def curves_figure(x: Sequence, series: Mapping[str, Sequence[float]], title: str,
                  xaxis_title: str, yaxis_title: str = "accuracy (%)",
                  yrange: Iterable[float] | None = (0, 100)) -> go.Figure:
    """Generic lines: one per named series over a shared x."""
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(x), y=list(ys), mode="lines+markers", name=name,
                                 line=dict(color=_stage_color(name, i))))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title,
                      template=TEMPLATE, height=380, width=850)
    if yrange is not None:
        fig.update_yaxes(range=list(yrange))
    return fig
