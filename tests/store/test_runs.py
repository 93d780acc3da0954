"""Run directories: every path of a run comes from ``Run``; a run refuses other settings and
keeps its files; seeds accumulate; speed switches may change between calls."""
from __future__ import annotations

import json

import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.store.runs import RUNS_DIR_ENV, Run, RunConfigMismatch, runs_dir


def test_every_path_of_a_run_lies_under_its_root(tmp_path):
    p = get_profile("smoke")
    run = Run("r1", p, root=tmp_path / "r1")
    paths = [run.seed_dir(0), run.model_path(0, "benign"), run.ckpt_dir(0, "benign"), run.eval_path(0, "benign"),
             run.eval_dir, run.report_dir, run.notebooks_dir, run.ablation_dir(0, "experts-1"),
             run.checklist_path(0, "mixture"), run.checklist_path(0, "mixture", ".md")]
    assert all(tmp_path / "r1" in path.parents for path in paths)
    assert run.model_path(0, "benign").name == "benign.safetensors"
    assert run.checklist_path(0, "mixture", ".md").name == "checklist_mixture_seed0.md"
    assert not run.is_done(0, "benign")


def test_runs_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert runs_dir() == tmp_path / "elsewhere"
    assert Run("x", get_profile("smoke")).root == tmp_path / "elsewhere" / "x"


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_run_names_are_plain_folder_names(name, tmp_path):
    with pytest.raises(ValueError, match="plain folder names"):
        Run(name, get_profile("smoke"), root=tmp_path / "x")


def test_other_settings_are_refused_and_the_config_is_kept(tmp_path):
    p = get_profile("smoke")
    Run("r", p, root=tmp_path / "r")
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(RunConfigMismatch, match=r"width: 0\.0625 -> 0\.125"):
        Run("r", p.replace(width=0.125), root=tmp_path / "r")
    assert (tmp_path / "r" / "config.json").read_text() == before


def test_seeds_accumulate_and_speed_switches_may_change(tmp_path):
    p = get_profile("smoke")
    Run("r", p, root=tmp_path / "r")
    Run("r", p.replace(seeds=(1,), num_threads=1, expert_batching="vmap"), root=tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["profile"]["seeds"] == [0, 1] and cfg["digest"] == p.digest()


def test_metrics_log_skips_a_line_cut_by_a_crash(tmp_path):
    run = Run("r", get_profile("smoke"), root=tmp_path / "r")
    log = run.logger(0)
    log({"event": "epoch", "epoch": 1})
    with open(run.seed_dir(0) / "metrics.jsonl", "a") as f:
        f.write('{"event": "epo')
    assert run.metrics(0) == [{"event": "epoch", "epoch": 1}]
