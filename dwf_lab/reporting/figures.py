"""Plotly figures: every function returns a plain ``plotly.graph_objects.Figure`` built from
numbers computed elsewhere (evaluation, diagnostics, course analyses); nothing here trains or
attacks. Figures 6-7 (:func:`figure_fgsm`, :func:`figure_pgd`) are the paper's; the rest serve
the course and the report. How a figure is shown is :mod:`dwf_lab.course.display`.

Images are tensors in [0, 1], (C, H, W) or (H, W, C); grey images are shown as RGB.
"""
import html
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dwf_lab.evaluation.records import infer_dataset, validated
from dwf_lab.reporting.paper import (
    DATASET_LABELS,
    TABLE2_COLUMNS,
    TABLE3_COLUMNS,
    is_comparable,
    paper_dataset,
    paper_value,
)
from dwf_lab.reporting.tables import FGSM_EPS, FGSM_METRICS, PGD_ITERS, PGD_METRICS, aggregate

TEMPLATE = "plotly_white"


# colours per expert kind (benign / FGSM / PGD) and for the baselines
KIND_COLORS = {"benign": "#4c78a8", "fgsm": "#f58518", "pgd": "#54a24b",
               "fgsm_at": "#e45756", "pgd_at": "#72b7b2", "mixture": "#b279a2"}


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


# ---------------------------------------------------------------- figures --
_PALETTE = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3


def _curve_figure(results, dataset, table: str, xs, metrics, columns,
                  title: str, xaxis_title: str) -> go.Figure:
    results = validated(results)
    dataset = infer_dataset(results, dataset)
    agg = aggregate(results, dataset)
    pds = paper_dataset(dataset)
    paper_label = "paper" + (f", {DATASET_LABELS[pds]}" if pds else "")
    fig = go.Figure()
    for i, (row, mets) in enumerate(agg.items()):
        pts = [(x, mets[m]) for x, m in zip(xs, metrics) if m in mets]
        if not pts:
            continue
        color = _PALETTE[i % len(_PALETTE)]
        fig.add_trace(go.Scatter(
            x=[x for x, _ in pts], y=[c["mean"] for _, c in pts],
            error_y=dict(type="data", array=[c["std"] or 0.0 for _, c in pts], visible=True),
            customdata=[c["n"] for _, c in pts],
            hovertemplate="%{y:.1f}% (n=%{customdata})<extra>" + row + " (ours)</extra>",
            mode="lines+markers", name=f"{row} (ours)", legendgroup=row,
            line=dict(color=color, dash="solid")))
        paper = [(x, paper_value(table, dataset, row, c)) for x, c in zip(xs, columns)]
        paper = [(x, v) for x, v in paper if v is not None and v[0] is not None]
        if paper:
            fig.add_trace(go.Scatter(
                x=[x for x, _ in paper], y=[v[0] for _, v in paper],
                mode="lines+markers", name=f"{row} ({paper_label})", legendgroup=row,
                line=dict(color=color, dash="dash"), marker=dict(symbol="circle-open"),
                hovertemplate="%{y:.2f}%<extra>" + row + f" ({paper_label})</extra>"))
    subtitle = f"dataset: {dataset or 'unknown'}; solid = this run (mean ± std over seeds), " \
               f"dashed = the paper"
    if pds and not is_comparable(dataset):
        subtitle += " — synthetic data: NOT comparable with the paper"
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>{html.escape(subtitle)}</sup>"),
        xaxis=dict(title=dict(text=xaxis_title), tickmode="array", tickvals=list(xs)),
        yaxis=dict(title=dict(text="Robust accuracy (%)"), range=[0, 100]),
        legend=dict(title=dict(text="Model")), template="plotly_white",
        width=900, height=560)
    return fig


def figure_fgsm(results: Iterable[dict], dataset: str | None = None) -> go.Figure:
    """Figure 6: robust accuracy vs FGSM ε (0.01 ... 0.09), one line per row.

    This run's rows are solid with ± std error bars; the paper's matching rows dashed.
    """
    return _curve_figure(results, dataset, "table2", FGSM_EPS, FGSM_METRICS, TABLE2_COLUMNS[1:],
                         "Figure 6: robust accuracy under FGSM",
                         "FGSM ε (pixel units, images in [0, 1])")


def figure_pgd(results: Iterable[dict], dataset: str | None = None) -> go.Figure:
    """Figure 7: robust accuracy vs PGD iterations (10 ... 50), one line per row."""
    return _curve_figure(results, dataset, "table3", PGD_ITERS, PGD_METRICS, TABLE3_COLUMNS[:5],
                         "Figure 7: robust accuracy under PGD",
                         "PGD iterations (ε = 8/255, α = 2/255)")


# ------------------------------------------------------------- figures --
def transfer_heatmap(matrix, names: Sequence[str], title: str | None = None):
    """Heatmap: row = model the attack was crafted on, column = model evaluated (accuracy %)."""
    import plotly.graph_objects as go
    z = matrix.tolist() if hasattr(matrix, "tolist") else [list(r) for r in matrix]
    fig = go.Figure(go.Heatmap(z=z, x=list(names), y=list(names), zmin=0, zmax=100, colorscale="Viridis",
                               text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar={"title": "accuracy %"},
                               hovertemplate="crafted on %{y}<br>evaluated on %{x}<br>%{z:.1f}%<extra></extra>"))
    fig.update_layout(title=title or "Transfer of PGD examples (accuracy %, diagonal = white-box)",
                      xaxis_title="evaluated on", yaxis_title="crafted on", yaxis_autorange="reversed",
                      height=max(350, 45 * len(names) + 150), width=max(450, 55 * len(names) + 250),
                      template=TEMPLATE)
    return fig


