"""PGD with one bug at a time (evaluation/attack_bugs.py)."""
import copy

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.evaluation.attack_bugs import BUGS, bug_table, channel_std, pgd_with_bug

EPS, ALPHA = 8 / 255, 2 / 255


def _gen():
    return torch.Generator().manual_seed(0)


def test_no_bug_is_the_kits_pgd(trained_model, attack_batch):
    x, y = attack_batch[0][:32], attack_batch[1][:32]
    res = pgd_with_bug(trained_model, x, y, EPS, ALPHA, 5, "none", (5,), _gen())
    want = attacks.correct_mask(trained_model, attacks.pgd(trained_model, x, y, EPS, ALPHA, 5, generator=_gen()), y)
    assert torch.equal(res[5], want.cpu())


def test_gradient_at_x_collapses_to_fgsm(trained_model, attack_batch):
    x, y = attack_batch[0][:64], attack_batch[1][:64]
    res = pgd_with_bug(trained_model, x, y, EPS, ALPHA, 10, "gradient_at_x", (8, 10), _gen())
    fgsm = attacks.correct_mask(trained_model, attacks.fgsm(trained_model, x, y, EPS), y).cpu()
    assert torch.equal(res[8], fgsm) and torch.equal(res[10], fgsm)


def test_normalized_eps_is_eps_sigma_per_channel_in_pixels(trained_model, attack_batch):
    x, y = attack_batch[0][:16], attack_batch[1][:16]
    sigma = channel_std(trained_model)
    res = pgd_with_bug(trained_model, x, y, EPS, ALPHA, 4, "normalized_eps", (4,), _gen(), return_images=True)
    per_channel = (res["images"] - x).abs().amax(dim=(0, 2, 3))
    assert torch.all(per_channel <= EPS * sigma + 1e-6)
    assert torch.all(per_channel >= 0.99 * EPS * sigma)


def test_bn_train_leaves_the_model_alone_and_attacks_another_function(trained_model, attack_batch):
    x, y = attack_batch[0][:32], attack_batch[1][:32]
    before = copy.deepcopy(trained_model.state_dict())
    bugged = pgd_with_bug(trained_model, x, y, EPS, ALPHA, 3, "bn_train", (3,), _gen(), return_images=True)
    assert not trained_model.training
    assert all(torch.equal(before[k], v) for k, v in trained_model.state_dict().items())
    right = attacks.pgd(trained_model, x, y, EPS, ALPHA, 3, generator=_gen())
    assert not torch.equal(bugged["images"], right)


def test_bug_table_rows(trained_model, attack_batch):
    x, y = attack_batch[0][:16], attack_batch[1][:16]
    rows = bug_table({"m": trained_model}, x, y, EPS, ALPHA, read_at=(1, 8), seed=0)
    assert [r["bug"] for r in rows] == list(BUGS)
    assert {"clean", "FGSM 0.03", "FGSM 8/255", "PGD-1", "PGD-8", "same_as_fgsm"} <= set(rows[0])
    at_x = next(r for r in rows if r["bug"] == "gradient_at_x")
    assert at_x["PGD-8"] == at_x["FGSM 8/255"] and at_x["same_as_fgsm"] == 100


def test_unknown_bug_and_bad_read_at():
    m = torch.nn.Sequential()
    with pytest.raises(ValueError, match="bug must be"):
        pgd_with_bug(m, torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long), EPS, ALPHA, 2, "typo")
    with pytest.raises(ValueError, match="read_at"):
        pgd_with_bug(m, torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long), EPS, ALPHA, 2, "none", (3,))
