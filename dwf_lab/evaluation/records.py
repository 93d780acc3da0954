"""Evaluation records on disk: one JSON file per model and seed, per-example results included::

    {"model": "dwf", "row": "DWF", "seed": 0, "dataset": "cifar10-subset",
     "n_test": 1017, "metrics": {"SA": 84.1, "fgsm:0.01": 70.2, ..., "pgd:100-a": 27.5},
     "settings": {...}, "elapsed_s": 12.3, "per_example": {metric: hex bits},
     "attack_settings": {attack key: its own settings}, "autoattack_stages": {stage: %},
     "per_example_n": {attack key: m}}

``settings`` are the paper protocol's (Tables 2-4); each attack added after it (the adaptive
ones) carries its own settings in ``attack_settings`` -- budget, eps, restarts, the library
and its version (:meth:`dwf_lab.evaluation.adaptive.AdaptiveSettings.attack_settings`) --, and
``autoattack_stages`` holds the official AutoAttack's robust accuracy after each of its attacks
(``{"clean", "apgd-ce", "apgd-t", "fab-t", "square"}``; per gradient mode for SoE).
``per_example_n`` is there only when some attack ran on the first m < n_test images (a profile
that limits the adaptive attacks to fewer images): each such key's m (:func:`key_n`).

:func:`write_result` writes one; :func:`merge_into_result` adds per-example results with their
settings (recomputing ``"worst-case (all)"``); :func:`key_n` / :func:`stored_correct` read how many
images a stored result covers and its per-example bits; :func:`settings_difference` says how a stored
result's settings differ from the ones asked for; :func:`check_result` / :func:`load_results` validate
what the report reads; :func:`infer_dataset` and :func:`record_eps` read a record's dataset
and threat-model eps; :func:`load_checklist` reads a checklist written by
:func:`dwf_lab.pipeline.adaptive.evaluate_adaptive_run`.
"""
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import torch

from dwf_lab.core.io import atomic_write_text
from dwf_lab.evaluation.metrics import DERIVED, WORST, pack_bits, unpack_bits, worst_case


def write_result(path: Path, *, model: str, row: str, seed: int, dataset: str, metrics: dict,
                 correct: dict, settings, elapsed_s: float, extra: dict | None = None) -> dict:
    n = len(next(iter(correct.values()))) if correct else 0
    rec = {"model": model, "row": row, "seed": seed, "dataset": dataset, "n_test": n,
           "metrics": metrics, "settings": asdict(settings), "elapsed_s": round(elapsed_s, 2),
           "per_example": {k: pack_bits(v) for k, v in correct.items()}, **(extra or {})}
    atomic_write_text(Path(path), json.dumps(rec, indent=1))
    return rec


# ------------------------------------------------------- run integration --
def key_n(rec: dict, key: str) -> int:
    """How many test images the stored result ``key`` of ``rec`` covers: the first
    ``rec["per_example_n"][key]`` when an attack ran on fewer images than the record holds (the
    adaptive attacks of a profile that limits them), else ``rec["n_test"]``."""
    n = int(rec.get("n_test") or 0)
    sub = (rec.get("per_example_n") or {}).get(key)
    return int(sub) if isinstance(sub, int) and 0 < sub < n else n


def stored_correct(rec: dict, key: str) -> torch.Tensor:
    """The per-example correctness of the stored result ``key`` (its first :func:`key_n` images)."""
    return unpack_bits(rec["per_example"][key], key_n(rec, key))


