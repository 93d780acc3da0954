"""dwf_lab.attacks: invariants of every attack, attack strength on a trained model, samplers."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.attacks import (
    FGSM_EPSILONS,
    PGD_ALPHA,
    PGD_EPS,
    PGD_STEPS,
    accuracy,
    attack_mode,
    check_inputs,
    eot_pgd,
    fgsm,
    pgd,
    pick,
    sample_fgsm_eps,
    sample_pgd_steps,
)

EPS = 8 / 255
NOISE = 0.02  # two points of accuracy


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------- invariants --
ATTACKS = {
    "fgsm": lambda m, x, y, eps: fgsm(m, x, y, eps),
    "pgd": lambda m, x, y, eps: pgd(m, x, y, eps, alpha=eps / 3, steps=3, generator=gen(0)),
    "pgd-no-random-start": lambda m, x, y, eps: pgd(m, x, y, eps, alpha=eps / 2, steps=2,
                                                    random_start=False),
    "pgd-restarts": lambda m, x, y, eps: pgd(m, x, y, eps, alpha=eps / 2, steps=2, restarts=2,
                                             generator=gen(0)),
    "pgd-dlr": lambda m, x, y, eps: pgd(m, x, y, eps, alpha=eps / 2, steps=2, loss="dlr",
                                        generator=gen(0)),
    "eot-pgd": lambda m, x, y, eps: eot_pgd(m, x, y, eps, alpha=eps / 2, steps=2, eot_samples=2,
                                            generator=gen(0)),
}


def _boxed_images(images: torch.Tensor) -> torch.Tensor:
    """Images with saturated regions, so the [0, 1] clamp has work to do."""
    x = images.clone()
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    return x


def _check_result(x_adv, x, eps):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6, "left the eps-ball"
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0, "left the image box"


@pytest.mark.parametrize("start_training", [True, False], ids=["from-train", "from-eval"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_invariants(name, start_training, tiny_model, images):
    model = tiny_model.train(start_training)
    # a mixed pattern of requires_grad flags must come back exactly as it was
    model.linear.bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = _boxed_images(images)
    x_orig = x.clone()
    y = torch.arange(len(x)) % 10

    x_adv = ATTACKS[name](model, x, y, EPS)

    _check_result(x_adv, x_orig, EPS)
    assert torch.equal(x, x_orig), "the attack modified its input"
    assert not torch.equal(x_adv, x_orig)
    assert model.training is start_training
    assert all(m.training is start_training for m in model.modules())
    for n, p in model.named_parameters():
        assert p.grad is None, f"{name} left a gradient on {n}"
        assert p.requires_grad is flags[n], f"{name} did not restore requires_grad of {n}"
    for n, b in model.named_buffers():  # eval mode during the attack: BN stats untouched
        assert torch.equal(b, buffers[n]), f"{name} changed buffer {n}"


@pytest.mark.parametrize("start_training", [True, False], ids=["from-train", "from-eval"])
def test_attack_invariants_on_a_mixture_with_frozen_experts(start_training, make_mixture, images):
    model = make_mixture(2, freeze_experts=True).train(start_training)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not any(flags[n] for n in flags if n.startswith("experts."))
    assert all(flags[n] for n in flags if n.startswith("gate."))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = _boxed_images(images), torch.arange(8) % 10

    for attack in ("fgsm", "pgd-restarts"):
        x_adv = ATTACKS[attack](model, x, y, EPS)
        _check_result(x_adv, x, EPS)
        assert model.training is start_training
        assert model.gate.training is start_training
        assert all(not e.training for e in model.experts), "frozen experts left eval mode"
        for n, p in model.named_parameters():
            assert p.grad is None, f"{attack} left a gradient on {n}"
            assert p.requires_grad is flags[n], f"{attack} did not restore requires_grad of {n}"
        for n, b in model.named_buffers():
            assert torch.equal(b, buffers[n]), n


def test_attack_mode_restores_even_after_an_error(tiny_model):
    tiny_model.train()
    with pytest.raises(RuntimeError, match="boom"):
        with attack_mode(tiny_model):
            assert not tiny_model.training
            assert not any(p.requires_grad for p in tiny_model.parameters())
            raise RuntimeError("boom")
    assert tiny_model.training
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_attacks_work_under_no_grad_and_eps_zero_is_identity(tiny_model, images):
    tiny_model.eval()
    y = torch.arange(8) % 10
    want = fgsm(tiny_model, images, y, EPS)
    with torch.no_grad():
        got = fgsm(tiny_model, images, y, EPS)
    assert torch.equal(got, want)
    assert torch.equal(fgsm(tiny_model, images, y, 0.0), images)
    assert torch.equal(pgd(tiny_model, images, y, 0.0, steps=3, generator=gen(0)), images)
    assert torch.equal(pgd(tiny_model, images, y, EPS, steps=0, random_start=False), images)


# -------------------------------------------------------- bad arguments --
def test_rejects_negative_or_nan_eps_with_a_helpful_message(tiny_model, images):
    y = torch.zeros(8, dtype=torch.long)
    for bad in (-0.01, -8 / 255, float("nan")):
        with pytest.raises(ValueError, match=r"eps must be >= 0 \(pixel units, e.g. 8/255\)"):
            fgsm(tiny_model, images, y, bad)
        with pytest.raises(ValueError, match=r"eps must be >= 0"):
            pgd(tiny_model, images, y, bad, steps=1)


def test_rejects_normalized_inputs_with_a_helpful_message(tiny_model, images):
    y = torch.zeros(8, dtype=torch.long)
    normalized = tiny_model.normalize(images)  # what a user who normalizes twice would pass
    assert normalized.min() < 0 and normalized.max() > 1
    for attack in (lambda x: fgsm(tiny_model, x, y, EPS),
                   lambda x: pgd(tiny_model, x, y, EPS, steps=1),
                   lambda x: check_inputs(x, EPS)):
        with pytest.raises(ValueError) as err:
            attack(normalized)
        msg = str(err.value)
        assert "[0, 1]" in msg and "un-normalized" in msg and "normalizes inside" in msg
        assert f"{normalized.min().item():.3f}" in msg  # says what it got
    for x in (images * 255, images - 0.5):  # 0-255 images, centred images
        with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
            fgsm(tiny_model, x, y, EPS)


def test_rejects_other_mistakes(tiny_model, images):
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fgsm(tiny_model, images[0], y[:1], EPS)
    for kw in ({"steps": -1}, {"restarts": 0}, {"eot_samples": 0}, {"alpha": -0.1}):
        with pytest.raises(ValueError, match="need steps >= 0, restarts >= 1"):
            pgd(tiny_model, images, y, EPS, **kw)
    with pytest.raises(ValueError, match="unknown attack loss 'mse'"):
        fgsm(tiny_model, images, y, EPS, loss="mse")
    with pytest.raises(ValueError, match="at least 3 classes"):
        attacks.dlr_from_logits(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------- on a trained model --
@pytest.fixture(scope="module")
def strength(_trained, attack_batch):
    """Accuracies (and per-example correctness) under each attack, computed once."""
    model = copy.deepcopy(_trained).eval()
    x, y = attack_batch

    def correct(x_adv):
        with torch.no_grad():
            return model(x_adv).argmax(1) == y

    res = {"clean": correct(x), "fgsm": correct(fgsm(model, x, y, EPS))}
    for k in (2, 5, 10):
        res[f"pgd{k}"] = correct(pgd(model, x, y, EPS, PGD_ALPHA, steps=k, generator=gen(7)))
    res["pgd5x2"] = correct(pgd(model, x, y, EPS, PGD_ALPHA, steps=5, restarts=2,
                                generator=gen(7)))
    return {k: (v, v.float().mean().item()) for k, v in res.items()}


def test_trained_model_is_well_above_chance(strength):
    assert strength["clean"][1] > 0.5  # chance is 0.1


def test_fgsm_lowers_accuracy(strength):
    assert strength["fgsm"][1] < strength["clean"][1] - 0.05


def test_pgd_at_least_as_strong_as_fgsm_at_the_same_eps(strength):
    assert strength["pgd10"][1] <= strength["fgsm"][1] + NOISE
    assert strength["pgd10"][1] < strength["clean"][1] - 0.05


def test_more_pgd_steps_never_raise_accuracy(strength):
    accs = [strength[f"pgd{k}"][1] for k in (2, 5, 10)]
    for fewer, more in zip(accs, accs[1:]):
        assert more <= fewer + NOISE, accs


def test_restarts_keep_the_per_example_worst_case(strength):
    single, multi = strength["pgd5"], strength["pgd5x2"]
    # same generator: the first restart is the single-restart run, so every example
    # it broke stays broken
    broken_once = ~single[0]
    assert not (broken_once & multi[0]).any()
    assert multi[1] <= single[1]


def test_eot_with_one_sample_is_pgd_on_a_deterministic_model(trained_model, attack_batch):
    x, y = attack_batch[0][:48], attack_batch[1][:48]
    ref = pgd(trained_model, x, y, EPS, PGD_ALPHA, steps=3, generator=gen(11))
    assert torch.equal(eot_pgd(trained_model, x, y, EPS, PGD_ALPHA, steps=3, eot_samples=1,
                               generator=gen(11)), ref)
    # averaging identical gradients changes nothing either (2g / 2 == g exactly)
    assert torch.equal(pgd(trained_model, x, y, EPS, PGD_ALPHA, steps=3, eot_samples=2,
                           generator=gen(11)), ref)
    # and the generator is what makes it reproducible
    assert not torch.equal(pgd(trained_model, x, y, EPS, PGD_ALPHA, steps=3,
                               generator=gen(12)), ref)


def test_accuracy_helper_restores_mode_and_ignores_batching(trained_model, attack_batch):
    x, y = attack_batch
    trained_model.train()
    a = accuracy(trained_model, x, y)
    assert trained_model.training
    assert accuracy(trained_model, x, y, batch_size=37) == a
    with torch.no_grad():
        n_right = int((trained_model.eval()(x).argmax(1) == y).sum())
    assert a == pytest.approx(n_right / len(y), abs=1e-12)   # a float of the count, not a float32 mean
    assert accuracy(trained_model, x[:0], y[:0]) == 0.0


# ---------------------------------------------------------------- samplers --
def test_paper_sets():
    assert FGSM_EPSILONS == (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09)
    assert PGD_STEPS == (10, 20, 30, 40, 50)
    assert PGD_EPS == 8 / 255 and PGD_ALPHA == 2 / 255


@pytest.mark.parametrize("sampler,values", [(sample_fgsm_eps, FGSM_EPSILONS),
                                            (sample_pgd_steps, PGD_STEPS)])
def test_samplers_draw_only_from_the_paper_sets_and_cover_them(sampler, values):
    g = gen(0)
    draws = [sampler(g) for _ in range(600)]
    assert set(draws) == set(values)
    counts = [draws.count(v) for v in values]
    expected = 600 / len(values)
    assert min(counts) > expected / 2 and max(counts) < expected * 2  # roughly uniform
    assert [sampler(gen(5)) for _ in range(3)] == [sampler(gen(5))] * 3  # seeded: reproducible
    assert sampler() in values  # global RNG when no generator


def test_pick_is_uniform_over_any_sequence():
    g = gen(1)
    draws = [pick(("a", "b", "c"), g) for _ in range(300)]
    assert set(draws) == {"a", "b", "c"}
    assert pick([42]) == 42
    assert math.isclose(sum(d == "a" for d in draws) / 300, 1 / 3, abs_tol=0.1)


# ------------------------------------------------ inputs checked once, clearly --
import importlib  # noqa: E402

from dwf_lab.attacks import art_suite  # noqa: E402
from dwf_lab.attacks import autoattack as official  # noqa: E402
from dwf_lab.attacks.base import check_batch_size, check_eps  # noqa: E402
from dwf_lab.attacks.gate import long_pgd, routing_attack, transfer_attack  # noqa: E402
from dwf_lab.models.registry import build_model  # noqa: E402

pgd_module = importlib.import_module("dwf_lab.attacks.pgd")   # the module (attacks.pgd is the function)


def _every_attack(model, other):
    """Every attack of attacks/ as ``f(x, y, eps)`` (ART's and the official AutoAttack only where installed)."""
    out = {
        "fgsm": lambda x, y, e: fgsm(model, x, y, e),
        "pgd": lambda x, y, e: pgd(model, x, y, e, alpha=2 / 255, steps=1),
        "eot-pgd": lambda x, y, e: eot_pgd(model, x, y, e, alpha=2 / 255, steps=1, eot_samples=1),
        "routing": lambda x, y, e: routing_attack(model, x, y, 0, 1.0, e, 2 / 255, steps=1),
        "transfer": lambda x, y, e: transfer_attack(other, model, x, y, e, 2 / 255, steps=1),
        "long-pgd": lambda x, y, e: long_pgd(model, x, y, e, 2 / 255, steps=1, restarts=1),
        "trajectory": lambda x, y, e: pgd_module.pgd_trajectory(model, x, y, e, 2 / 255, (1,)),
    }
    if art_suite.available():
        out["art-pgd"] = lambda x, y, e: art_suite.art_pgd(model, x, y, e, 2 / 255, steps=1)
        out["square"] = lambda x, y, e: art_suite.square(model, x, y, e, max_iter=1)
        out["apgd"] = lambda x, y, e: art_suite.apgd(model, x, y, e, n_iter=1)
    if official.available():
        out["autoattack"] = lambda x, y, e: official.official_autoattack(
            model, x, y, eps=e, budget=official.Budget(n_iter=1, n_target_classes=1, n_queries=1))
    return out


@pytest.fixture
def two_models():
    torch.manual_seed(0)
    return (build_model("resnet18", width=0.0625, dataset="synthetic").eval(),
            build_model("resnet18", width=0.0625, dataset="synthetic").eval())


def test_nan_or_infinite_pixels_are_refused_by_every_attack(two_models, images):
    model, other = two_models
    y = torch.zeros(8, dtype=torch.long)
    nan, inf = images.clone(), images.clone()
    nan[0, 0, 0, 0] = float("nan")      # min/max of a batch with a NaN are NaN: [0, 1] alone misses it
    inf[1, 2, 3, 4] = float("inf")
    for name, attack in _every_attack(model, other).items():
        with pytest.raises(ValueError, match=r"attack inputs contain 1 NaN and 0 infinite pixel values "
                                             r"\(of 24576\)"):
            attack(nan, y, EPS)
        with pytest.raises(ValueError, match=r"contain 0 NaN and 1 infinite pixel values"):
            attack(inf, y, EPS)


@pytest.mark.parametrize("eps, message", [
    (float("inf"), r"eps must be finite \(pixel units, e.g. 8/255\), got inf"),
    (float("nan"), r"eps must be >= 0 \(pixel units, e.g. 8/255\), got nan"),
    (8, r"eps is in pixel units: did you mean 8/255\? Got eps=8, but images are in \[0, 1\]"),
    (16.0, r"eps is in pixel units: did you mean 16/255\?"),
    (2.5, r"eps is in pixel units: did you mean 2.5/255\?"),
    (-0.1, r"eps must be >= 0 \(pixel units, e.g. 8/255\), got -0.1"),
    ("8/255", r"eps must be a number \(pixel units, e.g. 8/255\), got '8/255'"),
])
def test_eps_is_finite_and_in_pixel_units_for_every_attack(two_models, images, eps, message):
    model, other = two_models
    y = torch.zeros(8, dtype=torch.long)
    for name, attack in _every_attack(model, other).items():
        with pytest.raises(ValueError, match=message):
            attack(images, y, eps)
    assert check_eps(1.0) == 1.0 and check_eps(0) == 0.0      # the ends of the range are fine


def test_alpha_is_finite_and_in_pixel_units(tiny_model, images):
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"alpha must be finite \(pixel units, e.g. 8/255\), got inf"):
        pgd(tiny_model, images, y, EPS, alpha=float("inf"), steps=1)
    with pytest.raises(ValueError, match=r"alpha is in pixel units: did you mean 2/255\?"):
        pgd(tiny_model, images, y, EPS, alpha=2, steps=1)
    with pytest.raises(ValueError, match=r"need steps >= 0, .* alpha >= 0; got .* alpha=nan"):
        pgd(tiny_model, images, y, EPS, alpha=float("nan"), steps=1)
    with pytest.raises(ValueError, match=r"alpha is in pixel units: did you mean 2/255\?"):
        routing_attack(tiny_model, images, y, 0, 1.0, EPS, 2, steps=1)
    with pytest.raises(ValueError, match=r"alpha must be finite"):
        pgd_module.pgd_trajectory(tiny_model, images, y, EPS, float("inf"), (1,))


