"""The training loop: recipes, resume after SIGKILL, non-finite loss, idempotent stages."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.core.config import get_profile
from dwf_lab.pipeline.reproduce import train_run
from dwf_lab.store.checkpoints import load_model, read_metadata
from dwf_lab.store.runs import Run, RunConfigMismatch
from dwf_lab.training.builders import assemble_mixture, build_expert, build_mixture, load_data
from dwf_lab.training.loop import NonFiniteLossError, cosine_lr, train_stage
from dwf_lab.training.recipes import RECIPES, register_recipe
from dwf_lab.training.stages import Stage, select_stages

REPO = Path(__file__).resolve().parents[2]


def tiny_profile(**kw):
    base = dict(n_train=256, n_test=128, width=0.0625, expert_batch=32, mixture_batch=16,
                ckpt_every=0, keep_epoch_checkpoints=False)
    base.update(kw)
    return get_profile("smoke", **base)


def test_cosine_schedule_runs_from_lr_to_zero():
    assert cosine_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert cosine_lr(50, 100, 0.01) == pytest.approx(0.005)
    assert cosine_lr(100, 100, 0.01) == pytest.approx(0.0, abs=1e-12)


def test_adversarial_experts_are_more_robust_than_the_benign_one(tmp_path):
    p = tiny_profile(n_train=800, n_test=200, width=0.125, expert_epochs=3, expert_batch=50,
                     pgd_steps_choices=(3,), pgd_alpha=3 / 255)
    data = load_data(p)
    torch.manual_seed(0)
    robust = {}
    for kind in ("benign", "fgsm", "pgd"):
        torch.manual_seed(0)
        m = build_expert(p, data)
        st = Stage(kind, kind, p.expert_epochs, p.expert_batch, kind)
        train_stage(m, data, st, p, seed=0, ckpt_dir=tmp_path / kind, final_path=tmp_path / f"{kind}.st",
                    progress=False)
        x, y = data.x_test, data.y_test
        clean = attacks.accuracy(m, x, y)
        adv = attacks.pgd(m, x, y, 8 / 255, 2 / 255, 10, generator=torch.Generator().manual_seed(0))
        robust[kind] = attacks.accuracy(m, adv, y)
        assert clean > 0.3, f"{kind} expert did not learn (clean accuracy {clean:.2f})"
    print("PGD-10 accuracy:", robust)
    assert robust["fgsm"] > robust["benign"] + 0.05
    assert robust["pgd"] > robust["benign"] + 0.05


def test_mixture_step_trains_on_a_3x_batch_and_updates_gate_and_every_expert(tmp_path):
    p = tiny_profile(n_fgsm_experts=1, n_pgd_experts=1, mixture_epochs=1)
    data = load_data(p)
    mix = build_mixture(p, data)
    before = {k: v.clone() for k, v in mix.state_dict().items()}
    sizes = []
    mix.register_forward_hook(lambda mod, inp, out: sizes.append((mod.training, inp[0].shape[0])))
    st = Stage("mixture", "mixture", 1, p.mixture_batch, "DWF")
    train_stage(mix, data, st, p, seed=0, ckpt_dir=tmp_path / "ck", final_path=tmp_path / "m.st",
                progress=False, stop_after_steps=1)
    train_sizes = [n for training, n in sizes if training]
    assert train_sizes == [3 * p.mixture_batch]
    assert any(not training for training, _ in sizes), "attacks must run against the mixture (eval mode)"
    after = mix.state_dict()
    assert not torch.equal(before["gate.net.1.weight"], after["gate.net.1.weight"])
    for i in range(mix.n_experts):
        key = f"experts.{i}.conv1.weight"
        assert not torch.equal(before[key], after[key]), f"expert {i} was not updated"


def test_gate_phase_trains_only_the_gate(tmp_path):
    p = tiny_profile(n_fgsm_experts=1, n_pgd_experts=1)
    data = load_data(p)
    mix = build_mixture(p, data)
    before = {k: v.clone() for k, v in mix.state_dict().items()}
    st = Stage("gate", "gate", 1, p.mixture_batch, "gate")
    train_stage(mix, data, st, p, seed=0, ckpt_dir=tmp_path / "ck", final_path=tmp_path / "g.st",
                progress=False, stop_after_steps=2)
    after = mix.state_dict()
    assert not torch.equal(before["gate.net.1.weight"], after["gate.net.1.weight"])
    for k in before:
        if k.startswith("experts."):
            assert torch.equal(before[k], after[k]), f"frozen expert tensor {k} changed"


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from pathlib import Path
    from dwf_lab.core.config import get_profile
    from dwf_lab.training.builders import build_expert, load_data
    from dwf_lab.training.loop import train_stage
    from dwf_lab.training.stages import Stage
    out, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    p = get_profile("smoke", n_train=192, width=0.0625, expert_batch=32, ckpt_every=2,
                    deterministic=True, pgd_steps_choices=(1, 2))
    data = load_data(p)
    torch.manual_seed(123)
    m = build_expert(p, data)
    if kill_at > 0:
        count = [0]
        def hook(mod, inp, outp):
            if mod.training:
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        m.register_forward_hook(hook)
    st = Stage("pgd-1", "pgd", 2, 32, "PGD expert 1")
    train_stage(m, data, st, p, seed=7, ckpt_dir=out / "ck", final_path=out / "final.safetensors",
                progress=False)
""")


