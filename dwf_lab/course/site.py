"""The executed course as a static site that opens offline: ``runs/<run>/site/``.

:func:`build_site` turns the executed copies in ``runs/<run>/notebooks/`` into one
``NN_name.html`` per notebook (nbconvert's HTMLExporter, lab template), each linking its
neighbours, and a front door, ``site/index.html``: the course map (each notebook, the time it
took from ``course_times.json`` and one line on what it teaches), the run's verdict in three
numbers read from its evaluation records (DWF under PGD-20, DWF's worst case, PGD-AT's worst
case), each linking the page that measured it, and a link to the run's report (copied in as
``report/``). ``python -m dwf_lab site RUN --out DIR`` writes it anywhere: the folder is
self-contained, to copy to a static host or zip and hand out.

Nothing is loaded from the internet: plotly.js is written once beside the pages
(``plotly.min.js``) and every figure is redrawn from its stored JSON with it; the template's
require.js, MathJax and mermaid scripts (all from CDNs) are left out. Instead:

- **equations** are converted from TeX to MathML when the site is built (:func:`tex_to_mathml`,
  latex2mathml), which browsers typeset natively;
- **widgets** keep working: a widget's output carries its static twin
  (:mod:`dwf_lab.course.static`: every state its controls reach, computed by the widget when it
  ran), rendered as a plotly figure whose sliders and menus switch between those states; the
  figure the widget re-drew in the executed notebook gives way to it. A widget without a twin
  becomes a one-line note, a progress bar is left out;
- an exercise's solution cell (tagged ``solution``: its code and what it printed) starts
  collapsed, in a ``<details>`` block the reader opens, as it does in JupyterLab.

Open ``site/index.html`` from the file system (``file://``).
"""
import html
import json
import re
from pathlib import Path

import nbformat
import plotly.io as pio
from jinja2 import DictLoader, pass_context
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from plotly.offline import get_plotlyjs

from dwf_lab.core.io import atomic_write_text
from dwf_lab.course.plan import NOTEBOOK_PLANS
from dwf_lab.course.static import TWIN_MIME, twin_html
from dwf_lab.evaluation import keys as K
from dwf_lab.evaluation.records import load_results
from dwf_lab.reporting.noise import run_cells
from dwf_lab.reporting.readings import PGD_AT, verdict

SITE_DIR = "site"
PLOTLY_JS = "plotly.min.js"
TIMES_FILE = "course_times.json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_FILE = re.compile(r"^(\d\d)_[\w\-]+\.ipynb$")

# the lab template, minus everything it would fetch from a CDN, plus plotly.js from the site folder
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
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

REPORT_DIR = "report"
TWIN_NOTE = ("A static copy of the widget: its controls switch between the states the widget computed "
             "when the course ran (in JupyterLab the same widget runs live).")
# a tqdm progress bar is a widget too; its stored text is its first state (0%), so it is left out
PROGRESS_BAR = re.compile(r"\d+%\|")
WIDGET_NOTE = ("<div class='dwf-widget-note' style='padding:6px 10px;border:1px dashed #99a;color:#445;"
               "font-size:13px'>An interactive widget (its controls need a running kernel): open this "
               "notebook in JupyterLab to use it. The figure below it shows its state when the course ran."
               "</div>")
