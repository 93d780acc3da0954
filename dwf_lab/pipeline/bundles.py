"""A bundle per evaluated model that anyone can check with one forward pass, and its check.

:func:`write_bundle` confirms a model's stored worst case in fp32 image by image
(:func:`dwf_lab.evaluation.confirm.confirm_fp32`), stores the per-example result in its evaluation
record (``"fp32_confirmation"``, shown by the report) and writes ``runs/<run>/bundles/<stem>/``:

- ``adversarial.pt``: the per-example worst-case images, one per test image the headline covers, as
  one float32 tensor (N, C, H, W) in [0, 1] -- the layout RobustBench takes for an external
  evaluation ("a ``.pt`` tensor of the same size of the corresponding test set"): the image that
  broke the model, the clean image where the model was already wrong or where nothing broke it;
- ``test_images.pt`` and ``test_labels.pt``: the clean images and labels they belong to;
- ``entry.json``: the model's RobustBench-style entry (:mod:`dwf_lab.reporting.entries`);
- ``bundle.json``: eps, the claimed clean and robust counts, and the sha256 of the checkpoint (file),
  the test images and labels (:data:`dwf_lab.data.TEST_SET_HASHED`) and the adversarial images.

A model with no checkpoint of its own (the uniform ensemble) gets one in the bundle
(``model.safetensors``). :func:`verify_bundle` (``python -m dwf_lab verify BUNDLE [--checkpoint
FILE]``) re-derives clean and robust accuracy with one forward pass in fp32, checks ||x_adv - x||_inf
<= eps (plus :data:`~dwf_lab.evaluation.confirm.BALL_TOL`) and the [0, 1] box, and every hash, and
returns one line per mismatch.
"""
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from dwf_lab.core.config import pixel_fraction
from dwf_lab.core.io import atomic_write_text, file_sha256
from dwf_lab.core.runtime import Runtime
from dwf_lab.data import TEST_SET_HASHED, images_sha256, labels_sha256
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.confirm import BALL_TOL, confirm_fp32
from dwf_lab.evaluation.metrics import WORST
from dwf_lab.evaluation.records import key_n, load_results, record_eps, stored_correct
from dwf_lab.reporting.entries import build_entry, entry_stem, stored_test_set
from dwf_lab.store.checkpoints import CheckpointError, load_model, save_model
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_run_model, uniform_ensemble

FORMAT = "dwf-lab-bundle"
BUNDLES_DIR = "bundles"
FILES = {"adversarial": "adversarial.pt", "images": "test_images.pt", "labels": "test_labels.pt"}
MODEL_FILE = "model.safetensors"
BATCH = 500


def bundle_dir(run: Run, rec: dict) -> Path:
    return run.root / BUNDLES_DIR / entry_stem(rec)


def _save(path: Path, t: torch.Tensor) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(t.detach().cpu().contiguous(), tmp)
    tmp.replace(path)


