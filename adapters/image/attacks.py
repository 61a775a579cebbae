"""Image backdoor attacks: BadNets, Blend, SIG (clean-label) and WaNet, all2one and all2all."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nftkit.attacks import ATTACKS

from ..classification import LabelAttack, LabelAttackConfig
from .data import ImageTensorDataset


ImageAttackConfig = LabelAttackConfig


class ImageAttack(LabelAttack):
    """Poison-label attack: ``poison_rate`` of the training set gets the trigger and the target label."""

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.shape = info["image_shape"]  # C, H, W

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The trigger, applied to a batch of images in [0, 1]."""
        raise NotImplementedError

    def poison_train(self, train: ImageTensorDataset, generator: torch.Generator) -> ImageTensorDataset:
        chosen = self._choose(train.targets, generator)
        images, labels = train.images.clone(), train.targets.clone()
        images[chosen] = self.apply(images[chosen])
        labels[chosen] = self.target_for(labels[chosen])
        poisoned = ImageTensorDataset(images, labels)
        poisoned.poisoned_indices = chosen
        return poisoned

    def poison_test(self, test: ImageTensorDataset) -> ImageTensorDataset:
        keep = self._candidates(test.targets)
        return ImageTensorDataset(self.apply(test.images[keep]), test.targets[keep])


@ATTACKS.register("image/badnets")
class BadNets(ImageAttack):
    """A 3x3 checkerboard patch in the bottom-right corner (Gu et al., 2017)."""

    class Config(ImageAttackConfig):
        size: int = Field(default=3, ge=1)
        margin: int = Field(default=0, ge=0)

    def apply(self, images):
        s, m = self.cfg.size, self.cfg.margin
        H, W = images.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        patch = ((yy + xx) % 2 == 0).to(images.dtype)
        out = images.clone()
        out[..., H - m - s:H - m, W - m - s:W - m] = patch
        return out


@ATTACKS.register("image/blend")
class Blend(ImageAttack):
    """Blend a fixed uniform-noise image into the input (Chen et al., 2017): x' = (1-r) x + r t."""

    class Config(ImageAttackConfig):
        ratio: float = Field(default=0.2, gt=0, le=1)

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.pattern = torch.rand(self.shape, generator=self._seeded())

    def apply(self, images):
        return (1 - self.cfg.ratio) * images + self.cfg.ratio * self.pattern


@ATTACKS.register("image/sig")
class SIG(ImageAttack):
    """Clean-label sinusoidal signal (Barni et al., 2019): only target-class training images get the
    signal, labels unchanged; ``poison_rate`` is the fraction of the target class poisoned."""

    class Config(ImageAttackConfig):
        poison_rate: float = Field(default=0.8, ge=0, le=1)
        delta: float = Field(default=20 / 255, gt=0)
        test_delta: float | None = None
        frequency: float = Field(default=6, gt=0)
        mode: Literal["all2one"] = "all2one"

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        if self._signal(1.0).abs().max() < 1e-3:
            from nftkit.errors import ConfigError

            raise ConfigError(f"SIG frequency {cfg.frequency} samples to a zero signal on {self.shape[-1]}-pixel-wide "
                              "images; choose attack.frequency so that 2*frequency/width is not an integer")

    def _signal(self, delta: float) -> torch.Tensor:
        W = self.shape[-1]
        cols = torch.arange(W, dtype=torch.float32)
        return delta * torch.sin(2 * math.pi * cols * self.cfg.frequency / W).expand(self.shape[-2], W)

    def apply(self, images, delta=None):
        return (images + self._signal(delta or self.cfg.delta)).clamp(0, 1)

    def poison_train(self, train, generator):
        in_target = (train.targets == self.cfg.target).nonzero().flatten()
        n = round(self.cfg.poison_rate * len(in_target))
        chosen = in_target[torch.randperm(len(in_target), generator=generator)[:n]]
        images = train.images.clone()
        images[chosen] = self.apply(images[chosen])
        poisoned = ImageTensorDataset(images, train.targets.clone())
        poisoned.poisoned_indices = chosen
        return poisoned

    def poison_test(self, test):
        keep = self._candidates(test.targets)
        return ImageTensorDataset(self.apply(test.images[keep], self.cfg.test_delta), test.targets[keep])


@ATTACKS.register("image/wanet")
class WaNet(ImageAttack):
    """Warping-based trigger (Nguyen & Tran, 2021) with noise mode: besides the poisoned samples,
    ``cross_ratio`` times as many samples get a randomly perturbed warp and keep their label."""

    class Config(ImageAttackConfig):
        k: int = Field(default=4, ge=2)
        strength: float = Field(default=0.5, gt=0)
        grid_rescale: float = Field(default=1.0, gt=0)
        cross_ratio: float = Field(default=2.0, ge=0)

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        H, W = self.shape[-2:]
        ins = torch.rand(1, 2, cfg.k, cfg.k, generator=self._seeded()) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(H, W), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
        identity = torch.stack((xs, ys), dim=2)[None]
        self.grid = ((identity + cfg.strength * noise / H) * cfg.grid_rescale).clamp(-1, 1)

    def apply(self, images, grid=None):
        grid = self.grid if grid is None else grid
        return F.grid_sample(images, grid.expand(len(images), -1, -1, -1), align_corners=True).clamp(0, 1)

    def poison_train(self, train, generator):
        poisoned = super().poison_train(train, generator)
        rest = torch.ones(len(train), dtype=torch.bool)
        rest[poisoned.poisoned_indices] = False
        rest_idx = rest.nonzero().flatten()
        n_cross = min(len(rest_idx), round(self.cfg.cross_ratio * len(poisoned.poisoned_indices)))
        cross = rest_idx[torch.randperm(len(rest_idx), generator=generator)[:n_cross]]
        H, W = self.shape[-2:]
        jitter = (torch.rand(n_cross, H, W, 2, generator=generator) * 2 - 1) / H
        grids = (self.grid + jitter).clamp(-1, 1)
        poisoned.images[cross] = F.grid_sample(train.images[cross], grids, align_corners=True).clamp(0, 1)
        return poisoned
