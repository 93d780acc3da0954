"""The fast path's switches, on CPU: same code, same numbers (within bf16 tolerance).

bf16 autocast, channels_last, torch.compile with its fallback, vmap-batched
experts, attacks that never touch parameter gradients, sharded batches (the benchmark's tiny run:
tests/test_bench.py). The CUDA-only checks (no host-device sync inside a step) skip without a GPU.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.core import runtime
from dwf_lab.core.config import get_profile
from dwf_lab.core.runtime import Runtime
from dwf_lab.data import iterate_batches
from dwf_lab.training.builders import build_expert, build_mixture, load_data
from dwf_lab.training.loop import train_stage, train_step, trainable_parameters, wrap_for_update
from dwf_lab.training.recipes import recipe
from dwf_lab.training.stages import Stage

CPU = torch.device("cpu")


def tiny_profile(**kw):
    base = dict(n_train=128, n_test=32, width=0.0625, expert_batch=32, mixture_batch=16,
                ckpt_every=0, keep_epoch_checkpoints=False, n_fgsm_experts=1, n_pgd_experts=1,
                pgd_steps_choices=(2,), device="cpu")
    base.update(kw)
    return get_profile("smoke", **base)


# ------------------------------------------------------------ bf16 / layout --
def test_bf16_autocast_logits_agree_with_fp32(trained_model, attack_batch):
    x, _ = attack_batch
    fast = Runtime(CPU, amp=True, channels_last=True)
    mf = fast.prepare(copy.deepcopy(trained_model)).eval()
    with torch.no_grad():
        ref = trained_model(x)
        with fast.autocast():
            out = mf(fast.inputs(x))
    assert out.dtype == torch.float32          # the convolutions ran in bf16; the head runs in fp32
    scale = float(ref.abs().max())
    assert float((out.float() - ref).abs().max()) < 0.02 * scale   # measured: 0.066 of 13.7
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) > 0.98


def test_channels_last_gives_the_same_logits(trained_model, images):
    cl = Runtime(CPU, amp=False, channels_last=True)
    m = cl.prepare(copy.deepcopy(trained_model)).eval()
    xin = cl.inputs(images)
    assert xin.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(m(xin), trained_model(images), atol=1e-5, rtol=1e-5)


def test_fast_and_reference_agree_on_robust_accuracy(trained_model, synthetic_data):
    """PGD-10 on all 300 test images: fp32 NCHW vs bf16 autocast + channels_last.

    Measured (1 CPU thread): 35.0% vs 35.0% with this seed; over seeds 0-2 the
    largest gap was exactly 1 point (3 images).
    """
    x, y = synthetic_data.x_test, synthetic_data.y_test
    fast = Runtime(CPU, amp=True, channels_last=True)
    mf = fast.prepare(copy.deepcopy(trained_model)).eval()
    a0 = attacks.pgd(trained_model, x, y, 8 / 255, 2 / 255, 10, generator=torch.Generator().manual_seed(0))
    r0 = attacks.accuracy(trained_model, a0, y)
    with fast.autocast():
        a1 = attacks.pgd(mf, fast.inputs(x), y, 8 / 255, 2 / 255, 10,
                         generator=torch.Generator().manual_seed(0))
        r1 = attacks.accuracy(mf, a1, y)
    assert 0.1 < r0 < 0.9, "the attack must bite but not annihilate for this to mean anything"
    assert abs(r0 - r1) <= 0.01 + 1e-9, f"robust accuracy fp32 {r0:.3f} vs bf16 {r1:.3f}"


def test_bf16_training_step_runs_and_tracks_fp32(tmp_path):
    """One mixture stage step with bf16 autocast + channels_last, and the same in fp32."""
    out = {}
    for amp in ("off", "bf16"):
        p = tiny_profile(amp=amp, channels_last="on" if amp == "bf16" else "off")
        data = load_data(p)
        torch.manual_seed(0)
        mix = build_mixture(p, data)
        st = Stage("mixture", "mixture", 1, p.mixture_batch, "DWF")
        train_stage(mix, data, st, p, seed=0, ckpt_dir=tmp_path / amp, final_path=tmp_path / f"{amp}.st",
                    progress=False, stop_after_steps=2)
        mix.eval()
        with torch.no_grad():
            out[amp] = mix(data.x_test[:32].contiguous())
    assert torch.isfinite(out["bf16"]).all()
    scale = float(out["off"].abs().max())
    assert float((out["bf16"] - out["off"]).abs().max()) < 0.1 * scale


# ---------------------------------------------------------- expert batching --
@pytest.mark.parametrize("amp", [False, True])
def test_vmap_and_loop_give_the_same_logits_and_input_gradients(make_mixture, images, amp):
    mix = make_mixture(n_experts=4).eval()
    y = torch.arange(len(images)) % 10
    rt = Runtime(CPU, amp=amp, channels_last=False)
    res = {}
    for mode in ("loop", "vmap"):
        mix.expert_batching = mode
        assert mix.vmap_active() == (mode == "vmap")
        with rt.autocast():
            with torch.no_grad():
                z = mix.forward_details(images).expert_logits
            with attacks.attack_mode(mix):
                g = attacks.input_gradient(mix, images, y)
        res[mode] = (z.float(), g)
    tol = dict(atol=2e-2, rtol=2e-2) if amp else dict(atol=1e-5, rtol=1e-4)
    assert torch.allclose(res["loop"][0], res["vmap"][0], **tol)
    if not amp:
        assert torch.allclose(res["loop"][1], res["vmap"][1], atol=1e-6, rtol=1e-4)
    else:  # bf16 gradients: compare their signs, which is all FGSM/PGD use
        agree = (res["loop"][1].sign() == res["vmap"][1].sign()).float().mean()
        assert float(agree) > 0.9


def test_vmap_with_channels_last_has_no_slow_fallback(make_mixture, images):
    """channels_last weights under vmap hit a per-example fallback (as_strided_); the stack avoids it."""
    rt = Runtime(CPU, amp=False, channels_last=True)
    mix = rt.prepare(make_mixture(n_experts=3)).eval()
    x, y = rt.inputs(images), torch.arange(len(images)) % 10
    mix.expert_batching = "loop"
    ref = mix(x)
    mix.expert_batching = "vmap"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = mix(x)
        with attacks.attack_mode(mix):
            attacks.input_gradient(mix, x, y)
    assert not [w for w in rec if "batching rule" in str(w.message)], [str(w.message) for w in rec]
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_vmap_parameter_gradients_and_cache_invalidation(make_mixture, images):
    mix = make_mixture(n_experts=3).eval()
    w = mix.experts[1].conv1.weight
    grads = {}
    for mode in ("loop", "vmap"):
        mix.expert_batching = mode
        (gw,) = torch.autograd.grad(mix(images).sum(), w)
        grads[mode] = gw
    assert torch.allclose(grads["loop"], grads["vmap"], atol=1e-5, rtol=1e-4)
    # cached stack (no parameter grads needed) follows in-place weight changes
    mix.expert_batching = "vmap"
    with attacks.attack_mode(mix), torch.no_grad():
        before = mix(images)
        w.mul_(0.5)                      # an optimizer step changes weights in place like this
        after_vmap = mix(images)
        mix.expert_batching = "loop"
        after_loop = mix(images)
    assert not torch.allclose(before, after_vmap)
    assert torch.allclose(after_vmap, after_loop, atol=1e-5, rtol=1e-4)


def test_vmap_falls_back_to_the_loop_in_train_mode(make_mixture, images):
    mix = make_mixture(n_experts=3)
    mix.expert_batching = "vmap"
    mix.train()
    assert not mix.vmap_active()              # BatchNorm running-stat updates: the loop
    before = mix.experts[0].bn1.running_mean.clone()
    mix(images)
    assert not torch.equal(before, mix.experts[0].bn1.running_mean)
    mix.set_frozen(True)                      # gate phase: experts in eval mode -> vmap
    assert mix.vmap_active()
    with pytest.raises(ValueError, match="expert_batching"):
        mix.expert_batching = "fast"


def test_vmap_in_a_training_stage_is_the_same_trajectory(tmp_path, monkeypatch):
    """The attacks of a mixture stage with vmap-batched experts: same weights as the loop."""
    finals = {}
    for mode in ("loop", "vmap"):
        p = tiny_profile()
        data = load_data(p)
        torch.manual_seed(0)
        mix = build_mixture(p, data)
        rt = Runtime(CPU, amp=False, channels_last=False, expert_batching=mode)
        st = Stage("mixture", "mixture", 1, p.mixture_batch, "DWF")
        train_stage(mix, data, st, p, seed=0, ckpt_dir=tmp_path / mode, final_path=tmp_path / f"{mode}.st",
                    runtime=rt, progress=False, stop_after_steps=2)
        assert mix.expert_batching == mode
        finals[mode] = mix.state_dict()
    for k, v in finals["loop"].items():
        if v.is_floating_point():
            assert torch.allclose(v, finals["vmap"][k], atol=1e-4, rtol=1e-3), k


# -------------------------------------------------------------- compilation --
def _train_small(tmp_path, name, p):
    data = load_data(p)
    torch.manual_seed(0)
    m = build_expert(p, data)
    st = Stage("fgsm-1", "fgsm", 1, p.expert_batch, "FGSM expert 1")   # same seeds in every run
    train_stage(m, data, st, p, seed=0, ckpt_dir=tmp_path / name, final_path=tmp_path / f"{name}.st",
                progress=False, stop_after_steps=2)
    return m


def test_compile_that_raises_warns_once_and_trains_eager(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(runtime, "_compile_warned", False)
    p = tiny_profile(compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        m = _train_small(tmp_path, "a", p)
    ref = _train_small(tmp_path, "b", p.replace(compile=False))
    for (k, v), w in zip(m.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, w), f"the eager fallback must be the eager run ({k})"


def test_compiled_module_failing_at_first_call_falls_back(tmp_path, monkeypatch):
    calls = []

    def lazy_broken(module, *a, **k):
        def call(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("inductor: backend compiler failed")
        return call
    monkeypatch.setattr(torch, "compile", lazy_broken)
    monkeypatch.setattr(runtime, "_compile_warned", False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _train_small(tmp_path, "c", tiny_profile(compile=True))
    assert len(calls) == 1, "after the first failure the compiled module is never tried again"
    assert sum("torch.compile failed" in str(w.message) for w in rec) == 1


def test_compile_wraps_the_training_forward_only(monkeypatch):
    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda m, *a, **k: wrapped.append(m) or m)
    p = tiny_profile(compile=True)
    rt = Runtime.from_profile(p)
    assert rt.compile
    model = build_expert(p, load_data(p))
    fwd = wrap_for_update(model, "pgd", rt)
    assert wrapped == [model] and fwd is not model
    assert wrap_for_update(model, "benign", Runtime(CPU, False, False)) is model


# ---------------------------------------------- attacks and parameter grads --
@pytest.mark.parametrize("kind", ["fgsm", "pgd", "fgsm_at", "pgd_at", "mixture", "gate"])
def test_training_batches_never_create_parameter_gradients(kind):
    p = tiny_profile()
    data = load_data(p)
    torch.manual_seed(0)
    model = (build_mixture if kind in ("mixture", "gate") else build_expert)(p, data)
    trainable_parameters(model, kind)            # as the loop sets it up (gate: experts frozen)
    flags = {n: q.requires_grad for n, q in model.named_parameters()}
    model.train()
    x, y = data.x_train[:16], data.y_train[:16]
    gen = torch.Generator().manual_seed(0)
    xin, yin = recipe(kind).make_batch(model, x, y, p, gen, gen)
    assert len(xin) == len(yin) and not xin.requires_grad
    assert all(q.grad is None for q in model.parameters()), "an attack created parameter gradients"
    assert {n: q.requires_grad for n, q in model.named_parameters()} == flags
    assert model.training


# ----------------------------------------------------------------- sharding --
@pytest.mark.parametrize("world", [2, 4])
def test_shards_put_together_are_the_single_process_batch(world, synthetic_data):
    x, y = synthetic_data.x_train[:256], synthetic_data.y_train[:256]
    full = list(iterate_batches(x, y, 32, augment="crop_flip", seed=5, epoch=2))
    shards = [list(iterate_batches(x, y, 32, augment="crop_flip", seed=5, epoch=2, rank=r,
                                   world_size=world)) for r in range(world)]
    assert all(len(s) == len(full) for s in shards)
    for i, (step, xb, yb) in enumerate(full):
        assert all(s[i][0] == step for s in shards)
        assert torch.equal(torch.cat([s[i][1] for s in shards]), xb)
        assert torch.equal(torch.cat([s[i][2] for s in shards]), yb)
    with pytest.raises(ValueError, match="divisible"):
        next(iterate_batches(x, y, 30, rank=0, world_size=4))


# --------------------------------------------------------------- CUDA only --
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["pgd", "mixture"])
def test_no_host_device_sync_inside_a_cuda_step(kind):
    p = tiny_profile(device="cuda")
    rt = Runtime.from_profile(p)
    data = load_data(p)
    torch.manual_seed(0)
    model = rt.prepare((build_mixture if kind == "mixture" else build_expert)(p, data))
    params = trainable_parameters(model, kind)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, fused=True)
    x, y = data.x_train.to(rt.device), data.y_train.to(rt.device)
    batches = iterate_batches(x, y, 16, augment="crop_flip", seed=0)

    def step(g):
        _, xb, yb = next(batches)                    # the batch (augmentation) counts too
        gen, gen_dev = rt.step_generators(0, 1, g)
        train_step(kind, model, opt, xb, yb, p, rt, gen, gen_dev, 0.01)
    step(0)                                          # warm-up: lazy initialisations may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(1)
        step(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