def write_bundle(run: Run, rec: dict, model: nn.Module, data, s: AdaptiveSettings | None = None, *,
                 seed: int = 0, device=None, progress: bool = False) -> dict:
    """Confirm ``rec``'s worst case in fp32 and write the model's bundle (module docstring); ``rec``
    (a record loaded with its ``"source"`` path) gets ``"fp32_confirmation"`` and is written back.
    Returns the bundle's ``bundle.json``."""
    if WORST not in (rec.get("per_example") or {}):
        raise ValueError(f"{rec.get('source')}: no per-example worst case to bundle: run the adaptive "
                         "attacks first (python -m dwf_lab adaptive)")
    s = s or AdaptiveSettings.from_profile(run.profile)
    m = key_n(rec, WORST)
    x, y = data.x_test[:m], data.y_test[:m]
    stored = stored_correct(rec, WORST)
    precision = (rec.get("settings") or {}).get("precision", "fp32")
    for k, v in (rec.get("attack_settings") or {}).items():
        if isinstance(v, dict) and v.get("precision") not in (None, "fp32"):
            precision = v["precision"]
    t0 = time.time()
    c = confirm_fp32(model, x, y, stored, s, precision=precision, seed=seed, device=device, progress=progress)
    summary = {**c.summary(), "seconds": round(time.time() - t0, 1)}
    rec["fp32_confirmation"] = summary
    source = Path(rec["source"])
    atomic_write_text(source, json.dumps({k: v for k, v in rec.items() if k != "source"}, indent=1))
    out = bundle_dir(run, rec)
    out.mkdir(parents=True, exist_ok=True)
    _save(out / FILES["adversarial"], c.images.float())
    _save(out / FILES["images"], x.float())
    _save(out / FILES["labels"], y.long())
    ckpt = run.model_path(int(rec["seed"]), rec["model"])
    if ckpt.is_file():
        ckpt_rel = Path("..", "..", ckpt.relative_to(run.root)).as_posix()
    else:
        save_model(out / MODEL_FILE, model, {"note": "the evaluated model (no checkpoint of its own in the run)"})
        ckpt, ckpt_rel = out / MODEL_FILE, MODEL_FILE
    entry = build_entry(run, rec, stored_test_set(run))
    atomic_write_text(out / "entry.json", json.dumps(entry, indent=1))
    eps = record_eps(rec)
    info = {
        "format": FORMAT, "version": 1, "model": rec["model"], "row": rec["row"], "seed": rec.get("seed"),
        "threat_model": "Linf", "eps": eps, "eps_label": pixel_fraction(eps), "n": m,
        "clean": {"correct": int(c.clean.sum()), "n": m},
        "robust": {"correct": int(c.robust.sum()), "n": m,
                   "what": "the fp32 model's per-example worst case, one forward pass on adversarial.pt"},
        "stored_worst_case": {"correct": int(stored.sum()), "precision": precision},
        "fp32_confirmation": {k: summary[k] for k in ("broken_only_stored", "broken_only_fp32", "agree")},
        "checkpoint": ckpt_rel,
        "sha256": {"checkpoint": file_sha256(ckpt), "test_images": images_sha256(x), "test_labels": labels_sha256(y),
                   "adversarial": images_sha256(c.images),
                   **{f"{k}_file": file_sha256(out / f) for k, f in FILES.items()}},
        "hashed": TEST_SET_HASHED,
        "entry_test_set": entry["dwf_lab"]["test_set"].get("test_images_sha256"),
    }
    atomic_write_text(out / "bundle.json", json.dumps(info, indent=1))
    return info


def _load_tensor(path: Path, problems: list[str]) -> torch.Tensor | None:
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        problems.append(f"{path.name}: missing from the bundle")
        return None
    except Exception as e:   # noqa: BLE001 -- any unreadable file is one line, never a traceback
        problems.append(f"{path.name}: not a readable tensor file ({type(e).__name__})")
        return None
    if not isinstance(t, torch.Tensor):
        problems.append(f"{path.name}: holds {type(t).__name__}, not one tensor")
        return None
    return t


