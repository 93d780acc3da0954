"""Profiles and the one threat model: overrides, validation, and the eps/alpha every attack gets."""
from __future__ import annotations

import pytest

from dwf_lab.core.config import (
    PGD_ALPHA,
    PGD_EPS,
    PROFILES,
    ThreatModel,
    get_profile,
    parse_sets,
    pixel_fraction,
    size_preset,
)
from dwf_lab.core.runtime import Runtime
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.checklist import ChecklistSettings
from dwf_lab.evaluation.diagnostics import DiagnosticSettings
from dwf_lab.evaluation.protocol import EvalSettings


def test_profiles_override_and_validate():
    p = get_profile("laptop", width="0.25", seeds="0,1", pgd_eps="8/255")
    assert p.width == 0.25 and p.seeds == (0, 1) and p.pgd_eps == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match="unknown setting"):
        get_profile("laptop", widht=0.5)
    with pytest.raises(ValueError, match="expert_batching must be loop or vmap"):
        get_profile("laptop", expert_batching="stacked")
    rt = Runtime.from_profile(get_profile("smoke", expert_batching="vmap", sync_batchnorm="true"))
    assert rt.expert_batching == "vmap" and rt.sync_batchnorm
    with pytest.raises(ValueError, match="eps must be >= 0"):
        get_profile("laptop", pgd_eps=-0.1)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
    paper = get_profile("paper")
    assert (paper.lr, paper.momentum, paper.weight_decay) == (0.01, 0.9, 5e-4)
    assert (paper.expert_epochs, paper.gate_epochs, paper.mixture_epochs) == (150, 100, 100)
    assert paper.expert_batch == 128 and paper.mixture_batch == 128 and len(paper.seeds) == 5
    assert paper.width == 1.0 and paper.n_train is None and paper.n_experts == 9


def test_parse_sets_splits_on_the_first_equals_sign_only():
    assert parse_sets(["width=0.25", "name=a=b"]) == {"width": "0.25", "name": "a=b"}
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["width"])


def test_the_threat_model_is_the_papers_by_default_and_labels_itself():
    tm = get_profile("laptop").threat_model
    assert tm == ThreatModel("Linf", PGD_EPS, PGD_ALPHA)
    # the laptop trains its PGD experts with a larger step, but evaluates with the paper's
    assert get_profile("laptop").pgd_alpha == pytest.approx(4 / 255) and tm.alpha == pytest.approx(2 / 255)
    assert tm.label().startswith("L-inf, eps = 8/255") and pixel_fraction(0.05) == "0.05"
    assert tm.contains(0.03) and tm.contains(8 / 255) and not tm.contains(0.04)
    with pytest.raises(ValueError, match="only the L-inf"):
        ThreatModel("L2", 0.5, 0.1)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_one_threat_model_flows_into_every_attack_setting(name):
    p = get_profile(name, pgd_eps="4/255", eval_pgd_alpha="1/255")
    tm = p.threat_model
    ev = EvalSettings.from_profile(p)
    assert (ev.pgd_eps, ev.pgd_alpha) == (tm.eps, tm.alpha)
    for settings in (AdaptiveSettings, ChecklistSettings, DiagnosticSettings):
        s = settings.from_profile(p)
        assert (s.eps, s.alpha) == (tm.eps, tm.alpha), settings.__name__


def test_a_size_preset_for_an_unknown_profile_is_an_error_not_laptop():
    odd = get_profile("laptop").replace(name="huge")
    with pytest.raises(ValueError, match="no attack-budget size for profile 'huge'"):
        size_preset(odd)
    for settings in (AdaptiveSettings, ChecklistSettings, DiagnosticSettings):
        with pytest.raises(ValueError, match="'huge'"):
            settings.from_profile(odd)
    assert size_preset(get_profile("smoke")) == "smoke"