def test_images_of_another_shape_than_the_model_was_built_for_are_refused(two_models, make_mixture):
    model, other = two_models
    grey = torch.rand(4, 1, 28, 28, generator=gen(0))     # MNIST-like, fed to a 3-channel model
    y = torch.zeros(4, dtype=torch.long)
    for name, attack in _every_attack(model, other).items():
        with pytest.raises(ValueError, match=r"this resnet18 model was built for 3-channel images "
                                             r"\(in_channels=3\), got 1x28x28 images: pass images of "
                                             r"the dataset it was trained on"):
            attack(grey, y, EPS)
    mix = make_mixture(2).eval()
    small = torch.rand(4, 3, 28, 28, generator=gen(0))
    with pytest.raises(ValueError, match=r"this dwf_mixture model was built for 32x32 images "
                                         r"\(image_size=32\), got 28x28"):
        pgd(mix, small, y, EPS, steps=1)
    # a ResNet takes any size (global pooling): its size is not checked
    assert fgsm(model, torch.rand(2, 3, 28, 28, generator=gen(1)), y[:2], EPS).shape == (2, 3, 28, 28)


def test_float64_images_are_attacked_as_float32(tiny_model, images):
    y = torch.zeros(8, dtype=torch.long)
    got = fgsm(tiny_model.eval(), images.double(), y, EPS)
    assert got.dtype == torch.float32
    assert torch.equal(got, fgsm(tiny_model, images, y, EPS))
    a = pgd(tiny_model, images.double(), y, EPS, steps=2, generator=gen(4))
    assert a.dtype == torch.float32 and torch.equal(a, pgd(tiny_model, images, y, EPS, steps=2, generator=gen(4)))
    assert check_inputs(images.half()).dtype == torch.float32
    assert check_inputs(images) is images                   # float32: no copy


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_images_are_refused_with_a_hint(tiny_model, images, dtype):
    y = torch.zeros(8, dtype=torch.long)
    x = (images * 255).to(dtype) if dtype is not torch.bool else images > 0.5
    with pytest.raises(ValueError, match=rf"attack inputs must be float images in \[0, 1\], got dtype "
                                         rf"{dtype}. For 0-255 images divide by 255: x.float\(\) / 255."):
        fgsm(tiny_model, x, y, EPS)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_sizes_are_positive_integers(trained_model, attack_batch, bad):
    x, y = attack_batch
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {bad!r}"):
        accuracy(trained_model, x, y, batch_size=bad)
    if official.available():
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            official.official_autoattack(trained_model, x[:4], y[:4], eps=EPS, batch_size=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        check_batch_size(bad)


def test_inputs_are_checked_once_per_attack_never_per_step(tiny_model, images, monkeypatch):
    y = torch.zeros(8, dtype=torch.long)
    calls = []
    real = pgd_module.check_inputs

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(pgd_module, "check_inputs", counting)
    pgd(tiny_model, images, y, EPS, steps=7, restarts=2, generator=gen(0))
    assert len(calls) == 1
    with attack_mode(tiny_model):
        for _ in pgd_module.pgd_iterates(tiny_model, images, y, EPS, 2 / 255, 5):
            pass
    assert len(calls) == 1                                   # the inner core checks nothing
