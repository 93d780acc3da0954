"""Evaluation runs in fp32; channels_last (a layout, not a precision) only where it was measured
faster, and it does not change what the attacks find."""
import copy

import pytest
import torch

from dwf_lab.attacks.pgd import pgd_trajectory
from dwf_lab.core.config import get_profile
from dwf_lab.training import fast_path
from dwf_lab.training.fast_path import evaluation_channels_last, for_evaluation
from tests.tinymodels import tiny_trained


def rates(**r):
    return lambda width, batch, threads, steps=3: {"images_per_s": {"fp32": 100.0, **r}, "choice": "fp32"}


def test_auto_follows_the_probes_fp32_numbers_and_explicit_switches_win(monkeypatch):
    monkeypatch.setattr(fast_path, "probe_cpu_paths", rates(**{"fp32+channels_last": 140.0}))
    assert evaluation_channels_last(get_profile("laptop", device="cpu"))
    # the bf16 paths do not count: evaluation never runs in bf16
    monkeypatch.setattr(fast_path, "probe_cpu_paths", rates(**{"fp32+channels_last": 102.0,
                                                               "bf16+channels_last": 300.0}))
    assert not evaluation_channels_last(get_profile("laptop", device="cpu"))
    monkeypatch.setattr(fast_path, "probe_cpu_paths", lambda *a, **k: pytest.fail("probed"))
    assert evaluation_channels_last(get_profile("laptop", device="cpu", channels_last="on"))
    assert not evaluation_channels_last(get_profile("laptop", device="cpu", channels_last="off"))
    assert not evaluation_channels_last(get_profile("laptop", device="cpu", deterministic=True))
    assert not evaluation_channels_last(get_profile("laptop"), device="cuda")   # not measured there


def test_channels_last_evaluation_finds_what_the_contiguous_one_finds():
    model, data = tiny_trained(0)
    x, y = data.x_test[:128], data.y_test[:128]
    p = get_profile("smoke", channels_last="on")
    cl = for_evaluation(copy.deepcopy(model), p)
    assert cl.training is False
    assert next(q for q in cl.parameters() if q.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    got = {}
    for name, m in (("contiguous", model.eval()), ("channels_last", cl)):
        out = pgd_trajectory(m, x, y, 8 / 255, 2 / 255, (1, 10), generator=torch.Generator().manual_seed(0))
        got[name] = {k: v.float() for k, v in out.items()}
    clean = (model(x).argmax(1) == y).float().mean().item()
    assert got["contiguous"][10].mean() < clean - 0.05            # the attack works at all
    for k in (1, 10):     # the same images broken, up to float rounding at a decision boundary
        assert (got["contiguous"][k] != got["channels_last"][k]).float().mean() <= 0.02
