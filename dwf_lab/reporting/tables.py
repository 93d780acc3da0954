"""Tables 2-3 and the "Beyond the paper" table of a run, beside the published numbers, as data.

From a run's evaluation records (``runs/<run>/eval/*.json``, :mod:`dwf_lab.evaluation.records`),
:func:`aggregate` averages the seeds of each row (mean and sample standard deviation) and
:func:`build_tables` builds the paper's two tables (the paper's rows in its order, then the
kit's) and a third, "Beyond the paper", for the metrics they have no column for (AutoAttack,
per-example worst case, ...). Also the comparison rows of the adaptive attacks, AutoAttack
stage by stage, the ablation table and the checklist overview. Accuracies are percent; a
missing metric stays missing; nothing is rescaled. Rendering: :mod:`dwf_lab.reporting.render`.
"""
import json
import statistics
from pathlib import Path
from typing import Iterable, Sequence

from dwf_lab.attacks.autoattack import label as official_label
from dwf_lab.evaluation import keys as K
from dwf_lab.evaluation.checklist import CheckItem
from dwf_lab.evaluation.metrics import WORST
from dwf_lab.evaluation.model_checks import invalid_reason
from dwf_lab.evaluation.records import infer_dataset, key_n, validated
from dwf_lab.evaluation.suite import reading_order
from dwf_lab.reporting.paper import (
    COLUMN_FOR_METRIC,
    METRIC_FOR_COLUMN,
    TABLE2_COLUMNS,
    TABLE3_COLUMNS,
    TABLE_COLUMNS,
    comparability_note,
    is_comparable,
    paper_dataset,
    paper_row_order,
    paper_rows,
    paper_tables,
    paper_value,
)
from dwf_lab.training.variants import ABLATIONS, BY_NAME, skip_reason

FGSM_EPS: tuple[float, ...] = tuple(float(c) for c in TABLE2_COLUMNS[1:])   # 0.01 ... 0.09
FGSM_METRICS: tuple[str, ...] = tuple(METRIC_FOR_COLUMN[c] for c in TABLE2_COLUMNS[1:])
PGD_ITERS: tuple[int, ...] = (10, 20, 30, 40, 50)
PGD_METRICS: tuple[str, ...] = tuple(K.pgd(k) for k in PGD_ITERS)


TABLE_TITLES = {
    "table2": "Table 2: clean accuracy (SA) and robust accuracy under FGSM, by ε (%)",
    "table3": "Table 3: robust accuracy under PGD (ε = 8/255, α = 2/255), by iterations (%)",
    "beyond": "Beyond the paper: further attacks and checks (%)",
}


# ------------------------------------------------------------ aggregation --
def _stats(values: list[float]) -> dict:
    n = len(values)
    return {"mean": sum(values) / n,
            "std": statistics.stdev(values) if n > 1 else None,
            "n": n}


def row_order(rows_seen: list[str], dataset: str | None) -> list[str]:
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
    results = validated(results)
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
            for row in row_order(list(values), dataset)}


# ----------------------------------------------------------------- tables --
def _seed_key(seed) -> tuple:
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (seed is None, not number, seed if number else 0, str(seed))


