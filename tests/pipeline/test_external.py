"""``python -m dwf_lab evaluate --model package.module:factory`` and ``--checkpoint FILE``: a model no run
trained goes through the protocol, the adaptive attacks, AutoAttack and the checklist into a folder the
report code reads like a run; bad models are one error line and nothing written."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from tinymodels import tiny_trained  # tests/ is on sys.path

from dwf_lab.__main__ import main
from dwf_lab.core.config import get_profile
from dwf_lab.evaluation import adaptive as ev_adaptive
from dwf_lab.evaluation.adaptive import AdaptiveSettings, _run_batch
from dwf_lab.models.external import load_factory
from dwf_lab.models.registry import build_model
from dwf_lab.pipeline import adaptive as pipe_adaptive
from dwf_lab.pipeline.run_all import report_run
from dwf_lab.store.checkpoints import save_model, weights_digest
from dwf_lab.store.runs import RUNS_DIR_ENV, Run

HERE = Path(__file__).resolve().parent
FACTORIES = HERE / "external_factories.py"
SMOKE = ["--profile", "smoke", "--quiet"]
RESNET = "dwf_lab.models.examples:torchvision_resnet18"


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv(RUNS_DIR_ENV, str(root))
    return root


def evaluate(*args) -> int:
    return main(["evaluate", *args, *SMOKE])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dwf-lab: error: "), err
    return err[0]


def test_a_torchvision_resnet18_is_evaluated_like_a_run(runs, capsys, monkeypatch):
    assert evaluate("--model", RESNET, "--n-test", "16") == 0
    out = runs / "external" / "torchvision_resnet18"
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["report.md"]) == out / "report" / "report.md"
    rec = json.loads((out / "eval" / "torchvision_resnet18_seed0.json").read_text())
    assert rec["n_test"] == 16 and rec["dataset"] == "synthetic" and rec["warnings"] == []
    ident = rec["external"]
    assert ident["spec"] == RESNET and ident["source"] == "factory"
    assert ident["state_dict_sha256"] == weights_digest(load_factory(RESNET).state_dict())
    m = rec["metrics"]
    s = AdaptiveSettings.from_profile(get_profile("smoke"))
    for key in ("SA", "fgsm:0.03", "pgd:4", "pgd:4-ms", "pgd:4-a", *s.attack_names(False)):
        assert key in m, key                                         # the protocol and every adaptive attack
    assert "autoattack" in m
    mixture_only = set(s.attack_names(True)) - set(s.attack_names(False))
    assert mixture_only and not mixture_only & set(m)               # the gate-aware attacks: mixtures only
    assert m["worst-case (all)"] <= min(m["SA"], m["pgd:4"], m["autoattack"])
    assert json.loads((out / "model.json").read_text())["identity"] == ident
    report = (out / "report" / "report.md").read_text()
    assert "torchvision_resnet18" in report and "Gradient-masking checklist" in report
    assert (out / "report" / "checklist_torchvision_resnet18_seed0.md").exists()

    # the folder is a run to the report code: by its path, and by name through the CLI
    run = Run.open("torchvision_resnet18", get_profile("smoke", n_test=16), root=out)
    assert (report_run(run)["report.md"]).exists()
    monkeypatch.setenv(RUNS_DIR_ENV, str(runs / "external"))
    assert main(["report", "--run", "torchvision_resnet18"]) == 0
    monkeypatch.setenv(RUNS_DIR_ENV, str(runs))

    # the same model again: nothing recomputed; another model into the same folder: refused, nothing changed
    stored = (out / "eval" / "torchvision_resnet18_seed0.json").read_text()
    capsys.readouterr()
    assert evaluate("--model", RESNET, "--n-test", "16") == 0
    again = (out / "eval" / "torchvision_resnet18_seed0.json").read_text()
    assert json.loads(again)["per_example"] == json.loads(stored)["per_example"]
    capsys.readouterr()
    assert evaluate("--model", RESNET, "--model-arg", "dataset=svhn", "--n-test", "16",
                    "--out", str(out)) == 2
    assert "holds the results of another model" in error_line(capsys)
    assert (out / "eval" / "torchvision_resnet18_seed0.json").read_text() == again
    assert json.loads((out / "model.json").read_text())["identity"] == ident
    assert evaluate("--model", RESNET, "--n-test", "8") == 2       # the same model, other settings: refused
    assert "other settings" in error_line(capsys)


def test_a_kit_checkpoint_without_a_run(runs, tmp_path, capsys):
    model, _ = tiny_trained(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_model(ckpt, model, {"row": "tiny ResNet-18"})
    assert evaluate("--checkpoint", str(ckpt), "--n-test", "32") == 0
    out = runs / "external" / "tiny"
    rec = json.loads((out / "eval" / "tiny_seed0.json").read_text())
    assert rec["external"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec["row"] == "tiny ResNet-18" and rec["metrics"]["SA"] >= 75   # trained: far above chance (10%)
    assert rec["metrics"]["worst-case (all)"] <= rec["metrics"]["pgd:4-ms"]
    assert "tiny ResNet-18" in (out / "report" / "report.md").read_text()
    assert capsys.readouterr().err.count("warning") == 0

    # a damaged copy is refused by its sha256 before anything is written
    bad = tmp_path / "bad.safetensors"
    raw = bytearray(ckpt.read_bytes())
    raw[-10] ^= 0xFF
    bad.write_bytes(bytes(raw))
    assert evaluate("--checkpoint", str(bad)) == 2
    assert "damaged" in error_line(capsys)
    assert not (runs / "external" / "bad").exists()


def test_a_result_stored_with_other_settings_is_refused_and_recomputed_with_redo(runs, tmp_path, capsys,
                                                                                  monkeypatch):
    model, _ = tiny_trained(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_model(ckpt, model)
    assert evaluate("--checkpoint", str(ckpt), "--n-test", "16") == 0
    path = runs / "external" / "tiny" / "eval" / "tiny_seed0.json"
    rec = json.loads(path.read_text())
    asked = rec["attack_settings"]["autoattack"]["budget"]["apgd_iter"]
    rec["attack_settings"]["autoattack"]["budget"]["apgd_iter"] = asked + 7   # as if made with a bigger budget
    path.write_text(json.dumps(rec))
    stored = path.read_text()
    model_json = (runs / "external" / "tiny" / "model.json").read_text()
    capsys.readouterr()

    # refused: one line naming the file, the key, the difference and the command that recomputes it
    assert evaluate("--checkpoint", str(ckpt), "--n-test", "16") == 2
    line = error_line(capsys)
    assert str(path) in line and "'autoattack'" in line
    assert f"budget.apgd_iter {asked + 7} (stored) vs {asked} (asked)" in line
    assert path.read_text() == stored and (runs / "external" / "tiny" / "model.json").read_text() == model_json

    # the command it names recomputes AutoAttack alone, stored with the settings it ran with
    command = re.search(r"Recompute with these settings: python -m dwf_lab (.*?) \(in Python", line).group(1)
    assert "--redo autoattack" in command and "--checkpoint" in command
    seen = []
    monkeypatch.setattr(ev_adaptive, "_run_batch", lambda m, xb, yb, s_, want, *a: seen.append({a.key(s_) for a in want}) or
                        _run_batch(m, xb, yb, s_, want, *a))
    assert main([*command.split(), "--quiet"]) == 0
    assert seen and all(w == {"autoattack"} for w in seen)
    after = json.loads(path.read_text())
    assert after["attack_settings"]["autoattack"]["budget"]["apgd_iter"] == asked
    assert {k: v for k, v in after["per_example"].items() if k not in ("autoattack", "worst-case (all)")} == \
        {k: v for k, v in rec["per_example"].items() if k not in ("autoattack", "worst-case (all)")}
    assert after["autoattack_stages"] and "autoattack_stages" not in after["adaptive"]


class _Stop(Exception):
    """Raised by a spy once it has seen what it was looking for (not a user error: main lets it through)."""


def test_aa_standard_asks_for_the_official_autoattack_at_its_standard_budget(runs, tmp_path, monkeypatch):
    smoke = AdaptiveSettings.from_profile(get_profile("smoke"))
    standard = smoke.standard_autoattack().aa_budget()
    assert smoke.aa_budget() != standard and standard == AdaptiveSettings().aa_budget()
    seen = []

    def spy(model, x, y, s, *a):      # the attacks are not run: the standard suite is slow on a CPU
        seen.append(s)
        raise _Stop
    monkeypatch.setattr(pipe_adaptive, "evaluate_any", spy)
    model, _ = tiny_trained(0)
    save_model(tmp_path / "tiny.safetensors", model)
    for aa in ("profile", "standard"):
        with pytest.raises(_Stop):
            evaluate("--checkpoint", str(tmp_path / "tiny.safetensors"), "--n-test", "8", "--aa", aa)
    assert [s.aa_budget() for s in seen] == [smoke.aa_budget(), standard]
    assert seen[1] == smoke.standard_autoattack()          # nothing else changes

    # the adaptive command of a run: the same settings reach evaluate_adaptive_run
    Run("aa-run", get_profile("smoke"))
    asked = []

    def run_spy(run, seed, data, settings=None, **kw):
        asked.append(settings)
        raise _Stop
    monkeypatch.setattr(pipe_adaptive, "evaluate_adaptive_run", run_spy)
    for aa in ("profile", "standard"):
        with pytest.raises(_Stop):
            main(["adaptive", "--run", "aa-run", "--quiet", "--aa", aa])
    assert asked[0] is None and asked[1] == AdaptiveSettings.from_profile(get_profile("smoke")).standard_autoattack()


def test_a_kit_mixture_checkpoint_gets_the_attacks_made_for_mixtures(runs, tmp_path):
    torch.manual_seed(0)
    mix = build_model("dwf_mixture", n_experts=3, width=0.0625, dataset="synthetic", gate_hidden=16)
    save_model(tmp_path / "dwf.safetensors", mix, {"row": "DWF", "stage": "mixture"})
    assert evaluate("--checkpoint", str(tmp_path / "dwf.safetensors"), "--n-test", "16") == 0
    rec = json.loads((runs / "external" / "mixture" / "eval" / "mixture_seed0.json").read_text())
    s = AdaptiveSettings.from_profile(get_profile("smoke"))
    assert rec["row"] == "DWF" and set(s.attack_names(True)) <= set(rec["metrics"])   # routing, transfer included


def test_a_model_that_expects_normalized_images_is_warned_about(runs, capsys):
    assert evaluate("--model", f"{FACTORIES}:unnormalized_tiny", "--n-test", "64") == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("dwf-lab: warning:")]
    assert len(warnings) == 1
    assert "expects normalized images" in warnings[0] and "wrap the normalization inside the model" in warnings[0]
    rec = json.loads((runs / "external" / "unnormalized_tiny" / "eval" / "unnormalized_tiny_seed0.json").read_text())
    assert rec["warnings"] == [warnings[0].removeprefix("dwf-lab: warning: ")]


@pytest.mark.parametrize("args, message", [
    (["--model", "no_such_package_xyz:f"], "cannot import no_such_package_xyz"),
    (["--model", "torchvision.models:resnet18"], "predicts 1000 classes but the data has 10"),
    (["--model", "torch.nn:Linear", "--model-arg", "in_features=3", "--model-arg", "out_features=10"],
     r"fails on a \(1, 3, 32, 32\) batch"),
    (["--model", "collections:OrderedDict"], "not a torch.nn.Module"),
    (["--model", f"{FACTORIES}:broken"], "broken\\(\\) fails .*weights file not found"),
    (["--model", RESNET, "--checkpoint", "x.safetensors"], "not both"),
    (["--model", RESNET, "--run", "smoke"], "takes no --run"),
    (["--n-test", "10"], "go with evaluate --checkpoint"),
    (["--aa", "standard"], "go with evaluate --checkpoint"),
    (["--model", RESNET, "--redo", "pgd-99"], "cannot redo"),
    (["--checkpoint", "/nowhere/x.safetensors"], "no checkpoint at"),
    (["--model", RESNET, "--name", "../x"], "--name"),
])
def test_bad_models_are_one_error_line_and_nothing_written(runs, capsys, args, message):
    assert evaluate(*args) == 2
    assert re.search(message, error_line(capsys))
    assert not runs.exists()
