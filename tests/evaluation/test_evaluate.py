"""dwf_lab.evaluation (protocol, metrics): the shared PGD trajectory, the protocol's bookkeeping, per-example bits."""
from __future__ import annotations

import json

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.attacks.pgd import pgd_trajectory
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.metrics import over_gradient_modes, pack_bits, unpack_bits, worst_case_keys
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_model
from dwf_lab.evaluation.records import write_result
from dwf_lab.models.registry import build_model

EPS, ALPHA = 8 / 255, 2 / 255


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def test_trajectory_at_k_is_pgd_with_k_steps(trained_model, attack_batch):
    x, y = attack_batch[0][:64], attack_batch[1][:64]
    traj = pgd_trajectory(trained_model, x, y, EPS, ALPHA, (1, 4), generator=gen(3))
    assert sorted(traj) == [1, 4]
    for k in (1, 4):
        x_adv = attacks.pgd(trained_model, x, y, EPS, ALPHA, steps=k, generator=gen(3))
        assert torch.equal(traj[k], _correct(trained_model, x_adv, y)), k
    assert not trained_model.training
    assert all(p.grad is None for p in trained_model.parameters())


def test_trajectory_without_random_start(trained_model, attack_batch):
    x, y = attack_batch[0][:32], attack_batch[1][:32]
    traj = pgd_trajectory(trained_model, x, y, EPS, ALPHA, (2,), random_start=False)
    x_adv = attacks.pgd(trained_model, x, y, EPS, ALPHA, steps=2, random_start=False)
    assert torch.equal(traj[2], _correct(trained_model, x_adv, y))


SMALL = EvalSettings(fgsm_eps=(0.01, 0.03), pgd_steps=(2, 4), long_steps=3, restarts=2,
                     batch_size=40)


@pytest.fixture(scope="module")
def evaluated(_trained, attack_batch):
    import copy
    model = copy.deepcopy(_trained).train()  # evaluate_model must use eval mode and restore
    x, y = attack_batch[0][:80], attack_batch[1][:80]
    metrics, correct = evaluate_model(model, x, y, SMALL, seed=4, progress=False)
    return model, x, y, metrics, correct


def test_metrics_names_and_mode(evaluated):
    model, x, y, metrics, correct = evaluated
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    names = SMALL.metric_names()
    assert names == ["SA", "fgsm:0.01", "fgsm:0.03", "pgd:2", "pgd:4", "pgd:3-ms", "pgd:3-a"]
    assert list(metrics) == names + ["worst-case"] and list(correct) == list(metrics)
    for k, v in correct.items():
        assert v.dtype == torch.bool and v.shape == (80,), k
        assert metrics[k] == pytest.approx(100.0 * v.float().mean().item())
    assert metrics["SA"] == pytest.approx(100.0 * attacks.accuracy(model, x, y))


def test_worst_case_is_below_every_metric(evaluated):
    _, _, _, metrics, correct = evaluated
    everything = torch.stack([v for k, v in correct.items() if k != "worst-case"]).all(0)
    assert torch.equal(correct["worst-case"], everything)
    for k, v in metrics.items():
        assert metrics["worst-case"] <= v, k
    assert metrics["pgd:4"] <= metrics["SA"]


def test_protocol_pgd_columns_are_reproducible_attacks(evaluated):
    # pgd:k of batch b is PGD-k, from generator seed_from(seed, b, 1), on the batch's correctly
    # classified images: the same numbers a separate attacks.pgd call gives (so "one trajectory"
    # really equals five runs)
    model, x, y, _, correct = evaluated
    model.eval()
    for b in range(2):
        xb, yb = x[40 * b:40 * (b + 1)], y[40 * b:40 * (b + 1)]
        keep = _correct(model, xb, yb)
        for k in (2, 4):
            x_adv = attacks.pgd(model, xb[keep], yb[keep], EPS, ALPHA, steps=k,
                                generator=gen(seed_from(4, b, 1)))
            column = correct[f"pgd:{k}"][40 * b:40 * (b + 1)]
            assert torch.equal(column[keep], _correct(model, x_adv, yb[keep])), (b, k)
            assert not column[~keep].any()


