"""Point-cloud classifiers: PointNet and PointNet++ (single- and multi-scale grouping).

Inputs are (B, N, 3) clouds. Every shared MLP is a 1x1 Conv + BatchNorm, so the engine puts NFT
masks on the BatchNorm gammas without any point-cloud-specific rule.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from nftkit.registry import Registry

from .ops import group_all, sample_and_group

POINT_MODELS: Registry = Registry("point-cloud model")


def _c(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class SharedMLP(nn.Module):
    """1x1 convolutions with BatchNorm and ReLU over (B, C, ...) inputs."""

    def __init__(self, in_channels: int, channels: Sequence[int], dims: int = 2):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for out in channels:
            self.convs.append(conv(in_channels, out, 1))
            self.norms.append(norm(out))
            in_channels = out

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x)))
        return x


class SetAbstraction(nn.Module):
    """One PointNet++ level: sample centres, group neighbourhoods at one or more radii, PointNet each."""

    def __init__(self, npoint: Optional[int], radii: Sequence[float], nsamples: Sequence[int], in_channels: int,
                 mlps: Sequence[Sequence[int]]):
        super().__init__()
        self.npoint, self.radii, self.nsamples = npoint, list(radii), list(nsamples)
        self.branches = nn.ModuleList(SharedMLP(in_channels + 3, mlp) for mlp in mlps)
        self.out_channels = sum(mlp[-1] for mlp in mlps)

    def forward(self, xyz: torch.Tensor, features: Optional[torch.Tensor]):
        if self.npoint is None:
            centres, grouped = group_all(xyz, features)
            return centres, self.branches[0](grouped.permute(0, 3, 2, 1)).amax(2).transpose(1, 2)
        outs = []
        for radius, nsample, branch in zip(self.radii, self.nsamples, self.branches):
            centres, grouped = sample_and_group(self.npoint, radius, nsample, xyz, features)
            # (B, S, K, C) -> (B, C, K, S): pool over the K neighbours
            outs.append(branch(grouped.permute(0, 3, 2, 1)).amax(2))
        return centres, torch.cat(outs, 1).transpose(1, 2)


def _head(in_channels: int, num_classes: int, width: float, dropout: float) -> nn.Sequential:
    h1, h2 = _c(512, width), _c(256, width)
    return nn.Sequential(nn.Linear(in_channels, h1), nn.BatchNorm1d(h1), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(h2, num_classes))


class PointNet2(nn.Module):
    def __init__(self, levels: list[dict], num_classes: int, width: float = 1.0, dropout: float = 0.4):
        super().__init__()
        self.levels = nn.ModuleList()
        channels = 0
        for spec in levels:
            mlps = [[_c(c, width) for c in mlp] for mlp in spec["mlps"]]
            level = SetAbstraction(spec.get("npoint"), spec.get("radii", [0.0]), spec.get("nsamples", [0]), channels, mlps)
            self.levels.append(level)
            channels = level.out_channels
        self.head = _head(channels, num_classes, width, dropout)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xyz, features = points[..., :3].contiguous(), None
        for level in self.levels:
            xyz, features = level(xyz, features)
        return self.head(features.flatten(1))


class PointNet(nn.Module):
    """PointNet without the input/feature transform nets: shared MLP, max pool, MLP head."""

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.3):
        super().__init__()
        self.features = SharedMLP(3, [_c(c, width) for c in (64, 64, 64, 128, 1024)], dims=1)
        self.head = _head(_c(1024, width), num_classes, width, dropout)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(points[..., :3].transpose(1, 2)).amax(-1))


def _with_centres(levels: list[dict], centres: Optional[Sequence[int]]) -> list[dict]:
    sampled = [lv for lv in levels if lv.get("npoint")]
    if centres is None:
        return levels
    if len(centres) != len(sampled):
        from nftkit.errors import ConfigError

        raise ConfigError(f"model.centres needs {len(sampled)} values (one per sampled level), got {list(centres)}")
    it = iter(centres)
    return [{**lv, "npoint": next(it)} if lv.get("npoint") else lv for lv in levels]


SSG = [
    dict(npoint=512, radii=[0.2], nsamples=[32], mlps=[[64, 64, 128]]),
    dict(npoint=128, radii=[0.4], nsamples=[64], mlps=[[128, 128, 256]]),
    dict(mlps=[[256, 512, 1024]]),
]
MSG = [
    dict(npoint=512, radii=[0.1, 0.2, 0.4], nsamples=[16, 32, 128], mlps=[[32, 32, 64], [64, 64, 128], [64, 96, 128]]),
    dict(npoint=128, radii=[0.2, 0.4, 0.8], nsamples=[32, 64, 128],
         mlps=[[64, 64, 128], [128, 128, 256], [128, 128, 256]]),
    dict(mlps=[[256, 512, 1024]]),
]


@POINT_MODELS.register("pointnet")
def pointnet(num_classes: int, width: float = 1.0, centres=None) -> nn.Module:
    return PointNet(num_classes, width)


@POINT_MODELS.register("pointnet2_ssg")
def pointnet2_ssg(num_classes: int, width: float = 1.0, centres=None) -> nn.Module:
    return PointNet2(_with_centres(SSG, centres), num_classes, width)


@POINT_MODELS.register("pointnet2_msg")
def pointnet2_msg(num_classes: int, width: float = 1.0, centres=None) -> nn.Module:
    return PointNet2(_with_centres(MSG, centres), num_classes, width)


def build_point_model(arch: str, num_classes: int, width: float = 1.0, centres: Optional[Sequence[int]] = None) -> nn.Module:
    return POINT_MODELS.get(arch)(num_classes, width, centres)
