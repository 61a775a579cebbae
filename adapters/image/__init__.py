"""Image classification: models, datasets, attacks, augmentation, ACC/ASR/LCR."""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset

from nftkit.adapter import Splits, register_adapter
from nftkit.config import DEFENSE_ONLY, StrictModel
from nftkit.errors import DataError
from nftkit.metrics import evaluate_classifier

from ..classification import SingleLabelAdapter, balanced_split, check_class_labels, cutmix, mixup, samples_per_class

from . import attacks, zoo  # noqa: F401  register image attacks and datasets
from .augment import random_crop_flip
from .data import ImageTensorDataset, load_image_dataset, read_user_images
from .models import IMAGE_MODELS, build_image_model

__all__ = ["IMAGE_MODELS", "ImageClassificationAdapter", "ImageTensorDataset", "build_image_model"]


class ImageDataConfig(StrictModel):
    dataset: str = "fashion_mnist"
    root: Optional[str] = None
    clean_fraction: float = Field(default=0.01, gt=0, lt=1)  # of the training set, held out, class-balanced
    clean_per_class: Optional[int] = Field(default=None, ge=1)  # overrides clean_fraction (1 = one-shot)
    train_limit: Optional[int] = Field(default=None, ge=1)  # random subset of the training set (CPU runs)
    test_limit: Optional[int] = Field(default=None, ge=1)
    # NFT's "mix" augmentation; mixup_or_cutmix draws one of the two per batch, with equal odds
    mix: Literal["mixup", "cutmix", "mixup_or_cutmix"] = Field(default="mixup", json_schema_extra=DEFENSE_ONLY)
    mix_alpha: float = Field(default=1.0, gt=0, json_schema_extra=DEFENSE_ONLY)  # lambda ~ Beta(a, a)
    # mix each image with one of its own class: the blend stays, the mixed targets (MixUp's calibration pull) go
    mix_partner: Literal["any", "same_class"] = Field(default="any", json_schema_extra=DEFENSE_ONLY)


class ImageModelConfig(StrictModel):
    arch: str = "cnn"
    width: Optional[int] = Field(default=None, ge=1)


@register_adapter("image")
class ImageClassificationAdapter(SingleLabelAdapter):
    """Single-label image classification; batches are ``(images B x C x H x W, labels B)``."""

    DataConfig = ImageDataConfig
    ModelConfig = ImageModelConfig

    def __init__(self, num_classes: int, crop_padding: Optional[int] = None, flip: bool = True, mix_alpha: float = 1.0,
                 mix: str = "mixup", mix_partner: str = "any"):
        self.num_classes = num_classes
        self.crop_padding = crop_padding
        self.flip = flip
        self.mix_alpha = mix_alpha
        self.mix = mix
        self.mix_partner = mix_partner
        self.info: dict = {}

    # ---- engine-facing -------------------------------------------------------------------
    def augment(self, batch, kind, generator):
        images, labels = batch
        if kind == "none":
            return batch
        pad = self.crop_padding if self.crop_padding is not None else max(1, images.shape[-1] // 8)
        images = random_crop_flip(images, generator, pad, self.flip)
        if kind == "basic":
            return images, labels
        targets = labels if labels.is_floating_point() else F.one_hot(labels, self.num_classes).float()
        either = self.mix == "mixup_or_cutmix"
        use_cutmix = self.mix == "cutmix" or (either and torch.rand(1, generator=generator).item() < 0.5)
        return (cutmix if use_cutmix else mixup)(images, targets, generator, self.mix_alpha,
                                                 same_class=self.mix_partner == "same_class")

    def _scan(self, data: Dataset) -> torch.Tensor:
        targets = getattr(data, "targets", None)
        if isinstance(targets, torch.Tensor) and len(targets) == len(data):
            labels = targets
            first_shape = tuple(data[0][0].shape) if len(data) else None
            shapes = {first_shape}
        else:
            items = [data[i] for i in range(len(data))]
            shapes = {tuple(torch.as_tensor(x).shape) for x, _ in items}
            labels = torch.tensor([int(y) for _, y in items])
        if len(shapes) > 1:
            raise DataError(f"the clean images have different shapes {sorted(shapes)[:3]}; resize them to one C x H x W size")
        shape = next(iter(shapes))
        if len(shape) != 3:
            raise DataError(f"clean images must be C x H x W tensors, got shape {shape}; add the channel dimension")
        return labels

    def check_data(self, data):
        super().check_data(data)
        check_class_labels(self._scan(data), self.num_classes, "samples")

    def few_shot(self, data, per_class, generator):
        picked, _ = balanced_split(self._scan(data), per_class, generator)
        return torch.utils.data.Subset(data, picked.tolist())

    def samples_per_class(self, data):
        return samples_per_class(self._scan(data))

    # ---- experiment-facing ---------------------------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg, model_cfg):
        return cls(num_classes=0, mix_alpha=data_cfg.mix_alpha, mix=data_cfg.mix,
                   mix_partner=data_cfg.mix_partner)  # num_classes: set in load_data

    def load_data(self, cfg: ImageDataConfig, seed: int) -> Splits:
        train, test, names = load_image_dataset(cfg.dataset, cfg.root)
        g = torch.Generator().manual_seed(seed)
        self.num_classes = len(names)
        n_train = len(train)
        per_class = cfg.clean_per_class or max(1, round(cfg.clean_fraction * n_train / self.num_classes))
        clean_idx, rest = balanced_split(train.targets, per_class, g)
        if cfg.train_limit is not None:
            rest = rest[torch.randperm(len(rest), generator=g)[: cfg.train_limit]].sort().values
        if cfg.test_limit is not None:
            test = test.subset(torch.randperm(len(test), generator=g)[: cfg.test_limit].sort().values)
        self.info = {"num_classes": self.num_classes, "image_shape": tuple(train.images.shape[1:]), "classes": names,
                     "n_train": len(rest), "n_clean": len(clean_idx), "n_test": len(test), "clean_per_class": per_class}
        return Splits(train.subset(rest), train.subset(clean_idx), test, dict(self.info))

    @classmethod
    def from_user_data(cls, path, num_classes=None):
        data, names = read_user_images(path)
        n = num_classes or len(names)
        adapter = cls(num_classes=n)
        adapter.info = {"num_classes": n, "image_shape": tuple(data.images.shape[1:]), "classes": names, "n_clean": len(data)}
        return adapter, data, dict(adapter.info)

    def load_user_data(self, path):
        return read_user_images(path)[0]

    def build_model(self, cfg: ImageModelConfig) -> nn.Module:
        return build_image_model(cfg.arch, self.num_classes, self.info["image_shape"][0], cfg.width)

    def evaluate(self, model, test, poisoned_test, attack, device, batch_size=256):
        return evaluate_classifier(model, test, poisoned_test, attack, device, self.num_classes, batch_size)