def test_long_columns_share_the_trajectory_and_restarts_attack_only_survivors(evaluated):
    # "100 (A)" is the trajectory's PGD-L (generator tag 1, like pgd:k); each later "100 (MS)"
    # restart (tag 2 + r) attacks only the images every earlier restart left correct, and an image
    # counts as robust under MS only if it survived them all
    model, x, y, _, correct = evaluated
    model.eval()
    for b in range(2):
        xb, yb = x[40 * b:40 * (b + 1)], y[40 * b:40 * (b + 1)]
        keep = _correct(model, xb, yb)
        xk, yk = xb[keep], yb[keep]
        first = _correct(model, attacks.pgd(model, xk, yk, EPS, ALPHA, steps=3,
                                            generator=gen(seed_from(4, b, 1))), yk)
        assert torch.equal(correct["pgd:3-a"][40 * b:40 * (b + 1)][keep], first), b
        alive = first.nonzero().squeeze(1)
        second = first.clone()
        if len(alive):
            x_adv = attacks.pgd(model, xk[alive], yk[alive], EPS, ALPHA, steps=3,
                                generator=gen(seed_from(4, b, 3)))
            second[alive] = _correct(model, x_adv, yk[alive])
        assert torch.equal(correct["pgd:3-ms"][40 * b:40 * (b + 1)][keep], second), b
    assert (correct["pgd:3-ms"] <= correct["pgd:3-a"]).all()


def test_later_restarts_see_only_the_images_that_survived(trained_model, attack_batch):
    x, y = attack_batch[0][:40], attack_batch[1][:40]
    s = EvalSettings(fgsm_eps=(), pgd_steps=(), long_steps=3, restarts=3, batch_size=40)
    seen = []
    hook = trained_model.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        _, correct = evaluate_model(trained_model, x, y, s, seed=2, progress=False)
    finally:
        hook.remove()
    n_clean, n_first = int(correct["SA"].sum()), int(correct["pgd:3-a"].sum())
    # the clean pass, then the first restart on every clean-correct image, then smaller batches
    assert seen[0] == 40 and set(seen[1:1 + 3 + 1]) == {n_clean}
    assert max(seen[1 + 3 + 1:], default=0) <= n_first < n_clean


def test_attacks_run_only_on_correctly_classified_images(trained_model, attack_batch):
    # a misclassified clean image is not robust under any attack: it is counted wrong in every
    # column without being attacked, and the attacks see only the rest
    x, y = attack_batch[0][:40].clone(), attack_batch[1][:40].clone()
    y[::2] = (y[::2] + 1) % 10                      # half the labels wrong: those images are misclassified
    seen = []
    hook = trained_model.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        metrics, correct = evaluate_model(trained_model, x, y, SMALL, seed=1, progress=False)
    finally:
        hook.remove()
    wrong = ~correct["SA"]
    assert wrong[::2].all()
    for k, v in correct.items():
        assert not v[wrong].any(), k
    assert max(seen[1:]) <= int(correct["SA"].sum())   # after the clean pass, no batch is larger


def test_evaluate_rejects_normalized_inputs(trained_model, attack_batch):
    x, y = attack_batch[0][:4], attack_batch[1][:4]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_model(trained_model, trained_model.normalize(x), y, SMALL, progress=False)


def test_clean_only_settings_have_no_worst_case(trained_model, attack_batch):
    x, y = attack_batch[0][:10], attack_batch[1][:10]
    s = EvalSettings(fgsm_eps=(), pgd_steps=(), long=False)
    metrics, correct = evaluate_model(trained_model, x, y, s, progress=False)
    assert list(metrics) == ["SA"]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
