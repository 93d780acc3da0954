"""The executed course as a static site that opens offline: ``runs/<run>/site/``.

:func:`build_site` turns the executed copies in ``runs/<run>/notebooks/`` into
``site/index.html`` (the notebooks in order, one line each, with the time each took from
``course_times.json``) and one ``NN_name.html`` per notebook (nbconvert's HTMLExporter, lab
template), figures included. Nothing is loaded from the internet: plotly.js is written once
beside the pages (``plotly.min.js``) and every figure is redrawn from its stored JSON with it;
the template's require.js, MathJax and mermaid scripts (all from CDNs) are left out, so
equations stay as TeX text; a widget, which needs a kernel, becomes a one-line note; an exercise's
solution cell (tagged ``solution``: its code and what it printed) starts collapsed, in a
``<details>`` block the reader opens, as it does in JupyterLab. Open
``site/index.html`` from the file system (``file://``).
"""
import html
import json
import re
from pathlib import Path

import nbformat
import plotly.io as pio
from jinja2 import DictLoader
from nbconvert import HTMLExporter
from plotly.offline import get_plotlyjs

from dwf_lab.core.io import atomic_write_text

SITE_DIR = "site"
PLOTLY_JS = "plotly.min.js"
TIMES_FILE = "course_times.json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_FILE = re.compile(r"^(\d\d)_[\w\-]+\.ipynb$")

