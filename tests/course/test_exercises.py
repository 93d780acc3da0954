"""The exercises' checks (dwf_lab.course.exercises) grade like an autograder.

- a write-it-yourself attack is checked by :func:`check_attack`: each seeded mistake below (one
  small mistaken attack per function) is named in its one line -- ε applied to normalized inputs,
  BatchNorm in train mode, softmax probabilities in the loss, a missing clamp to [0, 1], a
  missing projection onto the ε-ball, the gradient at x instead of at the iterate (the paper's
  printed Eq. 4), a zero gradient, a detached gate -- and the reference solution passes;
- an answer not given yet (``None``, ``...``, a stub returning None or raising
  NotImplementedError) prints "Exercise N: not attempted" and raises nothing;
- the other checks (accuracies, readings, routing, top-k) name their usual mistakes;
- the student copy of the course has no solution left, ``solutions = False``, and is valid.
"""
from __future__ import annotations

import copy

import nbformat
import pytest
import torch
import torch.nn.functional as F
from tinymodels import tiny_trained

from dwf_lab import attacks
from dwf_lab.course import exercises, runner, student
from dwf_lab.course.exercises import ExerciseFailed, check_attack, diagnose_attack
from dwf_lab.course.runner import notebook_sequence
from dwf_lab.mixture.moe import Gate, MixtureOfExperts
from dwf_lab.models.common import normalization_for

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 5
MEAN, STD = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization_for("synthetic"))


@pytest.fixture(scope="module")
def setting():
    model, data = tiny_trained(0)
    return model, data.x_test[:24], data.y_test[:24]


@pytest.fixture(scope="module")
def mixture(setting):
    model, x, y = setting
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    torch.manual_seed(3)
    return MixtureOfExperts([model, other], Gate(2, (3, 32, 32), hidden=16, dataset="synthetic")).eval()


def _grad(model, x, y, loss=None):
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    total = loss(out, y) if loss else F.cross_entropy(out, y)      # the mean: its sign is the sum's
    return torch.autograd.grad(total, xr)[0]


# -------------------------------------------------- FGSM, right and wrong --
def fgsm_right(model, x, y, eps):
    model.eval()
    return (x + eps * _grad(model, x, y).sign()).clamp(0, 1)


def fgsm_eps_on_normalized(model, x, y, eps):
    model.eval()
    xn = (x - MEAN) / STD                                  # normalized by hand ...
    xn_adv = xn + eps * _grad(model, x, y).sign()          # ... and ε added there
    return (xn_adv * STD + MEAN).clamp(0, 1)


def fgsm_train_mode(model, x, y, eps):
    return (x + eps * _grad(model, x, y).sign()).clamp(0, 1)       # no model.eval()


def fgsm_softmax(model, x, y, eps):
    model.eval()
    g = _grad(model, x, y, lambda out, yy: F.cross_entropy(F.softmax(out, dim=1), yy))
    return (x + eps * g.sign()).clamp(0, 1)


def fgsm_no_clamp(model, x, y, eps):
    model.eval()
    return x + eps * _grad(model, x, y).sign()


def fgsm_detached(model, x, y, eps):
    model.eval()
    xr = x.clone().requires_grad_(True)
    logits = model(xr).detach().requires_grad_(True)       # the graph to x is cut here
    F.cross_entropy(logits, y).backward()
    g = xr.grad if xr.grad is not None else torch.zeros_like(x)
    return (x + eps * g.sign()).clamp(0, 1)


def fgsm_no_grad_error(model, x, y, eps):
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, x)[0]
    return (x + eps * g.sign()).clamp(0, 1)


def fgsm_descends(model, x, y, eps):
    model.eval()
    return (x - eps * _grad(model, x, y).sign()).clamp(0, 1)


# --------------------------------------------------- PGD, right and wrong --
def _pgd(model, x, y, eps, alpha, steps, generator, at_x=False, ball=True, box=True):
    model.eval()
    x_adv = attacks.random_start_in_ball(x, eps, generator)
    for _ in range(steps):
        g = _grad(model, x if at_x else x_adv, y)
        x_adv = x_adv + alpha * g.sign()
        if ball:
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        if box:
            x_adv = x_adv.clamp(0, 1)
    return x_adv


def pgd_right(model, x, y, eps, alpha, steps, generator):
    return _pgd(model, x, y, eps, alpha, steps, generator)


def pgd_gradient_at_x(model, x, y, eps, alpha, steps, generator):
    return _pgd(model, x, y, eps, alpha, steps, generator, at_x=True)


def pgd_no_projection(model, x, y, eps, alpha, steps, generator):
    return _pgd(model, x, y, eps, alpha, steps, generator, ball=False)


def pgd_no_clamp(model, x, y, eps, alpha, steps, generator):
    return _pgd(model, x, y, eps, alpha, steps, generator, box=False)


