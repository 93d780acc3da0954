"""Results people can share: one RobustBench-style entry (JSON) per evaluated model of a run.

RobustBench describes a model by a small JSON file (``model_info/<dataset>/<threat model>/<name>.json``:
``name``, ``dataset``, ``eps`` written as ``"8/255"``, ``architecture``, ``additional_data``,
``number_forward_passes``, ``clean_acc`` and ``autoattack_acc`` as strings with two decimals). An
entry here keeps those field names where they fit, adds ``threat_model`` (``"Linf"``) and
``n_examples`` (the number of test images), and puts what the kit measured beside them under
``"dwf_lab"``: clean accuracy, AutoAttack (with its stages and settings) and the kit's worst case
and each attack, every one as ``{"acc", "se", "correct", "n"}`` (``se``: the binomial standard
error in points, :func:`dwf_lab.reporting.noise.binomial_se`); the checkpoint's sha256; the test
images' sha256; package versions; the command that produces it.

``autoattack_acc`` is filled only by the official suite at its standard budget; a model without
AutoAttack, or with the kit's own cascade, or a reduced budget, has ``null`` there and says which
under ``dwf_lab.autoattack`` (never a number that was not measured).

The test set: a run keeps no indices of the test images it drew (:func:`dwf_lab.data.load_dataset`
draws them inside), so the images themselves are hashed (:func:`test_set_digest`: their float32
bytes and their labels, the same hashes an external evaluation records), when the report is written
with the run's data loaded; the digest is kept in ``report/test_set.json`` for later reports (and kept: a run unpacked on a machine whose data differs
keeps the hash its results were reported with, with a warning).

Written by :func:`write_entries` to ``runs/<run>/report/entries/<model>_seed<k>.json`` and one
list, ``report/entries.json``. Numbers come from the stored results (:mod:`dwf_lab.evaluation.records`);
nothing here runs a model.
"""
import json
import shlex
import sys
import warnings
from importlib import metadata
from pathlib import Path

from dwf_lab.core.config import pixel_fraction
from dwf_lab.core.io import atomic_write_text, file_sha256
from dwf_lab.core.runtime import package_versions
from dwf_lab.data import TEST_SET_HASHED, ImageData
from dwf_lab.evaluation.metrics import DERIVED, WORST, worst_case_keys
from dwf_lab.evaluation.records import key_n, load_results, record_eps
from dwf_lab.reporting.noise import binomial_se
from dwf_lab.store.archive import run_command
from dwf_lab.store.checkpoints import CheckpointError, read_metadata
from dwf_lab.store.runs import Run
from dwf_lab.training.stages import expert_stage_names

ENTRIES_DIR = "entries"
ENTRIES_FILE = "entries.json"
TEST_SET_FILE = "test_set.json"
FULL_TEST_SET = 10000    # CIFAR-10's test set: RobustBench evaluates on all of it
SE_METHOD = "binomial standard error in points (Agresti-Coull, dwf_lab.reporting.noise.binomial_se)"
ATTACK_LIBRARIES = ("pyautoattack", "adversarial-robustness-toolbox")


# ----------------------------------------------------------------- numbers --
def measured(acc: float, n: int) -> dict:
    """``acc`` percent on ``n`` images as {"acc", "se", "correct", "n"} (``correct``: the image count)."""
    return {"acc": round(float(acc), 4), "se": round(binomial_se(acc, n), 4) if n else None,
            "correct": int(round(acc * n / 100.0)), "n": n}


# ---------------------------------------------------------------- test set --
def test_set_digest(data: ImageData) -> dict:
    """What identifies the test images a run evaluates on: their sha256 (:meth:`ImageData.test_set_sha256`)."""
    return {"dataset": data.name, "n_test": int(len(data.x_test)), "generated": bool(data.generated),
            "fallback": data.fallback_reason is not None, **data.test_set_sha256(), "hashed": TEST_SET_HASHED}