def test_pack_unpack_round_trip(n):
    bits = torch.rand(n, generator=gen(n)) < 0.5
    hexstr = pack_bits(bits)
    assert len(hexstr) == 2 * ((n + 7) // 8)
    back = unpack_bits(hexstr, n)
    assert back.dtype == torch.bool and torch.equal(back, bits)


def test_pack_bits_first_example_is_the_most_significant_bit():
    assert pack_bits(torch.tensor([True] + [False] * 7)) == "80"
    assert pack_bits(torch.tensor([False] * 7 + [True])) == "01"
    assert pack_bits(torch.tensor([True, True, True])) == "e0"


def test_write_result_round_trips_the_per_example_bits(tmp_path, evaluated):
    _, _, _, metrics, correct = evaluated
    path = tmp_path / "r" / "result.json"
    rec = write_result(path, model="tiny", row="DWF", seed=4, dataset="synthetic",
                       metrics=metrics, correct=correct, settings=SMALL, elapsed_s=1.234)
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert on_disk["n_test"] == 80 and on_disk["metrics"] == metrics
    assert on_disk["settings"]["restarts"] == 2 and on_disk["elapsed_s"] == 1.23
    for k, v in correct.items():
        assert torch.equal(unpack_bits(on_disk["per_example"][k], 80), v), k
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_worst_case_pools_only_attacks_inside_the_same_eps_ball():
    keys = ["SA", "fgsm:0.01", "fgsm:0.03", "fgsm:0.04", "fgsm:0.09", "pgd:10", "pgd:100-ms",
            "autoattack", "worst-case", "worst-case (all)"]
    assert worst_case_keys(keys, 8 / 255) == ["SA", "fgsm:0.01", "fgsm:0.03", "pgd:10", "pgd:100-ms",
                                              "autoattack"]
    # a larger-eps FGSM column never lowers the worst case
    s = SMALL.__class__(**{**SMALL.__dict__, "fgsm_eps": (0.01, 0.5)})
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.0625, dataset="synthetic")
    x = torch.rand(8, 3, 32, 32)
    y = torch.zeros(8, dtype=torch.long)
    metrics, correct = evaluate_model(model, x, y, s, progress=False)
    expected = torch.stack([correct[k] for k in correct if k not in ("worst-case", "fgsm:0.5")]).all(0)
    assert torch.equal(correct["worst-case"], expected)


class _TwoModes(torch.nn.Module):
    """Stands in for SoE: a mode switch whose state the evaluation can observe."""
    gradient_modes = ("hard", "bpda")

    def __init__(self):
        super().__init__()
        self.mode = "hard"
        self.seen = []

    def selection_mode(self, mode):
        import contextlib

        @contextlib.contextmanager
        def switch():
            old, self.mode = self.mode, mode
            try:
                yield
            finally:
                self.mode = old
        return switch()


def test_over_gradient_modes_keeps_the_worse_outcome_per_example_and_restores_the_mode():
    m = _TwoModes()
    by_mode = {"hard": torch.tensor([True, True, False, True]),
               "bpda": torch.tensor([True, False, True, True])}

    def one(mode):
        m.seen.append(m.mode)
        return {"pgd": by_mode[mode], "SA": torch.ones(4, dtype=torch.bool)}, f"extra {mode}"

    combined, per_mode = over_gradient_modes(m, one)
    assert m.seen == ["hard", "bpda"] and m.mode == "hard"
    assert combined["pgd"].tolist() == [True, False, False, True]
    assert combined["SA"].all()
    assert per_mode == {"hard": "extra hard", "bpda": "extra bpda"}
    # an explicit subset of modes, and no mode at all is refused
    only, _ = over_gradient_modes(m, one, modes=("bpda",))
    assert only["pgd"].tolist() == by_mode["bpda"].tolist()
    with pytest.raises(ValueError, match="no gradient mode"):
        over_gradient_modes(m, one, modes=())


# --------------------------------------------- inputs and settings, checked first --
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_adaptive, routing_sweep  # noqa: E402
from dwf_lab.evaluation.checklist import ChecklistSettings, run_checklist  # noqa: E402
from dwf_lab.evaluation.metrics import batched, eval_batches, per_example  # noqa: E402

CLEAN = EvalSettings(fgsm_eps=(0.03,), pgd_steps=(1,), long=False, batch_size=16)


def _nan_batch(attack_batch, n=32):
    x, y = attack_batch[0][:n].clone(), attack_batch[1][:n]
    x[3, 1, 5, 5] = float("nan")
    return x, y


