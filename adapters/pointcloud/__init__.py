"""3D point-cloud classification: PointNet/PointNet++, ModelNet40 and CGAL meshes, PointMixup/RSMix,
PointBA-I/O and 3DPC-BA attacks, ACC/ASR/LCR."""
from __future__ import annotations

import copy
from functools import partial
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from nftkit.adapter import Splits, register_adapter
from nftkit.config import DEFENSE_ONLY, StrictModel
from nftkit.errors import DataError
from nftkit.metrics import evaluate_classifier

from ..classification import SingleLabelAdapter, balanced_split, check_class_labels, samples_per_class

from . import attacks  # noqa: F401  register point-cloud attacks
from .augment import (Aim, point_mixup, random_clusters, random_rotate_scale_jitter, random_tilts,
                      reactive_directions, reactive_tilts, rsmix)
from .data import POINT_DATASETS, PointCloudDataset, load_point_dataset, read_off, sample_surface
from .models import POINT_MODELS, build_point_model

__all__ = ["POINT_DATASETS", "POINT_MODELS", "PointCloudAdapter", "PointCloudDataset", "build_point_model",
           "read_off", "sample_surface"]


class PointDataConfig(StrictModel):
    dataset: str = "cgal"
    root: Optional[str] = None
    num_points: int = Field(default=1024, ge=16)
    # the defender's clean set: class-balanced, held out of the training set (paper: 400 clouds)
    clean_size: int = Field(default=400, ge=1)
    train_limit: Optional[int] = Field(default=None, ge=1)
    test_limit: Optional[int] = Field(default=None, ge=1)
    views_per_mesh: int = Field(default=40, ge=2)  # cgal only
    # cgal only: off, every mesh keeps its own pose, as ModelNet40's aligned objects do (an orientation shows)
    random_heading: bool = True
    # augmentation ('basic' for training, 'mix' for NFT)
    # 'none': the mixed batch is the basic one (then only cluster_prob and tilt_prob change it)
    mix: Literal["pointmixup", "rsmix", "none"] = Field(default="pointmixup", json_schema_extra=DEFENSE_ONLY)
    mix_alpha: float = Field(default=1.0, gt=0, json_schema_extra=DEFENSE_ONLY)
    assignment: Literal["sinkhorn", "exact"] = Field(default="sinkhorn", json_schema_extra=DEFENSE_ONLY)
    # after mixing: the share of clouds given a random ball of points around the object (0 = off)
    cluster_prob: float = Field(default=0.0, ge=0, le=1, json_schema_extra=DEFENSE_ONLY)
    cluster_points: tuple[int, int] = Field(default=(16, 48), json_schema_extra=DEFENSE_ONLY)  # points per ball
    cluster_radius: tuple[float, float] = Field(default=(0.02, 0.1), json_schema_extra=DEFENSE_ONLY)
    # the ball's centre, from the origin: just outside the unit sphere that normalised objects fill
    cluster_distance: tuple[float, float] = Field(default=(1.0, 1.5), json_schema_extra=DEFENSE_ONLY)
    # the share of balls put near the places where a ball pulls the most clean clouds to one class under the
    # input model, found by trying aim_directions even directions before training (0 = every ball uniform)
    cluster_aim: float = Field(default=0.0, ge=0, le=1, json_schema_extra=DEFENSE_ONLY)
    aim_directions: int = Field(default=64, ge=1, json_schema_extra=DEFENSE_ONLY)
    # after mixing: the share of clouds tilted about a random horizontal axis by an angle from tilt_degrees
    tilt_prob: float = Field(default=0.0, ge=0, le=1, json_schema_extra=DEFENSE_ONLY)
    tilt_degrees: tuple[float, float] = Field(default=(15.0, 90.0), json_schema_extra=DEFENSE_ONLY)
    # the same for tilts: the share turning the up axis near where a tilt pulls the most clouds to one class
    tilt_aim: float = Field(default=0.0, ge=0, le=1, json_schema_extra=DEFENSE_ONLY)
    rotate: bool = True
    scale_low: float = Field(default=0.8, gt=0)
    scale_high: float = Field(default=1.25, gt=0)
    jitter: float = Field(default=0.01, ge=0)

    @field_validator("cluster_points", "cluster_radius", "cluster_distance", "tilt_degrees")
    @classmethod
    def _a_range(cls, value, info):
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"data.{info.field_name} is [low, high] with 0 <= low <= high, got {list(value)}")
        return value


class PointModelConfig(StrictModel):
    arch: str = "pointnet2_ssg"
    width: float = Field(default=1.0, gt=0)  # channel multiplier
    centres: Optional[list[int]] = None  # PointNet++ centres per sampled level (default 512, 128)


def _aim_at_most_pulled(directions: torch.Tensor, pulled: torch.Tensor, share: float) -> Aim:
    """Aim at the eighth of ``directions`` that pull the most clouds to one class; where none pulls any, stay uniform."""
    weights = pulled * (pulled >= pulled.quantile(0.875))
    return Aim(directions, weights if weights.sum() > 0 else torch.ones(len(pulled)), share)