STYLE = """<style>
.dwf-nav{font:14px sans-serif;padding:8px 0 12px;border-bottom:1px solid #ddd;margin-bottom:12px}
.dwf-nav a{margin-right:1.2em}
.dwf-solution{margin:4px 0}.dwf-solution>summary{cursor:pointer;color:#3b6ea8;font:13px sans-serif}
math{font-size:1.15em} math[display=block]{margin:.6em 0}
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
    div drawn by the local plotly.js from its stored JSON; each widget as its static twin
    (:func:`dwf_lab.course.static.twin_html`; the figure it re-drew is left out: the twin shows
    it) or, without one, a short note; a progress bar left out."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))   # a deep copy
    for c, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        twin_shown = any(TWIN_MIME in (out.get("data") or {}) for out in outputs)
        kept = []
        for k, out in enumerate(outputs):
            data = out.get("data")
            if not data:
                kept.append(out)
                continue
            if twin_shown and ((out.get("metadata") or {}).get("dwf_lab") or {}).get("widget_figure"):
                continue
            if PLOTLY_MIME in data:
                fig = dict(data[PLOTLY_MIME])
                config = fig.pop("config", None) or {}
                out["data"] = {"text/html": lazy_scripts(pio.to_html(fig, include_plotlyjs=False, full_html=False,
                                                                     config=config, validate=False))}
            elif TWIN_MIME in data:
                out["data"] = {"text/html": lazy_scripts(twin_html(data[TWIN_MIME], f"dwf-twin-{c}-{k}",
                                                                   note=TWIN_NOTE))}
            elif WIDGET_MIME in data:
                if PROGRESS_BAR.search(str(data.get("text/plain", ""))):
                    continue
                out["data"] = {"text/html": WIDGET_NOTE}
            kept.append(out)
        cell["outputs"] = kept
    return nb


# -------------------------------------------------------------- equations --
def tex_to_mathml(tex: str, display: bool = False) -> str:
    """TeX as MathML (latex2mathml), which browsers typeset natively: no script, no network. A
    formula it cannot convert stays as its TeX source in ``<code class='dwf-tex'>``."""
    try:
        return latex_to_mathml(tex.strip(), display="block" if display else "inline")
    except Exception:   # latex2mathml raises several kinds on TeX it does not know
        return f"<code class='dwf-tex'>{html.escape(tex)}</code>"


class MathMLRenderer(IPythonRenderer):
    r"""nbconvert's markdown renderer with every ``$...$``, ``$$...$$``, ``\(...\)``, ``\[...\]``
    and ``\begin{env}...\end{env}`` as MathML instead of TeX left for MathJax."""

    def block_math(self, body: str) -> str:
        return tex_to_mathml(body, display=True)

    def inline_math(self, body: str) -> str:
        return tex_to_mathml(body, display=False)

    def latex_environment(self, name: str, body: str) -> str:
        return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)


def markdown_html(source: str) -> str:
    """Markdown as HTML, equations as MathML (as the site renders markdown cells and outputs)."""
    return MarkdownWithMath(renderer=MathMLRenderer(escape=False)).render(source)


class SiteExporter(HTMLExporter):
    """The lab template's HTML exporter, markdown rendered with :class:`MathMLRenderer`."""

    @pass_context
    def markdown2html(self, context, source):
        cell = context.get("cell", {})
        renderer = MathMLRenderer(
            escape=False, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
            path=context.get("resources", {}).get("metadata", {}).get("path", ""),
            anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links,
            **self.lexer_options)
        return MarkdownWithMath(renderer=renderer).render(source)


def _exporter() -> HTMLExporter:
    exporter = SiteExporter(template_name="lab", extra_loaders=[DictLoader({"dwf_site.html.j2": TEMPLATE})])
    exporter.template_file = "dwf_site.html.j2"
    return exporter


def remote_references(page: str) -> list[str]:
    """Scripts, styles, images and frames a page would fetch from the network (http, https or
    protocol-relative URLs in src= or <link href=>); links a reader clicks are not fetched."""
    pattern = r"""(?:<(?:script|img|iframe|source|video|audio|embed)\b[^>]*\bsrc|<link\b[^>]*\bhref)\s*=\s*["']((?:https?:)?//[^"']+)"""
    found = re.findall(pattern, page, flags=re.I)
    found += re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')]+)""", page, flags=re.I)
    return found


def _nav(pages: list[tuple[str, str]], i: int, report: str | None = None) -> str:
    links = ["<a href='index.html'>Course index</a>"]
    if i > 0:
        links.append(f"<a href='{pages[i - 1][0]}' rel='prev'>&larr; {html.escape(pages[i - 1][1])}</a>")
    if i + 1 < len(pages):
        links.append(f"<a href='{pages[i + 1][0]}' rel='next'>{html.escape(pages[i + 1][1])} &rarr;</a>")
    if report:
        links.append(f"<a href='{html.escape(report)}'>The run's report</a>")
    return f"<nav class='dwf-nav'>{' '.join(links)}</nav>"


