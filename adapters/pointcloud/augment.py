"""Point-cloud augmentation, driven by an explicit generator so runs are reproducible.

'basic': random rotation about the up axis (y), anisotropic scaling and clipped jitter.
'mix': PointMixup (Chen et al., 2020) or RSMix (Lee et al., 2021), one ratio per batch, labels
mixed by the same ratio; then, if asked, random point clusters around the object (``random_clusters``)
and random tilts (``random_tilts``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from nftkit.errors import ConfigError

from .ops import square_distance


def _beta(generator: torch.Generator, alpha: float) -> float:
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _uniform(shape, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * (high - low) + low).to(device)


def random_rotate_scale_jitter(points: torch.Tensor, generator: torch.Generator, rotate: bool = True,
                               scale: tuple[float, float] = (0.8, 1.25), jitter: float = 0.01,
                               clip: float = 0.05) -> torch.Tensor:
    b = points.shape[0]
    if rotate:
        a = _uniform(b, 0.0, 2 * math.pi, generator, points.device)
        c, s = a.cos(), a.sin()
        zero, one = torch.zeros_like(a), torch.ones_like(a)
        rot = torch.stack([c, zero, s, zero, one, zero, -s, zero, c], -1).view(b, 3, 3)
        points = points @ rot.transpose(1, 2)
    points = points * _uniform((b, 1, 3), scale[0], scale[1], generator, points.device)
    if jitter > 0:
        noise = torch.randn(points.shape, generator=generator).to(points.device) * jitter
        points = points + noise.clamp(-clip, clip)
    return points


def insert_cluster(points: torch.Tensor, cluster: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Replace random points of each cloud (B, N, 3) by the cluster (K, 3), or by one cluster per cloud
    (B, K, 3): N stays the same."""
    b, n, _ = points.shape
    k = cluster.shape[-2]
    idx = torch.rand(b, n, generator=generator).argsort(1)[:, :k].to(points.device)
    out = points.clone()
    out.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, 3), cluster.to(points).expand(b, -1, -1))
    return out


