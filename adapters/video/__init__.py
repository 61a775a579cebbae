"""Video action recognition: CNN+LSTM models, UCF-101 / HMDB-51 / embedded Atari clips decoded with
PyAV, clip-consistent augmentation (crop/flip, video MixUp, VideoMix), clean-label and patch attacks,
clip ACC/ASR/LCR."""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from nftkit.adapter import Splits, register_adapter
from nftkit.config import DEFENSE_ONLY, StrictModel
from nftkit.errors import DataError
from nftkit.metrics import BackdoorMetrics

from ..classification import SingleLabelAdapter, check_class_labels, cutmix, dataset_labels, samples_per_class

from .atari import DEFAULT_GAMES, atari_folder
from .augment import crop_flip_clips, mixup_clips
from .data import (ClipSpec, ClipTensorDataset, EditedVideos, VideoDataset, VideoFileDataset, balanced_split,
                   find_videos, read_clip)
from .models import BACKBONES, CNNLSTM, build_video_model

__all__ = ["BACKBONES", "CNNLSTM", "ClipSpec", "ClipTensorDataset", "EditedVideos", "VideoAdapter", "VideoDataset",
           "VideoFileDataset", "build_video_model", "read_clip"]


class AtariConfig(StrictModel):
    """The embedded dataset: Atari clips written as .avi in the UCF-101 layout. A class is a game
    (``label: game``) or an action the player holds through the clip (``label: action``, clips from
    every listed game): the latter must be read from motion, like human actions."""

    label: Literal["game", "action"] = "game"
    games: list[str] = Field(default_factory=lambda: list(DEFAULT_GAMES), min_length=1)
    actions: list[str] = Field(default_factory=lambda: ["UP", "DOWN", "LEFT", "RIGHT"], min_length=2)
    train_per_class: int = Field(default=80, ge=2)
    test_per_class: int = Field(default=20, ge=1)
    # std of Gaussian sensor noise (in [0, 1] units) added to rendered frames: emulator frames are flat
    # colours, on which any small perturbation (a PGD one, say) is a giveaway that real video hides
    noise: float = Field(default=0.0, ge=0, le=0.5)
    seed: int = 0


class VideoDataConfig(StrictModel):
    dataset: Literal["atari", "ucf101", "hmdb51"] = "atari"
    root: Optional[str] = None  # dataset folder; for atari, where the clips are written (default: the cache)
    split: int = Field(default=1, ge=1, le=3)  # official split number
    num_frames: int = Field(default=16, ge=1)
    frame_stride: int = Field(default=5, ge=1)  # keep one of every frame_stride frames
    size: int = Field(default=224, ge=8)  # frames are resized to size x size
    clean_fraction: float = Field(default=0.05, gt=0, lt=1)  # of each training class, held out
    clean_per_class: Optional[int] = Field(default=None, ge=1)  # overrides clean_fraction
    train_limit: Optional[int] = Field(default=None, ge=1)
    test_limit: Optional[int] = Field(default=None, ge=1)
    in_memory: bool = True  # decode every clip once; false decodes on each access (full UCF-101 at 224)
    crop_padding: Optional[int] = Field(default=None, ge=0)  # default size // 8
    flip: bool = True
    mix: Literal["mixup", "videomix"] = Field(default="mixup", json_schema_extra=DEFENSE_ONLY)
    mix_alpha: float = Field(default=1.0, gt=0, json_schema_extra=DEFENSE_ONLY)
    atari: AtariConfig = Field(default_factory=AtariConfig)


class VideoModelConfig(StrictModel):
    backbone: str = "resnet50"
    hidden: int = Field(default=256, ge=1)
    width: Optional[int] = Field(default=None, ge=1)  # resnet_mini only
    pool: int = Field(default=1, ge=1)  # spatial grid per frame: 1 = global average (papers); >1 keeps positions
    weights: Optional[str] = None  # local backbone state_dict (.safetensors or .pth), e.g. ImageNet ResNet-50


