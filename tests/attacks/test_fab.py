"""FAB-T (our own; ART has none): the projection is exact and minimal, FAB finds the
analytic minimal distance on linear models, and on a trained network it breaks images
inside the ball and never outside it."""
import torch
import torch.nn as nn
from tinymodels import tiny_trained

from dwf_lab.attacks.fab import fab_t, fab_targeted, project_linf


def covered(points, w, delta):
    """w . d for the best step of common size delta (the box clips each coordinate)."""
    direction = torch.sign(w)
    room = torch.where(direction > 0, 1 - points, points)
    return (w.abs() * torch.minimum(torch.full_like(room, delta), room)).sum()


def test_projection_reaches_the_hyperplane_with_the_smallest_step():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(64, 50, generator=g)
    w = torch.randn(64, 50, generator=g)
    w[:, :5] = 0                                   # coordinates that do not matter stay put
    b = (w * p).sum(1) + torch.randn(64, generator=g)
    d = project_linf(p, w, b)
    inside = (p + d >= -1e-6).all() and (p + d <= 1 + 1e-6).all()
    assert inside
    assert (d[:, :5] == 0).all()
    reach = (w * (p + d)).sum(1)
    reachable = torch.stack([covered(p[i], w[i] * torch.sign(b[i] - (w[i] * p[i]).sum()), 1.0)
                             for i in range(64)]) >= (b - (w * p).sum(1)).abs()
    assert reachable.sum() > 32, "the test needs mostly reachable hyperplanes"
    assert torch.allclose(reach[reachable], b[reachable], atol=1e-4)
    # minimal: a step 1 % smaller cannot reach the hyperplane (bisection on the same G)
    for i in reachable.nonzero().flatten().tolist():
        c = b[i] - (w[i] * p[i]).sum()
        delta = d[i].abs().max()
        assert covered(p[i], w[i] * torch.sign(c), 0.99 * delta) < c.abs()
    # unreachable: move every coordinate as far as the box allows, in the right direction
    for i in (~reachable).nonzero().flatten().tolist():
        c = b[i] - (w[i] * p[i]).sum()
        assert (w[i] * d[i] * torch.sign(c) >= 0).all()


class Linear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.copy_(b)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_fab_finds_the_minimal_distance_of_a_linear_classifier():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(2, 48, generator=g), torch.zeros(2)
    model = Linear(w, b).eval()
    x = 0.4 + 0.2 * torch.rand(32, 3, 4, 4, generator=g)      # far from the box edges
    y = model(x).argmax(1)
    other = 1 - y
    best, dist = fab_targeted(model, x, y, other, n_iter=20)
    # the closest point of {z : (w_y - w_t) . z + b_y - b_t = 0} in L-inf: |margin| / ||w_y - w_t||_1
    margin = (model(x).gather(1, y[:, None]) - model(x).gather(1, other[:, None])).squeeze(1)
    analytic = margin / (w[0] - w[1]).abs().sum()
    assert torch.isfinite(dist).all()
    assert (dist >= analytic - 1e-5).all(), "nothing closer than the analytic minimum exists"
    assert (dist <= analytic * 1.06).all(), (dist / analytic).max()
    assert (model(best).argmax(1) != y).all()


def test_fab_t_breaks_images_inside_the_ball_and_never_outside():
    model, data = tiny_trained(0)
    model.eval()                               # the cached model may come back in another test's mode
    x, y = data.x_test[:64], data.y_test[:64]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    for p in model.parameters():
        p.grad = None
    correct, det = fab_t(model, x, y, eps=4 / 255, n_iter=15, n_target_classes=2, return_details=True)
    assert correct.dtype == torch.bool and correct.shape == (64,)
    assert not (correct & ~clean).any()
    assert correct.sum() < clean.sum() - 5, "FAB-T should break some images of a non-robust model"
    assert ((det["x_adv"] - x).abs().amax() <= 4 / 255 + 1e-6)
    broken = clean & ~correct
    assert (det["dist"][broken] <= 4 / 255 + 1e-6).all()
    # distances are eps-independent: a smaller ball breaks exactly the closer images (same run)
    small = fab_t(model, x, y, eps=1 / 255, n_iter=15, n_target_classes=2)
    assert (small | ~correct).all(), "broken at 1/255 implies broken at 4/255"
    assert small.sum() > correct.sum()
    assert all(p.grad is None for p in model.parameters()), "attacks leave parameter gradients alone"
    assert not model.training
    model.train()                              # and the mode is given back either way
    fab_t(model, x[:4], y[:4], eps=4 / 255, n_iter=2, n_target_classes=1)
    assert model.training
    model.eval()


def test_fab_t_at_zero_eps_and_restarts():
    model, data = tiny_trained(0)
    model.eval()
    x, y = data.x_test[:16], data.y_test[:16]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert torch.equal(fab_t(model, x, y, eps=0.0, n_iter=5, n_target_classes=1), clean)
    two = fab_t(model, x, y, eps=4 / 255, n_iter=5, n_target_classes=1, restarts=2)
    one = fab_t(model, x, y, eps=4 / 255, n_iter=5, n_target_classes=1, restarts=1)
    assert two.sum() <= one.sum(), "a restart only adds chances to find a closer point"