def ball_points(k: int, radius, generator: torch.Generator, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """``k`` points uniform in a ball of ``radius`` (a number, or a tensor that broadcasts per ball) around
    the origin: (k, 3), or (*batch, k, 3) for one ball per leading index."""
    direction = F.normalize(torch.randn(*batch, k, 3, generator=generator), dim=-1)
    return direction * radius * torch.rand(*batch, k, 1, generator=generator) ** (1 / 3)


def random_clusters(points: torch.Tensor, generator: torch.Generator, prob: float, n_points: tuple[int, int],
                    radius: tuple[float, float], distance: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob`` per cloud, replace random points by a small ball at a random place around
    the object (centre at ``distance`` from the origin in a random direction), labels unchanged. A local
    cluster trigger (PointBA-I, 3DPC-BA) drives units that clean and mixed clouds never reach; random
    clusters reach them and teach that a cluster off the object carries no class. Returns the clouds and
    which of them (B bools) got a ball."""
    b, n, _ = points.shape
    k = min(n - 1, int(torch.randint(n_points[0], n_points[1] + 1, (1,), generator=generator)))
    centres = F.normalize(torch.randn(b, 1, 3, generator=generator), dim=-1) * _uniform((b, 1, 1), *distance, generator, "cpu")
    balls = ball_points(k, _uniform((b, 1, 1), *radius, generator, "cpu"), generator, batch=(b,))
    chosen = (torch.rand(b, generator=generator) < prob).to(points.device).view(b, 1, 1)
    return torch.where(chosen, insert_cluster(points, centres + balls, generator), points), chosen.view(b)


def random_tilts(points: torch.Tensor, generator: torch.Generator, prob: float,
                 degrees: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob`` per cloud, rotate it about a random horizontal axis by an angle drawn from
    ``degrees``, labels unchanged. An orientation trigger (PointBA-O) is a tilt that clean clouds never
    show; random tilts reach it and teach that a tilt carries no class. Returns the clouds and which of
    them (B bools) were tilted."""
    b = points.shape[0]
    heading = _uniform(b, 0.0, 2 * math.pi, generator, "cpu")
    angle = _uniform(b, math.radians(degrees[0]), math.radians(degrees[1]), generator, "cpu")
    # Rodrigues: R = I + sin(a) K + (1 - cos(a)) K^2, K the cross-product matrix of the axis (cos h, 0, sin h)
    hc, hs, zero = heading.cos(), heading.sin(), torch.zeros(b)
    k = torch.stack([zero, -hs, zero, hs, zero, -hc, zero, hc, zero], -1).view(b, 3, 3)
    s, c = angle.sin().view(b, 1, 1), angle.cos().view(b, 1, 1)
    rot = (torch.eye(3) + s * k + (1 - c) * k @ k).to(points)
    chosen = (torch.rand(b, generator=generator) < prob).to(points.device)
    return torch.where(chosen.view(b, 1, 1), points @ rot.transpose(1, 2), points), chosen


def sinkhorn_match(a: torch.Tensor, b: torch.Tensor, eps: float = 0.01, iters: int = 50) -> torch.Tensor:
    """For each point of ``a`` (B, N, 3), its partner in ``b`` (B, N, 3) under an entropic optimal
    transport plan with uniform marginals (barycentric projection). As ``eps`` -> 0 this tends to the
    exact earth mover's assignment that PointMixup interpolates along."""
    cost = square_distance(a, b).double()
    # scaling iterations on the kernel are matrix-vector products: far cheaper on CPU than log-domain
    # logsumexp; float64 keeps exp(-cost/eps) of unit-sphere clouds representable
    kernel = torch.exp(-cost / (eps * cost.mean((1, 2), keepdim=True).clamp_min(1e-12)))
    u = torch.ones_like(cost[..., 0])
    v = torch.ones_like(cost[:, 0])
    for _ in range(iters):
        u = 1.0 / (kernel @ v.unsqueeze(-1)).squeeze(-1).clamp_min(1e-300)
        v = 1.0 / (kernel.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1).clamp_min(1e-300)
    plan = kernel * v.unsqueeze(1)  # the row scaling u cancels in the barycentric projection
    plan = plan / plan.sum(2, keepdim=True).clamp_min(1e-300)
    return (plan @ b.double()).to(b.dtype)


def exact_match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The exact one-to-one assignment minimising total squared distance (Hungarian, via scipy)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ConfigError("data.assignment=exact needs scipy (pip install scipy), or use data.assignment=sinkhorn") from None
    cost = square_distance(a, b).detach().cpu().numpy()
    out = torch.empty_like(b)
    for i in range(len(cost)):
        rows, cols = linear_sum_assignment(cost[i])
        out[i, torch.as_tensor(rows, device=b.device)] = b[i, torch.as_tensor(cols, device=b.device)]
    return out


def point_mixup(points, targets, generator, alpha: float = 1.0, assignment: str = "sinkhorn"):
    """x = (1 - lam) a + lam * match(a, b): interpolate every point towards its assigned partner."""
    lam = _beta(generator, alpha)
    perm = torch.randperm(len(points), generator=generator).to(points.device)
    partner = points[perm]
    matched = exact_match(points, partner) if assignment == "exact" else sinkhorn_match(points, partner)
    return (1 - lam) * points + lam * matched, (1 - lam) * targets + lam * targets[perm]


def rsmix(points, targets, generator, alpha: float = 1.0):
    """Replace the k points nearest a random query point of each cloud by the k points nearest a random
    query point of its partner, moved rigidly onto the first query point; labels mix by k / N."""
    b, n, _ = points.shape
    k = min(n - 1, max(1, round(_beta(generator, alpha) * n)))
    perm = torch.randperm(b, generator=generator).to(points.device)
    partner = points[perm]
    rows = torch.arange(b, device=points.device)
    qa = points[rows, torch.randint(0, n, (b,), generator=generator).to(points.device)]
    qb = partner[rows, torch.randint(0, n, (b,), generator=generator).to(points.device)]
    near_a = square_distance(qa.unsqueeze(1), points)[:, 0].topk(k, largest=False).indices
    near_b = square_distance(qb.unsqueeze(1), partner)[:, 0].topk(k, largest=False).indices
    patch = torch.gather(partner, 1, near_b.unsqueeze(-1).expand(-1, -1, 3)) - qb.unsqueeze(1) + qa.unsqueeze(1)
    mixed = points.clone()
    mixed.scatter_(1, near_a.unsqueeze(-1).expand(-1, -1, 3), patch)
    lam = k / n
    return mixed, (1 - lam) * targets + lam * targets[perm]
