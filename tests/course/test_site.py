"""The static site of an executed course: pages that load nothing from the internet.

Built from a notebook made here with the outputs an executed course stores (a static plotly
figure as its mime bundle, a widget, a progress bar, a PNG, equations), so no kernel runs; the
real-browser check of a site built from executed course notebooks is in ``test_browser.py``.
Also: TeX to MathML (every equation of the course's notebooks converts), the front door's
verdict read from evaluation records, and ``python -m dwf_lab site RUN --out DIR``.
"""
import base64
import json
import re

import nbformat
import plotly.graph_objects as go
import pytest

from dwf_lab.__main__ import main
from dwf_lab.course.display import mime_bundle
from dwf_lab.course.runner import NOTEBOOKS_DIR
from dwf_lab.course.site import (
    LAZY,
    PLOTLY_JS,
    build_site,
    markdown_html,
    offline_outputs,
    remote_references,
    tex_to_mathml,
    verdict_numbers,
)
from dwf_lab.course.static import TWIN_MIME, WIDGET_FIGURE_META, Control, Patch, state_table, static_twin

PNG_1PX = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8ffff3f0005fe02fea7d6a4550000000049454e44ae426082")).decode()


def executed_notebook(title: str):
    fig = go.Figure(go.Bar(x=["clean", "FGSM"], y=[90, 40]))
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                            "version_minor": 0},
              "text/plain": "VBox(children=(...))"}
    progress = {"application/vnd.jupyter.widget-view+json": {"model_id": "def", "version_major": 2,
                                                              "version_minor": 0},
                "text/plain": "benign:   0%|          | 0/4 [00:00<?, ?it/s]"}
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n## What you will learn\n\n- $\\epsilon$-balls\n\n"
                                           "$$x_{adv}=x+\\epsilon\\cdot\\operatorname{sign}(\\nabla_x\\ell). \\tag{3}$$"),
             nbformat.v4.new_code_cell("show(fig)", execution_count=1, outputs=[
                 nbformat.v4.new_output("display_data", data=mime_bundle(fig)),
                 nbformat.v4.new_output("display_data", data=widget),
                 nbformat.v4.new_output("display_data", data=progress),
                 nbformat.v4.new_output("display_data", data={"text/markdown": "a table: $\\alpha = 2/255$"}),
                 nbformat.v4.new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "<img>"}),
                 nbformat.v4.new_output("stream", name="stdout", text="clean accuracy 90.0%\n")])]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def run_dir(tmp_path):
    root = tmp_path / "runs" / "r"
    (root / "notebooks").mkdir(parents=True)
    for name, title in [("00_first.ipynb", "00 · First"), ("01_second.ipynb", "01 · Second")]:
        nbformat.write(executed_notebook(title), str(root / "notebooks" / name))
    (root / "course_times.json").write_text(json.dumps(
        {"profile": "smoke", "scope": "core", "notebooks": {"00": {"seconds": 12.0}, "01": {"seconds": 130.0}}}))
    return root


def test_site_pages_load_nothing_from_the_internet(run_dir):
    index = build_site(run_dir)
    site = run_dir / "site"
    assert index == site / "index.html" and (site / PLOTLY_JS).stat().st_size > 1_000_000
    page = (site / "00_first.html").read_text()
    assert remote_references(page) == [] and "cdn.plot.ly" not in page and "mathjax" not in page.lower()
    assert f"js.src = '{PLOTLY_JS}'" in page and "Plotly.newPlot" in page    # loaded by the first figure
    assert not re.search(rf'<script[^>]*src="{PLOTLY_JS}"', page)           # not by the page's head
    assert "open this notebook in JupyterLab" in page and "data:image/png;base64," in page
    assert "0/4 [00:00" not in page                               # a progress bar is left out
    # every equation is MathML: no TeX left, in markdown cells and markdown outputs alike
    assert "$$" not in page and "\\epsilon" not in page and "\\alpha" not in page
    assert page.count("<math") == 3 and 'display="block"' in page and 'class="dwf-tex"' not in page
    assert "href='01_second.html'" in page and "href='index.html'" in page
    # figures are drawn when they come near the view: every drawing script waits for the loader
    drawing = re.findall(r"<script[^>]*>\s*(?:window\.PLOTLYENV|if \(document\.getElementById)", page)
    assert drawing and all(f'type="{LAZY}"' in tag for tag in drawing), drawing
    assert page.count("<script>\n(function () {\n  var lazy") == 1 and page.index("window.dwfDrawAll") > page.index("Plotly.newPlot")
    text = index.read_text()
    assert text.index("00 · First") < text.index("01 · Second")
    assert "ran in 12 s" in text and "ran in 2.2 min" in text and "profile <b>smoke</b>" in text
    # no evaluation records in this run: the front door says where the verdict comes from
    assert "No evaluation results in this run yet" in text


