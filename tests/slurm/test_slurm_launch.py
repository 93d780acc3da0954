"""launch --executor slurm on a real (single-node) SLURM cluster: the smoke graph goes in as SLURM
jobs with afterok dependencies, every job runs, and one report comes out.

Skipped unless ``sinfo`` answers. To run it on a machine without a cluster, as root:
``tests/slurm/start_cluster.sh`` (installs slurm-wlm + munge, starts a localhost cluster), then
``pytest tests/slurm``; ``tests/slurm/start_cluster.sh stop`` stops the daemons.

:func:`dwf_lab.pipeline.launch.launch` with ``executor="slurm"`` returns ``{job: SLURM id}`` at
once (it does not wait), so the test polls ``squeue`` until the jobs are gone.
"""
import json
import shutil
import subprocess
import time

import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.pipeline.launch import job_graph, launch


def _sinfo_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _sinfo_answers(),
                                reason="no SLURM cluster answers sinfo (as root: tests/slurm/start_cluster.sh)")


def _queued(ids) -> dict[str, str]:
    """{id: "STATE REASON"} for the ids still in squeue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(ids)],
                         capture_output=True, text=True).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.strip()}


def _state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "UNKNOWN")


def test_launch_slurm_runs_the_smoke_graph_into_one_report(tmp_path, monkeypatch):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))     # sbatch exports the environment to the jobs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = get_profile("smoke", seeds=(0,), baselines=False, expert_epochs=1, mixture_epochs=1, benign_epochs=1)
    ids = launch(p, "slurm-run", executor="slurm", hours=0.5)
    assert set(ids) == {j.name for j in job_graph(p)}
    logs = tmp_path / "slurm-run" / "launch"

    deadline = time.time() + 1200
    while True:
        queued = _queued(list(ids.values()))
        if not queued:
            break
        stuck = [n for n, i in ids.items() if "DependencyNeverSatisfied" in queued.get(i, "")]
        assert not stuck, f"jobs whose dependencies failed: {stuck}; logs in {logs}"
        assert time.time() < deadline, f"still queued after 20 min: {queued}"
        time.sleep(3)

    states = {n: _state(i) for n, i in ids.items()}
    assert all(s == "COMPLETED" for s in states.values()), (states, sorted(p.name for p in logs.glob("*")))
    report = json.loads((tmp_path / "slurm-run" / "report" / "report.json").read_text())
    assert report["meta"]["seeds"]["DWF"] == [0]
    assert (tmp_path / "slurm-run" / "report" / "report.md").exists()
