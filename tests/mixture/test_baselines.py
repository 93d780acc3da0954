"""SoE, ADVMoE, the straight-through top-k mixture and the uniform ensemble (tiny widths, CPU)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tinymodels import fake_trained_experts  # tests/ is on sys.path

from dwf_lab.core.config import get_profile
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.metrics import WORST
from dwf_lab.evaluation.records import load_results
from dwf_lab.mixture.soe import SOE_SELECTIONS
from dwf_lab.models.registry import build_model
from dwf_lab.pipeline.adaptive import evaluate_adaptive_run
from dwf_lab.pipeline.baselines import train_and_evaluate_baselines
from dwf_lab.store.checkpoints import load_model, save_model
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data, uniform_ensemble
from dwf_lab.training.recipes import (
    advmoe_loss,
    gradient_only_to,
    kl_rows,
    recipe,
    soe_half_loss,
    trades_adversary,
    trades_loss,
)
from dwf_lab.training.stages import expert_stage_names

W = 0.0625
KW = dict(width=W, dataset="synthetic")


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def input_grad(model, x, y):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    return g


def fit_steps(model, kind, x, y, steps=6, lr=0.05):
    """Run ``steps`` SGD updates of a recipe on one fixed batch; returns the losses."""
    p = get_profile("smoke", pgd_at_steps=2)
    gen = torch.Generator().manual_seed(0)
    xin, yin = recipe(kind).make_batch(model, x, y, p, gen, gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        model.train()
        loss, logits = recipe(kind).loss(model, xin, yin)
        assert logits.shape == (len(yin), 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# -------------------------------------------------------------------- SoE --
def test_soe_shapes_and_hard_selection_picks_one_expert():
    torch.manual_seed(0)
    m = build_model("soe", n_experts=3, **KW).eval()
    x, y = batch()
    d = m.forward_details(x)
    assert d.logits.shape == (6, 10) and d.expert_logits.shape == (6, 3, 10)
    assert d.scores.shape == (6, 3) and ((d.scores >= 0) & (d.scores <= 1)).all()
    # exactly one expert answers: the output *is* that expert's logits row
    assert torch.equal(d.logits, d.expert_logits[torch.arange(6), d.selected])
    assert torch.equal(d.selected, d.scores.argmax(1))
    with m.selection_mode("bpda"):
        assert torch.equal(m(x), d.logits)           # BPDA: the hard model's forward value
    with m.selection_mode("soft"):
        w = torch.softmax(d.scores / m.temperature, 1)
        assert torch.allclose(m(x), torch.einsum("bn,bnc->bc", w, d.expert_logits), atol=1e-5)


def test_soe_every_selection_mode_gives_input_gradients():
    torch.manual_seed(0)
    m = build_model("soe", n_experts=3, **KW).eval()
    x, y = batch()
    grads = {}
    for mode in SOE_SELECTIONS:
        with m.selection_mode(mode):
            grads[mode] = input_grad(m, x, y)
        assert grads[mode].abs().sum() > 0, mode
    # the relaxation changes the gradient (it sees the selection), not the forward value
    assert not torch.allclose(grads["hard"], grads["bpda"])
    with pytest.raises(ValueError):
        build_model("soe", selection="argmax", **KW)


def test_soe_recipe_reduces_its_loss():
    torch.manual_seed(0)
    m = build_model("soe", n_experts=2, **KW)
    x, y = batch(16)
    losses = fit_steps(m, "soe", x, y, steps=8)
    assert losses[-1] < losses[0]


def test_soe_loss_pieces():
    torch.manual_seed(0)
    m = build_model("soe", n_experts=2, **KW).train()
    x, y = batch(8)
    loss, sel = soe_half_loss(m, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    assert sel.shape == (8, 10)
    loss.backward()
    assert all(e.aux.weight.grad is not None and e.aux.weight.grad.abs().sum() > 0 for e in m.experts)


# ----------------------------------------------------------------- ADVMoE --
def test_advmoe_shapes_and_one_group_per_input():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=3, **KW).eval()
    x, y = batch()
    assert m(x).shape == (6, 10)
    conv = m.blocks[0].conv1
    assert conv.out_channels == 3 * conv.expert_width
    seen = {}
    conv.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp, out=out))
    m(x)
    idx, mask = seen["inp"][1]
    assert torch.equal(idx, m.selection(x))
    assert torch.equal(mask.detach(), F.one_hot(idx, 3).float())
    full = F.conv2d(seen["inp"][0], conv.weight, None, conv.stride, conv.padding)
    full = full.unflatten(1, (3, conv.expert_width))
    assert seen["out"].shape[1] == conv.expert_width
    assert torch.allclose(seen["out"], full[torch.arange(6), idx])   # exactly the chosen group


def test_advmoe_straight_through_reaches_input_and_router():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=2, **KW).eval()
    x, y = batch()
    assert input_grad(m, x, y).abs().sum() > 0
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    assert m.router.fc.weight.grad.abs().sum() > 0      # the router learns from the task loss
    m.zero_grad(set_to_none=True)
    with m.router_detached():
        F.cross_entropy(m(x), y).backward()
    assert m.router.fc.weight.grad is None


def test_trades_loss_is_nonnegative_and_ce_when_x_adv_is_x():
    torch.manual_seed(0)
    z = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    assert float(trades_loss(z, z, y, 6.0)) == pytest.approx(float(F.cross_entropy(z, y)), abs=1e-6)
    assert float(kl_rows(z, z).abs().max()) == 0.0
    z2 = z + torch.randn(5, 10)
    assert (kl_rows(z, z2) >= 0).all()
    assert float(trades_loss(z, z2, y)) >= float(F.cross_entropy(z, y))
    m = build_model("advmoe", n_experts=2, **KW).eval()
    x, _ = batch(4)
    with torch.no_grad():
        assert float(trades_loss(m(x), m(x), y[:4])) == pytest.approx(
            float(F.cross_entropy(m(x), y[:4])), abs=1e-5)


def test_trades_adversary_stays_in_the_ball():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=2, **KW)
    x, _ = batch(4)
    x_adv = trades_adversary(m, x, 8 / 255, 5 / 255, 2, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_advmoe_alternates_expert_and_router_updates():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=2, **KW)
    x, y = batch(8)
    p = get_profile("smoke")
    gen = torch.Generator().manual_seed(0)
    xin, yin = recipe("advmoe").make_batch(m, x, y, p, gen, gen)
    assert xin.shape[0] == 16 and torch.equal(xin[:8], x)
    router = {id(q) for q in m.router.parameters()}
    for step in range(4):
        m.train()
        m.zero_grad(set_to_none=True)
        loss, _ = recipe("advmoe").loss(m, xin, yin)
        loss.backward()
        got = {id(q) for q in m.parameters() if q.grad is not None}
        if step % 2 == 0:
            assert got and not (got & router), "expert step touched the router"
        else:
            assert got == router, "router step touched other parameters"
    assert int(m.train_steps) == 4


def test_advmoe_simultaneous_step_equals_the_two_masked_updates():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=2, alternation="simultaneous", **KW).train()
    x, y = batch(8)
    x_adv = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    loss, _ = advmoe_loss(m, torch.cat([x, x_adv]), torch.cat([y, y]))
    loss.backward()
    joint = {n: q.grad.clone() for n, q in m.named_parameters() if q.grad is not None}
    m.zero_grad(set_to_none=True)
    with m.router_detached():
        trades_loss(m(x), m(x_adv), y).backward()
    gradient_only_to(trades_loss(m(x), m(x_adv), y), m.router.parameters()).backward()
    masked = {n: q.grad for n, q in m.named_parameters() if q.grad is not None}
    assert set(joint) == set(masked) and any(n.startswith("router.") for n in joint)
    for n in joint:
        assert torch.allclose(joint[n], masked[n], atol=1e-5, rtol=1e-4), n


def test_advmoe_recipe_reduces_its_loss():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=2, alternation="simultaneous", **KW)
    x, y = batch(16)
    losses = fit_steps(m, "advmoe", x, y, steps=8)
    assert losses[-1] < losses[0]


def test_advmoe_code_router_loss_runs():
    torch.manual_seed(0)
    m = build_model("advmoe", n_experts=2, router_loss="code", **KW)
    x, y = batch(8)
    losses = fit_steps(m, "advmoe", x, y, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_baselines_rebuild_from_their_checkpoints(tmp_path):
    torch.manual_seed(0)
    x, _ = batch(3)
    for arch in ("soe", "advmoe"):
        m = build_model(arch, n_experts=2, **KW).eval()
        save_model(tmp_path / f"{arch}.safetensors", m)
        m2 = load_model(tmp_path / f"{arch}.safetensors", expect_arch=arch)
        with torch.no_grad():
            assert torch.equal(m(x), m2(x))


# ---------------------------------------------- straight-through top-k mix --
def test_straight_through_top1_forward_is_hard_and_gate_learns():
    torch.manual_seed(0)
    st = build_model("dwf_mixture_st", n_experts=3, k=1, gate_hidden=8, **KW).eval()
    plain = build_model("dwf_mixture", n_experts=3, routing="topk", k=1, gate_hidden=8, **KW).eval()
    plain.load_state_dict(st.state_dict())
    x, y = batch()
    with torch.no_grad():
        w = st.gate_weights(x)
        assert torch.equal((w > 0).sum(1), torch.ones(6, dtype=torch.long))
        assert torch.allclose(st(x), plain(x), atol=1e-6)
    sizes = {}
    for name, model in (("st", st), ("plain", plain)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        g = model.gate.net[-1].weight.grad
        sizes[name] = 0.0 if g is None else float(g.abs().sum())
    # both pass the kept softmax weight's gradient straight through (moe's top-k does so too),
    # so the gate learns although the renormalised top-1 weight is the constant 1
    assert sizes["plain"] > 1e-4 and sizes["st"] > 1e-4


# -------------------------------------------------------- uniform ensemble --
def smoke_run(tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    p = get_profile("smoke", n_train=64, n_test=32, expert_batch=32, baseline_epochs=1,
                    ckpt_every=0, keep_epoch_checkpoints=False, **kw)
    return Run("t", p), load_data(p)


def test_uniform_ensemble_is_the_mean_of_expert_logits(tmp_path, monkeypatch):
    run, data = smoke_run(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError):
        uniform_ensemble(run, 0, data)
    fake_trained_experts(run, 0, data)
    ens = uniform_ensemble(run, 0, data)
    assert ens.routing == "uniform" and ens.gate is None and ens.n_experts == run.profile.n_experts
    x = data.x_test[:5]
    with torch.no_grad():
        experts = [load_model(run.model_path(0, n)) for n in expert_stage_names(run.profile)]
        mean = torch.stack([e(x) for e in experts]).mean(0)
        assert torch.allclose(ens(x), mean, atol=1e-5)


def test_train_and_evaluate_baselines_writes_report_rows(tmp_path, monkeypatch):
    run, data = smoke_run(tmp_path, monkeypatch, eval_fgsm_eps=(0.03,), eval_pgd_steps=(2,),
                          eval_long_steps=2, eval_restarts=1)
    fake_trained_experts(run, 0, data)
    res = train_and_evaluate_baselines(run, 0, data, progress=False)
    assert [r["row"] for r in res] == ["SoE", "ADVMoE", "Uniform ensemble"]
    for name in ("soe", "advmoe"):
        assert run.is_done(0, name)
        assert load_model(run.model_path(0, name)).dwf_arch["arch"] == name
    for r in res:
        assert {"SA", "pgd:2", "worst-case"} <= set(r["metrics"])
        assert json.loads(run.eval_path(0, r["model"]).read_text())["row"] == r["row"]
    soe = res[0]
    assert set(soe["gradient_modes"]) == {"hard", "bpda"}
    for k, v in soe["metrics"].items():   # worst over gradient modes, per example
        assert v <= min(m[k] for m in soe["gradient_modes"].values()) + 1e-9
    mtime = run.eval_path(0, "soe").stat().st_mtime
    train_and_evaluate_baselines(run, 0, data, progress=False)   # idempotent
    assert run.eval_path(0, "soe").stat().st_mtime == mtime
    rows = {r["row"] for r in load_results(run.eval_dir)}
    assert {"SoE", "ADVMoE", "Uniform ensemble"} <= rows

    # the adaptive evaluation covers the baselines too (SoE under both gradient modes)
    s = AdaptiveSettings.smoke(pgd_steps=2, long_steps=2, long_restarts=1, autoattack=False,
                                        square=False)
    recs = {r["model"]: r for r in evaluate_adaptive_run(run, 0, data, s, progress=False,
                                                                   which="baselines", checklist=False)}
    assert set(recs) == {"soe", "advmoe", "uniform-ensemble"}
    for name, r in recs.items():
        assert {"pgd-2", "pgd-dlr", "pgd-2x1", WORST} <= set(r["metrics"]), name
        assert r["metrics"][WORST] <= r["metrics"]["worst-case"] + 1e-9
    assert "transfer-best" in recs["uniform-ensemble"]["metrics"]
    assert "routing" not in recs["advmoe"]["metrics"]
    assert {"pgd-2 (hard)", "pgd-2 (bpda)"} <= set(recs["soe"]["adaptive"]["elapsed_s"])
    picked = evaluate_adaptive_run(run, 0, data, s, progress=False, which="advmoe",
                                            checklist=False)     # one baseline by name (stored: no work)
    assert [r["model"] for r in picked] == ["advmoe"]