def _train_subprocess(out: Path, kill_at: int) -> int:
    script = out.parent / "resume_script.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, str(script), str(out), str(kill_at)], env=env,
                          cwd=REPO, timeout=600).returncode


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """SIGKILL inside global step 9 of 12 (last checkpoint: step 8), re-run the same command, compare."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _train_subprocess(ref, 0) == 0
    rc = _train_subprocess(killed, 9)
    assert rc == -signal.SIGKILL
    meta = read_metadata(killed / "ck" / "state.safetensors")
    assert meta["progress"]["global_step"] == 8, meta["progress"]   # epoch 2, step 3 of 6
    assert not (killed / "final.safetensors").exists()
    assert _train_subprocess(killed, 0) == 0                        # the same command, resumed
    a = load_model(ref / "final.safetensors").state_dict()
    b = load_model(killed / "final.safetensors").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_non_finite_loss_stops_with_stage_epoch_step_and_keeps_last_good_checkpoint(tmp_path):
    calls = [0]

    def poisoned(model, x, y, p, gen, gen_dev):
        calls[0] += 1
        return (x * float("nan") if calls[0] >= 4 else x), y

    register_recipe("test_poisoned", poisoned)
    try:
        p = tiny_profile(ckpt_every=2)
        data = load_data(p)
        m = build_expert(p, data)
        st = Stage("poison", "test_poisoned", 2, 32, "poison")
        with pytest.raises(NonFiniteLossError) as err:
            train_stage(m, data, st, p, seed=0, ckpt_dir=tmp_path / "ck", final_path=tmp_path / "f.st",
                        progress=False)
        msg = str(err.value)
        assert "'poison'" in msg and "epoch 1" in msg and "step 4" in msg, msg
        state = tmp_path / "ck" / "state.safetensors"
        assert read_metadata(state)["progress"]["global_step"] == 2
        good = load_model(state)
        assert all(torch.isfinite(v).all() for v in good.state_dict().values() if v.is_floating_point())
        assert not (tmp_path / "f.st").exists()
    finally:
        RECIPES.pop("test_poisoned", None)


def test_finished_stages_are_never_retrained_and_other_settings_are_refused(tmp_path):
    p = tiny_profile(n_fgsm_experts=1, n_pgd_experts=0, baselines=False)
    data = load_data(p)
    run = Run("t", p, root=tmp_path / "run")
    paths = train_run(run, 0, data, "experts", progress=False)
    stamps = {k: v.stat().st_mtime_ns for k, v in paths.items()}
    again = train_run(run, 0, data, "experts", progress=False)
    assert {k: v.stat().st_mtime_ns for k, v in again.items()} == stamps
    with pytest.raises(RunConfigMismatch, match="width"):
        Run("t", p.replace(width=0.125), root=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["profile"]["width"] == p.width
    # speed switches are not settings of the run: changing them between calls is fine
    Run("t", p.replace(expert_batching="vmap", sync_batchnorm=True, num_threads=1), root=tmp_path / "run")


def test_unknown_stage_and_missing_experts_get_clear_errors(tmp_path):
    p = tiny_profile()
    with pytest.raises(ValueError, match="no stage 'pgd-9'"):
        select_stages(p, "pgd-9")
    run = Run("t", p, root=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="trained experts first"):
        assemble_mixture(run, 0, load_data(p))