def test_remote_references_are_found():
    page = ('<script src="https://cdn.plot.ly/plotly-3.0.1.min.js"></script>'
            '<link rel="stylesheet" href="//fonts.example/x.css"><img src="local.png">'
            '<a href="https://example.org">a link is not fetched</a>')
    assert remote_references(page) == ["https://cdn.plot.ly/plotly-3.0.1.min.js", "//fonts.example/x.css"]


def test_no_executed_notebooks_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the course first"):
        build_site(tmp_path)


def test_site_command(run_dir, monkeypatch, capsys):
    monkeypatch.setenv("DWF_RUNS_DIR", str(run_dir.parent))
    assert main(["site", "r"]) == 0
    assert str(run_dir / "site" / "index.html") in capsys.readouterr().out
    assert main(["course", "--run", "r", "--site-only"]) == 0
    assert main(["site", "missing"]) == 2
    assert "no run 'missing'" in capsys.readouterr().err


def test_site_command_writes_a_folder_to_hand_out(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DWF_RUNS_DIR", str(run_dir.parent))
    out = tmp_path / "handout"
    assert main(["site", "r", "--out", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"index.html", "00_first.html", "01_second.html", PLOTLY_JS}
    assert not (run_dir / "site").exists()
    # nothing in it points outside it
    for page in out.glob("*.html"):
        text = page.read_text()
        assert remote_references(text) == [] and str(run_dir) not in text and "../" not in text


# ---------------------------------------------------------------- equations --
def test_tex_to_mathml():
    inline = tex_to_mathml(r"\|\delta\|_\infty\le\epsilon")
    assert inline.startswith("<math") and 'display="inline"' in inline and "&#x02264;" in inline   # ≤
    block = tex_to_mathml(r"\Pi_{x,\epsilon}(z)=\begin{cases}z & \text{if } a\\ b & \text{else}\end{cases} \tag{5}",
                          display=True)
    assert 'display="block"' in block and "<mtable" in block and "(5)" in block and "\\" not in block
    assert tex_to_mathml(r"\frac{1}{") .startswith("<code class='dwf-tex'>")        # cannot convert: TeX kept
    html_ = markdown_html("A budget $\\epsilon$, a price of 5 dollars, and\n\n$$\\max_{\\delta}\\ \\ell(x+\\delta)$$\n\n"
                          "`$not math$` in code")
    assert html_.count("<math") == 2 and "$$" not in html_ and "<code>$not math$</code>" in html_


def test_every_equation_of_the_course_is_mathml():
    """Every $...$ and $$...$$ of every course notebook converts (none falls back to TeX text)."""
    n_math = 0
    for path in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown" or "$" not in cell.source:
                continue
            out = markdown_html(cell.source)
            assert "$$" not in out and "dwf-tex" not in out, (path.name, cell.source[:200])
            assert not re.search(r"\$\\", out), (path.name, cell.source[:200])   # no inline TeX left
            n_math += out.count("<math")
    assert n_math >= 50, n_math


# ------------------------------------------------------------------ verdict --
def record(model: str, row: str, metrics: dict) -> dict:
    return {"model": model, "row": row, "seed": 0, "dataset": "synthetic", "n_test": 200, "metrics": metrics,
            "settings": {"pgd_eps": 8 / 255}}


def test_front_door_verdict_in_three_numbers(run_dir):
    eval_dir = run_dir / "eval"
    eval_dir.mkdir()
    (eval_dir / "mixture_seed0.json").write_text(json.dumps(record(
        "mixture", "DWF", {"SA": 80.0, "pgd:10": 45.0, "pgd:20": 41.0, "worst-case": 38.0, "worst-case (all)": 30.5})))
    (eval_dir / "pgd-at_seed0.json").write_text(json.dumps(record(
        "pgd-at", "ResNet-18 (PGD-AT)", {"SA": 78.0, "pgd:20": 47.0, "worst-case": 44.0, "worst-case (all)": 42.5})))
    numbers = verdict_numbers(eval_dir)
    assert [(x["label"], x["metric"], x["mean"], x["notebook"]) for x in numbers] == [
        ("DWF under PGD-20", "pgd:20", 41.0, "05"),
        ("DWF, worst case over every attack run", "worst-case (all)", 30.5, "06"),
        ("PGD-AT (one ResNet-18), worst case over every attack run", "worst-case (all)", 42.5, "06")]
    assert all(x["n"] == 200 and 3 < x["se"] < 4 for x in numbers)
    (run_dir / "report").mkdir()
    (run_dir / "report" / "report.html").write_text("<html><body><h1>r</h1><a href='fig6.html'>6</a></body></html>")
    (run_dir / "report" / "fig6.html").write_text("<html><body>figure</body></html>")
    text = build_site(run_dir).read_text()
    assert "41.0%" in text and "30.5%" in text and "42.5%" in text
    assert "measured in <a href='06_" not in text          # this run's site has no notebook 06 page
    assert "href='report/report.html'" in text and (run_dir / "site" / "report" / "fig6.html").exists()
    assert "href='report/report.html'" in (run_dir / "site" / "00_first.html").read_text()


def test_verdict_without_pgd_at_says_so(tmp_path):
    (tmp_path / "mixture_seed0.json").write_text(json.dumps(record(
        "mixture", "DWF", {"SA": 80.0, "pgd:2": 50.0, "pgd:4": 45.0, "worst-case": 38.0})))
    numbers = verdict_numbers(tmp_path)
    assert numbers[0]["label"] == "DWF under PGD-4" and numbers[1]["metric"] == "worst-case"
    assert numbers[1]["notebook"] == "05" and "missing" in numbers[2]
    assert verdict_numbers(tmp_path / "nothing") == []


# --------------------------------------------------------- widgets' twins --
class ToyWidget:
    """A widget the site has never heard of: two controls, a bar chart and one line of text."""

    def state_table(self):
        controls = [Control("k", "k", [("1", 1), ("2", 2), ("3", 3)]),
                    Control("sign", "sign", [("+", 1), ("−", -1)], kind="dropdown")]

        def state(v):
            return Patch(data={0: {"y": [v["k"] * v["sign"], v["k"]]}}, text={"line": f"<b>{v['k'] * v['sign']}</b>"})
        return state_table(go.Figure(go.Bar(x=["a", "b"], y=[0, 0])), controls, state, texts={"line": "toy-line"})


def test_any_widget_gets_a_twin_and_the_site_renders_it():
    """Any widget answering ``state_table()`` gets a twin, and the site renders it."""
    twin = static_twin(ToyWidget())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("display(toy)", outputs=[
        nbformat.v4.new_output("display_data", data={"text/plain": "Toy()", TWIN_MIME: twin,
                                                     "application/vnd.jupyter.widget-view+json": {"model_id": "x"}}),
        nbformat.v4.new_output("display_data", data={"application/vnd.plotly.v1+json": {"data": [], "layout": {}}},
                               metadata=WIDGET_FIGURE_META),
        nbformat.v4.new_output("display_data", data={"text/plain": "Toy()",
                                                     "application/vnd.jupyter.widget-view+json": {"model_id": "y"}}),
    ])])
    outputs = offline_outputs(nb).cells[0].outputs
    assert len(outputs) == 2                      # the figure the widget re-drew gives way to its twin
    page = outputs[0]["data"]["text/html"]
    assert "class='dwf-twin'" in page and "toy-line" in page and "window.dwfTwin(" in page
    assert "dwf-widget-note" in outputs[1]["data"]["text/html"]    # a widget without a twin: the note