def pgd_eps_on_normalized(model, x, y, eps, alpha, steps, generator):
    model.eval()
    xn = (x - MEAN) / STD
    xn_adv = (attacks.random_start_in_ball(x, eps, generator) - MEAN) / STD
    for _ in range(steps):
        g = _grad(model, xn_adv * STD + MEAN, y)
        xn_adv = xn_adv + alpha * g.sign()
        xn_adv = torch.min(torch.max(xn_adv, xn - eps), xn + eps)  # the ball in normalized units
    return (xn_adv * STD + MEAN).clamp(0, 1)


def pgd_no_start(model, x, y, eps, alpha, steps, generator):
    model.eval()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv = attacks.project(x_adv + alpha * _grad(model, x_adv, y).sign(), x, eps)
    return x_adv


# ------------------------------------------ FGSM from a random start, targeted --
def rs_right(model, x, y, eps, generator):
    model.eval()
    x0 = attacks.random_start_in_ball(x, eps, generator)
    return attacks.project(x0 + 1.25 * eps * _grad(model, x0, y).sign(), x, eps)


def rs_gradient_at_x(model, x, y, eps, generator):
    model.eval()
    x0 = attacks.random_start_in_ball(x, eps, generator)
    return attacks.project(x0 + 1.25 * eps * _grad(model, x, y).sign(), x, eps)


def rs_no_projection(model, x, y, eps, generator):
    model.eval()
    x0 = attacks.random_start_in_ball(x, eps, generator)
    return (x0 + 1.25 * eps * _grad(model, x0, y).sign()).clamp(0, 1)


def targeted_right(model, x, t, eps):
    model.eval()
    return (x - eps * _grad(model, x, t).sign()).clamp(0, 1)


def targeted_climbs(model, x, t, eps):
    model.eval()
    return (x + eps * _grad(model, x, t).sign()).clamp(0, 1)


# ------------------------------------------------ the mixture, by Eq. 1-2 --
def _mixture_logits(model, x, detach_gate=False):
    w = torch.softmax(model.gate(x), dim=1)
    if detach_gate:
        w = w.detach()
    f = torch.stack([e(x) for e in model.experts], dim=1)
    return (w[:, :, None] * f).sum(dim=1)


def mixture_fgsm_right(model, x, y, eps):
    model.eval()
    xr = x.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(_mixture_logits(model, xr), y), xr)[0]
    return (x + eps * g.sign()).clamp(0, 1)


def mixture_fgsm_detached_gate(model, x, y, eps):
    model.eval()
    xr = x.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(_mixture_logits(model, xr, detach_gate=True), y), xr)[0]
    return (x + eps * g.sign()).clamp(0, 1)


FGSM_MISTAKES = [(fgsm_eps_on_normalized, "normalized_eps", "ε applied to normalized inputs"),
                 (fgsm_train_mode, "bn_train", "BatchNorm in train mode"),
                 (fgsm_softmax, "softmax", "softmax probabilities in the loss"),
                 (fgsm_no_clamp, "clamp", "missing clamp to [0, 1]"),
                 (fgsm_detached, "zero_gradient", "zero gradient (detached?)"),
                 (fgsm_no_grad_error, "zero_gradient", "zero gradient (detached?)"),
                 (fgsm_descends, "wrong_sign", "wrong direction")]
PGD_MISTAKES = [(pgd_gradient_at_x, "gradient_at_x", "gradient taken at x, not at the iterate"),
                (pgd_no_projection, "projection", "missing projection onto the ε-ball"),
                (pgd_no_clamp, "clamp", "missing clamp to [0, 1]"),
                (pgd_eps_on_normalized, "normalized_eps", "ε applied to normalized inputs"),
                (pgd_no_start, "no_random_start", "no random start")]


def test_the_reference_fgsm_passes_and_prints_correct(setting, capsys):
    model, x, y = setting
    assert check_attack(1, fgsm_right, model, x, y, EPS)
    out = capsys.readouterr().out.strip()
    assert out.startswith("Exercise 1: correct") and "dwf_lab.attacks.fgsm" in out and "\n" not in out
    assert model.training is False                      # the check attacked a copy, not the model


@pytest.mark.parametrize("fn, key, words", FGSM_MISTAKES, ids=[f[0].__name__ for f in FGSM_MISTAKES])
def test_each_fgsm_mistake_is_named_in_one_line(setting, fn, key, words):
    model, x, y = setting
    d = diagnose_attack(fn, model, x, y, EPS)
    assert d.key == key, d.line
    with pytest.raises(ExerciseFailed) as err:
        check_attack(3, fn, model, x, y, EPS)
    line = str(err.value)
    assert line.startswith("Exercise 3: ") and words in line and "\n" not in line
    assert err.value._render_traceback_() and len(err.value._render_traceback_()) == 1


