"""Multi-label image classification (the papers' "object detection" setting): ML-Decoder on ResNets,
Pascal VOC / MS-COCO / embedded Fashion-MNIST mosaics, the clean-image backdoor, mAP and ASR.

Batches are ``(images B x 3 x H x W in [0, 1], multi-hot targets B x C float)``.
"""
from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
import torch.nn as nn
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from nftkit.adapter import Adapter, Splits, register_adapter
from nftkit.adapters.classification import mixup
from nftkit.adapters.image.augment import random_crop_flip
from nftkit.config import DEFENSE_ONLY, StrictModel
from nftkit.errors import DataError

from . import attacks  # noqa: F401  registers multilabel/clean_image
from .attacks import CleanImageBackdoor
from .data import DATASETS, MultiLabelImages, random_split, read_dataset
from .metrics import asymmetric_loss, attack_success_rate, bce_loss, mean_average_precision
from .models import BACKBONES, GroupFC, MLDecoder, MultiLabelNet, build_multilabel_model
from .mosaic import ensure_mosaics

__all__ = ["BACKBONES", "CleanImageBackdoor", "GroupFC", "MLDecoder", "MultiLabelAdapter", "MultiLabelImages",
           "MultiLabelNet", "build_multilabel_model", "mean_average_precision"]


class MultiLabelDataConfig(StrictModel):
    dataset: Literal["fmnist_mosaic", "voc2007", "voc2012", "coco2014", "coco2017"] = "fmnist_mosaic"
    root: Optional[str] = None
    train_split: Optional[str] = None  # defaults per dataset (VOC07 trainval/test, VOC12 train/val, COCO train/val)
    test_split: Optional[str] = None
    image_size: Optional[int] = Field(default=None, ge=8)  # resize to a square; None = 448 (mosaics: as stored)
    preload: Optional[bool] = None  # decode every image into memory once; None = only for fmnist_mosaic
    include_difficult: bool = False  # VOC objects marked difficult count as present
    clean_fraction: float = Field(default=0.05, gt=0, lt=1)  # of the training images, held out for the defender
    train_limit: Optional[int] = Field(default=None, ge=1)
    test_limit: Optional[int] = Field(default=None, ge=1)
    eval_workers: int = Field(default=0, ge=0)
    # the embedded mosaics
    mosaic_train: int = Field(default=6000, ge=10)
    mosaic_test: int = Field(default=2000, ge=10)
    mosaic_max_objects: int = Field(default=4, ge=1)
    mosaic_grid: int = Field(default=2, ge=1)
    mosaic_seed: int = 0
    fmnist_root: Optional[str] = None


class MultiLabelModelConfig(StrictModel):
    backbone: str = "resnet_small"  # resnet_small | resnet18 | resnet34 | resnet50 | resnet101
    width: Optional[int] = Field(default=None, ge=1)  # resnet_small base width
    backbone_weights: Optional[str] = None  # local torchvision ResNet state_dict (safetensors or plain tensors)
    decoder_dim: int = Field(default=768, ge=1)
    heads: int = Field(default=8, ge=1)
    ffn_dim: int = Field(default=2048, ge=1)
    queries: Optional[int] = Field(default=None, ge=1)  # < classes = group decoding; None = min(classes, 100)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    learn_queries: bool = True
    loss: Literal["bce", "asl"] = "bce"
    # the loss the defense purifies with (None: ``loss``, the victim's); the victim's training loss is the
    # attacker's choice, this one the defender's. focal: BCE with both terms focused by (1 - p_true)^gamma
    defense_loss: Optional[Literal["bce", "asl", "focal"]] = Field(default=None, json_schema_extra=DEFENSE_ONLY)
    focal_gamma: float = Field(default=2.0, ge=0, json_schema_extra=DEFENSE_ONLY)
    asl_gamma_neg: float = Field(default=4.0, ge=0)
    asl_gamma_pos: float = Field(default=0.0, ge=0)
    asl_clip: float = Field(default=0.05, ge=0, lt=1)
    crop_padding: Optional[int] = Field(default=None, ge=0)  # None = image side / 8
    flip: bool = True
    mix_alpha: float = Field(default=1.0, gt=0, json_schema_extra=DEFENSE_ONLY)


