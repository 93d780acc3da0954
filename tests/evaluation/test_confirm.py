"""The headline in fp32, per example (dwf_lab.evaluation.confirm): every broken image gets an fp32
witness in its ball, and where the stored verdict and fp32 differ the images are named."""
import torch
from tinymodels import tiny_trained

from dwf_lab.attacks.base import correct_mask
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_adaptive
from dwf_lab.evaluation.confirm import BALL_TOL, Witnesses, confirm_fp32
from dwf_lab.evaluation.metrics import WORST

EPS = 8 / 255


def _settings() -> AdaptiveSettings:
    return AdaptiveSettings.smoke(autoattack=False, long_steps=0)


def test_a_witness_is_a_misclassified_point_of_one_images_ball():
    model, data = tiny_trained()
    x, y = data.x_test[:20], data.y_test[:20]
    with Witnesses(model, x, y, EPS) as w:
        model(x.flip(0))                                  # other images: outside every ball but their own
        far = (x + 3 * EPS).clamp(0, 1)                   # outside the ball: never a witness
        model(far)
        noise = (x + EPS * torch.randn_like(x).sign()).clamp(0, 1)
        out = model(noise)
    wrong_flip = model(x.flip(0)).argmax(1) != y.flip(0)   # each flipped image is judged by its own label
    wrong_noise = out.argmax(1) != y
    assert torch.equal(w.found, (wrong_flip.flip(0) | wrong_noise))
    assert (w.images - x).abs().amax() <= EPS + BALL_TOL
    assert not (correct_mask(model, w.images[w.found], y[w.found])).any()
    assert torch.equal(w.images[~w.found], x[~w.found])


def test_confirm_names_the_images_each_verdict_alone_broke():
    model, data = tiny_trained()
    x, y = data.x_test[:60], data.y_test[:60]
    s = _settings()
    _, correct = evaluate_adaptive(model, x, y, s, progress=False)
    stored = correct[WORST]
    c = confirm_fp32(model, x, y, stored, s, precision="fp32")
    assert c.n == 60 and 0 < int(c.robust.sum()) < 60
    # every image fp32 calls broken has its witness: in the ball, in [0, 1], misclassified in fp32
    broken = ~c.robust
    assert (c.images - x).abs().amax() <= EPS + BALL_TOL and c.images.min() >= 0 and c.images.max() <= 1
    assert not correct_mask(model, c.images[broken], y[broken]).any()
    assert correct_mask(model, c.images[c.robust], y[c.robust]).all()
    # the fp32 verdict, against a stored one that claims every image robust: the broken ones are named
    claims_all = confirm_fp32(model, x, y, torch.ones(60, dtype=torch.bool), s, precision="bf16")
    assert claims_all.broken_only_fp32 == broken.nonzero().squeeze(1).tolist()
    assert not claims_all.broken_only_stored and not claims_all.summary()["agree"]
    # ... and one that claims every image broken: the rest of the suite and long PGD try the images
    # the first stages left, and the ones no fp32 attack broke are named
    claims_none = confirm_fp32(model, x, y, torch.zeros(60, dtype=torch.bool), s, precision="bf16")
    assert set(claims_none.broken_only_stored) <= set(c.robust.nonzero().squeeze(1).tolist())
    assert claims_none.broken_only_stored == claims_none.robust.nonzero().squeeze(1).tolist()
    assert any("PGD-100 x 3" in k for k in claims_none.stages)


def test_a_bf16_evaluation_is_confirmed_per_example_in_fp32():
    model, data = tiny_trained()
    x, y = data.x_test[:60], data.y_test[:60]
    s = _settings()
    _, low = evaluate_adaptive(model, x, y, AdaptiveSettings.smoke(autoattack=False, long_steps=0,
                                                                   precision="bf16"), progress=False)
    c = confirm_fp32(model, x, y, low[WORST], s, precision="bf16")
    summary = c.summary()
    assert summary["stored_precision"] == "bf16" and summary["robust_stored"] == int(low[WORST].sum())
    disagree = set(c.broken_only_fp32) | set(c.broken_only_stored)
    assert disagree == set((c.robust != low[WORST]).nonzero().squeeze(1).tolist())