@register_adapter("pointcloud")
class PointCloudAdapter(SingleLabelAdapter):
    """Single-label point-cloud classification; batches are ``(points B x N x 3, labels B)``."""

    DataConfig = PointDataConfig
    ModelConfig = PointModelConfig

    def __init__(self, num_classes: int, cfg: Optional[PointDataConfig] = None):
        self.num_classes = num_classes
        self.cfg = cfg or PointDataConfig()
        self.info: dict = {}
        self.ball_aim: Optional[Aim] = None  # set on the copy aimed() returns
        self.tilt_aim: Optional[Aim] = None

    # ---- engine-facing -------------------------------------------------------------------
    def augment(self, batch, kind, generator):
        points, labels = batch
        if kind == "none":
            return batch
        c = self.cfg
        points = random_rotate_scale_jitter(points, generator, c.rotate, (c.scale_low, c.scale_high), c.jitter)
        if kind == "basic":
            return points, labels
        targets = labels if labels.is_floating_point() else F.one_hot(labels, self.num_classes).float()
        if c.mix != "none":
            mix = rsmix if c.mix == "rsmix" else partial(point_mixup, assignment=c.assignment)
            points, targets = mix(points, targets, generator, c.mix_alpha)
        if c.cluster_prob == 0 and c.tilt_prob == 0:
            return points, targets
        changed = torch.zeros(len(points), dtype=torch.bool, device=points.device)
        if c.cluster_prob > 0:
            points, clustered = random_clusters(points, generator, c.cluster_prob, c.cluster_points,
                                                c.cluster_radius, c.cluster_distance, self.ball_aim)
            changed |= clustered
        if c.tilt_prob > 0:
            points, tilted = random_tilts(points, generator, c.tilt_prob, c.tilt_degrees, self.tilt_aim)
            changed |= tilted
        # the input model may answer 'target' on a ball or a tilt that hits its trigger: distil elsewhere
        return points, targets, ~changed

    def aimed(self, model, data, kind, device, generator):
        c = self.cfg
        balls, tilts = c.cluster_prob > 0 and c.cluster_aim > 0, c.tilt_prob > 0 and c.tilt_aim > 0
        if kind != "mix" or not (balls or tilts):  # balls and tilts are the defense's 'mix' augmentation only
            return self
        clouds = self.collate([data[i] for i in range(len(data))])[0].to(device)
        aimed = copy.copy(self)
        if balls:
            found = reactive_directions(model, clouds, c.aim_directions, round(sum(c.cluster_points) / 2),
                                        sum(c.cluster_radius) / 2, sum(c.cluster_distance) / 2, generator)
            aimed.ball_aim = _aim_at_most_pulled(*found, c.cluster_aim)
        if tilts:
            aimed.tilt_aim = _aim_at_most_pulled(*reactive_tilts(model, clouds, c.aim_directions, c.tilt_degrees),
                                                 c.tilt_aim)
        return aimed

    def few_shot(self, data, per_class, generator):
        picked, _ = balanced_split(self._labels(data), per_class, generator)
        return data.subset(picked) if isinstance(data, PointCloudDataset) else torch.utils.data.Subset(data, picked.tolist())

    def _labels(self, data: Dataset) -> torch.Tensor:
        if isinstance(data, PointCloudDataset):
            shapes = {tuple(data.points.shape[1:])}
            labels = data.targets
        else:
            items = [data[i] for i in range(len(data))]
            shapes = {tuple(torch.as_tensor(x).shape) for x, _ in items}
            labels = torch.tensor([int(y) for _, y in items])
        shape = next(iter(shapes))
        if len(shapes) > 1 or len(shape) != 2 or shape[1] != 3:
            raise DataError(f"clean clouds must all be N x 3 tensors of one size, got shapes {sorted(shapes)[:3]}; "
                            "resample them to data.num_points points")
        return labels

    def check_data(self, data):
        super().check_data(data)
        check_class_labels(self._labels(data), self.num_classes, "clouds")

    def samples_per_class(self, data):
        return samples_per_class(self._labels(data))

    # ---- experiment-facing ---------------------------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg, model_cfg):
        return cls(num_classes=0, cfg=data_cfg)  # num_classes is set from the data in load_data

    def load_data(self, cfg: PointDataConfig, seed: int) -> Splits:
        self.cfg = cfg
        train, test, names = load_point_dataset(cfg.dataset, cfg.root, cfg.num_points, seed,
                                                views_per_mesh=cfg.views_per_mesh, random_heading=cfg.random_heading)
        self.num_classes = len(names)
        g = torch.Generator().manual_seed(seed)
        per_class = max(1, cfg.clean_size // self.num_classes)
        clean_idx, rest = balanced_split(train.targets, per_class, g)
        if cfg.train_limit is not None:
            rest = rest[torch.randperm(len(rest), generator=g)[: cfg.train_limit]].sort().values
        if cfg.test_limit is not None:
            test = test.subset(torch.randperm(len(test), generator=g)[: cfg.test_limit].sort().values)
        self.info = {"num_classes": self.num_classes, "classes": names, "num_points": cfg.num_points,
                     "n_train": len(rest), "n_clean": len(clean_idx), "n_test": len(test), "clean_per_class": per_class}
        return Splits(train.subset(rest), train.subset(clean_idx), test, dict(self.info))

    def build_model(self, cfg: PointModelConfig) -> nn.Module:
        return build_point_model(cfg.arch, self.num_classes, cfg.width, cfg.centres)

    def evaluate(self, model, test, poisoned_test, attack, device, batch_size=256):
        return evaluate_classifier(model, test, poisoned_test, attack, device, self.num_classes, batch_size)