def record_test_set(run: Run, data: ImageData) -> dict:
    """The digest of ``data``'s test images, written to ``report/test_set.json``. A digest already
    stored for the same dataset and number of images is kept (it is the one the stored results were
    reported with): when the images loaded now differ from it (another subset file on this machine,
    say) a warning says so, and the entries keep the stored hash."""
    digest = test_set_digest(data)
    stored = stored_test_set(run)
    if stored is not None and (stored["dataset"], stored["n_test"]) == (digest["dataset"], digest["n_test"]):
        if (stored["test_images_sha256"], stored["test_labels_sha256"]) != \
                (digest["test_images_sha256"], digest["test_labels_sha256"]):
            warnings.warn(
                f"run {run.name!r}: the test images loaded now (sha256 {digest['test_images_sha256'][:12]}...) "
                f"are not the ones its results were reported with ({stored['test_images_sha256'][:12]}...): "
                "this machine's data differs; the entries keep the stored hash", RuntimeWarning, stacklevel=2)
        return stored
    atomic_write_text(run.report_dir / TEST_SET_FILE, json.dumps(digest, indent=1))
    return digest


def stored_test_set(run: Run) -> dict | None:
    """The digest in ``report/test_set.json``, or the one an external evaluation wrote in model.json."""
    for path, pick in ((run.report_dir / TEST_SET_FILE, lambda d: d),
                       (run.root / "model.json", lambda d: d.get("data"))):
        try:
            found = pick(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, dict) and found.get("test_images_sha256"):
            return {"dataset": found.get("dataset", found.get("name")), "n_test": found.get("n_test"),
                    "generated": found.get("generated"), "fallback": found.get("fallback"),
                    "test_images_sha256": found["test_images_sha256"],
                    "test_labels_sha256": found.get("test_labels_sha256"), "hashed": TEST_SET_HASHED}
    return None


def _test_set_for(rec: dict, test_set: dict | None) -> dict:
    if test_set is None:
        return {"test_images_sha256": None,
                "note": "not recorded: the report was written without the run's data loaded "
                        "(python -m dwf_lab run, or adaptive/baselines, write it)"}
    if test_set.get("dataset") != rec.get("dataset") or test_set.get("n_test") != rec.get("n_test"):
        return {"test_images_sha256": None,
                "note": f"not recorded: the data last hashed ({test_set.get('dataset')}, {test_set.get('n_test')} "
                        f"images) is not the data of this result ({rec.get('dataset')}, {rec.get('n_test')})"}
    return test_set


# -------------------------------------------------------------- checkpoint --
def _checkpoint(run: Run, path: Path) -> dict:
    out = {"path": path.relative_to(run.root).as_posix()}
    try:
        meta = read_metadata(path)
    except (CheckpointError, OSError) as e:
        return {**out, "file_sha256": None, "problem": " ".join(str(e).split())}
    return {**out, "file_sha256": file_sha256(path), "weights_sha256": meta.get("weights_sha256"),
            "arch": meta.get("arch"), "arch_kwargs": meta.get("arch_kwargs"), "versions": meta.get("versions")}


def checkpoint_identity(run: Run, rec: dict) -> dict:
    """What the evaluated weights were: the checkpoint's path and sha256 (file and weights), the
    experts' for the uniform ensemble, the identity an external evaluation recorded."""
    ext = rec.get("external")
    if isinstance(ext, dict):
        return {"source": ext.get("source"), "file_sha256": ext.get("sha256"),
                "state_dict_sha256": ext.get("state_dict_sha256"), "spec": ext.get("spec")}
    seed, name = rec.get("seed"), rec.get("model")
    if not isinstance(seed, int) or not isinstance(name, str):
        return {"path": None, "note": "the result names no model and seed of the run"}
    path = run.model_path(seed, name)
    if path.is_file():
        return _checkpoint(run, path)
    if rec.get("stage_kind") == "uniform_ensemble":
        experts = [run.model_path(seed, s) for s in expert_stage_names(run.profile)]
        return {"path": None, "note": "no checkpoint of its own: the run's experts averaged with equal weights",
                "experts": [_checkpoint(run, p) for p in experts if p.is_file()]}
    return {"path": None, "note": f"no checkpoint {path.relative_to(run.root).as_posix()} in the run"}