def test_the_reference_pgd_passes(setting):
    model, x, y = setting
    d = diagnose_attack(pgd_right, model, x, y, EPS, kind="pgd", alpha=ALPHA, steps=STEPS)
    assert d.ok, d.line
    assert "dwf_lab.attacks.pgd" in d.line


@pytest.mark.parametrize("fn, key, words", PGD_MISTAKES, ids=[f[0].__name__ for f in PGD_MISTAKES])
def test_each_pgd_mistake_is_named(setting, fn, key, words):
    model, x, y = setting
    d = diagnose_attack(fn, model, x, y, EPS, kind="pgd", alpha=ALPHA, steps=STEPS)
    assert d.key == key and words in d.line, d.line


@pytest.mark.parametrize("fn, key", [(rs_right, "ok"), (rs_gradient_at_x, "gradient_at_x"),
                                     (rs_no_projection, "projection")])
def test_fgsm_from_a_random_start(setting, fn, key):
    model, x, y = setting
    d = diagnose_attack(fn, model, x, y, EPS, kind="fgsm_rs")
    assert d.key == key, d.line


@pytest.mark.parametrize("fn, key", [(targeted_right, "ok"), (targeted_climbs, "wrong_sign")])
def test_targeted_fgsm(setting, fn, key):
    model, x, y = setting
    t = (y + 1) % 10
    d = diagnose_attack(fn, model, x, t, 16 / 255, kind="targeted")
    assert d.key == key, d.line


@pytest.mark.parametrize("fn, key", [(mixture_fgsm_right, "ok"), (mixture_fgsm_detached_gate, "detached_gate"),
                                     (fgsm_train_mode, "bn_train")])
def test_an_attack_on_the_mixture_by_eq_1_2(setting, mixture, fn, key):
    _, x, y = setting
    d = diagnose_attack(fn, mixture, x[:8], y[:8], EPS)
    assert d.key == key, d.line
    if key == "detached_gate":
        assert "detached gate" in d.line


def test_a_model_not_given_back_in_train_mode_when_that_is_asked(setting):
    model, x, y = setting

    def restores(m, xx, yy, eps):
        with attacks.attack_mode(m):
            return fgsm_right(m, xx, yy, eps)
    assert diagnose_attack(restores, model, x, y, EPS, restores_mode=True).ok
    d = diagnose_attack(fgsm_right, model, x, y, EPS, restores_mode=True)
    assert d.key == "mode_not_restored", d.line


# -------------------------------------------------------- not attempted --
def stub_returns_none(model, x, y, eps):
    ...  # your code here


def stub_raises(model, x, y, eps):
    raise NotImplementedError


@pytest.mark.parametrize("answer", [None, ..., stub_returns_none, stub_raises])
def test_an_unanswered_attack_is_not_attempted_and_raises_nothing(setting, answer, capsys):
    model, x, y = setting
    assert not check_attack(2, answer, model, x, y, EPS)
    assert capsys.readouterr().out.strip() == "Exercise 2: not attempted"


@pytest.mark.parametrize("check, args", [
    (exercises.check_fgsm_accuracies, ("eps_grid",)), (exercises.check_pgd_readings, ("pgd",)),
    (exercises.check_first_flip, ()), (exercises.check_images, ("eps_list",)),
    (exercises.check_upper_bounds, ("upper",)), (exercises.check_routing, ("routing",)),
    (exercises.check_topk_logits, ()), (exercises.check_fixed_eps_run, ("run",))])
def test_every_check_says_not_attempted_for_none(setting, mixture, check, args, capsys):
    model, x, y = setting
    extra = {"eps_grid": (model, x, y, [0.01]), "pgd": (model, x, y, EPS, ALPHA, (1, 2), 0),
             "eps_list": (model, x[:1], y[:1], [0]), "upper": (model, x, y, EPS, ALPHA),
             "routing": (mixture, "uniform"), "run": (None, 0)}
    call = extra[args[0]] if args else ((mixture, x[:4]) if check is exercises.check_topk_logits
                                        else (model, x[:1], y[:1]))
    assert not check(5, None, *call)
    assert capsys.readouterr().out.strip() == "Exercise 5: not attempted"


# ------------------------------------------------------- the other checks --
def test_accuracies_in_percent_and_their_fraction_mistake(setting):
    model, x, y = setting
    grid = [0.01, 0.03]
    right = exercises.fgsm_accuracies(model, x, y, grid)
    assert exercises.check_fgsm_accuracies(1, right, model, x, y, grid)
    with pytest.raises(ExerciseFailed, match="fractions"):
        exercises.check_fgsm_accuracies(1, [v / 100 for v in right], model, x, y, grid)
    with pytest.raises(ExerciseFailed, match="ε = 0.03"):
        exercises.check_fgsm_accuracies(1, [right[0], right[1] + 10], model, x, y, grid)


