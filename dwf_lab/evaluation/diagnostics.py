"""Looking inside the mixture: its experts, its gate, and how attacks move between them.

- :func:`expert_accuracy`: each expert's own clean and robust (white-box PGD) accuracy;
- :func:`gate_weights`: the gate's weights w(x) in eval mode, batched;
- :func:`gate_statistics`: gate entropy, mean and top weight per expert, mixture and
  per-expert accuracy on clean, FGSM and PGD inputs (the attacks run against the whole mixture);
- :func:`transfer_matrix`: adversarial examples (FGSM or PGD) crafted on model i,
  evaluated on model j (e.g. the experts, the uniform average and the mixture);
- :func:`diagnose_mixture`: all of the above at once, as plain dicts and lists;
- :func:`predictions`, :func:`disagreement_matrix`, :func:`class_probabilities`:
  what models predict, how often two disagree, and softmax probabilities.

Every function leaves the train/eval mode of the models it is given as it found it.
The figures of these numbers live in :mod:`dwf_lab.reporting.figures`
(:func:`~dwf_lab.reporting.figures.transfer_heatmap`,
:func:`~dwf_lab.reporting.figures.weights_bar`,
:func:`~dwf_lab.reporting.figures.expert_accuracy_bar`).

What to look for: a gate that moves its weight when the input is attacked (the
entropy or the winning expert changes between clean and PGD inputs) is a gate an
attacker can steer; a transfer matrix with high off-diagonal accuracy means the
experts are diverse (an attack on one does not fool the others), a uniformly low
one means they share their adversarial examples, and then mixing them buys little.
"""
import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks.base import keep_state
from dwf_lab.attacks.gate import uniform_mixture
from dwf_lab.attacks.precision import compute_precision
from dwf_lab.core.config import SizedSettings
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.metrics import accuracy_pct, batched
from dwf_lab.mixture.moe import gate_entropy
from dwf_lab.training.stages import expert_kind


@dataclass
class DiagnosticSettings(SizedSettings):
    """Attack settings of the diagnostics: PGD (``eps``, ``alpha``, ``steps``, random
    start) and FGSM (``fgsm_eps``), on the first ``n_examples`` images (None = all), in
    ``precision`` (:func:`diagnose_mixture`; :mod:`dwf_lab.attacks.precision`)."""
    eps: float = attacks.PGD_EPS
    alpha: float = attacks.PGD_ALPHA
    steps: int = 20
    fgsm_eps: float = 0.03
    n_examples: int | None = 500
    batch_size: int = 500
    precision: str = "fp32"              # the attacks' arithmetic (dwf_lab.attacks.precision)
    SIZES: ClassVar[dict[str, dict]] = {"paper": {}, "laptop": dict(steps=10, n_examples=200),
                                        "smoke": dict(steps=5, n_examples=64, batch_size=256)}


