"""L-infinity attacks in pixel space. ``base``: the conventions every attack keeps (attack mode,
projection, losses, input checks); ``pgd``: FGSM, PGD, EoT and the one PGD core; ``gate``:
attacks aimed at a mixture's gate; ``autoattack``: the official AutoAttack (the authors' code,
pyautoattack); ``art_suite``: ART's PGD, APGD and Square.

The names below are the everyday ones: ``from dwf_lab import attacks; attacks.pgd(...)``.
"""
from dwf_lab.attacks.base import (
    LOSSES,
    LossFn,
    accuracy,
    attack_mode,
    ce_loss,
    check_inputs,
    correct_mask,
    dlr_from_logits,
    dlr_loss,
    input_gradient,
    project,
    resolve_loss,
)
from dwf_lab.attacks.pgd import (
    eot_pgd,
    fgsm,
    pgd,
    pgd_iterates,
    pgd_trajectory,
    pick,
    random_start_in_ball,
    sample_fgsm_eps,
    sample_pgd_steps,
)
from dwf_lab.core.config import FGSM_EPSILONS, PGD_ALPHA, PGD_EPS, PGD_STEPS

__all__ = ["FGSM_EPSILONS", "LOSSES", "LossFn", "PGD_ALPHA", "PGD_EPS", "PGD_STEPS", "accuracy", "attack_mode",
           "ce_loss", "check_inputs", "correct_mask", "dlr_from_logits", "dlr_loss", "eot_pgd", "fgsm",
           "input_gradient", "pgd", "pgd_iterates", "pgd_trajectory", "pick", "project", "random_start_in_ball",
           "resolve_loss", "sample_fgsm_eps", "sample_pgd_steps"]
