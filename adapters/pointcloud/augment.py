"""Point-cloud augmentation, driven by an explicit generator so runs are reproducible.

'basic': random rotation about the up axis (y), anisotropic scaling and clipped jitter.
'mix': PointMixup (Chen et al., 2020) or RSMix (Lee et al., 2021), one ratio per batch, labels
mixed by the same ratio; then, if asked, random point clusters around the object (``random_clusters``)
and random tilts (``random_tilts``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

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
                    radius: tuple[float, float], distance: tuple[float, float],
                    aim: Optional[Aim] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob`` per cloud, replace random points by a small ball at a random place around
    the object (centre at ``distance`` from the origin in a random direction, or for ``aim.share`` of the
    balls near one of ``aim``'s directions), labels unchanged. A local cluster trigger (PointBA-I, 3DPC-BA)
    drives units that clean and mixed clouds never reach; random clusters reach them and teach that a
    cluster off the object carries no class. Returns the clouds and which of them (B bools) got a ball."""
    b, n, _ = points.shape
    k = min(n - 1, int(torch.randint(n_points[0], n_points[1] + 1, (1,), generator=generator)))
    directions = torch.randn(b, 3, generator=generator)
    if aim is not None:
        directions = aim.apply(directions, generator)
    centres = F.normalize(directions, dim=-1).view(b, 1, 3) * _uniform((b, 1, 1), *distance, generator, "cpu")
    balls = ball_points(k, _uniform((b, 1, 1), *radius, generator, "cpu"), generator, batch=(b,))
    chosen = (torch.rand(b, generator=generator) < prob).to(points.device).view(b, 1, 1)
    return torch.where(chosen, insert_cluster(points, centres + balls, generator), points), chosen.view(b)


@dataclass(frozen=True)
class Aim:
    """Where random balls go, or where random tilts turn the up axis, more often: ``directions`` (M, 3)
    unit vectors drawn by ``weights`` (M), each jittered by ``spread``, for a ``share`` of the clouds (the
    rest keep their uniform draw)."""

    directions: torch.Tensor
    weights: torch.Tensor
    share: float
    spread: float = 0.2

    def apply(self, uniform: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = len(uniform)
        picked = self.directions[torch.multinomial(self.weights, b, replacement=True, generator=generator)]
        aimed = F.normalize(picked + self.spread * torch.randn(b, 3, generator=generator), dim=-1)
        return torch.where(torch.rand(b, 1, generator=generator) < self.share, aimed, uniform)


def sphere_directions(count: int) -> torch.Tensor:
    """``count`` nearly even unit vectors (a Fibonacci lattice)."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / count
    r, phi = (1 - y**2).sqrt(), i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * phi.cos(), y, r * phi.sin()], -1).float()


def _pulled_to_one_class(model, clouds: torch.Tensor, changed_clouds) -> torch.Tensor:
    """For each changed copy of ``clouds``, the largest share of them that ``model`` moves to one and the
    same other class. A trigger sends almost every cloud to the target; other changes move few answers,
    and not all to one class."""
    was = model.eval()(clouds).argmax(-1)
    pulled = []
    for changed in changed_clouds:
        now = model(changed).argmax(-1)
        pulled.append(int(torch.bincount(now[now != was], minlength=1).max()) / len(clouds))
    return torch.tensor(pulled)


@torch.no_grad()
def reactive_directions(model, clouds: torch.Tensor, count: int, n_points: int, radius: float, distance: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` even directions, and for each how many ``clouds`` a ball of ``n_points`` (``radius``) put
    ``distance`` from the origin that way pulls to one class under ``model`` (:func:`_pulled_to_one_class`)."""
    directions = sphere_directions(count)
    ball = ball_points(min(n_points, clouds.shape[1] - 1), radius, generator)
    return directions, _pulled_to_one_class(
        model, clouds, (insert_cluster(clouds, d * distance + ball, generator) for d in directions))


@torch.no_grad()
def reactive_tilts(model, clouds: torch.Tensor, count: int, degrees: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The even directions (of ``count`` on the sphere) that a tilt of ``degrees`` can turn the up axis to,
    and for each how many ``clouds`` that tilt pulls to one class under ``model``."""
    directions = sphere_directions(count)
    tilt = torch.rad2deg(torch.acos(directions[:, 1].clamp(-1, 1)))
    directions = directions[(tilt >= degrees[0]) & (tilt <= degrees[1])]
    rot = tilt_matrices(directions).to(clouds)
    return directions, _pulled_to_one_class(model, clouds, (clouds @ r.T for r in rot))


def tilt_matrices(up_to: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) about a horizontal axis that turn the up axis (y) to the unit vectors ``up_to`` (B, 3)."""
    heading = torch.atan2(-up_to[:, 0], up_to[:, 2])
    angle = torch.acos(up_to[:, 1].clamp(-1, 1))
    # Rodrigues: R = I + sin(a) K + (1 - cos(a)) K^2, K the cross-product matrix of the axis (cos h, 0, sin h)
    hc, hs, zero = heading.cos(), heading.sin(), torch.zeros_like(heading)
    k = torch.stack([zero, -hs, zero, hs, zero, -hc, zero, hc, zero], -1).view(-1, 3, 3)
    s, c = angle.sin().view(-1, 1, 1), angle.cos().view(-1, 1, 1)
    return torch.eye(3) + s * k + (1 - c) * k @ k


def random_tilts(points: torch.Tensor, generator: torch.Generator, prob: float, degrees: tuple[float, float],
                 aim: Optional[Aim] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob`` per cloud, rotate it about a random horizontal axis by an angle drawn from
    ``degrees`` (or, for ``aim.share`` of them, so that the up axis turns near one of ``aim``'s directions),
    labels unchanged. An orientation trigger (PointBA-O) is a tilt that clean clouds never show; random
    tilts reach it and teach that a tilt carries no class. Returns the clouds and which of them (B bools)
    were tilted."""
    b = points.shape[0]
    heading = _uniform(b, 0.0, 2 * math.pi, generator, "cpu")
    angle = _uniform(b, math.radians(degrees[0]), math.radians(degrees[1]), generator, "cpu")
    # where the up axis goes: a heading h' = h + 90 degrees from the axis, the angle a from the vertical
    up_to = torch.stack([-angle.sin() * heading.sin(), angle.cos(), angle.sin() * heading.cos()], -1)
    if aim is not None:
        up_to = aim.apply(up_to, generator)
    rot = tilt_matrices(up_to).to(points)
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
