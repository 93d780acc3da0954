"""Tables 2-3 and Figures 6-7 of the paper, for this kit's runs, beside the published numbers.

Input: the evaluation files of one run (``runs/<run>/eval/*.json``, one per model
per seed, written by ``dwf_lab.evaluate``)::

    {"model": "dwf", "row": "DWF", "seed": 0, "dataset": "cifar10-subset",
     "n_test": 1017, "metrics": {"SA": 84.1, "fgsm:0.01": 70.2, ..., "pgd:100-a": 27.5,
     "autoattack": 20.0}, "settings": {...}, "elapsed_s": 12.3}

Accuracies are percent; any metric may be missing (shown as "—"). Seeds of one
row are averaged (mean and sample standard deviation). Metrics that the paper's
Tables 2 and 3 have no column for (AutoAttack, per-example worst case, ...) go
into a third table, "Beyond the paper".

Output (:func:`write_report`): report.json, report.md, report.html,
fig6_fgsm.html, fig7_pgd.html, and the figures as PNG when a working exporter
(kaleido) is installed. Every number is as measured; nothing is rescaled or
rounded before it is stored.
"""
from __future__ import annotations

import html
import importlib.util
import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Iterable

import plotly.colors
import plotly.graph_objects as go

from .reference import (COLUMN_FOR_METRIC, DATASET_LABELS, METRIC_FOR_COLUMN, TABLE2_COLUMNS,
                        TABLE3_COLUMNS, TABLE_COLUMNS, comparability_note, is_comparable,
                        paper_dataset, paper_row_order, paper_rows, paper_tables, paper_value)

FGSM_EPS: tuple[float, ...] = tuple(float(c) for c in TABLE2_COLUMNS[1:])   # 0.01 ... 0.09
FGSM_METRICS: tuple[str, ...] = tuple(METRIC_FOR_COLUMN[c] for c in TABLE2_COLUMNS[1:])
PGD_ITERS: tuple[int, ...] = (10, 20, 30, 40, 50)
PGD_METRICS: tuple[str, ...] = tuple(f"pgd:{k}" for k in PGD_ITERS)

TABLE_TITLES = {
    "table2": "Table 2: clean accuracy (SA) and robust accuracy under FGSM, by ε (%)",
    "table3": "Table 3: robust accuracy under PGD (ε = 8/255, α = 2/255), by iterations (%)",
    "beyond": "Beyond the paper: further attacks and checks (%)",
}
DEFAULT_TITLE = "Divided We Fall: this run beside the paper's Tables 2 and 3"
FIGURE_FILES = ("fig6_fgsm", "fig7_pgd")
DASH = "—"


# --------------------------------------------------------------- loading --
def _check_result(data, source: str) -> dict:
    """A validated, normalized copy of one evaluation result; ValueError naming ``source``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{source}: malformed evaluation result: {why}. "
                          "Re-run the evaluation for this model, or remove the file.")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    row = data.get("row") or data.get("model")
    if not isinstance(row, str) or not row:
        raise bad('no "row" (the table label, e.g. "DWF") and no "model" name')
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        raise bad('no "metrics" object (metric name -> accuracy in percent)')
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # not measured
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"metric {key!r} is {value!r}, expected a number (percent) or null")
        if not 0.0 <= value <= 100.0:
            raise bad(f"metric {key!r} = {value} is outside [0, 100]; accuracies are percent")
        clean[key] = float(value)
    out = dict(data)
    out.update(row=row, metrics=clean, source=str(data.get("source", source)))
    return out


def load_results(eval_dir) -> list[dict]:
    """Every ``*.json`` in ``eval_dir`` (sorted by name), validated.

    Each result gets a ``"source"`` key (its path). A file that is not valid JSON
    or not an evaluation result raises one ValueError naming the file.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise FileNotFoundError(f"no evaluation directory {eval_dir}: run the evaluation first")
    files = sorted(eval_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no evaluation results (*.json) in {eval_dir}: "
                                "run the evaluation first")
    results = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: malformed evaluation result: not valid JSON ({err}). "
                             "Re-run the evaluation for this model, or remove the file.") from None
        results.append(_check_result(data, str(path)))
    return results


def _validated(results: Iterable[dict]) -> list[dict]:
    return [_check_result(r, r.get("source", f"result #{i}") if isinstance(r, dict)
                          else f"result #{i}") for i, r in enumerate(results)]


