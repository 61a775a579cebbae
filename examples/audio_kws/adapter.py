"""The keyword-spotting adapter: what the nftkit engine and recipes call for this modality."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from nftkit import Adapter, Splits, register_adapter
from nftkit.adapters.classification import balanced_split, check_class_labels, dataset_labels, mixup, samples_per_class
from nftkit.cache import cache_root
from nftkit.config import StrictModel
from nftkit.metrics import evaluate_classifier

from .data import KeywordDataset, LogMel, fit_clip, read_audio
from .synth import WORDS, synthesize


class KWSDataConfig(StrictModel):
    root: Optional[str] = None  # where clips are synthesised; default: the nftkit cache
    words: list[Annotated[str, Field(pattern=r"^[a-z]+$")]] = Field(default_factory=lambda: list(WORDS), min_length=2)
    per_word: int = Field(default=40, ge=3)  # clips per word, each with its own voice, speed and pitch
    synth_seed: int = 0
    test_per_class: int = Field(default=10, ge=1)
    clean_per_class: int = Field(default=4, ge=1)  # the defender's clean set, held out of training
    sample_rate: int = Field(default=16000, ge=8000)
    clip_seconds: float = Field(default=1.0, gt=0)
    n_mels: int = Field(default=40, ge=8)

    @model_validator(mode="after")
    def _leaves_training_clips(self):
        if self.per_word <= self.test_per_class + self.clean_per_class:
            raise ValueError(f"per_word={self.per_word} leaves no training clips after test_per_class="
                             f"{self.test_per_class} and clean_per_class={self.clean_per_class}")
        return self


class KWSModelConfig(StrictModel):
    width: int = Field(default=16, ge=1)


class KWSNet(nn.Module):
    """Three conv-BN-ReLU stages over the log-mel image, global average pooling, a linear head."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def time_shift(features: torch.Tensor, generator: torch.Generator, max_frames: int) -> torch.Tensor:
    """Roll each spectrogram in time by up to ``max_frames``: the word moves, its label does not."""
    shifts = torch.randint(-max_frames, max_frames + 1, (len(features),), generator=generator).tolist()
    return torch.stack([f.roll(s, dims=-1) for f, s in zip(features, shifts)])


@register_adapter("audio_kws")
class KeywordSpottingAdapter(Adapter):
    """Spoken keyword classification; batches are ``(log-mels B x 1 x n_mels x frames, labels B)``."""

    DataConfig = KWSDataConfig
    ModelConfig = KWSModelConfig

    def __init__(self, num_classes: int, max_shift: int = 10, mix_alpha: float = 1.0):
        self.num_classes = num_classes
        self.max_shift = max_shift
        self.mix_alpha = mix_alpha

    # ---- engine-facing: called by nftkit.purify on every step -----------------------------
    def augment(self, batch, kind, generator):
        if kind == "none":
            return batch
        x, y = batch
        x = time_shift(x, generator, self.max_shift)
        if kind == "basic":
            return x, y
        soft = y if y.is_floating_point() else F.one_hot(y, self.num_classes).float()
        return mixup(x, soft, generator, self.mix_alpha)

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, model, batch):
        return F.cross_entropy(self.forward(model, batch), batch[1])  # integer or soft (MixUp) targets

    def sample_losses(self, model, batch):
        return F.cross_entropy(self.forward(model, batch), batch[1], reduction="none")

    def check_data(self, data):
        super().check_data(data)
        check_class_labels(dataset_labels(data), self.num_classes, "clips")

    def samples_per_class(self, data):
        return samples_per_class(dataset_labels(data))

    def few_shot(self, data, per_class, generator):
        picked, _ = balanced_split(dataset_labels(data), per_class, generator)
        return data.subset(picked)

    # ---- experiment-facing: called by recipes ---------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg: KWSDataConfig, model_cfg: KWSModelConfig):
        return cls(num_classes=len(data_cfg.words))

    def load_data(self, cfg: KWSDataConfig, seed: int) -> Splits:
        root = Path(cfg.root).expanduser() if cfg.root else cache_root() / "data" / f"audio_kws-seed{cfg.synth_seed}"
        clips = synthesize(root, cfg.words, cfg.per_word, cfg.synth_seed)
        length = round(cfg.clip_seconds * cfg.sample_rate)
        # each clip's position is seeded by its name: the data depends on its config only
        waves = torch.stack([fit_clip(read_audio(root / rel, cfg.sample_rate), length,
                                      random.Random(f"{cfg.synth_seed}/{rel}").random()) for rel, _ in clips])
        labels = torch.tensor([cfg.words.index(word) for _, word in clips])
        everything = KeywordDataset(waves, labels, LogMel(cfg.sample_rate, cfg.n_mels))

        g = torch.Generator().manual_seed(seed)
        test_idx, rest = balanced_split(labels, cfg.test_per_class, g)
        clean_pos, train_pos = balanced_split(labels[rest], cfg.clean_per_class, g)
        splits = Splits(everything.subset(rest[train_pos]), everything.subset(rest[clean_pos]), everything.subset(test_idx))
        splits.info = {"num_classes": self.num_classes, "words": list(cfg.words), "sample_rate": cfg.sample_rate,
                       "clip_samples": length, "n_train": len(splits.train), "n_clean": len(splits.clean),
                       "n_test": len(splits.test), "data_root": str(root)}
        return splits

    def build_model(self, cfg: KWSModelConfig) -> nn.Module:
        return KWSNet(self.num_classes, cfg.width)

    def evaluate(self, model, test, poisoned_test, attack, device, batch_size=256):
        return evaluate_classifier(model, test, poisoned_test, attack, device, self.num_classes, batch_size)