# -------------------------------------------------------------- AutoAttack --
def _autoattack_details(rec: dict) -> tuple[dict, dict | None]:
    """(settings, stages) of a record's AutoAttack: ``attack_settings["autoattack"]`` and
    ``autoattack_stages`` (an older record: the kit's cascade, under ``adaptive``)."""
    adaptive = rec.get("adaptive") if isinstance(rec.get("adaptive"), dict) else {}
    stages = rec.get("autoattack_stages") or adaptive.get("autoattack_stages")
    own = (rec.get("attack_settings") or {}).get("autoattack")
    if isinstance(own, dict):
        return own, stages
    kit = adaptive.get("settings") if isinstance(adaptive.get("settings"), dict) else {}
    return {k: v for k, v in kit.items() if k.startswith("aa_") or k in ("eps", "name")}, stages


def autoattack_summary(rec: dict, run_name: str) -> dict:
    """AutoAttack of one record: measured (with its label, stages and settings) or not run."""
    n = key_n(rec, "autoattack")
    acc = rec["metrics"].get("autoattack")
    if acc is None:
        return {"run": False,
                "note": "AutoAttack was not run for this model: python -m dwf_lab adaptive --run "
                        f"{run_name} --stage {rec.get('model')}"}
    settings, stages = _autoattack_details(rec)
    official = "pyautoattack" in settings or "pyautoattack" in str(settings.get("suite", "")).lower()
    standard = official and settings.get("standard") is True
    if standard:
        label = f"AutoAttack (official, {settings.get('version', 'standard')})"
    elif official:
        label = f"AutoAttack (official {settings.get('version', '')}, reduced budget: NOT the standard suite)"
    else:
        label = "the kit's own AutoAttack-style cascade (not the official suite)"
    return {"run": True, **measured(acc, n), "official": official, "standard": standard, "label": label,
            "stages": stages, "settings": settings}


# ------------------------------------------------------------------ entry --
def architecture(ident: dict, rec: dict) -> str | None:
    """A short description of the network from its checkpoint's metadata."""
    if rec.get("stage_kind") == "uniform_ensemble":
        first = (ident.get("experts") or [{}])[0]
        width = (first.get("arch_kwargs") or {}).get("width")
        return f"uniform average of {len(ident.get('experts') or [])} ResNet-18 experts (width {width}), no gate"
    arch, kw = ident.get("arch"), ident.get("arch_kwargs") or {}
    if arch is None:
        spec = ident.get("spec")
        return str(spec) if spec else None
    width = kw.get("width")
    if arch == "resnet18":
        return f"ResNet-18 (CIFAR, width {width})"
    if arch == "dwf_mixture":
        return (f"DWF: {kw.get('routing', 'soft')}-gated mixture of {kw.get('n_experts')} ResNet-18 experts "
                f"(width {width}, gate MLP hidden {kw.get('gate_hidden')})")
    if arch in ("soe", "advmoe"):
        return f"{arch.upper() if arch == 'soe' else 'ADVMoE'}: {kw.get('n_experts')} ResNet-18 experts (width {width})"
    return f"{arch} ({', '.join(f'{k}={v}' for k, v in sorted(kw.items()))})"


def written_by() -> str:
    """The command line of this process (``python -m dwf_lab ...`` for the kit's CLI)."""
    argv = list(sys.argv)
    if argv and argv[0].replace("\\", "/").endswith("dwf_lab/__main__.py"):
        argv = ["python", "-m", "dwf_lab", *argv[1:]]
    return shlex.join(argv) if argv else "(unknown)"


def _library_versions() -> dict:
    out = {}
    for name in ATTACK_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def producing_command(run: Run, rec: dict) -> str:
    """The command that produces this result: an external evaluation's own, else the run's ``run``
    command with its settings (``--beyond`` when the result holds attacks beyond the paper)."""
    try:
        identity = json.loads((run.root / "model.json").read_text(encoding="utf-8"))
        if isinstance(identity, dict) and identity.get("command") and rec.get("external"):
            return str(identity["command"])
    except (OSError, ValueError):
        pass
    cmd = run_command(run.profile.to_dict(), run.name)
    return cmd + (" --beyond" if rec.get("adaptive") else "")


