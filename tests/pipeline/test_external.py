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
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.models.external import load_factory
from dwf_lab.models.registry import build_model
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
    (["--checkpoint", "/nowhere/x.safetensors"], "no checkpoint at"),
    (["--model", RESNET, "--name", "../x"], "--name"),
])
def test_bad_models_are_one_error_line_and_nothing_written(runs, capsys, args, message):
    assert evaluate(*args) == 2
    assert re.search(message, error_line(capsys))
    assert not runs.exists()
