"""PointNet++ sampling and grouping in plain torch (no CUDA extension, no pytorch3d).

Semantics follow the reference CUDA kernels of PointNet++: farthest point sampling starts at index 0,
ball query returns the first ``nsample`` points (in index order) inside the radius and pads with the
first one found, so results match checkpoints trained with the original ops.
"""
from __future__ import annotations

import torch


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances, (B, N, 3) x (B, M, 3) -> (B, N, M)."""
    # the expanded form is exact enough for unit-scale clouds and avoids a B x N x M x 3 tensor
    d = (a * a).sum(-1, keepdim=True) - 2 * a @ b.transpose(1, 2) + (b * b).sum(-1).unsqueeze(1)
    return d.clamp_min_(0)


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather per-batch rows: points (B, N, C), idx (B, ...) -> (B, ..., C)."""
    batch = idx.shape[0]
    flat = idx.reshape(batch, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Indices (B, npoint) of a farthest-point sampling of xyz (B, N, 3), starting at point 0."""
    batch, n, _ = xyz.shape
    if npoint > n:
        raise ValueError(f"cannot sample {npoint} centres from {n} points")
    idx = torch.zeros(batch, npoint, dtype=torch.long, device=xyz.device)
    nearest = torch.full((batch, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    rows = torch.arange(batch, device=xyz.device)
    for i in range(npoint):
        idx[:, i] = farthest
        centre = xyz[rows, farthest].unsqueeze(1)
        nearest = torch.minimum(nearest, ((xyz - centre) ** 2).sum(-1))
        farthest = nearest.argmax(-1)
    return idx


@torch.no_grad()
def ball_query(radius: float, nsample: int, xyz: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """For each centre (B, S, 3), indices (B, S, nsample) of the first points of xyz within ``radius``.

    A centre is always one of the points, so at least one index is found; missing slots repeat the first.
    """
    batch, n, _ = xyz.shape
    sqr = square_distance(centres, xyz)
    idx = torch.arange(n, device=xyz.device).expand(batch, centres.shape[1], n).clone()
    idx[sqr >= radius ** 2] = n  # strict "<" as in the CUDA kernel
    k = min(nsample, n)
    # the k smallest indices are the first k points in index order: topk avoids a full sort
    idx = idx.topk(k, dim=-1, largest=False, sorted=True).values
    if k < nsample:
        idx = torch.cat([idx, idx.new_full((*idx.shape[:2], nsample - k), n)], -1)
    first = idx[..., :1].expand_as(idx)
    return torch.where(idx == n, first, idx)


def sample_and_group(npoint: int, radius: float, nsample: int, xyz: torch.Tensor, features: torch.Tensor | None):
    """Centres by FPS, neighbourhoods by ball query; returns centres (B, S, 3) and grouped inputs
    (B, S, nsample, 3 + C) holding neighbour coordinates relative to their centre, then features."""
    centres = index_points(xyz, farthest_point_sample(xyz, npoint))
    idx = ball_query(radius, nsample, xyz, centres)
    grouped = index_points(xyz, idx) - centres.unsqueeze(2)
    if features is not None:
        grouped = torch.cat([grouped, index_points(features, idx)], -1)
    return centres, grouped


def group_all(xyz: torch.Tensor, features: torch.Tensor | None):
    """The last set-abstraction level: one group holding every point, centred at the origin."""
    grouped = xyz.unsqueeze(1)
    if features is not None:
        grouped = torch.cat([grouped, features.unsqueeze(1)], -1)
    return xyz.new_zeros(xyz.shape[0], 1, 3), grouped
