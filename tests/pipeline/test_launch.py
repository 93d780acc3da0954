"""The run as a graph of jobs on an existing engine (submitit): the local executor runs the smoke
graph for two seeds, two jobs at a time, and one report comes out with mean ± std over both."""
import json
import os
import subprocess
import sys

from dwf_lab.core.config import get_profile
from dwf_lab.pipeline.launch import job_graph


def test_the_graph_orders_stages_mixture_evaluation_and_report():
    p = get_profile("smoke", seeds=(0, 1))
    jobs = {j.name: j for j in job_graph(p)}
    order = list(jobs)
    for seed in (0, 1):
        mix = jobs[f"train-mixture-seed{seed}"]
        assert set(mix.after) == {f"train-{s}-seed{seed}" for s in ("benign", "fgsm-1", "pgd-1")}
        assert jobs[f"evaluate-seed{seed}"].after[-1] == mix.name
        assert all(order.index(d) < order.index(name) for name, j in jobs.items() for d in j.after)
    assert set(jobs["report"].after) == {"evaluate-seed0", "evaluate-seed1"}
    assert not jobs["train-benign-seed0"].after          # independent: runs at once


def test_launch_local_runs_the_whole_graph_in_parallel_into_one_report(tmp_path):
    env = {**os.environ, "DWF_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "dwf_lab", "launch", "--profile", "smoke", "--seeds", "0-1",
                          "--run", "batch", "--executor", "local", "--slots", "2",
                          "--set", "baselines=false", "--set", "expert_epochs=1", "--set", "mixture_epochs=1",
                          "--set", "benign_epochs=1"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    states = json.loads(res.stdout)
    assert states["report"] == "done" and len(states) == len(job_graph(get_profile("smoke", seeds=(0, 1),
                                                                                    baselines=False)))
    report = json.loads((tmp_path / "batch" / "report" / "report.json").read_text())
    assert report["meta"]["seeds"]["DWF"] == [0, 1]          # one report over both seeds
    assert "mean ± sample std over seeds" in (tmp_path / "batch" / "report" / "report.md").read_text()