def weights_bar(gate_stats: Mapping, title: str | None = None) -> go.Figure:
    """Grouped bars: the gate's mean weight per expert, one colour per input kind (clean, FGSM,
    PGD), from :func:`dwf_lab.evaluation.diagnostics.gate_statistics`; dotted: uniform 1/n."""
    colors = {"clean": "#4c78a8", "fgsm": "#f58518", "pgd": "#54a24b"}
    names = list(gate_stats["experts"])
    fig = go.Figure()
    for kind, st in gate_stats["inputs"].items():
        fig.add_bar(name=f"{st['label']} (entropy {st['entropy']:.2f})", x=names, y=st["mean_weights"],
                    marker_color=colors.get(kind))
    fig.add_hline(y=1.0 / max(1, len(names)), line_dash="dot", annotation_text="uniform 1/n",
                  annotation_position="top left")
    fig.update_layout(barmode="group", yaxis_title="mean gate weight", xaxis_title="expert",
                      title=title or f"Gate weights by input (max entropy log n = "
                                     f"{gate_stats['max_entropy']:.2f})", height=380, width=900,
                      template=TEMPLATE)
    return fig


def expert_accuracy_bar(rows: list[dict], title: str | None = None):
    """Clean and PGD accuracy of each expert and of the mixture."""
    import plotly.graph_objects as go
    names = [r["expert"] for r in rows]
    fig = go.Figure()
    fig.add_bar(name="clean", x=names, y=[r["clean"] for r in rows])
    fig.add_bar(name="PGD (white-box on itself)", x=names, y=[r["pgd"] for r in rows])
    fig.update_layout(barmode="group", yaxis_title="accuracy %", yaxis_range=[0, 100], height=380,
                      title=title or "Each expert alone, and the mixture", template=TEMPLATE)
    return fig


def ablation_bar_chart(table: list[dict], title: str = "Ablations: clean, PGD-20 and worst-case accuracy"):
    """A grouped plotly bar chart of an :func:`ablation_table`."""
    import plotly.graph_objects as go
    fig = go.Figure()
    labels = [r["label"] for r in table]
    for col, name in (("SA", "SA"), ("PGD-20", "PGD-20"), ("worst-case", "Worst case")):
        fig.add_bar(x=labels, y=[r[col]["mean"] for r in table], name=name,
                    error_y=dict(type="data", array=[r[col]["std"] or 0 for r in table], visible=True),
                    hovertemplate="%{x}: %{y:.1f}%<extra>" + name + "</extra>")
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy (%)",
                      yaxis_range=[0, 100], legend_title="metric")
    return fig


def tradeoff_scatter(rows: Sequence[Mapping], attack: str, title: str | None = None,
                     name_key: str = "model") -> go.Figure:
    """Clean accuracy (x) against accuracy under ``attack`` (y), one labelled point per model:
    the robustness-accuracy trade-off of a run's experts, with the mixture among them."""
    fig = go.Figure()
    for i, r in enumerate(rows):
        name = str(r[name_key])
        kind = "mixture" if "mixture" in name.lower() else next(
            (k for k in ("benign", "fgsm", "pgd") if name.lower().startswith(k)), None)
        fig.add_trace(go.Scatter(x=[r["clean"]], y=[r[attack]], mode="markers+text", name=name, text=[name],
                                 textposition="top center",
                                 marker=dict(size=14 if "mixture" in name.lower() else 10,
                                             symbol="star" if "mixture" in name.lower() else "circle",
                                             color=KIND_COLORS.get(kind, _PALETTE[i % len(_PALETTE)]))))
    fig.update_layout(title=title or f"Clean accuracy against accuracy under {attack}",
                      xaxis_title="clean accuracy (%)", yaxis_title=f"accuracy under {attack} (%)",
                      template=TEMPLATE, height=420, width=640, showlegend=False)
    fig.update_xaxes(range=[0, 100])
    fig.update_yaxes(range=[0, 100])
    return fig


def convergence_figure(curves: Mapping[str, Sequence[Mapping]],
                       title: str = "Robust accuracy against attack compute: the worst case at the budget and at "
                                    "twice it") -> go.Figure:
    """Per model (``curves``: label -> the rows of :meth:`dwf_lab.evaluation.convergence.Convergence.rows`),
    the per-example worst case's robust accuracy against the attacks' work in passes per image: the
    profile's budget, twice it, and both per example. A flat line is a worst case that has converged."""
    fig = go.Figure()
    for i, (name, rows) in enumerate(curves.items()):
        rows = sorted(rows, key=lambda r: r["passes per image"])
        fig.add_trace(go.Scatter(x=[r["passes per image"] for r in rows], y=[r["robust accuracy (%)"] for r in rows],
                                 mode="lines+markers+text", name=name, text=[r["budget"].split(" (")[0] for r in rows],
                                 textposition="top center", line=dict(color=_PALETTE[i % len(_PALETTE)])))
    fig.update_layout(title=title, xaxis_title="attack work (passes per image, log scale)",
                      yaxis_title="robust accuracy, worst case (%)", template=TEMPLATE, height=420, width=760)
    fig.update_xaxes(type="log")
    fig.update_yaxes(rangemode="tozero")
    return fig