# Figures are drawn when they come near the screen, not all at load: a page with dozens of figures
# opens at the speed of its first screen. Each figure's (or widget twin's) drawing script is stored
# with type LAZY; the loader runs it once its output scrolls within LAZY_MARGIN of the view, and
# every one of them before printing (window.dwfDrawAll, which the browser test calls too). plotly.js
# itself (4.8 MB to parse) is loaded by the first figure that needs it, not by the page's head.
LAZY = "text/dwf-lazy"
LAZY_MARGIN = "1200px"
LAZY_LOADER = """<script>
(function () {
  var lazy = [].slice.call(document.querySelectorAll('script[type="%s"]'));
  var plotly = null;
  function withPlotly(then) {
    if (window.Plotly) return then();
    if (!plotly) plotly = new Promise(function (done) {
      var js = document.createElement('script');
      js.src = '%s'; js.charset = 'utf-8'; js.onload = done;
      document.head.appendChild(js);
    });
    plotly.then(then);
  }
  function run(s) {
    if (s.getAttribute('data-ran')) return;
    s.setAttribute('data-ran', '1');
    withPlotly(function () {
      var n = document.createElement('script');
      n.text = s.text;
      s.parentNode.insertBefore(n, s.nextSibling);
    });
  }
  window.dwfDrawAll = function () { lazy.forEach(run); };
  window.addEventListener('beforeprint', window.dwfDrawAll);
  if (!('IntersectionObserver' in window)) { window.dwfDrawAll(); return; }
  var seen = new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (!e.isIntersecting) return;
      seen.unobserve(e.target);
      (e.target.dwfScripts || []).forEach(run);
    });
  }, {rootMargin: '%s 0px'});
  lazy.forEach(function (s) {
    var box = s.parentElement;
    box.dwfScripts = (box.dwfScripts || []).concat([s]);
    seen.observe(box);
  });
})();
</script>""" % (LAZY, PLOTLY_JS, LAZY_MARGIN)


def lazy_scripts(fragment: str) -> str:
    """An output's drawing scripts (plotly's ``<script type="text/javascript">``, a twin's
    ``<script>``) stored for :data:`LAZY_LOADER` instead of run at load; data scripts stay."""
    return re.sub(r'<script(?: type="text/javascript")?>', f'<script type="{LAZY}">', fragment)


