"""Many processes, one run: stages are locked one by one, so two `train` processes on different
stages of one run work side by side and give the same weights as one process after the other."""
import os
import subprocess
import sys

import torch

from dwf_lab.store.checkpoints import load_model
from dwf_lab.store.runs import read_config


def _train(runs, *args):
    env = {**os.environ, "DWF_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dwf_lab", "train", "--profile", "smoke", "--quiet", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _weights(runs, stage):
    root = runs / "r"
    return load_model(root / "seed-0" / "models" / f"{stage}.safetensors").state_dict()


def test_two_processes_train_two_stages_of_one_run_at_once_as_one_would_in_turn(tmp_path):
    together, apart = tmp_path / "together", tmp_path / "apart"
    a = _train(together, "--run", "r", "--stage", "fgsm-1")
    b = _train(together, "--run", "r", "--stage", "pgd-1")
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    for stage in ("fgsm-1", "pgd-1"):                      # one after the other, in another run folder
        p = _train(apart, "--run", "r", "--stage", stage)
        assert p.wait(timeout=600) == 0, p.communicate()
    for stage in ("fgsm-1", "pgd-1"):
        x, y = _weights(together, stage), _weights(apart, stage)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), stage
    assert read_config(together / "r")["profile"]["seeds"] == [0]


def test_seeds_added_by_concurrent_processes_are_all_recorded(tmp_path):
    procs = [_train(tmp_path, "--run", "r", "--stage", "benign", "--seeds", str(s)) for s in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert read_config(tmp_path / "r")["profile"]["seeds"] == [0, 1]      # neither process lost the other's seed