def verify_bundle(bundle: str | Path, checkpoint: str | Path | None = None) -> dict:
    """Check a bundle with one forward pass (module docstring). Returns {"problems": [one line per
    mismatch], "clean", "robust", "n", "seconds"}; no problems: the bundle's claims hold."""
    t0 = time.time()
    root = Path(bundle)
    if root.is_file():
        root = root.parent
    try:
        info = json.loads((root / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{root} is not a bundle: no readable bundle.json ({type(e).__name__}); "
                         "bundles are written under runs/<run>/bundles/ by python -m dwf_lab bundle") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{root / 'bundle.json'} is not a dwf-lab bundle description")
    problems: list[str] = []
    sha = info.get("sha256") or {}
    for key, name in FILES.items():
        path = root / name
        if path.is_file() and sha.get(f"{key}_file") and file_sha256(path) != sha[f"{key}_file"]:
            problems.append(f"{name}: its sha256 differs from the one in bundle.json (the file was changed)")
    x_adv, x, y = (_load_tensor(root / FILES[k], problems) for k in ("adversarial", "images", "labels"))
    ckpt = Path(checkpoint) if checkpoint is not None else root / str(info.get("checkpoint"))
    model = None
    if not ckpt.is_file():
        problems.append(f"checkpoint {ckpt}: not found (pass it with --checkpoint FILE)")
    else:
        if file_sha256(ckpt) != sha.get("checkpoint"):
            problems.append(f"checkpoint {ckpt}: its sha256 {file_sha256(ckpt)[:16]}... is not the evaluated "
                            f"model's {str(sha.get('checkpoint'))[:16]}...")
        try:
            model = load_model(ckpt).float().eval()
        except (CheckpointError, OSError, ValueError) as e:
            problems.append(f"checkpoint {ckpt}: cannot be loaded ({' '.join(str(e).split())[:160]})")
    out = {"problems": problems, "n": info.get("n"), "clean": None, "robust": None}
    if x is None or y is None or x_adv is None:
        out["seconds"] = round(time.time() - t0, 2)
        return out
    n = int(info.get("n") or 0)
    if x_adv.shape != x.shape or len(y) != len(x) or len(x) != n:
        problems.append(f"shapes: adversarial {tuple(x_adv.shape)}, test images {tuple(x.shape)}, labels "
                        f"{tuple(y.shape)}; bundle.json says {n} images")
        out["seconds"] = round(time.time() - t0, 2)
        return out
    if images_sha256(x) != sha.get("test_images"):
        problems.append("test images: their sha256 is not the one the model was evaluated on")
    if labels_sha256(y) != sha.get("test_labels"):
        problems.append("test labels: their sha256 is not the one the model was evaluated on")
    if images_sha256(x_adv) != sha.get("adversarial"):
        problems.append("adversarial images: their sha256 is not the one in bundle.json")
    eps = float(info["eps"])
    dist = (x_adv.float() - x.float()).abs().flatten(1).amax(1)
    outside = (dist > eps + BALL_TOL).nonzero().squeeze(1).tolist()
    if outside:
        problems.append(f"{len(outside)} adversarial image(s) outside the eps-ball (eps {info.get('eps_label')}), "
                        f"first: image {outside[0]} at ||delta||_inf = {dist[outside[0]].item() * 255:.4f}/255")
    box = ((x_adv < -BALL_TOL) | (x_adv > 1 + BALL_TOL)).flatten(1).any(1).nonzero().squeeze(1).tolist()
    if box:
        problems.append(f"{len(box)} adversarial image(s) outside [0, 1], first: image {box[0]}")
    if model is not None:
        with torch.no_grad():
            clean = torch.cat([model(x[i:i + BATCH].float()).argmax(1) == y[i:i + BATCH] for i in range(0, n, BATCH)])
            adv = torch.cat([model(x_adv[i:i + BATCH].float()).argmax(1) == y[i:i + BATCH]
                             for i in range(0, n, BATCH)])
        out.update(clean=int(clean.sum()), robust=int(adv.sum()))
        for what, got in (("clean", out["clean"]), ("robust", out["robust"])):
            claimed = (info.get(what) or {}).get("correct")
            if got != claimed:
                problems.append(f"{what} accuracy: one forward pass gives {got}/{n}, bundle.json claims {claimed}/{n}")
    out["seconds"] = round(time.time() - t0, 2)
    return out


def _load(run: Run, rec: dict, data, dev) -> nn.Module | None:
    """The model of a run's record: its checkpoint, or the uniform ensemble of its experts (None: a
    model this run cannot rebuild, e.g. one evaluated from outside)."""
    seed, name = int(rec["seed"]), rec["model"]
    if run.model_path(seed, name).is_file():
        return load_run_model(run, seed, name, data, map_location=dev)
    if rec.get("stage_kind") == "uniform_ensemble" or name == "uniform_ensemble":
        return uniform_ensemble(run, seed, data).to(dev).eval()
    return None


def write_bundles(run: Run, data, which: str | None = None, s: AdaptiveSettings | None = None,
                  device=None, progress: bool = False) -> list[dict]:
    """A bundle (:func:`write_bundle`) for every evaluated model of ``run`` with a per-example worst
    case (``which``: a comma-separated list of model names; default all). Returns their bundle.json."""
    names = [t.strip() for t in (which or "").split(",") if t.strip()]
    dev = torch.device(device) if device else Runtime.from_profile(run.profile).device
    out = []
    for rec in load_results(run.eval_dir):
        if (names and rec["model"] not in names) or WORST not in (rec.get("per_example") or {}):
            continue
        model = _load(run, rec, data, dev)
        if model is None:
            continue
        out.append(write_bundle(run, rec, model, data, s, seed=int(rec["seed"]), device=dev, progress=progress))
    if not out:
        raise FileNotFoundError(f"run {run.name!r} has no model with a per-example worst case to bundle"
                                + (f" among {', '.join(names)}" if names else "")
                                + ": run python -m dwf_lab adaptive first")
    return out
