"""How the course shows plotly figures: the same way in every setting.

:func:`static_figures` decides between live widgets (plotly >= 6 with anywidget, in a
kernel a Jupyter front end started) and static figures (headless runs; env
``DWF_STATIC_FIGURES`` forces either); :func:`configure_display` picks plotly's renderer;
:func:`make_figure` and :func:`show` display a figure the same way in JupyterLab, in a
papermill/nbval run and in a plain Python session. The figures themselves are built in
:mod:`dwf_lab.reporting.figures`; nothing here trains or attacks.
"""
import json
import os

import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import display

STATIC_ENV = "DWF_STATIC_FIGURES"


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
        import anywidget  # noqa: F401
        import ipywidgets  # noqa: F401
        import plotly
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
    return {"application/vnd.plotly.v1+json": {**json.loads(pio.to_json(fig, validate=False)),
                                                "config": {"responsive": True}},
            "text/html": pio.to_html(fig, include_plotlyjs="cdn", full_html=False)}


def show(fig, display_id: str | bool | None = None):
    """Display a figure in a notebook (a live widget as itself, a static figure as its mime
    bundle); returns the display handle when ``display_id`` is given. Outside a kernel: nothing."""
    if not in_kernel():
        return None
    if isinstance(fig, go.Figure):
        return display(mime_bundle(fig), raw=True, display_id=display_id)
    return display(fig, display_id=display_id)
