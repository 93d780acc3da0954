"""The smoke pipeline end to end through the command line, and its clear errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.pipeline.reproduce import evaluate_run
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import assemble_mixture, load_data

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env_extra=None, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "dwf_lab", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    res = cli("run", "--profile", "smoke", "--quiet", env_extra={"DWF_RUNS_DIR": str(runs)})
    assert res.returncode == 0, res.stderr[-3000:]
    return runs / "smoke"


def test_smoke_pipeline_trains_every_stage_evaluates_and_reports(smoke_run):
    models = sorted(p.stem for p in (smoke_run / "seed-0" / "models").glob("*.safetensors"))
    assert models == ["benign", "fgsm-1", "fgsm-at", "mixture", "pgd-1", "pgd-at"]
    evals = {p.stem: json.loads(p.read_text()) for p in (smoke_run / "eval").glob("*.json")}
    assert set(evals) == {f"{m}_seed0" for m in models}
    dwf = evals["mixture_seed0"]
    assert dwf["row"] == "DWF" and dwf["n_test"] == 64
    m = dwf["metrics"]
    for key in ["SA", "fgsm:0.01", "fgsm:0.03", "fgsm:0.09", "pgd:2", "pgd:4", "pgd:4-ms", "pgd:4-a",
                "worst-case"]:
        assert key in m, key
    in_ball = [k for k in m if k not in ("worst-case", "fgsm:0.09")]   # 0.09 > 8/255: another threat model
    assert m["worst-case"] <= min(m[k] for k in in_ball)
    assert m["pgd:4-ms"] <= m["pgd:4-a"]          # the worst case over restarts includes restart 1
    report = smoke_run / "report"
    for name in ["report.md", "report.html", "report.json", "fig6_fgsm.html", "fig7_pgd.html"]:
        assert (report / name).stat().st_size > 0, name
    md = (report / "report.md").read_text()
    assert "| **DWF** |" in md and "91.19" in md      # our row beside the paper's number
    log = [json.loads(line) for line in (smoke_run / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log if r["event"] == "stage_done"} == set(models)
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["profile"]["name"] == "smoke"


def test_rerun_is_idempotent_and_fast(smoke_run):
    before = {p.name: p.stat().st_mtime_ns for p in (smoke_run / "seed-0" / "models").iterdir()}
    res = cli("run", "--profile", "smoke", "--quiet",
              env_extra={"DWF_RUNS_DIR": str(smoke_run.parent)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in (smoke_run / "seed-0" / "models").iterdir()}
    assert after == before


def test_inspect_prints_checkpoint_metadata(smoke_run):
    res = cli("inspect", str(smoke_run / "seed-0" / "models" / "mixture.safetensors"))
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)
    assert meta["arch"] == "dwf_mixture" and meta["arch_kwargs"]["n_experts"] == 3
    assert meta["stage"] == "mixture" and "torch" in meta["versions"]


@pytest.mark.parametrize("args, message", [
    (["train", "--profile", "nope"], "unknown profile"),
    (["train", "--profile", "smoke", "--set", "widht=2"], "unknown setting 'widht'"),
    (["train", "--profile", "smoke", "--set", "pgd_eps=-1"], "eps must be >= 0"),
    (["train", "--profile", "smoke", "--stage", "pgd-7"], "no stage 'pgd-7'"),
])
def test_bad_input_gets_one_clear_error(args, message, tmp_path):
    res = cli(*args, env_extra={"DWF_RUNS_DIR": str(tmp_path)}, timeout=120)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_run_refuses_other_settings_and_keeps_its_files(smoke_run):
    res = cli("train", "--profile", "smoke", "--set", "width=0.5",
              env_extra={"DWF_RUNS_DIR": str(smoke_run.parent)}, timeout=120)
    assert res.returncode == 2 and "other settings" in res.stderr and "width" in res.stderr
    assert (smoke_run / "seed-0" / "models" / "mixture.safetensors").exists()


def test_environment_yml_installs_the_package_with_the_extras_pyproject_defines():
    import tomllib
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    env = (REPO / "environment.yml").read_text()
    line = next(l for l in env.splitlines() if l.strip().startswith("- -e"))
    named = set(line.split("[", 1)[1].split("]", 1)[0].split(","))
    assert named == extras
    assert "python=3.11" in env and "conda-forge" in env
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement
    wanted = {r.name: r.specifier for r in map(Requirement, deps)}
    # the package asks for a range (installable into an existing environment) that holds the exact pins
    assert "2.14.1" in wanted["torch"] and "0.29.1" in wanted["torchvision"]
    # and the versions GPU images carry, from torch 2.11 to the newest release (2.15); 2.16 is not out
    assert all(v in wanted["torch"] for v in ("2.11.0", "2.13.0", "2.15.0")) and "2.16.0" not in wanted["torch"]
    assert "0.26.0" in wanted["torchvision"] and "0.30.0" in wanted["torchvision"]


def test_a_fresh_install_is_the_tested_one():
    """make and environment.yml install with constraints.txt, which pins every package that the
    project asks for (and what they pull in) to one version."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    import re
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in wanted}
    assert names <= set(pins), f"not pinned: {sorted(names - set(pins))}"
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    assert "- -c constraints.txt" in (REPO / "environment.yml").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [l.split("#")[0].strip() for l in readme[:6] if l.startswith("make ")]
    assert commands == ["make run", "make test"]
    ci = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines()
          if l.strip() and not l.startswith("#") and not l.startswith("set ") and not l.startswith("cd ")]
    assert ci == ["make test"]


