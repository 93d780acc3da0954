"""A widget's static twin: the same figure, with the same controls, answering from a table.

A course widget (:mod:`dwf_lab.course.widgets`) computes every state its controls reach up
front (ε stops × attacks × images for the ε explorer, ε stops for the gate heatmap) and shows a
state as one :class:`Patch` (figure attributes and HTML lines), made by one function of the
widget: a move of a live control answers from the computed table and applies that Patch to the
live figure (:func:`apply_patch`); the static twin is every Patch of the same table (a
:class:`StateTable`), written out for a page without a kernel:

- :func:`static_twin` (the one function from a widget to its twin) returns a JSON-able dict:
  the widget's figure, its controls as plotly ``sliders`` / ``updatemenus`` (``method: "skip"``:
  plotly draws and moves them, and tells the page), every state as plotly ``update`` arguments
  (trace attributes and layout paths, exactly what the live widget sets) plus the HTML lines
  the widget shows beside its figure, and the images once each (``assets``: PNG data URIs,
  shared by every state that shows the same picture);
- :func:`twin_html` renders it as one self-contained ``<div>``: the figure, its lines, the table
  and a few lines of JavaScript (:data:`TWIN_JS`) that, on every slider or button event, read the
  controls' positions and apply that state with ``Plotly.update``. It needs plotly.js on the page
  (the static site ships it beside the pages) and nothing from the network.

Any widget gets a twin by having ``state_table()`` return a :class:`StateTable` (the course
widgets' panel builds one from its controls and its state function: :func:`state_table`); the
notebook output of a widget carries its twin under :data:`TWIN_MIME` beside the widget view, and
the site (:mod:`dwf_lab.course.site`) renders that, with no code of its own per widget.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import html
import itertools
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

TWIN_MIME = "application/vnd.dwf-lab.twin+json"
TWIN_VERSION = 1
# a figure a widget re-draws in place (its static display); where the twin is shown it stands in for it
WIDGET_FIGURE_META = {"dwf_lab": {"widget_figure": True}}
ASSET = "$asset"
KINDS = ("slider", "buttons", "dropdown")
DIGITS = 5   # significant digits kept for floats in the table (probabilities, gate weights)


@dataclass
class Control:
    """One control of a widget: its ``name`` (the state's key), ``label`` (shown with it),
    ``options`` ((label, value) pairs, in order), ``kind`` ("slider", "buttons" or "dropdown")
    and ``active`` (the index of the option shown first)."""
    name: str
    label: str
    options: list[tuple[str, Any]]
    kind: str = "slider"
    active: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"a control's kind is one of {KINDS}, got {self.kind!r}")
        if not self.options:
            raise ValueError(f"control {self.name!r} has no options")
        self.options = [(str(label), value) for label, value in self.options]
        if not 0 <= self.active < len(self.options):
            raise ValueError(f"control {self.name!r}: active {self.active} is not an option index")

    @property
    def values(self) -> list:
        return [v for _, v in self.options]


@dataclass
class Patch:
    """What one state sets: ``data`` {trace index: {attribute path: value}} and ``layout``
    {layout path: value} (plotly's attribute strings, e.g. ``"textfont.color"``,
    ``"annotations[1].text"``: what :func:`apply_patch` sets on a figure and ``Plotly.update``
    on a page) and ``text`` {line name: HTML} (the lines a widget shows beside its figure)."""
    data: dict[int, dict[str, Any]] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)


def flatten(props: dict, prefix: str = "") -> dict[str, Any]:
    """Nested attribute dicts as plotly attribute strings: ``{"colorbar": {"title": {"text": "w"}}}``
    -> ``{"colorbar.title.text": "w"}`` (lists and arrays are values, never flattened)."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def apply_patch(fig, patch: Patch) -> None:
    """Set ``patch`` on a plotly figure (a ``go.Figure`` or a live ``go.FigureWidget``)."""
    with fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext():
        for i, props in patch.data.items():
            for path, value in props.items():
                fig.data[i][path] = value
        for path, value in patch.layout.items():
            fig.layout[path] = value


@dataclass
class StateTable:
    """Every state of a widget: ``figure`` (its figure, any state), ``controls`` (in order),
    ``states`` {(option index of each control): Patch} (every combination), ``texts``
    {line name: CSS class} (the HTML lines, in the order shown) and ``layout`` (changes to the
    figure's layout for the twin only: room for the controls)."""
    figure: go.Figure
    controls: list[Control]
    states: dict[tuple[int, ...], Patch]
    texts: dict[str, str] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        want = set(itertools.product(*(range(len(c.options)) for c in self.controls)))
        if set(self.states) != want:
            missing = sorted(want - set(self.states))[:3]
            raise ValueError(f"a state table needs every combination of its controls' options: "
                             f"{len(want)} expected, {len(self.states)} given (missing e.g. {missing})")

    @property
    def active(self) -> tuple[int, ...]:
        return tuple(c.active for c in self.controls)


def state_table(figure, controls: Sequence[Control], state: Callable[[dict], Patch],
                texts: dict[str, str] | None = None, layout: dict | None = None) -> StateTable:
    """A :class:`StateTable` from ``state(values)`` ({control name: option value} -> Patch),
    called once for every combination of the controls' options."""
    controls = list(controls)
    states = {}
    for key in itertools.product(*(range(len(c.options)) for c in controls)):
        values = {c.name: c.options[k][1] for c, k in zip(controls, key)}
        states[key] = state(values)
    fig = go.Figure(figure) if isinstance(figure, go.FigureWidget) else figure
    return StateTable(fig, controls, states, dict(texts or {}), dict(layout or {}))


# ----------------------------------------------------------------- images --
def png_data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a PNG data URI (zlib only; no imaging library)."""
    a = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3|4) image, got shape {a.shape}")
    h, w, c = a.shape
    # filter 'Sub' on every row: neighbouring pixels of a photo differ little, so it compresses better
    d = a.astype(np.int16)
    sub = np.concatenate([d[:, :1], d[:, 1:] - d[:, :-1]], axis=1).astype(np.uint8)
    raw = b"".join(b"\x01" + sub[r].tobytes() for r in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class _Assets:
    """Images by content: the same picture in many states is stored once."""

    def __init__(self):
        self.uris: dict[str, str] = {}
        self.by_hash: dict[str, str] = {}

    def add(self, rgb) -> dict:
        a = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        h = hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()
        if h not in self.by_hash:
            name = f"i{len(self.by_hash)}"
            self.by_hash[h] = name
            self.uris[name] = png_data_uri(a)
        return {ASSET: self.by_hash[h]}


def _plain(v):
    """JSON-able, floats to :data:`DIGITS` significant digits (numpy arrays, tuples included)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if not np.isfinite(f) else float(f"{f:.{DIGITS}g}")
    return v


# ------------------------------------------------------------------- twin --
def static_twin(widget) -> dict:
    """The static twin of a widget: ``widget.state_table()`` (a :class:`StateTable`) written out
    as a JSON-able dict for :func:`twin_html` (see the module docstring). The one function from
    a widget to its twin: a new widget gets one by answering ``state_table()``."""
    table = widget.state_table() if hasattr(widget, "state_table") else widget
    if not isinstance(table, StateTable):
        raise TypeError(f"{type(widget).__name__} has no state table (state_table() -> StateTable)")
    return twin_spec(table)


def twin_spec(table: StateTable) -> dict:
    """A :class:`StateTable` as the twin's JSON-able dict (:func:`static_twin`)."""
    assets = _Assets()
    fig = json.loads(pio.to_json(table.figure, validate=False))
    image_traces = {i for i, t in enumerate(fig["data"]) if t.get("type") == "image"}

    def value(i: int | None, path: str, v):
        if i in image_traces and path == "z":      # an image: stored once, by reference
            return "source", assets.add(v)
        return path, _plain(v)

    states = {}
    for key, patch in table.states.items():
        data = []
        for i, props in sorted(patch.data.items()):
            data.append([int(i), dict(value(i, p, v) for p, v in props.items())])
        states[",".join(map(str, key))] = {"data": data, "layout": _plain(patch.layout),
                                           "text": dict(patch.text)}
    # the figure itself: its images as references too, then the state shown first set on it
    for i in image_traces:
        z = fig["data"][i].pop("z", None)
        if z is not None:
            fig["data"][i]["source"] = assets.add(np.asarray(table.figure.data[i].z, dtype=np.uint8))
    layout = fig.setdefault("layout", {})
    _place_controls(layout, table)
    first = states[",".join(map(str, table.active))]
    return {"version": TWIN_VERSION, "figure": fig, "assets": assets.uris, "states": states,
            "controls": [{"name": c.name, "kind": c.kind, "index": idx, "size": len(c.options)}
                         for c, idx in zip(table.controls, _control_indices(table.controls))],
            "texts": [{"name": n, "class": cls, "html": first["text"].get(n, "")} for n, cls in table.texts.items()],
            "active": list(table.active)}


def _control_indices(controls: Sequence[Control]) -> list[int]:
    """Each control's index in layout.sliders (sliders) or layout.updatemenus (the others)."""
    n_sliders = n_menus = 0
    out = []
    for c in controls:
        if c.kind == "slider":
            out.append(n_sliders)
            n_sliders += 1
        else:
            out.append(n_menus)
            n_menus += 1
    return out


MENU_ROW = 40      # px: a row of buttons / a dropdown
SLIDER_ROW = 80    # px: a slider with its current value and tick labels


def _merge(into: dict, changes: dict) -> None:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _place_controls(layout: dict, table: StateTable) -> None:
    """The controls as plotly sliders / updatemenus (``method: "skip"``: the page applies the state),
    in rows below the figure (``controls_offset`` px below the plot area, default 40): the menus
    side by side, then each slider; the figure grows to fit, its plot area keeps its height."""
    changes = dict(table.layout)
    below = int(changes.pop("controls_offset", 40))
    _merge(layout, changes)
    menus = [c for c in table.controls if c.kind != "slider"]
    sliders = [c for c in table.controls if c.kind == "slider"]
    extra = (MENU_ROW if menus else 0) + SLIDER_ROW * len(sliders)
    margin = layout.setdefault("margin", {})
    top, bottom = int(margin.get("t", 80)), int(margin.get("b", 80))
    height = int(layout.get("height") or 450)
    plot_h = max(50, height - top - bottom)
    margin["b"] = bottom + below + extra
    layout["height"] = plot_h + top + margin["b"]
    y0 = -below / plot_h
    x = 0.0
    layout["updatemenus"] = []
    for c in menus:
        layout["updatemenus"].append({
            "type": c.kind, "direction": "right" if c.kind == "buttons" else "down", "active": c.active,
            "showactive": True, "x": x, "xanchor": "left", "y": y0, "yanchor": "top", "pad": {"t": 0, "r": 10},
            "buttons": [{"label": label, "method": "skip", "args": [], "name": f"{c.name}:{k}"}
                        for k, (label, _) in enumerate(c.options)]})
        width = max(len(label) for label, _ in c.options) * (len(c.options) if c.kind == "buttons" else 1)
        x += 0.03 + 0.009 * width
    layout["sliders"] = []
    y = y0 - (MENU_ROW if menus else 0) / plot_h
    for c in sliders:
        layout["sliders"].append({
            "active": c.active, "x": 0.0, "len": 1.0, "xanchor": "left", "y": y, "yanchor": "top",
            "pad": {"t": 30, "b": 0}, "currentvalue": {"prefix": f"{c.label} = ", "xanchor": "left"},
            "transition": {"duration": 0},   # the grip jumps: its animation would compete with the redraw
            "steps": [{"label": label, "method": "skip", "args": [], "name": f"{c.name}:{k}"}
                      for k, (label, _) in enumerate(c.options)]})
        y -= SLIDER_ROW / plot_h


def resolved_figure(twin: dict) -> go.Figure:
    """A twin's figure as a plotly figure: its images' data URIs in place and its first state set
    (the figure a page draws first; the controls' moves need :data:`TWIN_JS`)."""
    fig = copy.deepcopy(twin["figure"])
    for t in fig["data"]:
        if isinstance(t.get("source"), dict):
            t["source"] = twin["assets"][t["source"][ASSET]]
    out = go.Figure(fig)
    first = twin["states"][",".join(map(str, twin["active"]))]
    for i, props in first["data"]:
        for path, v in props.items():
            out.data[i][path] = twin["assets"][v[ASSET]] if isinstance(v, dict) and ASSET in v else v
    for path, v in first["layout"].items():
        out.layout[path] = v
    return out


# ------------------------------------------------------------------- page --
# Applies a twin's states on a page: on every slider / button event it reads the controls'
# positions (layout.sliders[i].active, layout.updatemenus[i].active), looks that state up and
# sets it with one Plotly.update; the widget's HTML lines follow. Defined once per page.
TWIN_JS = r"""
if (!window.dwfTwin) {
  window.dwfTwin = function (id) {
    var root = document.getElementById(id);
    var spec = JSON.parse(root.querySelector('script.dwf-twin-spec').textContent);
    var gd = root.querySelector('.dwf-twin-plot');
    var resolve = function (v) {
      return (v && typeof v === 'object' && !Array.isArray(v) && v['$asset'] !== undefined)
        ? spec.assets[v['$asset']] : v;
    };
    spec.figure.data.forEach(function (t) { if (t.source) { t.source = resolve(t.source); } });
    (spec.figure.layout.images || []).forEach(function (im) { im.source = resolve(im.source); });
    var key = function () {
      return spec.controls.map(function (c) {
        var list = c.kind === 'slider' ? gd.layout.sliders : gd.layout.updatemenus;
        return list[c.index].active || 0;
      }).join(',');
    };
    var moves = 0;
    var shown = {};   // what each trace attribute and layout path shows now, as JSON: set only what changes
    var changed = function (key, v) {
      var j = JSON.stringify(v);
      if (shown[key] === j) { return false; }
      shown[key] = j;
      return true;
    };
    var show = function (k) {
      var st = spec.states[k];
      var t0 = performance.now();
      if (!st) { return Promise.resolve(); }
      var byTrace = {};
      st.data.forEach(function (d) {
        Object.keys(d[1]).forEach(function (path) {
          if (changed(d[0] + ':' + path, d[1][path])) { (byTrace[d[0]] = byTrace[d[0]] || {})[path] = d[1][path]; }
        });
      });
      var layout = {};
      Object.keys(st.layout).forEach(function (path) {
        if (changed('layout:' + path, st.layout[path])) { layout[path] = resolve(st.layout[path]); }
      });
      var traces = Object.keys(byTrace).map(Number);
      var update = {};
      traces.forEach(function (t, j) {
        Object.keys(byTrace[t]).forEach(function (path) {
          if (!update[path]) { update[path] = traces.map(function () { return undefined; }); }
          update[path][j] = resolve(byTrace[t][path]);
        });
      });
      Object.keys(st.text).forEach(function (name) {
        var el = root.querySelector('[data-dwf-text="' + name + '"]');
        if (el) { el.innerHTML = st.text[name]; }
      });
      root.setAttribute('data-state', k);
      var drawn = traces.length || Object.keys(layout).length
        ? Plotly.update(gd, update, layout, traces) : Promise.resolve();
      return drawn.then(function () {
        // data-shown: the state drawn; data-ms: that move, from the event to the frame that shows it
        return new Promise(function (done) {
          requestAnimationFrame(function () {
            setTimeout(function () {   // after the frame that shows it
              moves += 1;
              root.setAttribute('data-shown', k);
              root.setAttribute('data-moves', moves);
              root.setAttribute('data-ms', (performance.now() - t0).toFixed(1));
              done();
            }, 0);
          });
        });
      });
    };
    var config = {responsive: true, displaylogo: false};
    return Plotly.newPlot(gd, spec.figure.data, spec.figure.layout, config).then(function () {
      gd.on('plotly_sliderchange', function () { show(key()); });
      gd.on('plotly_buttonclicked', function () { show(key()); });
      return show(key());
    });
  };
}
"""

TWIN_STYLE = ("<style>.dwf-twin{overflow-x:auto}.dwf-twin image{image-rendering:pixelated}.dwf-twin-line{font:13px/1.45 sans-serif;margin:2px 0 2px 8px}"
              ".dwf-twin-note{font:12px sans-serif;color:#667;margin:0 0 4px 8px}</style>")


def _script_json(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def _png_size(uri: str) -> tuple[int, int]:
    """(width, height) of a PNG data URI, from its header."""
    head = base64.b64decode(uri.split(",", 1)[1][:44])
    return struct.unpack(">II", head[16:24])


def _axis_key(ref: str) -> str:
    """'x2' -> 'xaxis2', 'y' -> 'yaxis'."""
    return f"{ref[0]}axis{ref[1:]}"


def page_twin(twin: dict) -> dict:
    """The twin as a page draws it: each image trace (a picture by reference) drawn as a layout
    image on the same axes, its states setting ``images[k].source``. A picture then changes with
    a relayout of the images alone; an image trace would be decoded again on every redraw of
    the figure, which made a move slower (about a third of its time here)."""
    moved = {i: t for i, t in enumerate(twin["figure"]["data"])
             if t.get("type") == "image" and isinstance(t.get("source"), dict) and ASSET in t["source"]}
    if not moved:
        return twin
    fig = copy.deepcopy(twin["figure"])
    layout = fig.setdefault("layout", {})
    images = list(layout.get("images") or [])
    slot = {}
    for i, t in moved.items():
        w, h = _png_size(twin["assets"][t["source"][ASSET]])
        x0, y0, dx, dy = (float(t.get(k, d)) for k, d in (("x0", 0), ("y0", 0), ("dx", 1), ("dy", 1)))
        xr, yr = t.get("xaxis", "x"), t.get("yaxis", "y")
        layout[_axis_key(xr)] = {**layout.get(_axis_key(xr), {}), "range": [x0 - dx / 2, x0 + (w - 0.5) * dx],
                                 "autorange": False}
        layout[_axis_key(yr)] = {**layout.get(_axis_key(yr), {}), "range": [y0 + (h - 0.5) * dy, y0 - dy / 2],
                                 "autorange": False, "scaleanchor": xr, "constrain": "domain"}
        slot[i] = len(images)
        images.append({"source": t["source"], "xref": xr, "yref": yr, "x": x0 - dx / 2, "y": y0 - dy / 2,
                       "sizex": w * dx, "sizey": h * dy, "xanchor": "left", "yanchor": "top",
                       "sizing": "stretch", "layer": "below"})
        fig["data"][i] = {"type": "scatter", "x": [], "y": [], "xaxis": xr, "yaxis": yr, "showlegend": False,
                          "hoverinfo": "skip", "name": t.get("name", "")}
    layout["images"] = images
    states = {}
    for key, st in twin["states"].items():
        data, lay = [], dict(st["layout"])
        for i, props in st["data"]:
            if i in slot:
                if "source" in props:
                    lay[f"images[{slot[i]}].source"] = props["source"]
            else:
                data.append([i, props])
        states[key] = {**st, "data": data, "layout": lay}
    return {**twin, "figure": fig, "states": states}


def twin_html(twin: dict, div_id: str | None = None, note: str | None = None) -> str:
    """One twin as a self-contained HTML fragment (plotly.js must be on the page): the figure
    (:func:`page_twin`), the widget's HTML lines (each with the widget's CSS class, so
    ``.dwf-prediction`` reads the same in the notebook and the site), the table and :data:`TWIN_JS`."""
    twin = page_twin(twin)
    div_id = div_id or "dwf-twin-" + hashlib.sha1(_script_json(twin["active"]).encode()
                                                  + str(id(twin)).encode()).hexdigest()[:10]
    lines = "".join(f"<div class='dwf-twin-line {html.escape(t['class'])}' data-dwf-text='{html.escape(t['name'])}'>"
                    f"{t['html']}</div>" for t in twin.get("texts", []))
    note_html = f"<div class='dwf-twin-note'>{note}</div>" if note else ""
    layout = twin["figure"].get("layout", {})
    size = "".join(f"{k}:{int(layout[k])}px;" for k in ("height", "width") if layout.get(k))
    return (f"{TWIN_STYLE}<div class='dwf-twin' id='{div_id}'>{note_html}"
            f"<div class='dwf-twin-plot plotly-graph-div' style='{size}'></div>{lines}"
            f"<script type='application/json' class='dwf-twin-spec'>{_script_json(twin)}</script>"
            f"<script>{TWIN_JS}\nwindow.dwfTwin('{div_id}');</script></div>")
