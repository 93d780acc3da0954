"""Every mistake a user can make on the command line: ONE line ``dwf-lab: error: ...``, exit code
2, no traceback, and nothing created or changed on disk (``--debug`` shows the traceback)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinymodels import lock_holder  # tests/ is on sys.path

from dwf_lab.__main__ import main
from dwf_lab.core.config import get_profile
from dwf_lab.data import DATA_DIR_ENV, SUBSET_ENV
from dwf_lab.store.runs import RUNS_DIR_ENV, Run

SMOKE = ["--profile", "smoke", "--quiet"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def fails(capsys, args, message: str) -> None:
    """The command exits 2 with exactly one line: dwf-lab: error: <message>."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"dwf-lab: error: {message}\n", err


def made(runs: Path, name: str = "smoke", **kw) -> Path:
    Run(name, get_profile("smoke", **kw))
    return runs / name / "config.json"


# ------------------------------------------------------------ settings --
@pytest.mark.parametrize("setting, message", [
    ("lr=-1", "invalid profile: lr must be a finite number > 0, got -1.0"),
    ("lr=nan", "invalid profile: lr must be a finite number > 0, got nan"),
    ("pgd_eps=nan", "invalid profile: pgd_eps must be >= 0 and <= 1 (a finite eps in pixel units), got nan"),
    ("pgd_eps=inf", "invalid profile: pgd_eps must be >= 0 and <= 1 (a finite eps in pixel units), got inf"),
    ("pgd_eps=8/0", "invalid profile: pgd_eps must be a number (or a fraction like 8/255), got '8/0' "
                    "(a division by zero)"),
    ("expert_epochs=-3", "invalid profile: expert_epochs must be >= 0, got -3"),
    ("momentum=5", "invalid profile: momentum must be in [0, 1), got 5.0"),
    ("eval_restarts=0", "invalid profile: eval_restarts must be >= 1, got 0"),
    ("eval_batch=0", "invalid profile: eval_batch must be >= 1, got 0"),
    ("gate_hidden=0", "invalid profile: gate_hidden must be >= 1, got 0"),
    ("device=tpu", "invalid profile: device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("seeds=0,0,1", "invalid profile: seeds must not repeat a seed, got (0, 0, 1)"),
    ("pgd_steps_choices=0", "invalid profile: every value of pgd_steps_choices must be >= 1, got (0,)"),
    ("width=inf", "invalid profile: width must be a finite number > 0, got inf"),
    ("width=nan", "invalid profile: width must be a finite number > 0, got nan"),
    ("dataset=imagenet", "invalid profile: dataset must be one of cifar10, cifar10-subset, svhn, mnist, "
                         "synthetic, got 'imagenet'"),
    ("name=foo", "name is the profile's name and cannot be set (got 'foo'); choose a profile with --profile "
                 "(smoke, laptop, paper), then --set its fields"),
])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_bad_setting_is_one_line_and_creates_nothing(runs, capsys, command, setting, message):
    fails(capsys, [command, *SMOKE, "--set", setting], message)
    assert snapshot(runs) == {}


def test_a_failed_command_leaves_no_run_behind_and_the_corrected_one_runs(runs, capsys):
    fails(capsys, ["train", *SMOKE, "--set", "width=nan"], "invalid profile: width must be a finite number > 0, got nan")
    fails(capsys, ["train", *SMOKE, "--stage", "nosuch"],
          "no stage 'nosuch' in this profile; stages: benign, fgsm-1, pgd-1, fgsm-at, pgd-at, mixture "
          "(or all/experts/baselines/mixture)")
    fails(capsys, ["adaptive", *SMOKE, "--stage", "soe,nosuch"],   # adaptive also knows the baselines
          "no stage 'nosuch' in this profile; stages: benign, fgsm-1, pgd-1, fgsm-at, pgd-at, mixture "
          "(or all/experts/baselines/mixture)")
    assert snapshot(runs) == {}
    assert main(["train", *SMOKE, "--stage", "benign", "--set", "n_train=64", "--set", "n_test=16"]) == 0
    assert (runs / "smoke" / "seed-0" / "models" / "benign.safetensors").exists()
    before = snapshot(runs)
    fails(capsys, ["evaluate", *SMOKE, "--stage", "nosuch", "--set", "n_train=64", "--set", "n_test=16"],
          "no stage 'nosuch' in this profile; stages: benign, fgsm-1, pgd-1, fgsm-at, pgd-at, mixture "
          "(or all/experts/baselines/mixture)")
    assert snapshot(runs) == before


@pytest.mark.parametrize("command", ["evaluate", "adaptive", "report"])
def test_a_run_that_does_not_exist_is_an_error_and_is_not_created(runs, capsys, command):
    fails(capsys, [command, *SMOKE, "--run", "ghost"],
          f"no run 'ghost' at {runs / 'ghost'} (no config.json there); train it first "
          "(python -m dwf_lab train --run ghost) or check --run and DWF_RUNS_DIR")
    assert snapshot(runs) == {}


def test_debug_shows_the_traceback(runs):
    with pytest.raises(ValueError, match="width must be a finite number"):
        main(["train", *SMOKE, "--debug", "--set", "width=nan"])
    res = subprocess.run([sys.executable, "-m", "dwf_lab", "report", "--debug", *SMOKE, "--run", "ghost"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" in res.stderr and "RunNotFoundError" in res.stderr
    assert snapshot(runs) == {}


# ----------------------------------------------------------- config.json --
def test_a_hand_edited_config_is_refused_and_kept(runs, capsys):
    cfg = made(runs)
    c = json.loads(cfg.read_text())
    c["profile"]["lr"] = 0.5                              # its digest left alone
    cfg.write_text(json.dumps(c, indent=1))
    before = snapshot(runs)
    for command in ("train", "evaluate", "report"):
        fails(capsys, [command, *SMOKE],
              f"run 'smoke': {cfg} was edited by hand (its settings no longer match its checksum and digest; it "
              "differs from this command's settings in lr is 0.5 there and 0.01 here). Nothing was changed: "
              "restore the file, or delete the run folder to start it over.")
    assert snapshot(runs) == before


@pytest.mark.parametrize("damage, what", [
    (lambda c: c.pop("profile") and None, "no profile"),
    (lambda c: c.pop("digest") and None, "no digest"),
    (lambda c: c["profile"].pop("width") and None, "settings missing: width"),
    (lambda c: json.dumps([c]), "it holds a list, not the run's settings"),
    (lambda c: "{", "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
])
def test_a_damaged_config_is_one_line_and_kept(runs, capsys, damage, what):
    cfg = made(runs)
    c = json.loads(cfg.read_text())
    text = damage(c)     # the file's new text, or None: c was changed in place
    cfg.write_text(json.dumps(c) if text is None else text)
    before = snapshot(runs)
    fails(capsys, ["train", *SMOKE], f"run 'smoke': {cfg} is damaged ({what}). Nothing was changed: restore "
                                     "the file, or delete the run folder to start it over.")
    assert snapshot(runs) == before


def test_other_settings_are_refused(runs, capsys):
    made(runs)
    before = snapshot(runs)
    fails(capsys, ["train", *SMOKE, "--set", "width=0.125"],
          f"run 'smoke' at {runs / 'smoke'} was made with other settings (width: 0.0625 -> 0.125). Nothing was "
          "changed. Use another run name (--run NAME), or delete that folder to start it over.")
    assert snapshot(runs) == before


def test_directories_given_as_files_and_unwritable_folders(runs, capsys, tmp_path, monkeypatch):
    (runs / "smoke" / "config.json").mkdir(parents=True)
    fails(capsys, ["train", *SMOKE], f"run 'smoke': {runs / 'smoke' / 'config.json'} is damaged (IsADirectoryError: "
          f"[Errno 21] Is a directory: '{runs / 'smoke' / 'config.json'}'). Nothing was changed: restore the file, "
          "or delete the run folder to start it over.")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dwf-lab: error: {tmp_path} is a directory") and err.count("\n") == 1
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv(RUNS_DIR_ENV, str(a_file))
    fails(capsys, ["train", *SMOKE], f"cannot write the run folder {a_file / 'smoke'}: Not a directory "
                                     "(NotADirectoryError)")
    assert a_file.read_text() == "x"


# -------------------------------------------------------------- datasets --
def _subset(path: Path, labels=None) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_train=(np.arange(40) % 10 if labels is None else labels).astype(np.uint8),
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=(np.arange(20) % 10).astype(np.uint8))
    return path


def test_a_subset_file_that_was_set_never_falls_back(runs, capsys, tmp_path, monkeypatch):
    missing = tmp_path / "nope.npz"
    monkeypatch.setenv(SUBSET_ENV, str(missing))
    fails(capsys, ["train", "--profile", "laptop", "--quiet"],
          f"{SUBSET_ENV} is set to {str(missing)!r}, but there is no file at {missing}. Point {SUBSET_ENV} at a "
          "cifar10-subset.npz (see data/README.md), or unset it.")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setenv(SUBSET_ENV, str(corrupt))
    capsys.readouterr()
    assert main(["train", "--profile", "laptop", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dwf-lab: error: {corrupt} is not a readable CIFAR-10 subset file (unreadable, corrupt, "
                          "or without the arrays x_train, y_train, x_test, y_test; see data/README.md): ")
    assert err.count("\n") == 1 and "SYNTHETIC" not in err
    bad_labels = _subset(tmp_path / "labels.npz", labels=np.arange(40) % 12)
    monkeypatch.setenv(SUBSET_ENV, str(bad_labels))
    fails(capsys, ["train", "--profile", "smoke", "--quiet", "--set", "dataset=cifar10-subset"],
          f"{bad_labels} (y_train): 6 label(s) outside the classes 0..9 (e.g. 10)")
    assert snapshot(runs) == {}


def test_a_data_directory_that_was_set_never_falls_back(runs, capsys, tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv(DATA_DIR_ENV, str(a_file))
    fails(capsys, ["train", "--profile", "laptop", "--quiet"],
          f"{DATA_DIR_ENV} is set to {str(a_file)!r}, which is not a directory, so cifar10 cannot be downloaded "
          f"into it; make it writable or point {DATA_DIR_ENV} elsewhere")
    assert snapshot(runs) == {}


# ---------------------------------------------------------- one writer --
def test_a_second_process_on_the_same_run_is_refused(runs, capsys):
    made(runs)
    holder = lock_holder(runs / "smoke", "smoke")
    try:
        before = snapshot(runs)
        for command in ("train", "evaluate", "baselines"):
            capsys.readouterr()
            assert main([command, *SMOKE]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"dwf-lab: error: run 'smoke' at {runs / 'smoke'} is in use by another process "
                                  f"('train', pid {holder.pid} on {socket.gethostname()}, since ")
            assert err.endswith("); wait for it to finish (or stop it), or use another --run\n")
        assert snapshot(runs) == before
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------- commands read the run --
def test_evaluate_and_report_take_the_runs_own_settings(runs, capsys):
    assert main(["train", "--profile", "smoke", "--run", "wide", "--set", "width=0.125", "--quiet",
                 "--stage", "benign"]) == 0
    # no --profile, no --set: the run's config.json says width 0.125 (smoke's own is 0.0625)
    assert main(["evaluate", "--run", "wide", "--stage", "benign", "--quiet"]) == 0
    rec = json.loads((runs / "wide" / "eval" / "benign_seed0.json").read_text())
    assert rec["metrics"]["SA"] >= 0
    assert main(["report", "--run", "wide"]) == 0
    capsys.readouterr()
    # a --set that changes results conflicts with the run: refused with the difference named
    assert main(["evaluate", "--run", "wide", "--set", "width=0.25", "--quiet"]) == 2
    assert "width: 0.125 -> 0.25" in capsys.readouterr().err
    # one that only changes speed is fine
    assert main(["evaluate", "--run", "wide", "--stage", "benign", "--set", "num_threads=1", "--quiet"]) == 0