def infer_dataset(results: list[dict], dataset: str | None = None) -> str | None:
    """The one dataset of ``results`` (checked against ``dataset`` when given)."""
    seen = sorted({r["dataset"] for r in results if r.get("dataset")})
    if dataset is None:
        if len(seen) > 1:
            raise ValueError(f"the results mix datasets {seen}; a report covers one dataset "
                             "(pass dataset=..., and keep one dataset per eval directory)")
        return seen[0] if seen else None
    others = [d for d in seen if d != dataset]
    if others:
        files = [r["source"] for r in results if r.get("dataset") in others]
        raise ValueError(f"asked for a {dataset!r} report, but {files[:3]} hold results "
                         f"for {others}; keep one dataset per eval directory")
    return dataset


# ------------------------------------------------------------ aggregation --
def _stats(values: list[float]) -> dict:
    n = len(values)
    return {"mean": sum(values) / n,
            "std": statistics.stdev(values) if n > 1 else None,
            "n": n}


def _row_order(rows_seen: list[str], dataset: str | None) -> list[str]:
    """Rows the paper has (in the paper's order) first, then the kit's rows as first seen."""
    paper = paper_row_order(dataset) if paper_dataset(dataset) else paper_row_order(None)
    return [r for r in paper if r in rows_seen] + [r for r in rows_seen if r not in paper]


def _metric_order(keys_seen: list[str]) -> list[str]:
    canonical = [METRIC_FOR_COLUMN[c] for c in TABLE2_COLUMNS + TABLE3_COLUMNS]
    return [k for k in canonical if k in keys_seen] + [k for k in keys_seen if k not in canonical]


def aggregate(results: Iterable[dict], dataset: str | None = None) -> dict:
    """``{row: {metric: {"mean", "std", "n"}}}`` over the seeds of each row.

    ``std`` is the sample standard deviation (ddof = 1), None for a single seed;
    ``n`` counts the seeds that measured that metric. Rows the paper has come first
    in the paper's order, then the kit's own rows in the order first seen. Two
    files for the same row and seed are an error (they would count twice).
    """
    results = _validated(results)
    dataset = infer_dataset(results, dataset)
    values: dict[str, dict[str, list[float]]] = {}
    keys_seen: list[str] = []
    seeds_seen: dict[tuple, str] = {}
    for r in results:
        seed = r.get("seed")
        if seed is not None:
            other = seeds_seen.setdefault((r["row"], seed), r["source"])
            if other != r["source"]:
                raise ValueError(f"two evaluation results for row {r['row']!r}, seed {seed}: "
                                 f"{other} and {r['source']}; remove one")
        per_metric = values.setdefault(r["row"], {})
        for key, v in r["metrics"].items():
            per_metric.setdefault(key, []).append(v)
            if key not in keys_seen:
                keys_seen.append(key)
    metric_order = _metric_order(keys_seen)
    return {row: {m: _stats(values[row][m]) for m in metric_order if m in values[row]}
            for row in _row_order(list(values), dataset)}


# ----------------------------------------------------------------- tables --
def _seed_key(seed) -> tuple:
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (seed is None, not number, seed if number else 0, str(seed))


# settings that only choose which columns are measured (a missing column reads "—"), never
# how: they may differ across files without a warning
WHICH_ATTACKS = ("fgsm_eps", "pgd_steps", "long")


def _meta(results: list[dict], dataset: str | None) -> dict:
    rows: dict[str, list] = {}
    for r in results:
        rows.setdefault(r["row"], []).append(r.get("seed"))
    all_settings = [r.get("settings") or {} for r in results]
    keys = sorted({k for s in all_settings for k in s})
    shared, differ = {}, []
    for k in keys:
        vals = [json.dumps(s.get(k), sort_keys=True, default=str) for s in all_settings]
        if len(set(vals)) == 1:
            shared[k] = all_settings[0].get(k)
        elif k not in WHICH_ATTACKS:
            differ.append(k)
    elapsed = [r["elapsed_s"] for r in results if isinstance(r.get("elapsed_s"), (int, float))]
    return {
        "dataset": dataset,
        "paper_dataset": paper_dataset(dataset),
        "comparable": is_comparable(dataset),
        "comparability": comparability_note(dataset),
        "n_test": sorted({r["n_test"] for r in results if r.get("n_test") is not None}),
        "seeds": {row: sorted(s, key=_seed_key) for row, s in rows.items()},
        "runs": {row: len(s) for row, s in rows.items()},
        "settings": shared,
        "settings_differ": differ,
        "elapsed_s_total": sum(elapsed) if elapsed else None,
        "files": [r["source"] for r in results],
        "paper_source": paper_tables().get("source"),
    }


