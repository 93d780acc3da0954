"""bf16 evaluation: what it changes (only the arithmetic), where it is allowed, and how results record it.
That it agrees with fp32 within a point on a model adversarially trained on real CIFAR-10:
tests/data/test_real_data.py."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from dwf_lab.attacks.precision import bf16_validated, compute_precision, precision_for
from dwf_lab.core import precision
from dwf_lab.core.config import get_profile
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.checklist import ChecklistSettings, run_checklist, stored_pgd
from dwf_lab.evaluation.metrics import pack_bits
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_model, stored_subset
from dwf_lab.evaluation.records import settings_difference


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.net(x)


def test_bf16_forward_returns_fp32_logits_close_to_fp32_and_restores_the_model(trained_model, attack_batch):
    x = attack_batch[0][:32]
    ref = trained_model(x)
    with compute_precision(trained_model, "bf16") as m:
        z = m(x)
        with compute_precision(m, "bf16"):          # nested: still bf16, restored only by the outer one
            assert torch.equal(m(x), z)
    assert z.dtype == torch.float32
    assert 0 < (z - ref).abs().max() < 0.05 * ref.abs().max()
    assert "forward" not in trained_model.__dict__
    assert torch.equal(trained_model(x), ref)


def test_a_mixtures_experts_run_in_bf16_too_and_the_vmap_path_still_uses_each_experts_weights(make_mixture):
    mix = make_mixture(n_experts=3).eval()
    x = torch.rand(6, 3, 32, 32)
    with compute_precision(mix, "bf16"):
        loop = mix(x)
        expert = mix.experts[1](x)
        mix.expert_batching = "vmap"      # its stateless template is made now, inside the context
        vm = mix(x)
        details = mix.forward_details(x)
    assert expert.dtype == torch.float32 and details.logits.dtype == torch.float32
    assert torch.allclose(loop, vm, atol=0.05)
    # the template must not call expert 0 for every expert
    z = mix.expert_outputs(x)
    assert not torch.allclose(z[:, 0], z[:, 1])
    assert all("forward" not in m.__dict__ for m in mix.modules())


def test_bf16_is_refused_on_a_model_it_was_not_checked_on_and_precision_for_falls_back_to_fp32():
    model = Plain().eval()
    assert not bf16_validated(model) and precision_for(model, "bf16") == "fp32"
    with pytest.raises(ValueError, match="evaluate it with precision 'fp32'") as err:
        with compute_precision(model, "bf16"):
            pass
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate_model(model, torch.rand(2, 3, 32, 32), torch.zeros(2).long(), EvalSettings(precision="fp16"),
                       progress=False)


def test_auto_is_decided_by_the_measured_speed_and_explicit_values_are_kept(monkeypatch):
    lap = get_profile("laptop", device="cpu")
    monkeypatch.setattr(precision, "bf16_attack_speedup", lambda threads: 2.0)
    assert precision.evaluation_precision(lap) == "bf16"
    monkeypatch.setattr(precision, "bf16_attack_speedup", lambda threads: 0.4)   # a CPU without bf16 units
    assert precision.evaluation_precision(lap) == "fp32"
    monkeypatch.setattr(precision, "bf16_attack_speedup", lambda threads: 2.0)
    assert precision.evaluation_precision(lap.replace(deterministic=True)) == "fp32"
    assert precision.evaluation_precision(lap.replace(eval_precision="fp32")) == "fp32"
    assert precision.evaluation_precision(get_profile("paper")) == "fp32"
    assert EvalSettings.from_profile(lap).precision == "bf16"
    assert AdaptiveSettings.from_profile(lap).precision == "bf16"
    assert ChecklistSettings.from_profile(lap).precision == "bf16"
    with pytest.raises(ValueError, match="eval_precision"):
        get_profile("laptop", eval_precision="half")


def test_a_result_in_one_precision_is_never_read_as_the_other(trained_model, attack_batch):
    x, y = attack_batch[0][:40], attack_batch[1][:40]
    s = EvalSettings(fgsm_eps=(), pgd_steps=(2,), long=False, batch_size=40, precision="bf16")
    _, correct = evaluate_model(trained_model, x, y, s, progress=False)
    rec = {"seed": 0, "n_test": 40, "settings": dataclasses.asdict(s),
           "per_example": {k: pack_bits(v) for k, v in correct.items()}}
    assert stored_subset(rec, s, 40, 0) is not None
    assert stored_subset(rec, dataclasses.replace(s, precision="fp32"), 40, 0) is None
    # the adaptive attacks' stored settings name the precision, so a change is a difference
    a = AdaptiveSettings.smoke(precision="bf16")
    assert settings_difference(a.attack_settings(a.pgd_key, 0),
                               AdaptiveSettings.smoke().attack_settings(a.pgd_key, 0))
    assert a.attack_settings("autoattack", 0)["precision"] == "bf16"
    # the checklist reads the protocol's PGD only in its own precision
    rec["settings"].update(long_steps=4, restarts=2)
    cs = ChecklistSettings.smoke(steps=2, long_steps=4)
    assert stored_pgd(rec, cs, 40) is None


def test_the_checklist_measures_bf16_against_fp32_on_the_same_images(trained_model, attack_batch):
    x, y = attack_batch[0][:48], attack_batch[1][:48]
    s = ChecklistSettings.smoke(n_examples=48)
    # rounding legitimately moves a borderline image or two either way on 48 images, more or less
    # depending on the CPU's bf16 kernels: this test is about the comparison, so it allows 10 %
    items = run_checklist(trained_model, x, y, dataclasses.replace(s, precision="bf16", precision_tol=10.0),
                          square=False)
    item = next(i for i in items if i.key == "precision-agrees")
    assert item.passed is True, item.evidence
    assert item.evidence["robust only in bf16"] + item.evidence["robust only in fp32"] == \
        item.evidence["images with another verdict"]
    assert "pgd-5 (fp32)" in item.evidence and "pgd-5 (bf16)" in item.evidence
    assert all(i.key != "precision-agrees" for i in run_checklist(trained_model, x, y, s, square=False))
    assert "forward" not in trained_model.__dict__


def test_bf16_evaluation_computes_the_logits_in_fp32():
    """The report's claim: under bf16 autocast only the convolutions run in bf16; the experts' heads,
    the gate and the mixture's combination run in fp32, so logits are not bf16-rounded."""
    from dwf_lab.models.registry import build_model
    torch.manual_seed(0)
    mix = build_model("dwf_mixture", n_experts=2, width=0.125, dataset="synthetic", gate_hidden=16).eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mix.forward_details(x)
    for t in (out.logits, out.weights, out.expert_logits):
        assert t.dtype == torch.float32 and (t.bfloat16().float() != t).any()