def build_entry(run: Run, rec: dict, test_set: dict | None = None) -> dict:
    """The RobustBench-style entry of one evaluation record of ``run`` (module docstring)."""
    n = int(rec.get("n_test") or 0)
    metrics = rec["metrics"]
    try:
        eps = record_eps(rec)
    except ValueError:
        eps = None
    ident = checkpoint_identity(run, rec)
    aa = autoattack_summary(rec, run.name)
    in_ball = set(worst_case_keys(metrics, eps)) if eps is not None else set()
    own = rec.get("attack_settings") if isinstance(rec.get("attack_settings"), dict) else {}
    attacks = {k: {**measured(v, key_n(rec, k)), "in_threat_model": k in in_ball,
                   **({"settings": own[k]} if isinstance(own.get(k), dict) else {})}
               for k, v in metrics.items() if k not in DERIVED and k != "SA"}
    worst_key = WORST if WORST in metrics else "worst-case" if "worst-case" in metrics else None
    worst = None
    if worst_key is not None:
        worst = {"key": worst_key, **measured(metrics[worst_key], key_n(rec, worst_key)),
                 "over": sorted(k for k in attacks if attacks[k]["in_threat_model"])}
    kit_model = not isinstance(rec.get("external"), dict)
    libraries = {}
    for settings in [*(v for v in own.values() if isinstance(v, dict)), aa.get("settings") or {}]:
        libraries.update({k: v for k, v in settings.items() if k in ("torch", *ATTACK_LIBRARIES)})
    versions = {"trained_with": ident.get("versions"), "attacked_with": libraries or None,
                "entry_written_with": {**package_versions(), **(_library_versions() if rec.get("adaptive") else {})}}
    sa = metrics.get("SA")
    data = {
        "name": f"{rec['row']} ({run.name}, seed {rec.get('seed')})",
        "dataset": rec.get("dataset"),
        "threat_model": "Linf",
        "eps": pixel_fraction(eps) if eps is not None else None,
        "architecture": architecture(ident, rec),
        "additional_data": False if kit_model else None,
        "number_forward_passes": 1 if kit_model else None,
        "n_examples": n,
        "clean_acc": f"{sa:.2f}" if sa is not None else None,
        "autoattack_acc": f"{aa['acc']:.2f}" if aa.get("standard") else None,
        "dwf_lab": {
            "run": run.name, "model": rec.get("model"), "row": rec["row"], "seed": rec.get("seed"),
            "stage_kind": rec.get("stage_kind"), "se": SE_METHOD, "protocol_settings": rec.get("settings"),
            "clean": measured(sa, n) if sa is not None else None,
            "autoattack": aa,
            "worst_case": worst,
            "attacks": attacks,
            "checkpoint": {k: v for k, v in ident.items() if k != "versions"},
            "test_set": _test_set_for(rec, test_set),
            "full_test_set": n >= FULL_TEST_SET,
            "versions": versions,
            "command": producing_command(run, rec),
            "written_by": written_by(),
            "result_file": f"eval/{Path(rec['source']).name}" if rec.get("source") else None,
        },
    }
    return data


def entry_stem(rec: dict) -> str:
    """The file name (no suffix) of a record's entry: its result file's."""
    return Path(rec["source"]).stem


def write_entries(run: Run, data: ImageData | None = None) -> dict:
    """Every evaluated model's entry, under ``report/entries/`` and as one list in
    ``report/entries.json``. ``data``: the run's data, to hash its test images (else the digest
    stored by an earlier report is used). Entries of results that are gone are removed. Returns
    {"entries": [entry, ...], "entries_json": path, "entries_dir": path}."""
    report = run.report_dir
    test_set = record_test_set(run, data) if data is not None else stored_test_set(run)
    records = load_results(run.eval_dir)
    folder = report / ENTRIES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries, stems = [], set()
    for rec in records:
        entry = build_entry(run, rec, test_set)
        stem = entry_stem(rec)
        stems.add(stem)
        atomic_write_text(folder / f"{stem}.json", json.dumps(entry, indent=1))
        entries.append(entry)
    for old in folder.glob("*.json"):
        if old.stem not in stems:
            old.unlink()
    atomic_write_text(report / ENTRIES_FILE, json.dumps(entries, indent=1))
    return {"entries": entries, "entries_json": report / ENTRIES_FILE, "entries_dir": folder}
