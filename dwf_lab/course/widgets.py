"""Interactive widgets of the course: the ε explorer and the gate-weight heatmap.

Each factory returns ``(ui, figure, update)``:

- ``ui``: an ipywidgets box to ``display(ui)`` in a notebook. Its controls are
  attributes (``ui.slider``, ``ui.attack``, ...), so a test drives it by
  setting ``ui.slider.value = 0.05`` exactly like a learner dragging it;
- ``figure``: the plotly figure the widget redraws in place: a live
  ``go.FigureWidget`` inside ``ui`` when a front end can show one, else a plain
  ``go.Figure`` displayed beside the controls and re-drawn through its display
  handle (headless runs: papermill, nbval; see :func:`dwf_lab.course.display.static_figures`);
- ``update(...)``: recomputes and returns the numbers behind the picture as a
  dict (also kept as ``ui.result``), so tests never have to read figures.

The prediction line of the ε explorer is an HTML widget with the CSS class
``dwf-prediction`` whose text always starts ``prediction: <class>`` (the class
predicted for the current adversarial image), for browser tests.
"""
import contextlib
import functools
import html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
from IPython.display import display

from dwf_lab import attacks
from dwf_lab.course.display import make_figure, mime_bundle, static_figures
from dwf_lab.evaluation.diagnostics import class_probabilities, gate_weights
from dwf_lab.mixture.moe import gate_entropy
from dwf_lab.reporting.figures import adversarial_example_figure, amplify, gate_weights_figure, to_rgb_uint8

PIXEL = 1 / 255


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as e:  # pragma: no cover - the notebooks extra installs it
        raise ImportError("the course widgets need ipywidgets: pip install 'dwf-lab[notebooks]'") from e
    return ipywidgets


def _batch(fig):
    """``fig.batch_update()`` for a live widget (one message to the browser), else nothing."""
    return fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext()


def eps_label(eps: float) -> str:
    """'0.0314 (8/255)' — ε in pixel units with its nearest k/255 when that is exact-ish."""
    k = eps * 255
    frac = f" ≈ {round(k)}/255" if abs(k - round(k)) < 0.05 and eps > 0 else ""
    return f"{eps:.4f}{frac}"