# the lab template, minus everything it would fetch from a CDN, plus plotly.js from the site folder
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}<script src="PLOTLY_JS" charset="utf-8"></script>{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block any_cell scoped -%}
{%- if 'solution' in cell.metadata.get('tags', []) -%}
<details class="dwf-solution"><summary>Solution (click to show)</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock any_cell -%}
""".replace("PLOTLY_JS", PLOTLY_JS)

WIDGET_NOTE = ("<div class='dwf-widget-note' style='padding:6px 10px;border:1px dashed #99a;color:#445;"
               "font-size:13px'>An interactive widget (its controls need a running kernel): open this "
               "notebook in JupyterLab to use it. The figure below it shows its state when the course ran."
               "</div>")
STYLE = """<style>
.dwf-nav{font:14px sans-serif;padding:8px 0 12px;border-bottom:1px solid #ddd;margin-bottom:12px}
.dwf-nav a{margin-right:1.2em}
.dwf-solution{margin:4px 0}.dwf-solution>summary{cursor:pointer;color:#3b6ea8;font:13px sans-serif}
</style>"""


# ------------------------------------------------------------ one notebook --
def notebook_title(nb) -> str:
    """The first markdown heading of a notebook (its title), without the '#'."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def _page_title(path: Path, nb) -> str:
    """The notebook's title, starting with its number ("04 · The mixture of experts")."""
    title = notebook_title(nb) or path.stem
    return title if title.startswith(path.name[:2]) else f"{path.name[:2]} · {title}"


def offline_outputs(nb):
    """A copy of ``nb`` whose outputs need nothing from the internet: each plotly figure as a
    div drawn by the local plotly.js from its stored JSON, each widget as a short note."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))   # a deep copy
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                fig = dict(data[PLOTLY_MIME])
                config = fig.pop("config", None) or {}
                out["data"] = {"text/html": pio.to_html(fig, include_plotlyjs=False, full_html=False,
                                                        config=config, validate=False)}
            elif WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE}
    return nb


def _exporter() -> HTMLExporter:
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"dwf_site.html.j2": TEMPLATE})])
    exporter.template_file = "dwf_site.html.j2"
    return exporter


def remote_references(page: str) -> list[str]:
    """Scripts, styles, images and frames a page would fetch from the network (http, https or
    protocol-relative URLs in src= or <link href=>); links a reader clicks are not fetched."""
    pattern = r"""(?:<(?:script|img|iframe|source|video|audio|embed)\b[^>]*\bsrc|<link\b[^>]*\bhref)\s*=\s*["']((?:https?:)?//[^"']+)"""
    found = re.findall(pattern, page, flags=re.I)
    found += re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')]+)""", page, flags=re.I)
    return found


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    links = ["<a href='index.html'>Course index</a>"]
    if i > 0:
        links.append(f"<a href='{pages[i - 1][0]}'>&larr; {html.escape(pages[i - 1][1])}</a>")
    if i + 1 < len(pages):
        links.append(f"<a href='{pages[i + 1][0]}'>{html.escape(pages[i + 1][1])} &rarr;</a>")
    return f"<nav class='dwf-nav'>{' '.join(links)}</nav>"


def _with_nav(page: str, nav: str) -> str:
    page = page.replace("</head>", STYLE + "\n</head>", 1)
    return re.sub(r"(<main[^>]*>)", lambda m: m.group(1) + nav, page, count=1)


# ------------------------------------------------------------------- times --
def read_times(run_root: Path) -> dict:
    """``course_times.json`` of a run ({} when there is none or it cannot be read)."""
    try:
        data = json.loads((Path(run_root) / TIMES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


# ------------------------------------------------------------------- site --
def build_site(run_root: str | Path, notebooks_dir: str | Path | None = None,
               out_dir: str | Path | None = None, log=None) -> Path:
    """Render the executed notebooks of the run at ``run_root`` as a static site; returns the
    path of its ``index.html``. ``notebooks_dir`` (default ``<run>/notebooks``) holds the
    executed copies, ``out_dir`` (default ``<run>/site``) receives the pages."""
    root = Path(run_root)
    src = Path(notebooks_dir) if notebooks_dir is not None else root / "notebooks"
    out = Path(out_dir) if out_dir is not None else root / SITE_DIR
    executed = sorted(p for p in src.glob("*.ipynb") if NOTEBOOK_FILE.match(p.name)) if src.is_dir() else []
    if not executed:
        raise FileNotFoundError(f"no executed notebooks in {src}: run the course first "
                                "(python -m dwf_lab course --run NAME), then build its site")
    out.mkdir(parents=True, exist_ok=True)
    js = out / PLOTLY_JS
    plotly_js = get_plotlyjs()
    if not js.exists() or js.stat().st_size != len(plotly_js.encode("utf-8")):
        atomic_write_text(js, plotly_js)
    times = (read_times(root).get("notebooks") or {})
    nbs = [nbformat.read(str(p), as_version=4) for p in executed]
    pages = [(p.stem + ".html", _page_title(p, nb)) for p, nb in zip(executed, nbs)]
    exporter = _exporter()
    rows = []
    for i, (path, nb) in enumerate(zip(executed, nbs)):
        body, _ = exporter.from_notebook_node(offline_outputs(nb), resources={"metadata": {"name": pages[i][1]}})
        body = _with_nav(body, _nav(pages, i))
        remote = remote_references(body)
        if remote:   # never ship a page that would fetch from the network
            raise RuntimeError(f"{path.name}: the page would load {remote[0]} from the network")
        atomic_write_text(out / pages[i][0], body)
        rows.append(_index_row(pages[i], nb, times.get(path.name[:2])))
        if log:
            log(f"[dwf-lab site] {out / pages[i][0]}")
    atomic_write_text(out / "index.html", _index(root, rows, times))
    return out / "index.html"


def _errors(nb) -> int:
    return sum(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _index_row(page: tuple[str, str], nb, timing: dict | None) -> str:
    href, title = page
    took = _seconds(float(timing["seconds"])) if timing and isinstance(timing.get("seconds"), (int, float)) else ""
    failed = " <b style='color:#a00'>(stopped with an error)</b>" if _errors(nb) else ""
    return (f"<li><a href='{html.escape(href)}'>{html.escape(title)}</a>{failed}"
            + (f" <span class='took'>ran in {took}</span>" if took else "") + "</li>")


def _index(root: Path, rows: list[str], times: dict) -> str:
    info = read_times(root)
    total = sum(float(t["seconds"]) for t in times.values() if isinstance(t.get("seconds"), (int, float)))
    meta = []
    if info.get("profile"):
        meta.append(f"profile <b>{html.escape(str(info['profile']))}</b>")
    if info.get("scope"):
        meta.append(f"scope <b>{html.escape(str(info['scope']))}</b>")
    if total:
        meta.append(f"{len(times)} notebook(s) ran in {_seconds(total)} in all")
    if info.get("machine"):
        meta.append(html.escape(str(info["machine"])))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>dwf-lab course: {html.escape(root.name)}</title>
<style>
body{{font:16px/1.5 sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#1d2733}}
li{{margin:.35em 0}} .took{{color:#667;font-size:.9em;margin-left:.6em}} .meta{{color:#556}}
</style></head><body>
<h1>Divided We Fall: the course, as it ran</h1>
<p class="meta">Run <b>{html.escape(root.name)}</b>{'; ' if meta else ''}{'; '.join(meta)}.</p>
<p>Each page is an executed notebook: its text, code and outputs, figures included (they are
interactive: hover, zoom). Equations are shown as TeX. To change and re-run a notebook, open it
in JupyterLab (<code>make run</code>, or <code>python -m dwf_lab course</code>).</p>
<ul style="list-style:none;padding-left:0">
{chr(10).join(rows)}
</ul>
</body></html>
"""