@register_adapter("multilabel")
class MultiLabelAdapter(Adapter):
    DataConfig = MultiLabelDataConfig
    ModelConfig = MultiLabelModelConfig

    def __init__(self, num_classes: int, model_cfg: Optional[MultiLabelModelConfig] = None):
        self.num_classes = num_classes
        self.cfg = model_cfg or MultiLabelModelConfig()
        self.eval_workers = 0
        self.info: dict = {}
        self.defending = False  # True on the copy for_defense() returns

    @property
    def objective(self) -> str:
        return self.cfg.defense_loss if self.defending else self.cfg.loss

    def for_defense(self) -> "MultiLabelAdapter":
        if self.cfg.defense_loss in (None, self.cfg.loss):
            return self
        defender = copy.copy(self)
        defender.defending = True
        return defender

    # ---- engine-facing -------------------------------------------------------------------
    def augment(self, batch, kind, generator):
        images, targets = batch
        if kind == "none":
            return batch
        pad = self.cfg.crop_padding if self.cfg.crop_padding is not None else max(1, images.shape[-1] // 8)
        images = random_crop_flip(images, generator, pad, self.cfg.flip)
        if kind == "basic":
            return images, targets
        # MixUp: the mixed image holds both label sets, each weighted by its share
        return mixup(images, targets.float(), generator, self.cfg.mix_alpha)

    def forward(self, model, batch):
        return model(batch[0])

    def correct_predictions(self, output, batch):
        return (output > 0) == (batch[1] > 0.5)  # one decision per label

    def _objective(self, logits, targets, reduction="mean"):
        cfg = self.cfg
        if self.objective == "asl":
            return asymmetric_loss(logits, targets, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, reduction=reduction)
        if self.objective == "focal":  # the asymmetric loss with one focusing power and no margin
            return asymmetric_loss(logits, targets, cfg.focal_gamma, cfg.focal_gamma, 0.0, reduction=reduction)
        return bce_loss(logits, targets, reduction=reduction)

    def loss(self, model, batch):
        return self._objective(self.forward(model, batch), batch[1])

    def distillation_loss(self, output, reference, batch, temperature):
        # one Bernoulli KL per label decision (cross-entropy to the reference's probabilities minus their entropy)
        t = temperature
        target = torch.sigmoid(reference / t)
        return (bce_loss(output / t, target) - bce_loss(reference / t, target)) * t * t

    def sample_losses(self, model, batch):
        return self._objective(self.forward(model, batch), batch[1], reduction="none")

    def few_shot(self, data, per_class, generator):
        """Images in random order, each kept while it brings a category still short of ``per_class``
        positives (an image counts for every category it holds)."""
        labels = self._labels(data).bool()
        need = torch.full((labels.shape[1],), per_class)
        need[labels.sum(0) == 0] = 0
        picked = []
        for i in torch.randperm(len(labels), generator=generator).tolist():
            if (labels[i] & (need > 0)).any():
                picked.append(i)
                need -= labels[i].long()
            if (need <= 0).all():
                break
        return torch.utils.data.Subset(data, sorted(picked))

    def _labels(self, data: Dataset) -> torch.Tensor:
        labels = getattr(data, "labels", None)
        if isinstance(labels, torch.Tensor) and len(labels) == len(data):
            return labels
        rows = [torch.as_tensor(data[i][1]) for i in range(len(data))]
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise DataError(f"multi-label targets must be one vector of {self.num_classes} values per image, got shapes "
                            f"{sorted(shapes)[:3]}")
        return torch.stack(rows).float()

    def check_data(self, data):
        super().check_data(data)
        labels = self._labels(data)
        if labels.shape[1] != self.num_classes:
            raise DataError(f"the clean labels have {labels.shape[1]} categories but the model has {self.num_classes}; "
                            "use the label list of the training data")
        if ((labels != 0) & (labels != 1)).any():
            raise DataError("clean labels must be multi-hot (0/1 per category); soft labels are made by MixUp, not given")
        if int((labels.sum(0) > 0).sum()) < 2:
            raise DataError("the clean set shows fewer than two categories; purification needs clean images of "
                            "several categories, ideally all of them")

    def samples_per_class(self, data):
        # n_c for multi-label: the mean number of clean images holding a category (over present ones)
        counts = self._labels(data).sum(0)
        return float(counts[counts > 0].mean()) if (counts > 0).any() else 1.0

    # ---- experiment-facing ---------------------------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg, model_cfg):
        return cls(num_classes=0, model_cfg=model_cfg)  # set from the data in load_data

    def load_data(self, cfg: MultiLabelDataConfig, seed: int) -> Splits:
        root, options = cfg.root, {}
        if cfg.dataset == "fmnist_mosaic":
            root = str(ensure_mosaics(cfg.root, cfg.mosaic_train, cfg.mosaic_test, cfg.mosaic_max_objects,
                                      cfg.mosaic_grid, cfg.mosaic_seed, cfg.fmnist_root))
        elif DATASETS[cfg.dataset].reader == "voc":
            options["include_difficult"] = cfg.include_difficult
        train_raw, test_raw, classes = read_dataset(cfg.dataset, root, cfg.train_split, cfg.test_split, **options)
        g = torch.Generator().manual_seed(seed)
        if cfg.test_limit is not None and cfg.test_limit < len(test_raw.files):
            test_raw = _take(test_raw, torch.randperm(len(test_raw.files), generator=g)[: cfg.test_limit].sort().values)
        clean_idx, rest = random_split(len(train_raw.files), cfg.clean_fraction, g)
        if cfg.train_limit is not None:
            rest = rest[torch.randperm(len(rest), generator=g)[: cfg.train_limit]].sort().values
        preload = cfg.preload if cfg.preload is not None else cfg.dataset == "fmnist_mosaic"
        # photos come in many sizes and must be batched: one square size unless the files share one
        size = cfg.image_size or (None if cfg.dataset == "fmnist_mosaic" else 448)
        make = lambda raw: MultiLabelImages(raw.files, raw.labels, size, preload)  # noqa: E731
        train, clean = make(_take(train_raw, rest)), make(_take(train_raw, clean_idx))
        test = make(test_raw)
        self.num_classes = len(classes)
        self.eval_workers = cfg.eval_workers
        self.info = {"num_classes": self.num_classes, "classes": classes, "n_train": len(train), "n_clean": len(clean),
                     "n_test": len(test), "labels_per_image": round(float(train.labels.sum(1).mean()), 3),
                     "root": root}
        return Splits(train, clean, test, dict(self.info))

    def build_model(self, cfg: MultiLabelModelConfig) -> nn.Module:
        return build_multilabel_model(self.num_classes, cfg.backbone, cfg.width, cfg.backbone_weights,
                                      dim=cfg.decoder_dim, heads=cfg.heads, ffn=cfg.ffn_dim, queries=cfg.queries,
                                      dropout=cfg.dropout, learn_queries=cfg.learn_queries)

    @torch.no_grad()
    def scores(self, model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 256):
        """Sigmoid scores and true labels of every image, in order."""
        model = model.to(device).eval()
        out, labels = [], []
        for images, y in DataLoader(data, batch_size=batch_size, num_workers=self.eval_workers):
            out.append(torch.sigmoid(model(images.to(device))).cpu())
            labels.append(y)
        return torch.cat(out), torch.cat(labels)

    def evaluate(self, model, test, poisoned_test, attack, device, batch_size=256):
        scores, labels = self.scores(model, test, device, batch_size)
        result = {"map": mean_average_precision(scores, labels)}
        if poisoned_test is not None:
            triggered = attack.holds_trigger(labels)
            # mAP without the trigger images: the clean-image attack lowers mAP only on those
            result["map_no_trigger"] = mean_average_precision(scores[~triggered], labels[~triggered])
            p_scores, p_labels = self.scores(model, poisoned_test, device, batch_size)
            result["asr"] = attack_success_rate(p_scores, p_labels, attack.target_for(p_labels))
        return result


def _take(raw, index: torch.Tensor):
    from .data import RawSplit

    idx = index.tolist()
    return RawSplit([raw.files[i] for i in idx], raw.labels[index])