def _with_nav(page: str, nav: str) -> str:
    page = page.replace("</head>", STYLE + "\n</head>", 1)
    page = page.replace("</body>", LAZY_LOADER + "\n</body>", 1)
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
    executed copies, ``out_dir`` (default ``<run>/site``) receives the pages, the run's report
    (``report/``, when the run has one) and plotly.js: a folder that opens as it is anywhere."""
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
    report = copy_report(root / REPORT_DIR, out / REPORT_DIR, plotly_js)
    exporter = _exporter()
    rows = []
    for i, (path, nb) in enumerate(zip(executed, nbs)):
        body, _ = exporter.from_notebook_node(offline_outputs(nb), resources={"metadata": {"name": pages[i][1]}})
        body = _with_nav(body, _nav(pages, i, report))
        remote = remote_references(body)
        if remote:   # never ship a page that would fetch from the network
            raise RuntimeError(f"{path.name}: the page would load {remote[0]} from the network")
        atomic_write_text(out / pages[i][0], body)
        rows.append(_index_row(pages[i], nb, times.get(path.name[:2])))
        if log:
            log(f"[dwf-lab site] {out / pages[i][0]}")
    by_number = {path.name[:2]: page for path, page in zip(executed, pages)}
    numbers = verdict_numbers(root / "eval")
    atomic_write_text(out / "index.html", _index(root, rows, times, numbers, by_number, report))
    return out / "index.html"


# ----------------------------------------------------------------- report --
def _local_plotly(page: str, plotly_js: str, src: str) -> str:
    """A page with plotly.js written into it (``include_plotlyjs=True``) loading it from ``src``
    instead, so the site holds plotly.js once."""
    at = page.find(plotly_js)
    if at < 0:
        return page
    start, end = page.rfind("<script", 0, at), page.find("</script>", at + len(plotly_js))
    if start < 0 or end < 0:
        return page
    return page[:start] + f'<script src="{src}" charset="utf-8"></script>' + page[end + len("</script>"):]


def copy_report(report_dir: Path, dest: Path, plotly_js: str) -> str | None:
    """Copy the run's report (``report.html`` and the local files it links: its figures) into
    ``dest``, the figures loading the site's plotly.js; returns the report's path relative to the
    site (None when the run has no report yet)."""
    page = report_dir / "report.html"
    if not page.is_file():
        return None
    text = page.read_text(encoding="utf-8")
    dest.mkdir(parents=True, exist_ok=True)
    nav = ("<nav class='dwf-nav' style='font:14px sans-serif;margin-bottom:1em'>"
           "<a href='../index.html'>Course index</a></nav>")
    atomic_write_text(dest / "report.html", re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, text, count=1))
    for name in sorted(set(re.findall(r"""(?:href|src)=["']([\w.\-]+)["']""", text))):
        f = report_dir / name
        if f.is_file() and f.suffix == ".html":
            atomic_write_text(dest / name, _local_plotly(f.read_text(encoding="utf-8"), plotly_js, f"../{PLOTLY_JS}"))
        elif f.is_file():
            (dest / name).write_bytes(f.read_bytes())
    return f"{dest.name}/report.html"


# ---------------------------------------------------------------- verdict --
def _notebook_where(test) -> str | None:
    return next((nb for nb, plan in NOTEBOOK_PLANS.items() if test(plan)), None)


def verdict_numbers(eval_dir: Path) -> list[dict]:
    """The run's verdict in three numbers, from its evaluation records: DWF under PGD-20 (the
    longest PGD-k measured when there is no PGD-20), DWF's per-image worst case and PGD-AT's, over
    the same attacks (every attack run when both have it, else the paper's:
    :func:`dwf_lab.reporting.readings.verdict`). Each ``{"label", "metric", "mean", "se", "n",
    "notebook"}`` (the notebook that measures it: the protocol's, or the adaptive attacks' for the
    worst case over every attack), or ``{"label", "missing"}``; [] without records."""
    try:
        results = load_results(eval_dir)
        cells, v = run_cells(results), verdict(results)
    except (OSError, ValueError):   # no records yet, or records the report cannot read either
        return []
    dwf = cells.get("DWF", {})
    protocol = _notebook_where(lambda plan: plan.evaluates == "all")
    adaptive = _notebook_where(lambda plan: plan.adaptive)

    def number(label: str, row: dict, metric: str | None, missing: str) -> dict:
        if metric is None or metric not in row:
            return {"label": label, "missing": missing}
        c = row[metric]
        return {"label": label, "metric": metric, "mean": c.mean, "se": c.se, "n": c.n, "seeds": c.seeds,
                "notebook": adaptive if metric == K.WORST else protocol}

    pgd = sorted((k for k in map(K.parse, dwf) if k.attack == "pgd" and k.variant is None), key=lambda k: k.steps)
    pgd_key = "pgd:20" if "pgd:20" in dwf else (pgd[-1].text if pgd else None)
    out = [number(f"DWF under {K.parse(pgd_key).label if pgd_key else 'PGD-20'}", dwf, pgd_key,
                  f"not evaluated yet (notebook {protocol})")]
    row = next((r for r in v["rows"] if r["model"] == PGD_AT), None)
    worst = row["metric"] if row else next((m for m in (K.WORST, K.PROTOCOL_WORST) if m in dwf), None)
    what = {K.WORST: "every attack run", K.PROTOCOL_WORST: "the paper's attacks"}.get(worst, "every attack")
    out.append(number(f"DWF, worst case over {what}", dwf, worst, f"not evaluated yet (notebook {protocol})"))
    out.append(number(f"PGD-AT (one ResNet-18), worst case over {what}", cells.get(PGD_AT, {}),
                      worst if row else None, f"not evaluated in this run (notebook {protocol})"))
    return out


# ------------------------------------------------------------------ index --
# what each notebook teaches, in one line (the README's course map); a notebook not listed here
# gets the bold terms of its "What you will learn" list
TEACHES = {
    "00": "adversarial examples within a minute; threat models (capability, adaptivity); FGSM and the PGD "
          "loop written by hand (Eq. 3-5); an ε slider that flips a prediction",
    "01": "standard training; how fragile it is; accuracy under attack as an upper bound",
    "02": "adversarial training as a min-max problem; Algorithm 1 (random ε), one step by hand; "
          "catastrophic overfitting",
    "03": "Algorithm 2 (random iterations), one step by hand; robust overfitting",
    "04": "the gate and the soft mixture (Eq. 1-2), one step of Algorithm 3 by hand, end-to-end training; "
          "gate-weight heatmaps",
    "05": "Tables 2-3 and Figures 6-7 beside the paper's numbers; upper and lower bounds",
    "06": "the official AutoAttack, gate-aware attacks, transfer, the gradient-masking checklist",
    "07": "the uniform ensemble and ablations: what the gate and the experts are worth",
    "08": "the run's verdict from its own numbers, and an audit of the paper's Tables 2-3",
}


def teaches(number: str, nb) -> str:
    """One line on what notebook ``number`` teaches (:data:`TEACHES`, else the bold terms of its
    'What you will learn' list)."""
    if number in TEACHES:
        return TEACHES[number]
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "What you will learn" in cell.source:
            part = cell.source.split("What you will learn", 1)[1]
            terms = list(dict.fromkeys(re.findall(r"\*\*([^*]+)\*\*", part)))
            return "; ".join(terms[:8])
    return ""


def _errors(nb) -> int:
    return sum(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _index_row(page: tuple[str, str], nb, timing: dict | None) -> str:
    href, title = page
    took = _seconds(float(timing["seconds"])) if timing and isinstance(timing.get("seconds"), (int, float)) else ""
    failed = " <b style='color:#a00'>(stopped with an error)</b>" if _errors(nb) else ""
    line = teaches(href[:2], nb)
    return (f"<li><a href='{html.escape(href)}'>{html.escape(title)}</a>{failed}"
            + (f" <span class='took'>ran in {took}</span>" if took else "")
            + (f"<div class='teaches'>{html.escape(line)}</div>" if line else "") + "</li>")


def _verdict_html(numbers: list[dict], pages: dict[str, tuple[str, str]], report: str | None) -> str:
    if not numbers:
        return ("<p class='meta'>No evaluation results in this run yet: the verdict comes from notebooks 05-08.</p>")
    cells = []
    for x in numbers:
        if "missing" in x:
            cells.append(f"<div class='num'><div class='big'>&mdash;</div><div>{html.escape(x['label'])}</div>"
                         f"<div class='where'>{html.escape(x['missing'])}</div></div>")
            continue
        page = pages.get(x["notebook"] or "")
        where = (f"measured in <a href='{html.escape(page[0])}'>{html.escape(page[1])}</a>" if page else
                 f"measured by notebook {x['notebook']}")
        seeds = f", {x['seeds']} seeds" if x.get("seeds", 1) > 1 else ""
        cells.append(f"<div class='num' data-metric='{html.escape(x['metric'])}'><div class='big'>{x['mean']:.1f}%"
                     f"<span class='se'> ± {x['se']:.1f}</span></div><div>{html.escape(x['label'])}</div>"
                     f"<div class='where'>of {x['n']} test images{seeds}; {where}</div></div>")
    link = (f"<p>The reading of these numbers, with every table: <a href='{html.escape(report)}'>the run's "
            "report</a>.</p>") if report else ""
    return (f"<div class='verdict'>{''.join(cells)}</div><p class='meta'>Robust accuracy in % of the test "
            "images, ± one standard error (the test images and, over several runs, the seeds); the worst case "
            "counts an image as robust only if every attack failed on it.</p>" + link)


def _index(root: Path, rows: list[str], times: dict, numbers: list[dict] = (),
           pages: dict[str, tuple[str, str]] | None = None, report: str | None = None) -> str:
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
body{{font:16px/1.5 sans-serif;max-width:56em;margin:2em auto;padding:0 1em;color:#1d2733}}
li{{margin:.5em 0}} .took{{color:#667;font-size:.9em;margin-left:.6em}} .meta{{color:#556}}
.teaches{{color:#445;font-size:.92em}}
.verdict{{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}}
.num{{flex:1 1 14em;border:1px solid #d5dbe3;border-radius:6px;padding:.7em 1em}}
.big{{font-size:2em;font-weight:600}} .se{{font-size:.5em;color:#667;font-weight:400}}
.where{{color:#667;font-size:.85em}}
</style></head><body>
<h1>Divided We Fall: the course, as it ran</h1>
<p class="meta">Run <b>{html.escape(root.name)}</b>{'; ' if meta else ''}{'; '.join(meta)}.</p>
<h2>The verdict, in three numbers</h2>
{_verdict_html(list(numbers), pages or {}, report)}
<h2>The course map</h2>
<p>Each page is an executed notebook: its text, code and outputs. Figures are interactive (hover,
zoom), and so are the widgets: their sliders and menus switch between states computed when the
course ran. Equations are typeset; solutions start folded. To change and re-run a notebook, open
it in JupyterLab (<code>make run</code>, or <code>python -m dwf_lab course</code>).</p>
<ul class="dwf-map" style="list-style:none;padding-left:0">
{chr(10).join(rows)}
</ul>
</body></html>
"""
