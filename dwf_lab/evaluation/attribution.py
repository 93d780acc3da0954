"""Which kind of attack broke each image: generic, router-aware or expert-aware.

Every registered attack names its family (:data:`dwf_lab.evaluation.suite.FAMILIES`); the paper's
protocol columns (FGSM, PGD-k) are generic. An image the model classifies correctly and the
per-example worst case breaks is attributed to the families of the attacks that broke it:
"generic only", "router-aware only", "expert-aware only", or "several". If the gate-aware
attacks break images nothing generic does, the generic numbers overstate the mixture's robustness.
"""
import torch

from dwf_lab.evaluation.keys import CLEAN
from dwf_lab.evaluation.metrics import worst_case_keys
from dwf_lab.evaluation.records import key_n, stored_correct
from dwf_lab.evaluation.suite import attack_for_key

CATEGORIES = ("generic only", "router-aware only", "expert-aware only", "several")


def family_of(key: str) -> str:
    """The family of the attack a metric key is the result of (protocol columns: generic)."""
    a = attack_for_key(key)
    return a.family if a is not None else "generic"


def broken_by_family(correct: dict[str, torch.Tensor], eps: float) -> dict[str, int]:
    """Per-example correctness per metric -> how many clean-correct images each category of
    :data:`CATEGORIES` holds (attacks inside the eps-ball only: :func:`worst_case_keys`)."""
    keys = [k for k in worst_case_keys(correct, eps) if k != CLEAN]
    clean = correct[CLEAN].bool()
    families = sorted({family_of(k) for k in keys})
    broke = {f: torch.stack([clean & ~correct[k].bool() for k in keys if family_of(k) == f]).any(0)
             for f in families}
    out = dict.fromkeys(CATEGORIES, 0)
    if not broke:
        return out
    count = torch.stack(list(broke.values())).sum(0)
    for f, b in broke.items():
        out[f"{f} only"] += int((b & (count == 1)).sum())
    out["several"] = int((count > 1).sum())
    return out


def attribution_rows(records) -> list[dict]:
    """One row per evaluation record with per-example results: model, seed, images, and
    :func:`broken_by_family` on the images every stored attack covers."""
    rows = []
    for r in records:
        per = r.get("per_example") or {}
        eps = float((r.get("settings") or {}).get("pgd_eps", 8 / 255))
        keys = [k for k in worst_case_keys(per, eps) if k in per]
        if CLEAN not in per or len(keys) < 2:
            continue
        n = min(key_n(r, k) for k in keys)
        correct = {k: stored_correct(r, k)[:n] for k in keys}
        rows.append({"model": r.get("row") or r.get("model"), "seed": r.get("seed"), "images": n,
                     **broken_by_family(correct, eps)})
    return rows
