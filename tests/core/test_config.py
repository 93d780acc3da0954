"""Profiles and the one threat model: overrides, validation, and the eps/alpha every attack gets."""
from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dwf_lab.core.config import (
    PGD_ALPHA,
    PGD_EPS,
    PROFILES,
    Profile,
    ThreatModel,
    get_profile,
    parse_sets,
    pixel_fraction,
    size_preset,
    validate,
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


# ----------------------------------------------- every setting is checked --
@pytest.mark.parametrize("key, value, message", [
    ("lr", "-1", "lr must be a finite number > 0, got -1.0"),
    ("lr", "nan", "lr must be a finite number > 0, got nan"),
    ("pgd_eps", "nan", "pgd_eps must be >= 0 and <= 1 (a finite eps in pixel units), got nan"),
    ("pgd_eps", "inf", "pgd_eps must be >= 0 and <= 1 (a finite eps in pixel units), got inf"),
    ("pgd_eps", "8/0", "pgd_eps must be a number (or a fraction like 8/255), got '8/0' (a division by zero)"),
    ("expert_epochs", "-3", "expert_epochs must be >= 0, got -3"),
    ("expert_epochs", "1.5", "expert_epochs must be a whole number, got '1.5'"),
    ("momentum", "5", "momentum must be in [0, 1), got 5.0"),
    ("eval_restarts", "0", "eval_restarts must be >= 1, got 0"),
    ("eval_batch", "0", "eval_batch must be >= 1, got 0"),
    ("gate_hidden", "0", "gate_hidden must be >= 1, got 0"),
    ("device", "tpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("seeds", "0,0,1", "seeds must not repeat a seed, got (0, 0, 1)"),
    ("pgd_steps_choices", "0", "every value of pgd_steps_choices must be >= 1, got (0,)"),
    ("eval_pgd_steps", "", "eval_pgd_steps must name at least one value, got ()"),
    ("width", "inf", "width must be a finite number > 0, got inf"),
    ("width", "nan", "width must be a finite number > 0, got nan"),
    ("weight_decay", "-1e-4", "weight_decay must be a finite number >= 0, got -0.0001"),
    ("pgd_alpha", "0", "pgd_alpha must be > 0 and <= 1 (a finite step in pixel units), got 0.0"),
    ("dataset", "imagenet",
     "dataset must be one of cifar10, cifar10-subset, svhn, mnist, synthetic, got 'imagenet'"),
    ("compile", "maybe", "compile must be true or false, got 'maybe'"),
    ("expert_batch", "none", "expert_batch must be a whole number, got 'none'"),
])
def test_a_bad_setting_gets_one_line_naming_it_and_what_is_allowed(key, value, message):
    with pytest.raises(ValueError) as info:
        get_profile("laptop", **{key: value})
    assert str(info.value) == f"invalid profile: {message}"


def test_good_settings_still_parse():
    p = get_profile("laptop", device="cuda:1", n_train="none", fallback="none", eval_fgsm_eps="8/255,0.05",
                    seeds="(3, 1)", dataset="CIFAR-10")
    assert p.device == "cuda:1" and p.n_train is None and p.fallback is None
    assert p.eval_fgsm_eps == (8 / 255, 0.05) and p.seeds == (3, 1)
    assert get_profile("laptop", width=1).width == 1          # Python values keep their type
    with pytest.raises(ValueError, match="width must be a number"):
        get_profile("laptop", width=True)


def test_the_profile_name_is_chosen_with_profile_not_set():
    with pytest.raises(ValueError) as info:
        get_profile("laptop", name="foo")
    assert str(info.value) == ("name is the profile's name and cannot be set (got 'foo'); choose a profile "
                               "with --profile (smoke, laptop, paper), then --set its fields")
    assert get_profile("laptop").replace(name="huge").name == "huge"   # code may still rename a profile


def test_the_named_profiles_are_valid():
    for p in PROFILES.values():
        validate(p)


_TEXT = st.one_of(
    st.sampled_from(["nan", "-nan", "inf", "-inf", "8/0", "8/255", "1/0.0", "0/0", "inf/inf", "a/b/c", "1e400",
                     "0,0,1", "none", "null", "true", "off", "(1, 2)", "[0.1, nan]", "", " ", "0", "-1", "1.5",
                     "cuda:0", "cuda:x", "auto", "vmap", "key", "synthetic", "9" * 5000, "\x00", "٣"]),
    st.text(max_size=12),
    st.integers().map(str),
    st.floats().map(str),
    st.fractions().map(str),
    st.lists(st.one_of(st.integers(-3, 300).map(str), st.floats().map(str), st.fractions().map(str)),
             max_size=4).map(",".join),
)
_PYTHON = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.lists(st.one_of(st.integers(), st.floats()), max_size=3), st.text(max_size=5))


@hsettings(max_examples=100, deadline=None)
@given(key=st.sampled_from(sorted(f.name for f in fields(Profile))), value=st.one_of(_TEXT, _PYTHON))
def test_any_set_value_gives_a_valid_profile_or_one_value_error_line(key, value):
    try:
        p = get_profile("smoke", **{key: value})
    except ValueError as e:
        assert type(e) is ValueError and "\n" not in str(e) and key in str(e)
    else:
        validate(p)   # what was accepted is valid
        assert p.digest() == p.replace().digest()