# settings that only choose which columns are measured (a missing column reads "—"), never
# how: they may differ across files without a warning
WHICH_ATTACKS = ("fgsm_eps", "pgd_steps", "long")
# settings the notes state per model instead (a baseline is attacked in fp32 where DWF is in bf16)
PER_MODEL = ("precision",)


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
        elif k not in WHICH_ATTACKS + PER_MODEL:
            differ.append(k)
    precision: dict[str, list[str]] = {}
    for r in results:
        rows_in = precision.setdefault((r.get("settings") or {}).get("precision", "fp32"), [])
        if r["row"] not in rows_in:
            rows_in.append(r["row"])
    elapsed = [r["elapsed_s"] for r in results if isinstance(r.get("elapsed_s"), (int, float))]
    invalid: dict[str, str] = {}   # rows whose model failed the output checks (evaluation.model_checks)
    for r in results:
        why = invalid_reason(r)
        if why:
            invalid.setdefault(r["row"], why)
    return {
        "invalid": invalid,
        "dataset": dataset,
        "paper_dataset": paper_dataset(dataset),
        "comparable": is_comparable(dataset),
        "comparability": comparability_note(dataset),
        "n_test": sorted({r["n_test"] for r in results if r.get("n_test") is not None}),
        # attacks run on the first m < n_test images only (records.key_n)
        "adaptive_images": sorted({v for r in results for v in (r.get("per_example_n") or {}).values()}),
        "seeds": {row: sorted(s, key=_seed_key) for row, s in rows.items()},
        "runs": {row: len(s) for row, s in rows.items()},
        "settings": shared,
        "settings_differ": differ,
        "precision": precision,
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
    results = validated(results)
    dataset = infer_dataset(results, dataset)
    agg = aggregate(results, dataset)
    meta = _meta(results, dataset)
    for key in ("seeds", "runs"):  # in table row order
        meta[key] = {row: meta[key][row] for row in agg}
    beyond = _beyond_table(agg)
    headers = autoattack_headers(results)
    if headers and "autoattack" in beyond["columns"]:
        beyond["headers"] = headers    # the column says which AutoAttack it is
    return {"meta": meta,
            "table2": _paper_table("table2", agg, dataset),
            "table3": _paper_table("table3", agg, dataset),
            "beyond": beyond}


# ------------------------------------------------------------ reading --
def adaptive_keys(keys: Sequence[str]) -> list[str]:
    """The adaptive attack keys among ``keys``, in the registry's reading order (:mod:`dwf_lab.evaluation.suite`)."""
    return reading_order(keys)


def comparison_rows(records: Sequence[dict], dataset: str | None = None) -> tuple[list[dict], list[str]]:
    """One row per evaluated model: the paper's protocol, the adaptive attacks, both worst cases,
    and the paper's Table 3 numbers for that row (PGD-20 and "100 (MS)").

    ``records``: evaluation records (``eval/<stage>_seed<k>.json`` contents), e.g. what
    :func:`evaluate_adaptive_run` returns. Returns ``(rows, columns)``; accuracies in percent,
    None where not measured. The "paper" columns are the published numbers for the row's
    label (CIFAR-10's for synthetic data: see :func:`dwf_lab.reporting.paper.comparability_note`).
    """

    keys: list[str] = []
    for r in records:
        keys += [k for k in r.get("metrics", {}) if k not in keys]
    pgd_k = [k.steps for k in K.of(keys, "pgd")]
    short = [K.pgd(20 if 20 in pgd_k else pgd_k[-1])] if pgd_k else []
    ms = [k.text for k in K.of(keys, "pgd", "ms")][-1:]
    cols = ["SA"] + short + ms + ["worst-case"] + adaptive_keys(keys) + [WORST]
    cols = [c for c in cols if c in keys]
    ds = dataset or (records[0].get("dataset") if records else None)
    # the adaptive attacks may cover only the first images of the test set: say how many
    fewer = any(r.get("per_example_n") for r in records)
    rows = []
    for r in records:
        row = {"model": r.get("row") or r.get("model"), "seed": r.get("seed")}
        if fewer:
            row["images (paper / adaptive)"] = f"{r.get('n_test')} / {key_n(r, WORST) if WORST in r.get('metrics', {}) else '-'}"
        row.update({c: r["metrics"].get(c) for c in cols})
        for col, label in (("20", "paper PGD-20"), ("100 (MS)", "paper 100 (MS)")):
            v = paper_value("table3", ds, row["model"], col) if ds else None
            row[label] = None if v is None else v[0]
        rows.append(row)
    return rows, ["model", "seed"] + (["images (paper / adaptive)"] if fewer else []) + cols + \
        ["paper PGD-20", "paper 100 (MS)"]


AA_STAGES = ("clean", "apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr")   # the suite's attacks, in order
AA_STAGE_LABELS = {"clean": "clean", "apgd-ce": "after APGD-CE", "apgd-t": "after APGD-T",
                   "fab-t": "after FAB-T", "square": "after Square", "apgd-dlr": "after APGD-DLR"}


def _official_autoattack(rec: dict) -> tuple[dict | None, dict | None]:
    """(settings, stages) of a record's official AutoAttack, (None, None) if it holds none: at the top
    of the record (:mod:`dwf_lab.evaluation.records`) or, as a writer may keep them, under "adaptive".
    An older kit's cascade has no pyautoattack settings: never taken for the official suite."""
    for holder in (rec, rec.get("adaptive") if isinstance(rec.get("adaptive"), dict) else {}):
        settings = (holder.get("attack_settings") or {}).get("autoattack")
        if isinstance(settings, dict) and "pyautoattack" in str(settings.get("suite", "")):
            return settings, holder.get("autoattack_stages") or rec.get("autoattack_stages")
    return None, None


def autoattack_label(rec: dict) -> str | None:
    """What a record's ``autoattack`` is (None: not run): the official suite, standard or rand, or a
    reduced budget said to be NOT the standard suite, or an older kit's own cascade."""
    if rec.get("metrics", {}).get("autoattack") is None:
        return None
    settings, _ = _official_autoattack(rec)
    if settings is None:
        return "the kit's own AutoAttack-style cascade (an older dwf-lab): not the official suite"
    return official_label(settings)


def autoattack_headers(records: Sequence[dict]) -> dict:
    """``{"autoattack": label}`` for a table's column header (one label for all its records, or
    each label with its count where they differ); empty when no record has AutoAttack."""
    labels = [lab for lab in (autoattack_label(r) for r in records) if lab]
    if not labels:
        return {}
    seen = list(dict.fromkeys(labels))
    return {"autoattack": "autoattack = " + (seen[0] if len(seen) == 1 else
                                             "mixed: " + "; ".join(f"{lab} ({labels.count(lab)})" for lab in seen))}


def autoattack_stage_rows(records: Sequence[dict]) -> list[dict]:
    """Robust accuracy (%) after each attack of the official AutoAttack, one row per model (and per
    gradient mode for a model attacked under several, e.g. SoE): which part of AutoAttack broke it.
    Keys: "model", "seed", "suite" (:func:`autoattack_label`), then :data:`AA_STAGES` that ran,
    "AutoAttack" (the stored per-example result, which the last stage must match). Models whose
    stages were not recorded (an older kit's cascade included) are left out."""
    rows = []
    for r in records:
        stages = _official_autoattack(r)[1]
        if not stages:
            continue
        per_mode = stages if all(isinstance(v, dict) for v in stages.values()) else {None: stages}
        for mode, st in per_mode.items():
            name = r.get("row") or r.get("model")
            rows.append({"model": name if mode is None else f"{name} ({mode} gradient)",
                         "seed": r.get("seed"), "suite": autoattack_label(r),
                         **{k: st[k] for k in AA_STAGES if k in st},
                         "AutoAttack": r.get("metrics", {}).get("autoattack")})
    return rows


def ablation_row(rec: dict) -> dict:
    m = rec["metrics"]
    return {"variant": rec["variant"], "label": rec["row"], "question": rec.get("question", ""),
            "seed": rec["seed"], "experts": rec.get("experts"),
            "SA": m.get("SA"), "PGD-20": m.get("pgd:20"), "worst-case": m.get("worst-case"),
            "train_s": rec.get("train_s"), "eval_s": rec.get("elapsed_s"), "note": rec.get("note", "")}


ABLATION_METRICS = ("SA", "pgd:20", "worst-case")
ABLATION_COLUMNS = {"SA": "SA", "pgd:20": "PGD-20", "worst-case": "Worst case"}


def collect_ablation_rows(run) -> list[dict]:
    """Every finished variant of every seed of the run (one row per variant and seed)."""
    out = []
    for path in sorted(Path(run.root).glob("seed-*/ablations/*/eval.json")):
        try:
            out.append(ablation_row(json.loads(path.read_text())))
        except (json.JSONDecodeError, KeyError):
            continue
    return out


def _stats_ablations(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.mean(vals), "std": std, "n": len(vals)}


def ablation_table(run) -> list[dict]:
    """Rows aggregated over seeds, in :data:`ABLATIONS` order: SA / PGD-20 / worst case mean and std."""
    per = collect_ablation_rows(run)
    order = {a.name: i for i, a in enumerate(ABLATIONS)}
    table = []
    for name in sorted({r["variant"] for r in per}, key=lambda n: order.get(n, len(order))):
        rs = [r for r in per if r["variant"] == name]
        a = BY_NAME.get(name)
        table.append({"variant": name, "label": rs[0]["label"], "question": rs[0]["question"],
                      "experts": rs[0]["experts"], "seeds": sorted(r["seed"] for r in rs),
                      "description": a.description if a else "",
                      **{c: _stats_ablations([r[c] for r in rs]) for c in ("SA", "PGD-20", "worst-case")}})
    return table


def ablation_plan_rows(p, selected: Sequence[str]) -> list[dict]:
    """One row per variant of :data:`ABLATIONS`: its question, and whether this run makes it
    ("yes" when ``selected`` names it, "no: <why>" when it does not apply to the profile,
    else which switch asks for it: the full course scope, or an opt-in name)."""
    rows = []
    for a in ABLATIONS:
        why = skip_reason(a, p)
        runs = ("no: " + why if why else "yes" if a.name in selected
                else "with scope=\"full\"" if a.default else f"opt-in: run_ablations(names=[\"{a.name}\"])")
        rows.append({"variant": a.name, "row": a.label, "question": a.question, "runs here": runs})
    return rows


def metric_rows(records: Sequence[dict], columns: Sequence[str], name: str = "model") -> list[dict]:
    """One row per evaluation record: its row label under ``name``, then each metric of
    ``columns`` (None where not measured)."""
    return [{name: r.get("row") or r.get("model"), **{c: r.get("metrics", {}).get(c) for c in columns}}
            for r in records]


def gradient_mode_rows(record: dict, columns: Sequence[str]) -> list[dict]:
    """For a model attacked under several gradient modes (SoE: its own ``hard`` gradient and the
    ``bpda`` relaxation): one row per metric, one column per mode, and the per-example worse of
    them (what the record reports)."""
    modes = record.get("gradient_modes") or {}
    return [{"metric": c, **{f"{m} gradient": modes[m].get(c) for m in modes},
             "worst of both": record.get("metrics", {}).get(c)} for c in columns]


def checklist_overview(named: dict) -> tuple[list[dict], list[str]]:
    """One row per check, one column per model: ``named`` maps a model name to its items
    (CheckItem objects, or the dicts of a saved checklist JSON). Returns (rows, columns)."""
    mark = {True: "✅", False: "❌", None: "➖"}
    models = list(named)
    rows: dict[str, dict] = {}
    for m, items in named.items():
        for it in items:
            name = it.name if isinstance(it, CheckItem) else it["name"]
            passed = it.passed if isinstance(it, CheckItem) else it["passed"]
            rows.setdefault(name, {"check": name})[m] = mark[passed]
    return list(rows.values()), ["check"] + models