def _paper_table(name: str, agg: dict, dataset: str | None) -> dict:
    cols = TABLE_COLUMNS[name]
    prows = paper_rows(name, dataset)
    rows = []
    for row in prows + [r for r in agg if r not in prows]:
        ours = None
        if row in agg and any(METRIC_FOR_COLUMN[c] in agg[row] for c in cols):
            ours = {c: agg[row].get(METRIC_FOR_COLUMN[c]) for c in cols}
        paper = None
        if row in prows:
            paper = {}
            for c in cols:
                value = paper_value(name, dataset, row, c)
                paper[c] = None if value is None else {"mean": value[0], "std": value[1]}
        if ours is not None or paper is not None:
            rows.append({"row": row, "ours": ours, "paper": paper})
    return {"title": TABLE_TITLES[name], "columns": list(cols),
            "metrics": [METRIC_FOR_COLUMN[c] for c in cols], "rows": rows}


def _beyond_table(agg: dict) -> dict:
    cols: list[str] = []
    for mets in agg.values():
        cols += [m for m in mets if m not in COLUMN_FOR_METRIC and m not in cols]
    rows = [{"row": row, "ours": {c: mets.get(c) for c in cols}, "paper": None}
            for row, mets in agg.items() if any(c in mets for c in cols)]
    return {"title": TABLE_TITLES["beyond"], "columns": cols, "metrics": list(cols), "rows": rows}


def build_tables(results: Iterable[dict], dataset: str | None = None) -> dict:
    """The three tables (JSON-able) with the run's metadata.

    ``{"meta": {...}, "table2": T, "table3": T, "beyond": T}`` where each T is
    ``{"title", "columns", "metrics", "rows": [{"row", "ours", "paper"}]}``;
    ``ours`` maps each column to ``{"mean", "std", "n"}`` (None where not measured)
    or is None for a paper-only row; ``paper`` maps each column to
    ``{"mean", "std"}`` or is None for a kit-only row. Every row the paper has for
    the dataset is included, so the run sits beside the whole published table.
    ``dataset=None`` takes it from the results.
    """
    results = _validated(results)
    dataset = infer_dataset(results, dataset)
    agg = aggregate(results, dataset)
    meta = _meta(results, dataset)
    for key in ("seeds", "runs"):  # in table row order
        meta[key] = {row: meta[key][row] for row in agg}
    return {"meta": meta,
            "table2": _paper_table("table2", agg, dataset),
            "table3": _paper_table("table3", agg, dataset),
            "beyond": _beyond_table(agg)}


# ----------------------------------------------------------- formatting --
def fmt_ours(cell: dict | None, runs: int | None = None) -> str:
    """``mean ± std`` with one decimal; no ± for one seed; "(n=k)" if fewer seeds than runs."""
    if not cell:
        return DASH
    text = f"{cell['mean']:.1f}"
    if cell.get("std") is not None:
        text += f" ± {cell['std']:.1f}"
    if runs is not None and cell.get("n", runs) < runs:
        text += f" (n={cell['n']})"
    return text


def fmt_paper(cell: dict | None) -> str:
    """The paper's value as published (two decimals), ``± std`` where it gives one."""
    if not cell or cell.get("mean") is None:
        return DASH
    text = f"{cell['mean']:.2f}"
    if cell.get("std") is not None:
        text += f" ± {cell['std']:.2f}"
    return text


def _settings_line(settings: dict) -> str | None:
    parts = []
    if isinstance(settings.get("pgd_eps"), (int, float)):
        parts.append(f"ε = {settings['pgd_eps']:.4f} (8/255 = {8 / 255:.4f})")
    if isinstance(settings.get("pgd_alpha"), (int, float)):
        parts.append(f"α = {settings['pgd_alpha']:.4f} (2/255 = {2 / 255:.4f})")
    if "random_start" in settings:
        start = "uniform in the ε-ball (Madry et al.)" if settings["random_start"] else "none"
        parts.append(f"random start: {start} — the paper does not say")
    return "PGD: " + ", ".join(parts) if parts else None


