"""Shared pieces of the trained attacks: configs, tiny generator nets, surrogate training, batched apply."""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterator

import torch
import torch.nn as nn
from pydantic import Field

from ..attacks import ImageAttackConfig


class TrainedAttackConfig(ImageAttackConfig):
    """An attack whose trigger comes out of an optimisation (a generator, PGD or an encoder)."""

    device: str = "cpu"  # where the attacker's own optimisation runs ('cuda' in the paper-scale recipes)
    gen_steps: int = Field(default=300, ge=1)
    # no more passes than this over the attacker's data: more only overfits a small set (and keeps
    # tiny smoke runs fast)
    gen_max_epochs: float = Field(default=5.0, gt=0)
    gen_batch_size: int = Field(default=64, ge=2)
    gen_lr: float = Field(default=1e-3, gt=0)
    gen_width: int = Field(default=16, ge=1)
    surrogate_arch: str = "cnn"
    surrogate_width: int = Field(default=8, ge=1)


class TinyGenerator(nn.Module):
    """Full-resolution conv net (no pooling, so any H x W works) mapping images to ``out_channels`` maps.

    Kept deliberately small: the attacks train it for a few hundred steps on CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16, depth: int = 3):
        super().__init__()
        layers, c = [], in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def surrogate_model(attack, arch: str, width: int) -> nn.Module:
    from ..models import build_image_model

    return build_image_model(arch, attack.num_classes, attack.shape[0], width)


def image_adapter(attack):
    """The experiment's adapter when there is one (so the surrogate sees the victim's augmentation)."""
    if attack.adapter is not None:
        return attack.adapter
    from .. import ImageClassificationAdapter

    return ImageClassificationAdapter(num_classes=attack.num_classes)


def step_count(cfg: TrainedAttackConfig, n: int, steps: int, batch_size: int) -> int:
    return max(1, min(steps, math.ceil(cfg.gen_max_epochs * n / batch_size)))


def batches(cfg: TrainedAttackConfig, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of ``gen_batch_size`` drawn with replacement, ``gen_steps`` of them (capped by epochs)."""
    for _ in range(step_count(cfg, n, cfg.gen_steps, cfg.gen_batch_size)):
        yield torch.randint(0, n, (min(cfg.gen_batch_size, n),), generator=generator)


@torch.no_grad()
def apply_batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: str,
                  batch_size: int = 512) -> torch.Tensor:
    """Run a trained trigger function over many images without holding them all on the device."""
    if len(images) == 0:
        return images.clone()
    out = [fn(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).clamp(0, 1)


def seeded_fit(fit):
    """Seed the attacker's training from ``trigger_seed`` without touching the caller's global RNG."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.trigger_seed)
            return fit(self, *args, **kwargs)

    return wrapper


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