@register_adapter("video")
class VideoAdapter(SingleLabelAdapter):
    """Clip classification; batches are ``(clips B x T x 3 x H x W in [0, 1], labels B)``."""

    DataConfig = VideoDataConfig
    ModelConfig = VideoModelConfig

    def __init__(self, num_classes: int, crop_padding: Optional[int] = None, flip: bool = True,
                 mix: str = "mixup", mix_alpha: float = 1.0, model_cfg: Optional[VideoModelConfig] = None):
        self.num_classes = num_classes
        self.crop_padding = crop_padding
        self.flip = flip
        self.mix = mix
        self.mix_alpha = mix_alpha
        self.model_cfg = model_cfg or VideoModelConfig()  # attacks build surrogates of the same model
        self.info: dict = {}

    # ---- engine-facing -------------------------------------------------------------------
    def augment(self, batch, kind, generator):
        clips, labels = batch
        if kind == "none":
            return batch
        clips = crop_flip_clips(clips, generator, self.crop_pad(clips.shape[-1]), self.flip)
        if kind == "basic":
            return clips, labels
        targets = labels if labels.is_floating_point() else F.one_hot(labels, self.num_classes).float()
        mixer = cutmix if self.mix == "videomix" else mixup_clips
        return mixer(clips, targets, generator, self.mix_alpha)

    def crop_pad(self, size: int) -> int:
        """Zero padding of the random crop, i.e. how far training shifts a frame: a patch trigger must
        be wider than this or the crop hides it (clean-label attacks then fail to implant)."""
        return self.crop_padding if self.crop_padding is not None else max(1, size // 8)

    def few_shot(self, data, per_class, generator):
        labels = self._labels(data)
        picked, _ = balanced_split(labels, 0.5, per_class, generator)
        return data.subset(picked) if hasattr(data, "subset") else EditedVideos(data, index=picked)

    def _labels(self, data: Dataset) -> torch.Tensor:
        return dataset_labels(data)

    def check_data(self, data):
        super().check_data(data)
        shape = tuple(torch.as_tensor(data[0][0]).shape)
        if len(shape) != 4 or shape[1] != 3:
            raise DataError(f"clips must be T x 3 x H x W tensors, got shape {shape}; decode videos with read_clip "
                            "or give frames in time x channel x height x width order")
        check_class_labels(self._labels(data), self.num_classes, "clips")

    def samples_per_class(self, data):
        return samples_per_class(self._labels(data))

    # ---- experiment-facing ---------------------------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg: VideoDataConfig, model_cfg: VideoModelConfig):
        return cls(0, data_cfg.crop_padding, data_cfg.flip, data_cfg.mix, data_cfg.mix_alpha, model_cfg)

    def load_data(self, cfg: VideoDataConfig, seed: int) -> Splits:
        spec = ClipSpec(cfg.num_frames, cfg.frame_stride, cfg.size, cfg.size)
        if cfg.dataset == "atari":
            a = cfg.atari
            root = atari_folder(cfg.root, a.games, a.train_per_class, a.test_per_class,
                                cfg.num_frames * cfg.frame_stride, a.seed, a.label, tuple(a.actions), a.noise)
            found, root = find_videos("ucf101", str(root))
        else:
            found, root = find_videos(cfg.dataset, cfg.root, cfg.split)
        g = torch.Generator().manual_seed(seed)
        self.num_classes = len(found.classes)
        train_labels = torch.tensor([y for _, y in found.train])
        clean_idx, rest = balanced_split(train_labels, cfg.clean_fraction, cfg.clean_per_class, g)
        if cfg.train_limit is not None:
            rest = rest[torch.randperm(len(rest), generator=g)[: cfg.train_limit]].sort().values
        test_idx = torch.arange(len(found.test))
        if cfg.test_limit is not None:
            test_idx = torch.randperm(len(test_idx), generator=g)[: cfg.test_limit].sort().values

        def part(items, index) -> VideoDataset:
            ds = VideoFileDataset([items[int(i)][0] for i in index], torch.tensor([items[int(i)][1] for i in index]), spec)
            return ds.materialize() if cfg.in_memory else ds

        train, clean = part(found.train, rest), part(found.train, clean_idx)
        test = part(found.test, test_idx)
        self.info = {"num_classes": self.num_classes, "clip_shape": (cfg.num_frames, 3, cfg.size, cfg.size),
                     "classes": found.classes, "root": str(root), "n_train": len(train), "n_clean": len(clean),
                     "n_test": len(test), "clean_per_class": len(clean) / self.num_classes}
        return Splits(train, clean, test, dict(self.info))

    def build_model(self, cfg: VideoModelConfig) -> nn.Module:
        return build_video_model(cfg.backbone, self.num_classes, cfg.hidden, cfg.width, cfg.weights, cfg.pool)

    @torch.no_grad()
    def predict(self, model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 64) -> torch.Tensor:
        model = model.to(device).eval()
        preds = [model(clips.to(device)).argmax(1).cpu() for clips, _ in DataLoader(data, batch_size=batch_size)]
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def evaluate(self, model, test, poisoned_test, attack, device, batch_size=64):
        metrics = BackdoorMetrics(self.num_classes)
        metrics.update_clean(self.predict(model, test, device, batch_size), self._labels(test))
        if poisoned_test is not None:
            labels = self._labels(poisoned_test)
            metrics.update_poisoned(self.predict(model, poisoned_test, device, batch_size), labels, attack.target_for(labels))
        return metrics.compute()


from . import attacks  # noqa: E402,F401  registers video/clb and video/badnets (they import the adapter's types)