def test_pgd_readings_from_one_trajectory(setting):
    model, x, y = setting
    right = exercises.pgd_readings(model, x, y, EPS, ALPHA, (1, 2, 5), seed=0)
    assert exercises.check_pgd_readings(2, right, model, x, y, EPS, ALPHA, (1, 2, 5), seed=0)
    with pytest.raises(ExerciseFailed, match="steps"):
        exercises.check_pgd_readings(2, {1: 0.0}, model, x, y, EPS, ALPHA, (1, 2, 5), seed=0)


def test_the_worst_case_is_a_per_image_and(setting):
    model, x, y = setting
    masks = exercises.upper_bounds(model, x, y, EPS, ALPHA)
    right = {k: 100 * float(v.float().mean()) for k, v in masks.items()}
    assert exercises.check_upper_bounds(6, right, model, x, y, EPS, ALPHA)
    as_min = {**right, "worst case": min(right[k] for k in exercises.UPPER_BOUND_KEYS[:3])}
    if as_min["worst case"] != right["worst case"]:
        with pytest.raises(ExerciseFailed, match="per-image AND"):
            exercises.check_upper_bounds(6, as_min, model, x, y, EPS, ALPHA)


def test_routing_copies_and_top2_by_hand(setting, mixture):
    _, x, _ = setting
    with pytest.raises(ExerciseFailed, match="the trained mixture itself"):
        exercises.check_routing(1, mixture, mixture, "uniform")
    uniform = copy.deepcopy(mixture)
    uniform.routing = "uniform"
    assert exercises.check_routing(1, uniform, mixture, "uniform")
    with pytest.raises(ExerciseFailed, match="routing should be 'topk'"):
        exercises.check_routing(2, uniform, mixture, "topk", k=1)
    x4 = x[:4]           # two experts: top-1 is the one where renormalising matters
    assert exercises.check_topk_logits(3, exercises.topk_by_hand(mixture, x4, 1), mixture, x4, k=1)
    with pytest.raises(ExerciseFailed, match="not renormalised"):
        exercises.check_topk_logits(3, exercises.topk_by_hand(mixture, x4, 1, renormalise=False), mixture, x4, k=1)
    with pytest.raises(ExerciseFailed, match="probabilities"):
        exercises.check_topk_logits(3, exercises.topk_by_hand(mixture, x4, 1, probabilities=True), mixture, x4, k=1)


def test_the_kit_reference_variants_equal_the_package(setting):
    """The engine the variants come from gives the package's FGSM and PGD exactly."""
    model, x, y = setting
    start = attacks.random_start_in_ball(x, EPS, torch.Generator().manual_seed(0))
    mine = exercises.signed_steps(model, x, y, EPS, ALPHA, STEPS, start)
    assert torch.equal(mine, attacks.pgd(model, x, y, EPS, ALPHA, STEPS, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(exercises.signed_steps(model, x, y, EPS, EPS, 1, x), attacks.fgsm(model, x, y, EPS))


# --------------------------------------------------------- student copy --
def test_the_student_copy_has_no_solutions(tmp_path):
    written = student.student_copy(tmp_path / "students")
    assert [p.name for p in written] == [p.name for p in notebook_sequence()]
    for path in written:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        assert student.count_solutions(nb) == 0 and runner.is_student_copy(nb)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        ns: dict = {}
        exec(params.source, ns)  # noqa: S102 - the copy's own parameter defaults
        assert ns["solutions"] is False
        original = nbformat.read(str(notebook_sequence()[[p.name for p in written].index(path.name)]), as_version=4)
        removed = sum(c.cell_type == "markdown" and c.source == student.REMOVED_NOTE for c in nb.cells)
        assert removed == student.count_solutions(original)
    with pytest.raises(ValueError, match="overwrite"):
        student.student_copy(notebook_sequence()[0].parent)


def test_a_checks_verdict_shows_only_its_line_in_a_notebook(capsys):
    """A cell ending with a check shows the check's line, not a bare True/False under it: the verdict
    is truthy when right and falsy when not attempted, and IPython displays nothing for it."""
    from dwf_lab.course.exercises import Diagnosis, not_attempted, verdict
    right, none_yet = verdict(7, Diagnosis("ok", "well done")), not_attempted(7)
    assert right and not none_yet and right == True and none_yet == False   # noqa: E712
    assert (repr(right), repr(none_yet)) == ("True", "False")
    from IPython.core.formatters import DisplayFormatter
    shown = DisplayFormatter()
    assert shown.format(right) == ({}, {}) and shown.format(none_yet) == ({}, {})   # nothing under the line
    assert shown.format(True)[0]["text/plain"] == "True"                           # a bare bool would show
    assert capsys.readouterr().out == "Exercise 7: correct — well done\nExercise 7: not attempted\n"
