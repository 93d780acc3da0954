"""The static site of an executed course: pages that load nothing from the internet.

Built from a notebook made here with the outputs an executed course stores (a static plotly
figure as its mime bundle, a widget, a PNG, a banner), so no kernel runs; the real-browser
check of a site built from executed course notebooks is in ``test_browser.py``.
"""
import base64
import json
import re

import nbformat
import plotly.graph_objects as go
import pytest

from dwf_lab.__main__ import main
from dwf_lab.course.display import mime_bundle
from dwf_lab.course.site import PLOTLY_JS, build_site, remote_references

PNG_1PX = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8ffff3f0005fe02fea7d6a4550000000049454e44ae426082")).decode()


def executed_notebook(title: str):
    fig = go.Figure(go.Bar(x=["clean", "FGSM"], y=[90, 40]))
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                            "version_minor": 0},
              "text/plain": "VBox(children=(...))"}
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n## What you will learn\n\n- $\\epsilon$-balls"),
             nbformat.v4.new_code_cell("show(fig)", execution_count=1, outputs=[
                 nbformat.v4.new_output("display_data", data=mime_bundle(fig)),
                 nbformat.v4.new_output("display_data", data=widget),
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
    assert re.search(rf'<script[^>]*src="{PLOTLY_JS}"', page) and "Plotly.newPlot" in page
    assert "open this notebook in JupyterLab" in page and "data:image/png;base64," in page
    assert "$\\epsilon$" in page or "\\epsilon" in page          # math stays as TeX text
    assert "href='01_second.html'" in page and "href='index.html'" in page
    text = index.read_text()
    assert text.index("00 · First") < text.index("01 · Second")
    assert "ran in 12 s" in text and "ran in 2.2 min" in text and "profile <b>smoke</b>" in text


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