def test_evaluate_refuses_nan_pixels(trained_model, attack_batch):
    x, y = _nan_batch(attack_batch)   # before: evaluated, PGD returned NaN images, 25 % "clean accuracy"
    with pytest.raises(ValueError, match=r"attack inputs contain 1 NaN and 0 infinite pixel values \(of 98304\)"):
        evaluate_model(trained_model, x, y, CLEAN, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"fgsm_eps": (0.01, -0.1)}, r"fgsm_eps must be >= 0 \(pixel units, e.g. 8/255\), got -0.1"),
    ({"fgsm_eps": (8,)}, r"fgsm_eps is in pixel units: did you mean 8/255\?"),
    ({"fgsm_eps": (float("nan"),)}, r"fgsm_eps must be >= 0"),
    ({"pgd_eps": float("inf")}, r"pgd_eps must be finite \(pixel units, e.g. 8/255\), got inf"),
    ({"pgd_eps": 8}, r"pgd_eps is in pixel units: did you mean 8/255\?"),
    ({"pgd_alpha": 2}, r"pgd_alpha is in pixel units: did you mean 2/255\?"),
    ({"pgd_alpha": float("nan")}, r"pgd_alpha must be >= 0"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"batch_size": -5}, r"batch_size must be a positive integer, got -5"),
    ({"pgd_steps": (0, 2)}, r"pgd_steps must all be >= 1, got \(0, 2\)"),
    ({"long": True, "restarts": 0}, r"need long_steps >= 0, restarts >= 1 and eot_samples >= 1"),
])
def test_evaluate_checks_every_setting_like_the_attacks_do(trained_model, attack_batch, change, message):
    from dataclasses import replace
    x, y = attack_batch[0][:16], attack_batch[1][:16]
    with pytest.raises(ValueError, match=message):
        evaluate_model(trained_model, x, y, replace(CLEAN, **change), progress=False)


def test_evaluate_refuses_images_of_another_shape(trained_model):
    grey = torch.rand(8, 1, 28, 28, generator=gen(0))
    with pytest.raises(ValueError, match=r"built for 3-channel images \(in_channels=3\), got 1x28x28"):
        evaluate_model(trained_model, grey, torch.zeros(8, dtype=torch.long), CLEAN, progress=False)


def test_evaluate_takes_float64_images_as_float32(trained_model, attack_batch):
    x, y = attack_batch[0][:24], attack_batch[1][:24]
    m32, c32 = evaluate_model(trained_model, x, y, CLEAN, seed=1, progress=False)
    m64, c64 = evaluate_model(trained_model, x.double(), y, CLEAN, seed=1, progress=False)
    assert m64 == m32 and all(torch.equal(c32[k], c64[k]) for k in c32)
    with pytest.raises(ValueError, match="divide by 255"):
        evaluate_model(trained_model, (x * 255).to(torch.uint8), y, CLEAN, progress=False)


@pytest.mark.parametrize("bad", [0, -1])
def test_batch_helpers_refuse_a_batch_size_below_one(trained_model, attack_batch, bad):
    x, y = attack_batch[0][:8], attack_batch[1][:8]
    msg = rf"batch_size must be a positive integer, got {bad}"
    with pytest.raises(ValueError, match=msg):
        list(eval_batches(x, y, bad, "cpu"))
    with pytest.raises(ValueError, match=msg):
        batched(lambda xb, yb, b: yb, x, y, bad)
    with pytest.raises(ValueError, match=msg):
        per_example(trained_model, x, y, bad, "cpu", 0, lambda b, xb, yb, g: {"SA": yb == yb}, progress=False)


def test_adaptive_and_checklist_check_their_inputs_first(trained_model, attack_batch, make_mixture):
    x, y = _nan_batch(attack_batch, 16)
    s = AdaptiveSettings.smoke()
    with pytest.raises(ValueError, match="contain 1 NaN"):
        evaluate_adaptive(trained_model, x, y, s, progress=False)
    with pytest.raises(ValueError, match=r"eps is in pixel units: did you mean 8/255\?"):
        evaluate_adaptive(trained_model, x.nan_to_num(0.5), y, AdaptiveSettings.smoke(eps=8), progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        evaluate_adaptive(trained_model, x.nan_to_num(0.5), y, AdaptiveSettings.smoke(batch_size=0),
                          progress=False)
    with pytest.raises(ValueError, match="contain 1 NaN"):
        run_checklist(trained_model, x, y, ChecklistSettings.smoke())
    with pytest.raises(ValueError, match=r"eps_grid is in pixel units: did you mean 16/255\?"):
        run_checklist(trained_model, x.nan_to_num(0.5), y, ChecklistSettings.smoke(eps_grid=(8 / 255, 16)))
    with pytest.raises(ValueError, match=r"alpha must be finite"):
        run_checklist(trained_model, x.nan_to_num(0.5), y, ChecklistSettings.smoke(alpha=float("inf")))
    mix = make_mixture(2).eval()
    with pytest.raises(ValueError, match=r"built for 32x32 images \(image_size=32\), got 28x28"):
        routing_sweep(mix, torch.rand(4, 3, 28, 28, generator=gen(0)), y[:4], settings=s)