# ------------------------------------------------- another run's checkpoint --
ANOTHER_RUN = "it belongs to another run; move it away or use that run."


def _drop(smoke_run, run, stage, seed=0, as_stage=None):
    """Copy the smoke run's finished ``stage`` into ``run``'s models/ (as ``as_stage``)."""
    dest = run.model_path(seed, as_stage or stage)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(smoke_run / "seed-0" / "models" / f"{stage}.safetensors", dest)
    return dest


def test_another_runs_checkpoint_in_models_is_refused_and_nothing_is_evaluated(smoke_run, tmp_path):
    p = get_profile("smoke", width=0.125)
    run = Run("mine", p, root=tmp_path / "mine")
    dropped = _drop(smoke_run, run, "benign")
    data = load_data(p)
    with pytest.raises(ValueError) as err:
        evaluate_run(run, 0, data, progress=False, device="cpu")
    assert str(err.value) == f"{dropped} was trained with width 0.0625, this run uses 0.125: {ANOTHER_RUN}"
    assert not (run.eval_dir.exists() and list(run.eval_dir.glob("*.json")))   # nothing written to eval/
    # the mixture refuses another run's experts the same way, before anything is built
    for name in ("fgsm-1", "pgd-1"):
        _drop(smoke_run, run, name)
    with pytest.raises(ValueError, match=f"{dropped} was trained with width 0.0625, this run uses 0.125"):
        assemble_mixture(run, 0, data)


def test_the_cli_refuses_another_runs_checkpoint_without_a_traceback(smoke_run, tmp_path):
    run = Run("mine", get_profile("smoke", width=0.125), root=tmp_path / "mine")
    dropped = _drop(smoke_run, run, "benign")
    res = cli("evaluate", "--profile", "smoke", "--set", "width=0.125", "--run", "mine",
              env_extra={"DWF_RUNS_DIR": str(tmp_path)}, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"{dropped} was trained with width 0.0625, this run uses 0.125: {ANOTHER_RUN}" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (run.eval_dir.exists() and list(run.eval_dir.glob("*.json")))


def test_a_checkpoint_of_another_stage_or_seed_is_refused(smoke_run, tmp_path):
    p = get_profile("smoke")
    run = Run("same-settings", p, root=tmp_path / "same")
    data = load_data(p)
    wrong_stage = _drop(smoke_run, run, "pgd-at", as_stage="benign")
    with pytest.raises(ValueError) as err:
        evaluate_run(run, 0, data, which="benign", progress=False, device="cpu")
    assert str(err.value) == f"{wrong_stage} was trained with stage 'pgd-at', this run uses 'benign': {ANOTHER_RUN}"
    wrong_seed = _drop(smoke_run, run, "benign", seed=1)
    with pytest.raises(ValueError) as err:
        evaluate_run(run, 1, data, which="benign", progress=False, device="cpu")
    assert str(err.value) == f"{wrong_seed} was trained with seed 0, this run uses 1: {ANOTHER_RUN}"
    assert not (run.eval_dir.exists() and list(run.eval_dir.glob("*.json")))


def test_inspect_on_a_directory_is_one_clear_error(smoke_run):
    res = cli("inspect", str(smoke_run / "seed-0" / "models"), timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "is a directory, not a checkpoint: pass one .safetensors file. For example: " in res.stderr