def expert_names(mix: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    n = len(mix.experts)
    if names is not None:
        if len(names) != n or len(set(names)) != n:
            raise ValueError(f"need {n} distinct expert names, got {list(names)}")
        return list(names)
    return [f"expert {i}" for i in range(n)]


def _attack(model, x, y, s: DiagnosticSettings, seed: int, tag: int, attack: str = "pgd") -> torch.Tensor:
    """FGSM at ``s.fgsm_eps`` or PGD (random start, seeded per batch) at ``s.eps``, batched."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")
    def one(xb, yb, b):
        if attack == "fgsm":
            return attacks.fgsm(model, xb, yb, s.fgsm_eps, check=False)
        g = torch.Generator(xb.device).manual_seed(seed_from(seed, b, tag))
        return attacks.pgd(model, xb, yb, s.eps, s.alpha, s.steps, True, generator=g, check=False)
    return batched(one, x, y, s.batch_size)


def _prep(model, x, y, s, mixture: bool = True):
    if mixture and not isinstance(getattr(model, "experts", None), nn.ModuleList):
        raise TypeError("diagnostics need a mixture with an .experts list "
                        "(dwf_lab.mixture.moe.MixtureOfExperts)")
    x = attacks.check_inputs(x, s.eps, model)
    dev = next(model.parameters()).device
    if s.n_examples:
        x, y = x[:s.n_examples], y[:s.n_examples]
    return x.to(dev), y.to(dev)


# ------------------------------------------------------------ experts --
def expert_accuracy(mix: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    settings: DiagnosticSettings | None = None, names: Sequence[str] | None = None,
                    seed: int = 0) -> list[dict]:
    """Per expert: clean accuracy and accuracy under white-box PGD on that expert (percent)."""
    s = settings or DiagnosticSettings()
    x, y = _prep(mix, x, y, s)
    out = []
    for i, (name, f) in enumerate(zip(expert_names(mix, names), mix.experts)):
        out.append({"expert": name, "clean": accuracy_pct(f, x, y),
                    "pgd": accuracy_pct(f, _attack(f, x, y, s, seed, 500 + i), y)})
    out.append({"expert": "mixture", "clean": accuracy_pct(mix, x, y),
                "pgd": accuracy_pct(mix, _attack(mix, x, y, s, seed, 599), y)})
    return out


# --------------------------------------------------------------- gate --
@torch.no_grad()
def gate_weights(mixture: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The gate's weights w(x) (B, n_experts) in eval mode (Eq. 2), float32 on the CPU.

    Batched, without gradients; the mixture's train/eval mode is restored afterwards.
    """
    with keep_state([mixture]):
        mixture.eval()
        return torch.cat([mixture.gate_weights(x[i:i + batch_size]).float().cpu()
                          for i in range(0, len(x), batch_size)])


def gate_statistics(mix: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    settings: DiagnosticSettings | None = None, names: Sequence[str] | None = None,
                    seed: int = 0) -> dict:
    """How the gate spends its weight on clean, FGSM and PGD inputs (attacks against the whole mixture).

    Returns ``{"experts": names, "max_entropy": log n, "attacks": {"fgsm_eps", "pgd_eps",
    "pgd_steps"}, "inputs": {"clean"|"fgsm"|"pgd": {...}}, "rows": [...]}``. Per input kind:
    ``label`` (e.g. "PGD-10"), ``entropy`` / ``entropy_std`` (nats), ``mean_weights`` and
    ``top_share`` per expert (``top_share[i]``: fraction of images on which expert i has the
    largest weight), ``accuracy`` (mixture, %), ``expert_accuracy`` (each expert's own
    accuracy, %) and ``group_weight`` ({expert kind "benign"|"fgsm"|"pgd": summed mean
    weight}, kinds from :func:`~dwf_lab.training.stages.expert_kind`). ``rows``: a table,
    one row per input kind.
    """
    s = settings or DiagnosticSettings()
    x, y = _prep(mix, x, y, s)
    names = expert_names(mix, names)
    kinds = [expert_kind(n) for n in names]
    groups = [k for k in ("benign", "fgsm", "pgd") if k in kinds]
    groups += sorted(set(kinds) - set(groups))
    out = {"experts": names, "max_entropy": math.log(len(names)),
           "attacks": {"fgsm_eps": s.fgsm_eps, "pgd_eps": s.eps, "pgd_steps": s.steps},
           "inputs": {}, "rows": []}
    for inputs, label in (("clean", "clean"), ("fgsm", f"FGSM {s.fgsm_eps:.3f}"), ("pgd", f"PGD-{s.steps}")):
        xi = x if inputs == "clean" else _attack(mix, x, y, s, seed, 600, inputs)
        w = gate_weights(mix, xi, s.batch_size)
        ent, mean = gate_entropy(w), w.mean(0).tolist()
        top = torch.bincount(w.argmax(1), minlength=len(names)).float() / max(1, len(w))
        gw = {g: float(sum(m for m, k in zip(mean, kinds) if k == g)) for g in groups}
        st = out["inputs"][inputs] = {
            "label": label, "entropy": ent.mean().item(),
            "entropy_std": ent.std().item() if len(ent) > 1 else 0.0,
            "mean_weights": mean, "top_share": top.tolist(), "accuracy": accuracy_pct(mix, xi, y),
            "expert_accuracy": [accuracy_pct(f, xi, y) for f in mix.experts], "group_weight": gw}
        out["rows"].append({"inputs": label, "mixture acc %": st["accuracy"],
                            "gate entropy (nats)": st["entropy"],
                            **{f"weight on {g}": v for g, v in gw.items()}})
    return out


# ----------------------------------------------------------- transfer --
def transfer_matrix(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, attack: str = "pgd",
                    settings: DiagnosticSettings | None = None, seed: int = 0) -> np.ndarray:
    """(n, n) accuracy (%) of model j (column) on ``attack`` examples crafted on model i (row).

    ``attack``: "fgsm" (at ``settings.fgsm_eps``) or "pgd" (``eps``, ``alpha``, ``steps``).
    The diagonal is each model's white-box accuracy; off the diagonal, how well attacks
    transfer. Diverse models (what the paper hopes for) have off-diagonal accuracies well
    above the diagonal.
    """
    s = settings or DiagnosticSettings()
    x, y = _prep(next(iter(models.values())), x, y, s, mixture=False)
    m = np.zeros((len(models), len(models)))
    for i, src in enumerate(models.values()):
        x_adv = _attack(src, x, y, s, seed, 700 + i, attack)
        for j, tgt in enumerate(models.values()):
            m[i, j] = accuracy_pct(tgt, x_adv, y)
    return m


def diagnose_mixture(mix: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     settings: DiagnosticSettings | None = None, names: Sequence[str] | None = None,
                     seed: int = 0, uniform: bool = True) -> dict:
    """Expert accuracies, gate statistics and the PGD transfer matrix (experts, uniform average, mixture)."""
    s = settings or DiagnosticSettings()
    names = expert_names(mix, names)
    # keep_state: the uniform average shares the experts: leave their modes as found
    with keep_state([mix]), compute_precision(mix, s.precision):
        models = dict(zip(names, mix.experts))
        if uniform:
            models["uniform average"] = uniform_mixture(mix)
        models["mixture"] = mix
        tm = transfer_matrix(models, x, y, "pgd", s, seed)
        return {"settings": s.to_dict(), "experts": expert_accuracy(mix, x, y, s, names, seed),
                "gate": gate_statistics(mix, x, y, s, names, seed),
                "transfer": {"sources": list(models), "targets": list(models), "accuracy": tm.tolist()}}


# ===================================================== diversity of experts ==
@torch.no_grad()
def eval_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's fp32 logits on ``x`` (on the CPU), in eval mode, in batches; its mode is restored."""
    dev = next(model.parameters()).device
    with keep_state([model]):
        model.eval()
        return torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])


