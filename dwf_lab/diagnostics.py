"""Looking inside the mixture: its experts, its gate, and how attacks move between them.

- :func:`expert_accuracy`: each expert's own clean and robust (white-box PGD) accuracy;
- :func:`gate_statistics`: gate entropy and mean weight per expert on clean,
  FGSM and PGD inputs (the attacks run against the whole mixture);
- :func:`transfer_matrix`: adversarial examples crafted on model i, evaluated on
  model j (the experts, the uniform average and the mixture);
- :func:`diagnose_mixture`: all of the above at once, as plain dicts and lists;
- plotly helpers: :func:`transfer_heatmap`, :func:`weights_bar`, :func:`expert_accuracy_bar`.

What to look for: a gate that moves its weight when the input is attacked (the
entropy or the winning expert changes between clean and PGD inputs) is a gate an
attacker can steer; a transfer matrix with high off-diagonal accuracy means the
experts are diverse (an attack on one does not fool the others), a uniformly low
one means they share their adversarial examples, and then mixing them buys little.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.data import seed_from
from dwf_lab.moe import gate_entropy

TEMPLATE = "plotly_white"


@dataclass
class DiagnosticSettings:
    eps: float = attacks.PGD_EPS
    alpha: float = attacks.PGD_ALPHA
    steps: int = 20
    fgsm_eps: float = 0.03
    n_examples: int | None = 500
    batch_size: int = 500

    @classmethod
    def smoke(cls, **kw) -> "DiagnosticSettings":
        return replace(cls(steps=5, n_examples=64, batch_size=256), **kw)

    @classmethod
    def laptop(cls, **kw) -> "DiagnosticSettings":
        return replace(cls(steps=10, n_examples=200), **kw)

    @classmethod
    def from_profile(cls, p, **kw) -> "DiagnosticSettings":
        make = {"smoke": cls.smoke, "paper": cls}.get(getattr(p, "name", ""), cls.laptop)
        return replace(make(eps=p.pgd_eps, batch_size=p.eval_batch), **kw)

    def to_dict(self) -> dict:
        return asdict(self)


def expert_names(mix: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    n = len(mix.experts)
    if names is not None:
        if len(names) != n:
            raise ValueError(f"{len(names)} names for {n} experts")
        return list(names)
    return [f"expert {i}" for i in range(n)]


def _batches(x, y, bs):
    for i in range(0, len(x), bs):
        yield i // bs, x[i:i + bs], y[i:i + bs]


def _pgd(model, x, y, s: DiagnosticSettings, seed: int, tag: int) -> torch.Tensor:
    out = []
    for b, xb, yb in _batches(x, y, s.batch_size):
        g = torch.Generator(xb.device).manual_seed(seed_from(seed, b, tag))
        out.append(attacks.pgd(model, xb, yb, s.eps, s.alpha, s.steps, True, generator=g, check=False))
    return torch.cat(out)


def _acc(model, x, y) -> float:
    return 100.0 * attacks.accuracy(model, x, y)


def _prep(mix, x, y, s):
    if not isinstance(getattr(mix, "experts", None), nn.ModuleList):
        raise TypeError("diagnostics need a mixture with an .experts list (dwf_lab.moe.MixtureOfExperts)")
    attacks.check_inputs(x, s.eps)
    dev = next(mix.parameters()).device
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
        out.append({"expert": name, "clean": _acc(f, x, y),
                    "pgd": _acc(f, _pgd(f, x, y, s, seed, 500 + i), y)})
    out.append({"expert": "mixture", "clean": _acc(mix, x, y),
                "pgd": _acc(mix, _pgd(mix, x, y, s, seed, 599), y)})
    return out


# --------------------------------------------------------------- gate --
@torch.no_grad()
def _weights(mix, x, bs) -> torch.Tensor:
    was = mix.training
    mix.eval()
    try:
        return torch.cat([mix.gate_weights(x[i:i + bs]).float().cpu() for i in range(0, len(x), bs)])
    finally:
        mix.train(was)


def gate_statistics(mix: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    settings: DiagnosticSettings | None = None, names: Sequence[str] | None = None,
                    seed: int = 0) -> dict:
    """Gate entropy and weights on clean, FGSM and PGD inputs (attacks against the whole mixture).

    Returns ``{"experts": names, "max_entropy": log n, "inputs": {kind: {"entropy",
    "entropy_std", "mean_weights", "top_share", "accuracy"}}}`` where ``top_share[i]``
    is the fraction of images on which expert i has the largest weight.
    """
    s = settings or DiagnosticSettings()
    x, y = _prep(mix, x, y, s)
    names = expert_names(mix, names)
    inputs = {"clean": x}
    inputs["fgsm"] = torch.cat([attacks.fgsm(mix, xb, yb, s.fgsm_eps, check=False)
                                for _, xb, yb in _batches(x, y, s.batch_size)])
    inputs["pgd"] = _pgd(mix, x, y, s, seed, 600)
    out = {"experts": names, "max_entropy": math.log(len(names)),
           "attacks": {"fgsm_eps": s.fgsm_eps, "pgd_eps": s.eps, "pgd_steps": s.steps}, "inputs": {}}
    for kind, xi in inputs.items():
        w = _weights(mix, xi, s.batch_size)
        ent = gate_entropy(w)
        top = torch.bincount(w.argmax(1), minlength=len(names)).float() / max(1, len(w))
        out["inputs"][kind] = {"entropy": ent.mean().item(), "entropy_std": ent.std().item() if len(ent) > 1
                               else 0.0, "mean_weights": w.mean(0).tolist(), "top_share": top.tolist(),
                               "accuracy": _acc(mix, xi, y)}
    return out


# ----------------------------------------------------------- transfer --
def transfer_matrix(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                    settings: DiagnosticSettings | None = None, seed: int = 0) -> torch.Tensor:
    """(n, n) accuracy (percent) of model j (column) on PGD examples crafted on model i (row).

    The diagonal is each model's white-box robust accuracy.
    """
    s = settings or DiagnosticSettings()
    attacks.check_inputs(x, s.eps)
    dev = next(models[0].parameters()).device
    if s.n_examples:
        x, y = x[:s.n_examples], y[:s.n_examples]
    x, y = x.to(dev), y.to(dev)
    m = torch.zeros(len(models), len(models))
    for i, src in enumerate(models):
        x_adv = _pgd(src, x, y, s, seed, 700 + i)
        for j, tgt in enumerate(models):
            m[i, j] = _acc(tgt, x_adv, y)
    return m


def diagnose_mixture(mix: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     settings: DiagnosticSettings | None = None, names: Sequence[str] | None = None,
                     seed: int = 0, uniform: bool = True) -> dict:
    """Expert accuracies, gate statistics and the transfer matrix (experts, uniform average, mixture)."""
    from dwf_lab.adaptive import _keep_state, uniform_mixture
    s = settings or DiagnosticSettings()
    names = expert_names(mix, names)
    with _keep_state([mix]):   # the uniform average shares the experts: leave their modes as found
        models, labels = list(mix.experts), list(names)
        if uniform:
            models.append(uniform_mixture(mix))
            labels.append("uniform average")
        models.append(mix)
        labels.append("mixture")
        tm = transfer_matrix(models, x, y, s, seed)
        return {"settings": s.to_dict(), "experts": expert_accuracy(mix, x, y, s, names, seed),
                "gate": gate_statistics(mix, x, y, s, names, seed),
                "transfer": {"sources": labels, "targets": labels, "accuracy": tm.tolist()}}


# ------------------------------------------------------------- figures --
def transfer_heatmap(matrix, names: Sequence[str], title: str | None = None):
    """Heatmap: row = model the attack was crafted on, column = model evaluated (accuracy %)."""
    import plotly.graph_objects as go
    z = matrix.tolist() if hasattr(matrix, "tolist") else [list(r) for r in matrix]
    fig = go.Figure(go.Heatmap(z=z, x=list(names), y=list(names), zmin=0, zmax=100, colorscale="Viridis",
                               text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar={"title": "accuracy %"},
                               hovertemplate="crafted on %{y}<br>evaluated on %{x}<br>%{z:.1f}%<extra></extra>"))
    fig.update_layout(title=title or "Transfer of PGD examples (accuracy %, diagonal = white-box)",
                      xaxis_title="evaluated on", yaxis_title="crafted on", yaxis_autorange="reversed",
                      height=max(350, 45 * len(names) + 150), width=max(450, 55 * len(names) + 250),
                      template=TEMPLATE)
    return fig


def weights_bar(gate_stats: dict, title: str | None = None):
    """Grouped bars: the gate's mean weight per expert on clean, FGSM and PGD inputs."""
    import plotly.graph_objects as go
    names = gate_stats["experts"]
    fig = go.Figure()
    for kind, st in gate_stats["inputs"].items():
        fig.add_bar(name=f"{kind} (entropy {st['entropy']:.2f})", x=names, y=st["mean_weights"])
    fig.update_layout(barmode="group", yaxis_title="mean gate weight", xaxis_title="expert",
                      title=title or f"Gate weights by input (max entropy log n = "
                                     f"{gate_stats['max_entropy']:.2f})", height=380, template=TEMPLATE)
    return fig


def expert_accuracy_bar(rows: list[dict], title: str | None = None):
    """Clean and PGD accuracy of each expert and of the mixture."""
    import plotly.graph_objects as go
    names = [r["expert"] for r in rows]
    fig = go.Figure()
    fig.add_bar(name="clean", x=names, y=[r["clean"] for r in rows])
    fig.add_bar(name="PGD (white-box on itself)", x=names, y=[r["pgd"] for r in rows])
    fig.update_layout(barmode="group", yaxis_title="accuracy %", yaxis_range=[0, 100], height=380,
                      title=title or "Each expert alone, and the mixture", template=TEMPLATE)
    return fig