@functools.lru_cache(maxsize=1)
def _panel_class():
    ipw = _ipywidgets()

    class Panel(ipw.VBox):
        """Controls plus a figure. A live figure is a child of the box; a static one is
        displayed right after the box and re-drawn in place through its display handle."""

        def __init__(self, controls, figure, static: bool, **kw):
            children = list(controls) + ([] if static else [figure])
            super().__init__(children, **kw)
            self.figure = figure
            self.static = static
            self.result: dict = {}
            self._handle = None

        def _ipython_display_(self):
            display(self._repr_mimebundle_(), raw=True)
            if self.static:
                self._handle = display(mime_bundle(self.figure), raw=True, display_id=True)

        def redraw(self) -> None:
            if self.static and self._handle is not None:
                self._handle.update(mime_bundle(self.figure), raw=True)

    return Panel


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
def epsilon_explorer(model: nn.Module, x: torch.Tensor, y, classes: Sequence[str], index: int = 0,
                     attack: str = "fgsm", eps_max: float = 0.1, eps: float = 8 / 255,
                     step: float = PIXEL, pgd_steps: int = 10, static: bool | None = None):
    """Slide ε and watch one test image's prediction flip.

    ``x``, ``y``: test images in [0, 1] (N, C, H, W) and labels (or one image and
    its label); ``index`` picks the image. Controls: ``ui.slider`` (ε, pixel units,
    steps of 1/255), ``ui.attack`` ("fgsm" / "pgd"), ``ui.index`` (which image).
    ``update(eps=None, attack=None, index=None)`` re-attacks and returns
    ``{"eps", "attack", "index", "label", "label_name", "clean_pred", "clean_pred_name",
    "clean_probs", "pred", "pred_name", "probs", "flipped", "changed", "linf"}`` where
    ``flipped`` means the clean image was classified correctly and the adversarial one
    is not, and ``changed`` that the prediction differs from the clean one.
    """
    ipw = _ipywidgets()
    if eps_max <= 0:
        raise ValueError(f"eps_max must be > 0, got {eps_max}")
    static = static_figures() if static is None else static
    xs, ys = _as_batch(x, y)
    dev = _device(model)
    classes = list(classes)
    model.eval()

    slider = ipw.FloatSlider(value=min(eps, eps_max), min=0.0, max=eps_max, step=step,
                             description="ε", readout_format=".4f", continuous_update=False,
                             layout=ipw.Layout(width="420px"))
    chooser = ipw.Dropdown(options=[("FGSM (Eq. 3)", "fgsm"), ("PGD (Eq. 4-5)", "pgd")],
                           value=attack, description="attack", layout=ipw.Layout(width="220px"))
    picker = ipw.BoundedIntText(value=index, min=0, max=len(xs) - 1, description="image",
                                layout=ipw.Layout(width="160px"))
    eps_text = ipw.HTML()
    prediction = ipw.HTML()
    prediction.add_class("dwf-prediction")

    x0 = xs[index:index + 1].to(dev)
    fig = make_figure(adversarial_example_figure(x0[0], x0[0], np.zeros(len(classes)),
                                                 np.zeros(len(classes)), classes, 0.0), static)
    fig.update_layout(title=dict(text=""))
    ui = _panel_class()([ipw.HBox([slider, chooser, picker]), eps_text, prediction], fig, static)
    ui.slider, ui.attack, ui.index, ui.prediction, ui.eps_text = slider, chooser, picker, prediction, eps_text

    def update(eps: float | None = None, attack: str | None = None, index: int | None = None) -> dict:
        e = float(slider.value if eps is None else eps)
        a = chooser.value if attack is None else attack
        i = int(picker.value if index is None else index)
        xi = xs[i:i + 1].to(dev)
        yi = ys[i:i + 1].to(dev)
        x_adv = attack_images(model, xi, yi, a, e, pgd_steps)
        pc, pa = class_probabilities(model, xi)[0].cpu(), class_probabilities(model, x_adv)[0].cpu()
        label, cp, ap = int(yi), int(pc.argmax()), int(pa.argmax())
        res = {"eps": e, "attack": a, "index": i, "label": label, "label_name": classes[label],
               "clean_pred": cp, "clean_pred_name": classes[cp], "clean_probs": pc.numpy(),
               "pred": ap, "pred_name": classes[ap], "probs": pa.numpy(),
               "flipped": cp == label and ap != label, "changed": ap != cp,
               "linf": float((x_adv - xi).abs().max())}
        name = "FGSM" if a == "fgsm" else f"PGD-{pgd_steps}"
        verdict = ("fooled: the prediction changed" if res["changed"]
                   else "not fooled at this ε")
        prediction.value = (f"prediction: {res['pred_name']} ({100 * float(pa[ap]):.0f}%)"
                            f" | clean image: {res['clean_pred_name']} ({100 * float(pc[cp]):.0f}%)"
                            f" | true label: {html.escape(res['label_name'])} | {verdict}")
        eps_text.value = (f"<small>{name} at ε = {eps_label(e)} (pixel units; images in [0, 1]); "
                          f"max |δ| = {res['linf']:.4f}</small>")
        with _batch(fig):
            fig.data[0].z = to_rgb_uint8(xi[0])
            fig.data[1].z = to_rgb_uint8(x_adv[0])
            fig.data[2].z = amplify((x_adv - xi)[0], e if e > 0 else None)
            fig.data[3].y = pc.tolist()
            fig.data[4].y = pa.tolist()
            fig.layout.annotations[1].text = f"adversarial ({name}, ε = {e:.4f})"
            fig.layout.title.text = (f"true: {res['label_name']} — clean → {res['clean_pred_name']}, "
                                     f"adversarial → {res['pred_name']}")
        ui.result = res
        ui.redraw()
        return res

    for w in (slider, chooser, picker):
        w.observe(lambda change: update(), names="value")
    update()
    return ui, fig, update


