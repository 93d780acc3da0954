"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L-inf.

The fourth attack of AutoAttack's standard suite, written here because the
library this kit uses for the others (ART) has no FAB. FAB is a
*minimum-norm* attack: instead of maximising a loss inside a fixed eps-ball it
walks to the closest point of the decision boundary it can find, then keeps
the smallest adversarial perturbation seen. For the eps-ball threat model an
example counts as broken when FAB's perturbation is no larger than eps.

One iteration, at the current point ``x1`` and for a target class ``t``:

1. linearise ``g(z) = f_y(z) - f_t(z)`` (true-class logit minus target logit)
   at ``x1``: ``g(z) ~ g(x1) + w . (z - x1)`` with ``w = grad g(x1)``;
2. project onto that hyperplane ``{z : g(z) = 0}`` inside the image box
   [0, 1], in L-inf, twice: from ``x1`` (step ``d1``) and from the original
   image ``x0`` (step ``d2``) -- :func:`project_linf`;
3. step to a convex combination, biased toward the original image:
   ``x1 <- (1 - a) (x1 + eta d1) + a (x0 + eta d2)`` with
   ``a = min(|d1| / (|d1| + |d2|), alpha_max)`` and a small overshoot ``eta``;
4. if ``x1`` is misclassified, remember it if its distance to ``x0`` is the
   smallest so far and step back toward ``x0`` (``x1 <- x0 + beta (x1 - x0)``)
   so the search continues *closer* to the original image.

For a linear classifier step 2 from ``x0`` is already the exact answer, which
is what the tests check (the minimal L-inf distance of a hyperplane is
``|g(x0)| / ||w||_1``). As in AutoAttack, the targets are the ``n_target_classes``
highest-scoring wrong classes of the clean image, each target runs on the
images that every earlier one failed on, and success means misclassification
(any wrong class), not reaching the target.
"""
import torch
import torch.nn as nn

from dwf_lab.attacks.base import attack_mode, check_batch_size, check_inputs
from dwf_lab.core.config import PGD_EPS


def project_linf(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest L-inf step ``d`` with ``w . (p + d) = b`` and ``p + d`` in [0, 1], per row.

    ``points`` and ``w`` are ``(n, dim)``, ``b`` is ``(n,)``. Moving coordinate
    ``i`` by ``delta`` in the direction ``sign(w_i c)`` (``c = b - w . p``, the
    distance still to cover) changes ``w . p`` by ``|w_i| delta``, until the
    box stops that coordinate. So the covered distance
    ``G(delta) = sum_i |w_i| min(delta, room_i)`` is piecewise linear and
    increasing in the common step size ``delta``; sorting the rooms gives its
    breakpoints and the exact ``delta`` with ``G(delta) = |c|``. When even the
    whole box cannot reach the hyperplane the step goes as far as the box allows
    (the direction of steepest progress), as AutoAttack's projection does.
    """
    c = b - (w * points).sum(1)                            # what w . d must equal
    direction = torch.sign(w) * torch.sign(c).unsqueeze(1)
    room = torch.where(direction > 0, 1.0 - points, points)   # how far each coordinate may move
    a = w.abs()
    target = c.abs()
    r, order = room.sort(dim=1)
    a_sorted = a.gather(1, order)
    cum_ar = (a_sorted * r).cumsum(1)                      # sum_{j <= k} a_j r_j
    tail = a_sorted.sum(1, keepdim=True) - a_sorted.cumsum(1)   # sum_{j > k} a_j
    covered = cum_ar + r * tail                            # G at breakpoint k
    # first breakpoint where G reaches the target; delta lies on the segment before it
    reached = covered >= target.unsqueeze(1)
    k = torch.where(reached.any(1), reached.float().argmax(1), torch.full_like(target, r.shape[1] - 1).long())
    prev_cum = torch.where(k > 0, cum_ar.gather(1, (k - 1).clamp_min(0).unsqueeze(1)).squeeze(1),
                           torch.zeros_like(target))
    prev_tail = torch.where(k > 0, tail.gather(1, (k - 1).clamp_min(0).unsqueeze(1)).squeeze(1),
                            a_sorted.sum(1))
    delta = (target - prev_cum) / prev_tail.clamp_min(1e-12)
    delta = torch.where(reached.any(1), delta, r[:, -1])   # unreachable: the whole box
    d = direction * torch.minimum(delta.unsqueeze(1), room)
    return torch.where((target > 0).unsqueeze(1), d, torch.zeros_like(d))