def merge_into_result(rec: dict, correct: dict[str, torch.Tensor], overwrite: bool = False,
                      settings: dict[str, dict] | None = None) -> list[str]:
    """Add per-example results to an evaluation record; recompute ``"worst-case (all)"``.

    New keys go into ``rec["metrics"]`` (percent) and ``rec["per_example"]`` (packed
    bits), with their ``settings[key]`` into ``rec["attack_settings"]`` (a key's settings are
    only ever written together with its result, so they always describe the stored numbers);
    keys already there are kept, settings and all, unless ``overwrite``. A result may cover only
    the first m < n_test images (an attack run on fewer images): its m goes to
    ``rec["per_example_n"]`` and its accuracy is over those m. Then ``"worst-case (all)"`` is
    recomputed from the stored bits as the per-example worst case over the paper's attacks AND
    the adaptive ones, on the images every one of them covers (the first min m).
    Returns the keys added.
    """
    if rec.get("n_test") is None and not correct:
        return []
    n = int(rec["n_test"] if rec.get("n_test") is not None else len(next(iter(correct.values()))))
    metrics = rec.setdefault("metrics", {})
    bits = rec.setdefault("per_example", {})
    sub = rec.setdefault("per_example_n", {})
    added = []
    for k, v in correct.items():
        if k in DERIVED or (k in bits and not overwrite):
            continue
        v = v.bool().cpu()
        if not 0 < len(v) <= n:
            raise ValueError(f"metric {k!r} covers {len(v)} examples, the result has {n}")
        bits[k] = pack_bits(v)
        metrics[k] = 100.0 * v.float().mean().item()
        if len(v) < n:
            sub[k] = len(v)
        else:
            sub.pop(k, None)
        if settings and k in settings:
            rec.setdefault("attack_settings", {})[k] = settings[k]
        elif k in rec.get("attack_settings", {}):
            del rec["attack_settings"][k]     # settings that no longer describe the result
        added.append(k)
    stored = {k: stored_correct(rec, k) for k in bits if k not in DERIVED}
    sub.pop(WORST, None)
    if stored:
        m = min(len(v) for v in stored.values())
        wc = worst_case({k: v[:m] for k, v in stored.items()}, record_eps(rec))
        bits[WORST] = pack_bits(wc)
        metrics[WORST] = 100.0 * wc.float().mean().item()
        if m < n:
            sub[WORST] = m
    if not sub:
        rec.pop("per_example_n")
    return added


def settings_difference(stored: dict | None, wanted: dict) -> str | None:
    """How a stored result's settings differ from ``wanted`` (None: not at all), in words.

    Only the fields of ``wanted`` are compared (a stored record may hold more: the images, the
    torch version, timings). A result stored without settings (an older dwf-lab) differs.
    """
    if not isinstance(stored, dict):
        return "no recorded settings (an older dwf-lab stored it)"
    diffs = []

    def walk(a, b, where):
        if isinstance(b, dict) and isinstance(a, dict):
            for k in b:
                walk(a.get(k), b[k], f"{where}.{k}" if where else k)
        elif a != b:
            diffs.append(f"{where} {json.dumps(a)} (stored) vs {json.dumps(b)} (asked)")
    walk(stored, wanted, "")
    return "; ".join(diffs) or None


def record_eps(rec: dict) -> float:
    """The threat model's eps of an evaluation record (its paper-protocol settings)."""
    eps = (rec.get("settings") or {}).get("pgd_eps")
    if eps is None:
        raise ValueError(f"the result for {rec.get('model')!r} names no threat model (settings.pgd_eps); "
                         "re-evaluate it")
    return float(eps)


# --------------------------------------------------------------- loading --
def check_result(data, source: str) -> dict:
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
        if path.is_symlink() or not path.is_file():   # nothing of a run is read through a link
            raise ValueError(f"{path} is a link or not a plain file; a run's results are plain files: "
                             "replace it by a copy, or remove it")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: malformed evaluation result: not valid JSON ({err}). "
                             "Re-run the evaluation for this model, or remove the file.") from None
        results.append(check_result(data, str(path)))
    return results


def validated(results: Iterable[dict]) -> list[dict]:
    return [check_result(r, r.get("source", f"result #{i}") if isinstance(r, dict)
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


def load_checklist(path) -> dict:
    """A checklist written by :func:`dwf_lab.pipeline.adaptive.evaluate_adaptive_run` (its JSON file)."""
    from pathlib import Path
    return json.loads(Path(path).read_text(encoding="utf-8"))