def test_check_12_compares_image_by_image():
    """Two verdicts with the same accuracy that break different images disagree: check 12 fails on
    the images bf16 left robust and fp32 broke, and names how many and which; the same verdicts pass,
    and so does bf16 breaking more than fp32 (it does not flatter the model)."""
    from dwf_lab.evaluation.checklist import precision_item
    s = dataclasses.replace(ChecklistSettings.smoke(), precision="bf16")
    low = torch.tensor([True] * 10 + [False] * 10 + [True] * 30)
    ref = torch.tensor([False] * 10 + [True] * 10 + [True] * 30)
    assert low.sum() == ref.sum()                                   # the aggregates agree
    item = precision_item(low, ref, s)
    assert item.passed is False and item.evidence["images with another verdict"] == 20
    assert item.evidence["robust only in bf16"] == 10 and item.evidence["which"][:2] == [0, 1]
    assert precision_item(ref, ref, s).passed is True
    assert precision_item(low & ref, ref, s).passed is True


def test_check_12_fails_on_a_model_whose_bf16_verdict_flips(trained_model, attack_batch):
    """In bf16 this kit ResNet's first convolution is cut from the graph (a forward hook on a copy
    that zeroes the gradient through a bf16 output): bf16 PGD gets none, while fp32 attacks the model itself."""
    x, y = attack_batch[0][:48], attack_batch[1][:48]
    s = dataclasses.replace(ChecklistSettings.smoke(n_examples=48), precision="bf16")
    flips = copy.deepcopy(trained_model).eval()
    first_conv = next(m for m in flips.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda m, args, z: z * 0 + z.detach() if z.dtype == torch.bfloat16 else z)
    items = run_checklist(flips, x, y, s, square=False)
    item = next(i for i in items if i.key == "precision-agrees")
    assert item.passed is False, item.evidence
    assert item.evidence["robust only in bf16"] > item.evidence["robust only in fp32"]