def _margin_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor):
    """``g = f_y - f_t`` at x and its input gradient (the model's parameters untouched)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(x)
        g = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, t[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(g.sum(), x)
    return g.detach(), grad.detach()


def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                 n_iter: int = 100, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run toward ``target``: ``(x_best, dist)``, the closest misclassified points found.

    ``dist`` is ``||x_best - x||_inf`` (``inf`` where no misclassified point
    was found; there ``x_best`` is ``x``). ``start`` (default ``x``) is the
    first iterate, e.g. a random point of the ball for a restart. Call inside
    :func:`dwf_lab.attacks.base.attack_mode`.
    """
    n = len(x)
    x0 = x.detach().reshape(n, -1)
    x1 = (x if start is None else start).detach().clone().reshape(n, -1)
    best = x0.clone()
    dist = torch.full((n,), float("inf"), device=x.device)
    shape = x.shape
    for _ in range(n_iter):
        g, grad = _margin_and_grad(model, x1.reshape(shape), y, target)
        w = grad.reshape(n, -1)
        b = (w * x1).sum(1) - g                   # the linearised boundary: w . z = b
        d = project_linf(torch.cat([x1, x0]), torch.cat([w, w]), torch.cat([b, b]))
        d1, d2 = d[:n], d[n:]
        n1 = d1.abs().amax(1).clamp_min(1e-8)
        n2 = d2.abs().amax(1).clamp_min(1e-8)
        alpha = (n1 / (n1 + n2)).clamp(0.0, alpha_max).unsqueeze(1)
        x1 = ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(0.0, 1.0)
        with torch.no_grad():
            fooled = model(x1.reshape(shape)).argmax(1) != y
        if fooled.any():
            t = (x1 - x0).abs().amax(1)
            better = fooled & (t < dist)
            best[better] = x1[better]
            dist[better] = t[better]
            x1[fooled] = x0[fooled] + beta * (x1[fooled] - x0[fooled])
    return best.reshape(shape), dist


def fab_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
          n_iter: int = 100, n_target_classes: int = 9, restarts: int = 1, alpha_max: float = 0.1,
          eta: float = 1.05, beta: float = 0.9, batch_size: int = 256, seed: int | None = 0,
          return_details: bool = False):
    """FAB-T at radius eps: per-example correctness (``True`` = still correct).

    An example is broken when some target's run found a misclassified point at
    L-inf distance <= eps from it; that point (clipped to the ball against float
    round-off) is checked again by the model. Restarts after the first start at
    a random point of the ball of radius ``min(best distance, eps) / 2`` (as
    AutoAttack does). With ``return_details=True`` also returns the smallest
    distance found per example (``inf``: none) and the adversarial images.
    """
    x = check_inputs(x, eps, model)
    check_batch_size(batch_size)
    device = next(model.parameters()).device
    x, y = x.detach().to(device), y.detach().to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed or 0))
    correct = torch.zeros(len(x), dtype=torch.bool, device=device)
    dist_all = torch.full((len(x),), float("inf"), device=device)
    x_adv = x.clone()
    with attack_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            with torch.no_grad():
                logits = model(xb)
            ok = logits.argmax(1) == yb
            others = logits.clone()
            others[torch.arange(len(yb)), yb] = -float("inf")
            k = max(0, min(int(n_target_classes), logits.shape[1] - 1))
            targets = others.topk(k, dim=1).indices
            dist = torch.full((len(xb),), float("inf"), device=device)
            adv = xb.clone()
            for j in range(k):
                for r in range(max(1, int(restarts))):
                    idx = (ok & (dist > eps)).nonzero().flatten()
                    if len(idx) == 0:
                        break
                    start = None
                    if r > 0:
                        u = torch.rand(xb[idx].shape, generator=gen, device=device) * 2 - 1
                        u = u / u.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (u.dim() - 1))
                        radius = dist[idx].clamp(max=eps).view(-1, *[1] * (u.dim() - 1))
                        start = (xb[idx] + 0.5 * radius * u).clamp(0, 1)
                    found, d = fab_targeted(model, xb[idx], yb[idx], targets[idx, j], n_iter=n_iter,
                                            alpha_max=alpha_max, eta=eta, beta=beta, start=start)
                    better = d < dist[idx]
                    adv[idx[better]] = found[better]
                    dist[idx[better]] = d[better]
            broken = ok & (dist <= eps + 1e-6)
            delta = (adv - xb).clamp(-eps, eps)
            adv = torch.where(broken.view(-1, *[1] * (xb.dim() - 1)), (xb + delta).clamp(0, 1), xb)
            with torch.no_grad():
                correct[i:i + batch_size] = model(adv).argmax(1) == yb
            dist_all[i:i + batch_size] = torch.where(ok, dist, torch.zeros_like(dist))
            x_adv[i:i + batch_size] = adv
    return (correct, {"dist": dist_all, "x_adv": x_adv}) if return_details else correct