def _notes(meta: dict, cells: str) -> list[str]:
    ds = meta.get("dataset")
    pds = meta.get("paper_dataset")
    paper_label = DATASET_LABELS.get(pds, "none") if pds else "none"
    notes = [f"Dataset: {ds or 'unknown'} (paper columns: {paper_label}). "
             f"{meta.get('comparability', '')}"]
    n_test = meta.get("n_test") or []
    if n_test:
        text = ", ".join(str(n) for n in n_test)
        notes.append(f"Test images per evaluation: {text}"
                     + (" (differs across files!)" if len(n_test) > 1 else "") + ".")
    seeds = meta.get("seeds") or {}
    if seeds:
        notes.append("Seeds: " + "; ".join(
            f"{row} {', '.join('?' if s is None else str(s) for s in ss)}"
            for row, ss in seeds.items()) + ".")
    notes.append("Numbers are as measured (accuracy in %): ours = mean ± sample std over seeds, "
                 "one decimal, no ± for a single seed, \"(n=k)\" when only k seeds measured a "
                 "column; paper = as published (DWF: mean ± std over five runs).")
    line = _settings_line(meta.get("settings") or {})
    if line:
        notes.append(line + ".")
    if meta.get("settings_differ"):
        notes.append("Warning: evaluation settings differ across files: "
                     + ", ".join(meta["settings_differ"]) + ".")
    notes.append(f"{cells}; {DASH} = not measured or not reported.")
    return notes


def _table_rows(table: dict, meta: dict):
    """(row label, runs text, [ours text], [paper text] or None) for each row."""
    runs = meta.get("runs") or {}
    for entry in table["rows"]:
        row = entry["row"]
        ours = entry.get("ours")
        ours_cells = [fmt_ours(ours.get(c) if ours else None, runs.get(row))
                      for c in table["columns"]]
        paper = entry.get("paper")
        paper_cells = [fmt_paper(paper.get(c)) for c in table["columns"]] if paper else None
        runs_text = str(runs[row]) if ours and row in runs else "paper only"
        yield row, runs_text, ours_cells, paper_cells, ours is None


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(tables: dict, title: str = DEFAULT_TITLE,
                figures: dict[str, str] | None = None, sections: list[dict] | None = None) -> str:
    """The tables as readable markdown: one line per row, cells "ours / paper".

    ``sections`` (see :func:`write_report`) follow the tables; ``figures``
    (label -> relative link) adds a list of figure links at the end.
    """
    meta = tables.get("meta", {})
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in _notes(meta, 'Cells read "ours / paper"')]
    for key in ("table2", "table3", "beyond"):
        table = tables.get(key)
        if not table or not table["rows"]:
            continue
        has_paper = key != "beyond"
        lines += ["", f"## {table['title']}", ""]
        header = ["Model", "runs"] + list(table["columns"])
        lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
        lines.append("| --- | ---: |" + " ---: |" * len(table["columns"]))
        for row, runs_text, ours, paper, _ in _table_rows(table, meta):
            if has_paper:
                cells = [f"{o} / {p}" for o, p in zip(ours, paper or [DASH] * len(ours))]
            else:
                cells = ours
            label = row if runs_text == "paper only" else f"**{row}**"
            cells = [label, runs_text] + cells
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    for sec in sections or []:
        lines += ["", f"## {sec['title']}", ""]
        lines += [f"- {n}" for n in sec.get("notes", [])]
        lines += [""] if sec.get("notes") else []
        lines.append("| " + " | ".join(_md_escape(c) for c in sec["columns"]) + " |")
        lines.append("| --- |" + " ---: |" * (len(sec["columns"]) - 1))
        lines += ["| " + " | ".join(_md_escape(str(c)) for c in row) + " |" for row in sec["rows"]]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- [{label}]({link})" for label, link in figures.items()]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
