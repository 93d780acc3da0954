"""The paper's open questions as variants of the end-to-end phase, one table (:data:`ABLATIONS`).

The paper leaves its ablations "for future work" (§3 and §6): how many experts,
frozen or jointly trained experts, soft gate or hard routing, randomized or
fixed attack strengths, and what the clean third of each batch is for. Each
:class:`Ablation` changes *one* thing relative to ``reference`` (Algorithm 3 with
the run's settings): :func:`variant_profile` gives its settings, :func:`build_variant`
its mixture of trained experts, :func:`skip_reason` says when it does not apply.
Every variant's stage is seeded as the run's "mixture" stage (:class:`CommonSeedStage`:
common random numbers), so variants differ only in what they change.
"""
import statistics
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from dwf_lab.core.config import Profile
from dwf_lab.core.runtime import seed_from
from dwf_lab.models.registry import build_model
from dwf_lab.training.builders import load_experts_into, model_kwargs
from dwf_lab.training.recipes import FIXED_FGSM_EPS
from dwf_lab.training.stages import Stage, expert_stage_names


# ---------------------------------------------------------------- variants --
@dataclass(frozen=True)
class Ablation:
    name: str
    label: str            # the table row
    question: str         # which open question it answers
    description: str
    experts: int | None = None    # the first n experts of the composition order; None = all
    routing: str = "soft"         # "soft" | "topk" (straight-through) | "uniform"
    k: int = 1
    kind: str = "mixture"         # training recipe; "none" = no end-to-end training
    fixed_strengths: bool = False
    retrain_experts: bool = False  # retrain the FGSM/PGD experts under the variant's profile
    default: bool = True          # part of run_ablations(names=None)


ABLATIONS: list[Ablation] = [
    Ablation("reference", "DWF (reference)", "-",
             "All experts, soft gate, experts trained jointly with the gate, randomized attack "
             "strengths, mixed 3x batch: Algorithm 3 with the run's settings. Every other row "
             "changes one thing."),
    Ablation("experts-1", "1 expert", "number of experts",
             "Only the first expert of the composition (the benign one) under Algorithm 3: "
             "with one expert the gate is the constant 1, so this is mixed-batch adversarial "
             "fine-tuning of a single ResNet-18.", experts=1),
    Ablation("experts-3", "3 experts", "number of experts",
             "Benign + FGSM-1 + PGD-1, gate and experts trained end to end.", experts=3),
    Ablation("experts-5", "5 experts", "number of experts",
             "Benign + FGSM-1/2 + PGD-1/2, gate and experts trained end to end.", experts=5),
    Ablation("frozen-experts", "Frozen experts (gate only)", "frozen vs jointly trained experts",
             "The experts are frozen (no gradient, BatchNorm in eval mode); only the gate "
             "learns, on the same mixed batches.", kind="gate"),
    Ablation("routing-top1", "Hard top-1 routing", "soft gate vs hard routing",
             "The gate's top expert answers alone (forward); straight-through gradient of the "
             "softmax (backward), so the gate can learn and attacks see it.", routing="topk", k=1),
    Ablation("routing-top2", "Hard top-2 routing", "soft gate vs hard routing",
             "The gate's two top experts, weights renormalised (forward); straight-through "
             "softmax gradient (backward).", routing="topk", k=2),
    Ablation("routing-uniform", "Uniform average, trained", "soft gate vs no gate",
             "No gate: the experts' logits averaged with equal weights, experts trained end "
             "to end with Algorithm 3.", routing="uniform"),
    Ablation("uniform-untrained", "Uniform average, untrained", "what end-to-end training adds",
             "No gate and no end-to-end phase: the run's experts averaged as they are "
             "(the 'Uniform ensemble' baseline).", routing="uniform", kind="none"),
    Ablation("fixed-strengths", "Fixed attack strengths", "randomized vs fixed strengths",
             "End-to-end phase with FGSM eps fixed at 0.05 and PGD steps fixed at the mean of "
             "the profile's choices, instead of drawn per batch (the experts keep their "
             "randomized training).", fixed_strengths=True),
    Ablation("fixed-strengths-full", "Fixed attack strengths (experts too)",
             "randomized vs fixed strengths",
             "As fixed-strengths, and the FGSM and PGD experts are retrained with the fixed "
             "strengths as well (costs a full expert training).", fixed_strengths=True,
             retrain_experts=True, default=False),
    Ablation("adv-only-batch", "Adversarial-only batch", "mixed 3x batch vs adversarial only",
             "Algorithm 3 trained on concat(FGSM, PGD) only: the clean third of the batch is "
             "dropped (same attack draws).", kind="mixture_adv_only"),
]


BY_NAME = {a.name: a for a in ABLATIONS}


def get_ablation(name: str) -> Ablation:
    if name not in BY_NAME:
        raise ValueError(f"unknown ablation {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def fixed_pgd_steps(p: Profile) -> int:
    return int(round(statistics.mean(p.pgd_steps_choices)))


def variant_profile(p: Profile, a: Ablation) -> Profile:
    if not a.fixed_strengths:
        return p
    return p.replace(fgsm_eps_choices=(FIXED_FGSM_EPS,), pgd_steps_choices=(fixed_pgd_steps(p),))


def composition_order(p: Profile) -> list[str]:
    """Expert stage names in the order subsets take them: benign, then FGSM and PGD alternating."""
    names = expert_stage_names(p)
    fg = [n for n in names if n.startswith("fgsm-")]
    pg = [n for n in names if n.startswith("pgd-")]
    order = [n for n in names if n not in fg and n not in pg]
    for i in range(max(len(fg), len(pg))):
        order += fg[i:i + 1] + pg[i:i + 1]
    return order


def skip_reason(a: Ablation, p: Profile) -> str | None:
    """Why a variant does not apply to this profile (None if it does)."""
    total = p.n_experts
    if a.experts is not None:
        if a.experts > total:
            return f"needs {a.experts} experts, the profile has {total}"
        if a.experts == total:
            return f"identical to the reference ({total} experts)"
    if a.routing == "topk" and a.k >= (a.experts or total):
        return f"top-{a.k} of {a.experts or total} experts is the soft gate"
    if a.fixed_strengths and variant_profile(p, a) == p:
        return "the profile's attack strengths are already fixed"
    return None


# --------------------------------------------------------------- one variant --
class CommonSeedStage(Stage):
    """A stage named after its variant whose random draws are those of the run's mixture stage."""

    @property
    def sid(self) -> int:
        return zlib.crc32(b"mixture")


def build_variant(p: Profile, data, a: Ablation, expert_paths, seed: int) -> nn.Module:
    """A mixture of the given trained experts, wired as the variant says (gate untrained)."""
    kw = dict(model_kwargs(p, data), n_experts=len(expert_paths), image_size=data.shape[1],
              gate_hidden=p.gate_hidden)
    torch.manual_seed(seed_from(seed, 9001))       # the same gate initialisation as the run's mixture
    if a.routing == "topk":
        model = build_model("dwf_mixture_st", k=a.k, **kw)
    else:
        model = build_model("dwf_mixture", routing=a.routing, **kw)
    return load_experts_into(model, expert_paths)


# ------------------------------------------------------------------ driver --
def select_ablations(names=None) -> list[Ablation]:
    if names is None:
        return [a for a in ABLATIONS if a.default]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [get_ablation(n) for n in names]
