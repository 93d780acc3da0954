"""The stages of a run, in training order, and how a selection names them.

A :class:`Stage` has a name (its files in the run directory, e.g. ``fgsm-2``), a kind (its
recipe, :mod:`dwf_lab.training.recipes`), epochs, a batch size and its row in the report.
:func:`plan_stages` lists a profile's stages: the benign expert, the FGSM experts
(Algorithm 1), the PGD experts (Algorithm 2), the FGSM-AT / PGD-AT baselines, the optional
gate-only phase and the end-to-end mixture (Algorithm 3); :func:`baseline_stages` adds the
MoE peers (SoE, ADVMoE). :func:`select_stages` reads selections such as ``"experts"``,
``"fgsm"`` or ``"pgd-2"``.
"""
import zlib
from dataclasses import dataclass

from dwf_lab.core.config import Profile
from dwf_lab.training.recipes import RECIPES, kinds


@dataclass
class Stage:
    name: str        # e.g. "fgsm-2": file names in the run directory
    kind: str        # a registered recipe (dwf_lab.training.recipes.RECIPES)
    epochs: int
    batch_size: int  # clean images per step (the mixture trains on 3x this)
    row: str         # the label in the report tables

    @property
    def sid(self) -> int:
        """A stable number for this stage, mixed into its seeds."""
        return zlib.crc32(self.name.encode())


def plan_stages(p: Profile) -> list[Stage]:
    """Every stage of a run, in training order."""
    benign_epochs = p.expert_epochs if p.benign_epochs is None else p.benign_epochs
    st = [Stage("benign", "benign", benign_epochs, p.expert_batch, "ResNet-18")]
    st += [Stage(f"fgsm-{i}", "fgsm", p.expert_epochs, p.expert_batch, f"FGSM expert {i}")
           for i in range(1, p.n_fgsm_experts + 1)]
    st += [Stage(f"pgd-{i}", "pgd", p.expert_epochs, p.expert_batch, f"PGD expert {i}")
           for i in range(1, p.n_pgd_experts + 1)]
    if p.baselines:
        st += [Stage("fgsm-at", "fgsm_at", p.baseline_epochs, p.expert_batch, "ResNet-18 (FGSM-AT)"),
               Stage("pgd-at", "pgd_at", p.baseline_epochs, p.expert_batch, "ResNet-18 (PGD-AT)")]
    if p.gate_epochs > 0:
        st.append(Stage("gate", "gate", p.gate_epochs, p.mixture_batch, "DWF (gate only)"))
    st.append(Stage("mixture", "mixture", p.mixture_epochs, p.mixture_batch, "DWF"))
    return st


EXPERT_KINDS = kinds("experts")
GROUPS = ("experts", "baselines", "mixture")


def of_kind(stages, *kinds_: str) -> list[Stage]:
    """The stages of these kinds, in order."""
    return [s for s in stages if s.kind in kinds_]


def expert_stage_names(p: Profile) -> list[str]:
    return [s.name for s in of_kind(plan_stages(p), *EXPERT_KINDS)]


def select_stages(p: Profile, which: str | None) -> list[Stage]:
    """'all', 'experts', 'baselines', 'mixture', a kind ('fgsm') or a stage name ('pgd-2'), comma-separated."""
    stages = plan_stages(p)
    if not which or which == "all":
        return stages
    picked = []
    for token in which.split(","):
        token = token.strip()
        group = of_kind(stages, *kinds(token)) if token in GROUPS else None
        if group is None:
            group = [s for s in stages if token in (s.name, s.kind)]
        if not group:
            raise ValueError(f"no stage {token!r} in this profile; stages: "
                             f"{', '.join(s.name for s in stages)} (or all/experts/baselines/mixture)")
        picked += [s for s in group if s not in picked]
    return [s for s in stages if s in picked]   # keep training order


# ================================================================ pipeline ==
BASELINE_ROWS = {"soe": "SoE", "advmoe": "ADVMoE", "uniform-ensemble": "Uniform ensemble"}


def baseline_stages(p):
    return [Stage("soe", "soe", p.baseline_epochs, p.expert_batch, "SoE"),
            Stage("advmoe", "advmoe", p.baseline_epochs, p.expert_batch, "ADVMoE")]


def stages_done(run, seed: int) -> list:
    """The run's finished models (a gate-only phase is part of its mixture, not a model of its own)."""
    return [st for st in plan_stages(run.profile) if not RECIPES[st.kind].gate_only and run.is_done(seed, st.name)]


def expert_kind(name: str) -> str:
    """'fgsm-2' -> 'fgsm', 'pgd-1' -> 'pgd', 'benign' -> 'benign'."""
    return name.split("-")[0]
