"""Bundles: a model's per-example worst-case images, its entry and sha256s, made by the pipeline on a
tiny model, and `python -m dwf_lab verify`, which re-derives the numbers with one forward pass and
fails, naming it, on an image moved outside the ball, a wrong checkpoint and a changed label."""
import json
import shutil
import time

import pytest
import torch
from tinymodels import smoke_run  # tests/ is on sys.path

from dwf_lab.__main__ import main
from dwf_lab.pipeline.adaptive import evaluate_adaptive_run
from dwf_lab.pipeline.bundles import FILES, verify_bundle, write_bundles
from dwf_lab.reporting.render import confirmation_section
from dwf_lab.store.archive import files_to_pack


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    run, data, s = smoke_run(tmp_path_factory.mktemp("runs"), "bundled", "benign,pgd-1")
    evaluate_adaptive_run(run, 0, data, s, progress=False, which="benign", checklist=False)
    infos = write_bundles(run, data, "benign", s)
    return run, infos[0], run.root / "bundles" / "benign_seed0"


def test_the_pipeline_bundle_verifies_and_the_record_keeps_the_fp32_confirmation(bundled):
    run, info, folder = bundled
    assert sorted(p.name for p in folder.iterdir()) == ["adversarial.pt", "bundle.json", "entry.json",
                                                        "test_images.pt", "test_labels.pt"]
    x_adv = torch.load(folder / FILES["adversarial"], weights_only=True)
    assert isinstance(x_adv, torch.Tensor) and x_adv.dtype == torch.float32 and x_adv.shape == (info["n"], 3, 32, 32)
    t0 = time.time()
    r = verify_bundle(folder)
    assert r["problems"] == [] and time.time() - t0 < 60
    assert (r["clean"], r["robust"]) == (info["clean"]["correct"], info["robust"]["correct"])
    assert r["robust"] <= r["clean"]
    rec = json.loads(run.eval_path(0, "benign").read_text())
    conf = rec["fp32_confirmation"]
    assert conf["robust_fp32"] == info["robust"]["correct"] and conf["n"] == info["n"]
    assert json.loads((folder / "entry.json").read_text())["dwf_lab"]["model"] == "benign"
    assert any(f.startswith("bundles/benign_seed0/") for f in files_to_pack(run.root)), "pack includes bundles"
    section = confirmation_section(run.eval_dir)
    (row,) = section["rows"]
    assert row[0] == "ResNet-18" and row[2] == info["n"] and row[4] == f"{conf['robust_fp32_pct']:.1f}"
    assert row[5:7] == [len(conf["broken_only_stored"]), len(conf["broken_only_fp32"])]


def _copy(folder, tmp_path):
    # the checkpoint is named relative to the run (../../seed-0/models/...): copy the run's layout
    dst = tmp_path / "bundles" / folder.name
    shutil.copytree(folder, dst)
    shutil.copytree(folder.parent.parent / "seed-0" / "models", tmp_path / "seed-0" / "models")
    return dst


def test_verify_names_an_image_outside_the_ball(bundled, tmp_path, capsys):
    _, info, folder = bundled
    bad = _copy(folder, tmp_path)
    x_adv = torch.load(bad / FILES["adversarial"], weights_only=True)
    x = torch.load(bad / FILES["images"], weights_only=True)
    x_adv[3] = (x[3] + 12 / 255 * torch.sign(torch.randn_like(x[3]))).clamp(0, 1)
    torch.save(x_adv, bad / FILES["adversarial"])
    problems = verify_bundle(bad)["problems"]
    assert any("1 adversarial image(s) outside the eps-ball" in p and "image 3" in p for p in problems)
    assert any("adversarial.pt: its sha256 differs" in p for p in problems)
    assert main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "outside the eps-ball" in err and all(line.startswith("dwf-lab: verify: ") for line in err.splitlines())


def test_verify_fails_with_another_checkpoint_and_with_changed_labels(bundled, tmp_path, capsys):
    run, info, folder = bundled
    other = run.model_path(0, "pgd-1")
    problems = verify_bundle(folder, checkpoint=other)["problems"]
    assert any("is not the evaluated model's" in p for p in problems)
    assert main(["verify", str(folder), "--checkpoint", str(other)]) == 1
    bad = _copy(folder, tmp_path)
    y = torch.load(bad / FILES["labels"], weights_only=True)
    y[0] = (y[0] + 1) % 10
    torch.save(y, bad / FILES["labels"])
    problems = verify_bundle(bad)["problems"]
    assert any("test labels: their sha256 is not the one" in p for p in problems)
    assert main(["verify", str(folder)]) == 0
    assert "every claim holds" in capsys.readouterr().out