def predictions(models: Mapping[str, nn.Module], x: torch.Tensor, batch_size: int = 512) -> dict:
    """``{name: predicted classes (CPU)}`` in eval mode; each model's mode is restored."""
    return {name: eval_logits(m, x, batch_size).argmax(1) for name, m in models.items()}


def logit_scale(models: Mapping[str, nn.Module], x: torch.Tensor, batch_size: int = 512) -> dict[str, dict]:
    """How loudly each model speaks: ``{name: {"logit_std", "top_prob"}}`` on ``x`` in eval mode.

    ``logit_std`` is the mean over images of the standard deviation of a model's logits across
    classes; ``top_prob`` the mean of its largest softmax probability. A plain average of logits
    gives each model a say in proportion to ``logit_std``: one confident, non-robust member can
    outvote several robust ones whose logits are flat. Each model's mode is restored.
    """
    out = {}
    for name, m in models.items():
        z = eval_logits(m, x, batch_size)
        out[name] = {"logit_std": float(z.std(dim=1).mean()), "top_prob": float(z.softmax(1).max(1).values.mean())}
    return out


def disagreement_matrix(models: Mapping[str, nn.Module], x: torch.Tensor) -> np.ndarray:
    """% of inputs on which each pair of models predicts different classes."""
    preds = predictions(models, x)
    names = list(models)
    m = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            m[i, j] = 100.0 * float((preds[a] != preds[b]).float().mean())
    return m


# ====================================================== adversarial example ==
@torch.no_grad()
def class_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities (B, classes) in eval mode; the model's mode is restored."""
    with keep_state([model]):
        model.eval()
        return torch.softmax(model(x).float(), dim=1)
