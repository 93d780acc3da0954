"""Evidence of convergence: the headline model's worst case at its attacks' budget and at twice it.

:func:`convergence_run` makes sure the adaptive evaluation of the headline model(s) is stored
(:func:`dwf_lab.pipeline.adaptive.evaluate_adaptive_run`, the profile's budget; nothing stored is
rerun), then runs every attack of that worst case once more at twice its budget
(:meth:`dwf_lab.evaluation.adaptive.AdaptiveSettings.twice`) on the same images, and writes
``eval/convergence/<model>_seed<k>.json`` (:meth:`dwf_lab.store.runs.Run.convergence_path`): each
doubled attack's per-example result with both settings, robust accuracy against attack work, and
the verdict (:mod:`dwf_lab.evaluation.convergence`).

Resumable: each doubled attack is written as it finishes, and one stored with the settings asked
for is never run again (the summary is recomputed from the stored bits on every call, so it follows
the evaluation record). The default model is DWF's mixture alone: at the laptop profile the doubled
suite on one model costs about as much as the adaptive evaluation of that model.
"""
import dataclasses
import json
import time

import torch

from dwf_lab.core.io import atomic_write_text
from dwf_lab.core.runtime import Runtime
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_any
from dwf_lab.evaluation.convergence import ONE_IN, assess, settings_change
from dwf_lab.evaluation.metrics import WORST, pack_bits, unpack_bits, worst_case, worst_case_keys
from dwf_lab.evaluation.records import key_n, record_eps, stored_correct
from dwf_lab.evaluation.suite import ATTACKS, column_label
from dwf_lab.pipeline.adaptive import evaluate_adaptive_run, stored_autoattack_is_standard
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_run_model, stage_named
from dwf_lab.training.recipes import RECIPES

HEADLINE = "mixture"     # DWF: the model the laptop profile checks (add pgd-at with which="mixture,pgd-at")
FORMAT = "dwf-lab-convergence"


def _networks(run: Run, name: str) -> int:
    """ResNet-18s the model ``name`` runs per image (its recipe's), for the attacks' work."""
    try:
        r = RECIPES.get(stage_named(run.profile, name).kind)
    except ValueError:
        r = None
    return r.networks(run.profile) if r is not None else 1


def model_convergence(run: Run, seed: int, rec: dict, data, s: AdaptiveSettings, device=None,
                      progress: bool = False) -> dict:
    """The convergence file of one evaluated model (``rec``, its record with the budget's results
    stored): each attack of its worst case at twice the budget, where not stored yet; returns it."""
    name = rec["model"]
    path = run.convergence_path(seed, name)
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    eps = record_eps(rec)
    per = rec.get("per_example") or {}
    if WORST not in per:
        raise ValueError(f"{name} (seed {seed}) has no per-example worst case: run python -m dwf_lab adaptive first")
    stored_precision = {(v or {}).get("precision") for v in (rec.get("attack_settings") or {}).values()} - {None}
    if len(stored_precision) == 1:   # a model attacked in fp32 only (SoE, ADVMoE) is doubled in fp32 too
        s = dataclasses.replace(s, precision=stored_precision.pop())
    device = torch.device(device) if device is not None else Runtime.from_profile(run.profile).device
    m = min(key_n(rec, WORST), s.images(int(rec["n_test"])))
    s2 = s.twice(len(data.classes))
    mine = [a for a in ATTACKS.values() if a.enabled(s) and a.worst_case and a.key(s) in per]
    robust_1x = stored_correct(rec, WORST)[:m]
    fixed_keys = [k for k in worst_case_keys(per, eps) if k not in {a.key(s) for a in mine}]
    fixed = (worst_case({k: stored_correct(rec, k)[:m] for k in fixed_keys}, eps, fixed_keys) if fixed_keys
             else torch.ones(m, dtype=torch.bool))
    nets, share = _networks(run, name), robust_1x.float().mean().item()
    done = old.get("attacks") or {}
    out = {"format": FORMAT, "version": 1, "model": name, "row": rec.get("row"), "seed": int(seed), "eps": eps,
           "n": m, "settings_1x": s.to_dict(), "settings_2x": s2.to_dict(), "twice": AdaptiveSettings.TWICE,
           "networks": nets, "attacks": {}, "fixed_columns": fixed_keys}
    model = None
    for a in mine:
        k1, k2 = a.key(s), a.key(s2)
        entry = {"label": column_label(k2), "key_1x": k1, "key_2x": k2,
                 "settings_1x": s.attack_settings(k1, seed), "settings_2x": s2.attack_settings(k2, seed),
                 "work_1x": a.work(s, nets, share), "work_2x": a.work(s2, nets, share), "n": m}
        entry["change"] = settings_change(entry["settings_1x"], entry["settings_2x"])
        prev = done.get(a.name) or {}
        if prev.get("correct_2x") and prev.get("settings_2x") == entry["settings_2x"] and prev.get("n") == m:
            entry.update(correct_2x=prev["correct_2x"], seconds=prev.get("seconds"))
        else:
            if model is None:
                model = load_run_model(run, seed, name, data, map_location=device).eval()
            skip = [b.key(s2) for b in ATTACKS.values() if b.name != a.name]
            t0 = time.time()
            _, correct, _ = evaluate_any(model, data.x_test[:m], data.y_test[:m], s2, seed, device, progress, skip,
                                         f"twice the budget: {entry['label']}")
            entry.update(correct_2x=pack_bits(correct[k2]), seconds=round(time.time() - t0, 2))
        c1 = stored_correct(rec, k1)[:m]
        entry.update(robust_1x=int(c1.sum()), robust_2x=int(unpack_bits(entry["correct_2x"], m).sum()))
        out["attacks"][a.name] = entry
        atomic_write_text(path, json.dumps(out, indent=1))   # resumable: each doubled attack as it finishes
    conv = assess(robust_1x, fixed, {e["label"]: unpack_bits(e["correct_2x"], m) for e in out["attacks"].values()},
                  sum(e["work_1x"] for e in out["attacks"].values()), sum(e["work_2x"] for e in out["attacks"].values()))
    out.update(conv.summary(), worst_case_1x=pack_bits(conv.robust_1x), worst_case_2x=pack_bits(conv.robust_both),
               note=f"the worst case at the profile's attack budget and at twice it, per example, on the first {m} "
                    f"test images; converged only when doubling broke at most one image in {ONE_IN} (at least one) "
                    "(dwf_lab.evaluation.convergence)")
    atomic_write_text(path, json.dumps(out, indent=1))
    return out


def convergence_run(run: Run, seed: int, data, settings: AdaptiveSettings | None = None, which: str = HEADLINE,
                    progress: bool = True, device: str | None = None) -> list[dict]:
    """The convergence file of each model ``which`` names (default DWF's mixture), after its
    adaptive evaluation at ``settings`` (default: the profile's, with the standard AutoAttack where
    the run stored it); returns them. A model not trained yet is skipped."""
    p = run.profile
    dev = torch.device(device) if device else Runtime.from_profile(p).device
    names = [t.strip() for t in which.split(",") if t.strip()]
    s = settings or AdaptiveSettings.from_profile(p)
    if settings is None and stored_autoattack_is_standard(run, seed, names):
        s = s.standard_autoattack()
    records = evaluate_adaptive_run(run, seed, data, s, progress=progress, which=which, checklist=False,
                                    device=device)
    return [model_convergence(run, seed, rec, data, s, dev, progress) for rec in records]