# ---------------------------------------------------------- gate heatmap --
def gate_heatmap(mixture: nn.Module, x: torch.Tensor, y, expert_names: Sequence[str] | None = None,
                 eps_max: float = 0.1, eps: float = 8 / 255, n: int = 16, pgd_steps: int = 10,
                 step: float = PIXEL, static: bool | None = None):
    """Gate weights for clean, FGSM and PGD versions of ``n`` test inputs; slide ε.

    Rows are inputs, columns experts; both attacks target the whole mixture (gate
    included, white-box). ``update(eps)`` returns ``{"eps", "weights": {"clean",
    "fgsm", "pgd"} -> (n, n_experts) arrays, "mean": per-expert mean weight per kind,
    "entropy": mean gate entropy (nats) per kind, "accuracy": mixture accuracy (%) per
    kind}``.
    """
    ipw = _ipywidgets()
    if not hasattr(mixture, "gate_weights"):
        raise TypeError("gate_heatmap needs a MixtureOfExperts (dwf_lab.moe)")
    if eps_max <= 0:
        raise ValueError(f"eps_max must be > 0, got {eps_max}")
    static = static_figures() if static is None else static
    xs, ys = _as_batch(x, y)
    dev = _device(mixture)
    xs, ys = xs[:n].to(dev), ys[:n].to(dev)
    names = list(expert_names) if expert_names else [f"expert {i}" for i in range(mixture.n_experts)]
    if len(names) != mixture.n_experts:
        raise ValueError(f"{len(names)} expert names for {mixture.n_experts} experts")
    mixture.eval()

    slider = ipw.FloatSlider(value=min(eps, eps_max), min=0.0, max=eps_max, step=step,
                             description="ε", readout_format=".4f", continuous_update=False,
                             layout=ipw.Layout(width="420px"))
    summary = ipw.HTML()
    summary.add_class("dwf-gate-summary")

    def accuracy(xa) -> float:
        with torch.no_grad():
            return 100.0 * float((mixture(xa).argmax(1) == ys).float().mean())

    w_clean = gate_weights(mixture, xs)
    acc_clean = accuracy(xs)
    empty = {k: w_clean.numpy() for k in ("clean", "FGSM", f"PGD-{pgd_steps}")}
    fig = make_figure(gate_weights_figure(empty, names), static)
    ui = _panel_class()([slider, summary], fig, static)
    ui.slider, ui.summary = slider, summary

    def update(eps: float | None = None) -> dict:
        e = float(slider.value if eps is None else eps)
        x_f = attack_images(mixture, xs, ys, "fgsm", e)
        x_p = attack_images(mixture, xs, ys, "pgd", e, pgd_steps)
        ws = {"clean": w_clean, "fgsm": gate_weights(mixture, x_f), "pgd": gate_weights(mixture, x_p)}
        acc = {"clean": acc_clean, "fgsm": accuracy(x_f), "pgd": accuracy(x_p)}
        res = {"eps": e, "expert_names": names,
               "weights": {k: v.numpy() for k, v in ws.items()},
               "mean": {k: v.mean(0).numpy() for k, v in ws.items()},
               "entropy": {k: float(gate_entropy(v).mean()) for k, v in ws.items()},
               "accuracy": acc}
        titles = [f"clean (acc {acc['clean']:.0f}%)", f"FGSM ε={e:.3f} (acc {acc['fgsm']:.0f}%)",
                  f"PGD-{pgd_steps} ε={e:.3f} (acc {acc['pgd']:.0f}%)"]
        with _batch(fig):
            for j, k in enumerate(("clean", "fgsm", "pgd")):
                fig.data[j].z = res["weights"][k]
                fig.layout.annotations[j].text = titles[j]
        top = {k: names[int(np.argmax(res["mean"][k]))] for k in res["mean"]}
        summary.value = (
            f"<small>ε = {eps_label(e)}. Mean gate entropy (nats; uniform = "
            f"{np.log(len(names)):.2f}): clean {res['entropy']['clean']:.2f}, FGSM "
            f"{res['entropy']['fgsm']:.2f}, PGD {res['entropy']['pgd']:.2f}. Heaviest expert on "
            f"average: clean → {html.escape(top['clean'])}, FGSM → {html.escape(top['fgsm'])}, "
            f"PGD → {html.escape(top['pgd'])}.</small>")
        ui.result = res
        ui.redraw()
        return res

    slider.observe(lambda change: update(), names="value")
    update()
    return ui, fig, update
