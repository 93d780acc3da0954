"""Is a gradient-based evaluation of this model valid at all? Two checks on a few test images,
run before any attack (after AutoAttack's ``checks.py``):

- **probabilities**: every output row lies in [0, 1] and sums to 1 -- the forward ends in a
  softmax. The attacks' cross-entropy then takes a log-softmax of probabilities; its gradients
  all but vanish (a saturated softmax: exactly), every gradient attack stalls, and the model
  looks robust when it is not (the most common mistake in the field's issue trackers);
- **saturated logits**: the cross-entropy's input gradient is exactly zero on a share of the
  correctly classified images -- logits so large (or a forward so flat) that the softmax
  saturates in float32 and the gradient underflows, so gradient attacks cannot move those images.

:func:`output_problems` returns what is wrong (empty: nothing found); :func:`validity` the
``{"valid", "reasons"}`` that goes into an evaluation record and makes its rows and the report's
headline say "not a valid evaluation". A model that outputs probabilities is refused outright by
``evaluate --model`` / ``--checkpoint`` (:func:`check_logits`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

PROBE = 64                 # test images the checks look at
SUM_TOLERANCE = 1e-3       # |row sum - 1| below this, on every row: probabilities
ZERO_GRADIENT_SHARE = 0.1  # zero input gradients on at least this share of the right images: saturated
NOT_VALID = "not a valid evaluation"


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):   # SoE's (logits, scores) and the like: the logits come first
        out = out[0]
    return out.float()


def output_problems(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probe: int = PROBE) -> list[str]:
    """What makes a gradient-based evaluation of ``model`` invalid, checked on the first ``probe``
    images of ``x`` (in [0, 1], on the model's device or moved there): each a sentence. The model's
    mode and its parameters' ``requires_grad`` are restored."""
    x, y = x[:probe], y[:probe]
    if len(x) == 0:
        return []
    params = list(model.parameters())
    dev = params[0].device if params else x.device
    x, y = x.to(dev).float(), y.to(dev)
    was_training, flags = model.training, [(p, p.requires_grad) for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            out = _outputs(model, x)
        problems = []
        if out.dim() == 2 and out.shape[1] > 1 and torch.isfinite(out).all():
            sums = out.sum(1)
            if float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6 \
                    and float((sums - 1).abs().max()) < SUM_TOLERANCE:
                problems.append(
                    "its outputs are probabilities (every row is in [0, 1] and sums to 1), not logits: the "
                    "attacks' cross-entropy gradients vanish through the softmax, so the attacks fail and "
                    "robust accuracy is overstated; return the logits (drop the final softmax)")
            right = out.argmax(1) == y
            if int(right.sum()) > 0:
                xr = x[right].detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(_outputs(model, xr), y[right], reduction="sum")
                    g = torch.autograd.grad(loss, xr, allow_unused=True)[0] if loss.requires_grad else None
                # no gradient at all (the output does not depend on the input): zero everywhere
                zero = (g.flatten(1) == 0).all(1) if g is not None else torch.ones(len(xr), dtype=torch.bool)
                n0, n = int(zero.sum()), len(xr)
                if n0 and n0 >= ZERO_GRADIENT_SHARE * n and not problems:
                    problems.append(
                        f"the cross-entropy's gradient is exactly zero on {n0} of the {n} correctly classified "
                        f"images checked (logits so large that the softmax saturates, or a forward without "
                        "gradients): gradient attacks cannot move those images, so robust accuracy is "
                        "overstated; scale the logits down (e.g. divide by a temperature) or return the "
                        "unsaturated logits")
        return problems
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def validity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probe: int = PROBE) -> dict:
    """``{"valid": True}``, or ``{"valid": False, "reasons": [...]}`` (:func:`output_problems`):
    what an evaluation record carries, so that its rows and the report say "not a valid evaluation"."""
    problems = output_problems(model, x, y, probe)
    return {"valid": False, "reasons": problems} if problems else {"valid": True}


def invalid_reason(rec: dict) -> str | None:
    """Why a stored evaluation record is not a valid evaluation (its ``validity``), or None."""
    v = rec.get("validity") if isinstance(rec, dict) else None
    if isinstance(v, dict) and v.get("valid") is False:
        reasons = [str(r) for r in v.get("reasons") or []] or ["its model failed the output checks"]
        return "; ".join(reasons)
    return None


def check_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> dict:
    """For a model from outside the kit: a ValueError (one line, nothing written) when it outputs
    probabilities; else its :func:`validity` (a saturated one is evaluated, and flagged)."""
    v = validity(model, x, y)
    probs = [r for r in v.get("reasons", []) if r.startswith("its outputs are probabilities")]
    if probs:
        raise ValueError(f"{name}: {NOT_VALID}: {probs[0]}. Nothing was evaluated or written")
    return v
