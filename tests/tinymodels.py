"""Small trained models shared by several test files (imported, not a fixture, so each file
can ask for its own seed and size; cached per process)."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import torch
import torch.nn.functional as F

from dwf_lab.core.config import get_profile
from dwf_lab.data import load_dataset
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.models.registry import build_model
from dwf_lab.pipeline.reproduce import evaluate_run, train_run
from dwf_lab.store.checkpoints import save_model
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import build_expert, load_data
from dwf_lab.training.stages import expert_stage_names

_CACHE: dict = {}


def tiny_trained(seed: int = 0, n: int = 512, epochs: int = 4, lr: float = 0.1, bs: int = 32):
    """(model, data): a 1/16-width ResNet-18 trained ~3 s on synthetic data (cached per seed)."""
    if seed not in _CACHE:
        torch.manual_seed(seed)
        data = load_dataset("synthetic", n_train=n, n_test=200)
        model = build_model("resnet18", width=0.0625, dataset="synthetic")
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        total, k = epochs * (n // bs), 0
        for e in range(epochs):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(100 * seed + e))
            for i in range(0, n - bs + 1, bs):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * k / total))
                k += 1
                idx = perm[i:i + bs]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        _CACHE[seed] = (model.eval(), data)
    return _CACHE[seed]


def fake_trained_experts(run, seed, data):
    """Untrained experts saved where the run's trained ones go (wiring tests need no training)."""
    for i, name in enumerate(expert_stage_names(run.profile)):
        torch.manual_seed(100 + i)
        save_model(run.model_path(seed, name), build_expert(run.profile, data),
                   {"stage": name, "finished": True})


def lock_holder(root, name: str, profile: str = "smoke") -> subprocess.Popen:
    """A second process holding run ``name``'s lock (at ``root``) for "train" until killed; returns once
    it holds the lock. The caller kills it (SIGKILL: no clean-up, like a crash)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from dwf_lab.core.config import get_profile
        from dwf_lab.store.runs import Run
        with Run.open({name!r}, get_profile({profile!r}), root={str(root)!r}).lock("train"):
            print("held", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def smoke_run(root, name: str, stages: str = "benign"):
    """(run, data, adaptive settings): a smoke-profile run under ``root`` whose ``stages`` are trained
    and evaluated by the pipeline (64 training images), with the smoke attack budget (no long PGD)."""
    p = get_profile("smoke", n_train=64)
    run = Run(name, p, root=root / name)
    data = load_data(p)
    train_run(run, 0, data, stages, progress=False)
    evaluate_run(run, 0, data, stages, progress=False)
    return run, data, AdaptiveSettings.smoke(long_steps=0)