.paper { color: #777; font-size: 0.85em; }
tr.paper-only td { color: #777; font-style: italic; }
li { margin: 0.2em 0; }
"""


def to_html(tables: dict, title: str = DEFAULT_TITLE,
            figures: dict[str, str] | None = None, sections: list[dict] | None = None) -> str:
    """A standalone HTML page with the same tables: ours on top, the paper's value below in grey."""
    esc = html.escape
    meta = tables.get("meta", {})
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>", "<ul>"]
    parts += [f"<li>{esc(n)}</li>" for n in _notes(meta, "Cells: this run on top, the paper below")]
    parts.append("</ul>")
    for key in ("table2", "table3", "beyond"):
        table = tables.get(key)
        if not table or not table["rows"]:
            continue
        parts.append(f"<h2>{esc(table['title'])}</h2>")
        parts.append("<table><thead><tr><th>Model</th><th>runs</th>"
                     + "".join(f"<th>{esc(c)}</th>" for c in table["columns"])
                     + "</tr></thead><tbody>")
        for row, runs_text, ours, paper, paper_only in _table_rows(table, meta):
            cls = ' class="paper-only"' if paper_only else ""
            cells = []
            for i, o in enumerate(ours):
                cell = esc(o)
                if key != "beyond":
                    cell += f'<br><span class="paper">{esc(paper[i] if paper else DASH)}</span>'
                cells.append(f"<td>{cell}</td>")
            parts.append(f"<tr{cls}><td>{esc(row)}</td><td>{esc(runs_text)}</td>"
                         + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    for sec in sections or []:
        parts.append(f"<h2>{esc(sec['title'])}</h2>")
        if sec.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in sec["notes"]) + "</ul>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in sec["columns"])
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in sec["rows"]]
        parts.append("</tbody></table>")
    if figures:
        parts.append("<h2>Figures</h2><ul>")
        parts += [f'<li><a href="{esc(link)}">{esc(label)}</a></li>'
                  for label, link in figures.items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- figures --
_PALETTE = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3


def _curve_figure(results, dataset, table: str, xs, metrics, columns,
                  title: str, xaxis_title: str) -> go.Figure:
    results = _validated(results)
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


# ---------------------------------------------------------------- writing --
def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png(fig: go.Figure) -> tuple[bytes | None, str | None]:
    """PNG bytes if an exporter works here, else (None, why)."""
    if importlib.util.find_spec("kaleido") is None:
        return None, "kaleido is not installed"
    try:
        return fig.to_image(format="png", scale=2), None
    except Exception as err:  # any exporter failure (no Chrome, ...): skip the PNG
        return None, f"{type(err).__name__}: {err}".splitlines()[0][:200]


def write_report(eval_dir, out_dir, dataset: str | None = None, title: str = DEFAULT_TITLE,
                 png: bool = True, sections: list[dict] | None = None) -> dict[str, Path]:
    """Read ``eval_dir/*.json``, write the report into ``out_dir``; return {file name: path}.

    ``sections``: further tables after the paper's, each
    ``{"title", "notes": [str], "columns": [str], "rows": [[cell, ...]]}``
    (the run's gradient-masking checklist and ablations: :func:`dwf_lab.pipeline.report_run`).

    Writes report.md, report.html, fig6_fgsm.html, fig7_pgd.html (plotly.js
    embedded: they open offline), fig6_fgsm.png and fig7_pgd.png when ``png`` and
    an exporter works (skipped silently otherwise), and report.json (the tables,
    plus which files were written and why PNGs were skipped). Each file is
    written atomically.
    """
    results = load_results(eval_dir)
    dataset = infer_dataset(results, dataset)
    tables = build_tables(results, dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> None:
        path = out_dir / name
        _write_atomic(path, data.encode("utf-8") if isinstance(data, str) else data)
        written[name] = path

    figures = {"fig6_fgsm": figure_fgsm(results, dataset), "fig7_pgd": figure_pgd(results, dataset)}
    png_note = "not requested" if not png else None
    for stem, fig in figures.items():
        put(f"{stem}.html", fig.to_html(include_plotlyjs=True, full_html=True))
        data, why = _png(fig) if png else (None, png_note)
        if data:
            put(f"{stem}.png", data)
        else:
            png_note = why
            (out_dir / f"{stem}.png").unlink(missing_ok=True)  # no stale PNG beside new data
    links = {"Figure 6: robust accuracy vs FGSM ε (interactive)": "fig6_fgsm.html",
             "Figure 7: robust accuracy vs PGD iterations (interactive)": "fig7_pgd.html"}
    if "fig6_fgsm.png" in written:
        links.update({"Figure 6 (PNG)": "fig6_fgsm.png", "Figure 7 (PNG)": "fig7_pgd.png"})
    sections = list(sections or [])
    put("report.md", to_markdown(tables, title, figures=links, sections=sections))
    put("report.html", to_html(tables, title, figures=links, sections=sections))
    record = dict(tables, title=title, sections=sections,
                  written=sorted(list(written) + ["report.json"]),
                  png=("written" if "fig6_fgsm.png" in written else f"skipped: {png_note}"))
    put("report.json", json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return written
