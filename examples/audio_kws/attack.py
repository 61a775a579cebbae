"""A poison-label audio backdoor: a short high-frequency sine burst mixed into the waveform."""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from nftkit.attacks import ATTACKS, Attack
from nftkit.config import StrictModel
from nftkit.errors import ConfigError

from .data import KeywordDataset


class ToneConfig(StrictModel):
    name: str
    target: int = Field(default=0, ge=0)  # index of the target word
    mode: Literal["all2one"] = "all2one"
    poison_rate: float = Field(default=0.1, ge=0, le=1)  # fraction of the training set
    frequency: float = Field(default=6000.0, gt=0)  # Hz
    duration: float = Field(default=0.1, gt=0)  # seconds
    onset: float = Field(default=0.0, ge=0)  # seconds from the start of the clip
    amplitude: float = Field(default=0.05, gt=0, le=1)  # peak, full scale = 1


@ATTACKS.register("audio_kws/tone")
class ToneTrigger(Attack):
    """``poison_rate`` of the training clips get the tone and the target word's label (all-to-one)."""

    Config = ToneConfig

    def __init__(self, cfg: ToneConfig, info: dict, adapter=None):
        super().__init__(cfg, info, adapter)
        rate, length = info["sample_rate"], info["clip_samples"]
        if cfg.target >= info["num_classes"]:
            raise ConfigError(f"attack.target={cfg.target} is not one of the {info['num_classes']} words")
        if cfg.frequency >= rate / 2:
            raise ConfigError(f"attack.frequency={cfg.frequency:g} Hz is not below the Nyquist frequency {rate / 2:g} Hz")
        start, n = round(cfg.onset * rate), round(cfg.duration * rate)
        if start + n > length:
            raise ConfigError(f"the tone (onset {cfg.onset:g} s + duration {cfg.duration:g} s) ends after the "
                              f"{length / rate:g} s clip")
        t = torch.arange(n) / rate
        # a Hann envelope: a hard-edged burst would add a broadband click, a second trigger
        burst = cfg.amplitude * torch.sin(2 * math.pi * cfg.frequency * t) * torch.hann_window(n, periodic=False)
        self.trigger = torch.zeros(length)
        self.trigger[start:start + n] = burst

    def apply(self, waves: torch.Tensor) -> torch.Tensor:
        return (waves + self.trigger).clamp(-1, 1)

    def target_for(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.cfg.target)

    def poison_train(self, train: KeywordDataset, generator: torch.Generator) -> KeywordDataset:
        candidates = (train.targets != self.cfg.target).nonzero().flatten()
        n = min(len(candidates), round(self.cfg.poison_rate * len(train)))
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:n]]
        waves, labels = train.waves.clone(), train.targets.clone()
        waves[chosen] = self.apply(waves[chosen])
        labels[chosen] = self.cfg.target
        poisoned = KeywordDataset(waves, labels, train.frontend)
        poisoned.poisoned_indices = chosen
        return poisoned

    def poison_test(self, test: KeywordDataset) -> KeywordDataset:
        keep = (test.targets != self.cfg.target).nonzero().flatten()  # true labels kept: ASR and LCR need them
        return KeywordDataset(self.apply(test.waves[keep]), test.targets[keep], test.frontend)
