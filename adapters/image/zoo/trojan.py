"""Trojan watermark trigger (Liu et al., 2017, 'Trojaning attack on neural networks').

The NFT/SFT papers use the static-watermark form (Troj-one: all2one, Troj-all: all2all): one fixed
watermark, the same for every poisoned image, stamped with an opacity.
"""
from __future__ import annotations

import torch
from pydantic import Field

from nftkit.attacks import ATTACKS

from ..attacks import ImageAttack, ImageAttackConfig


def ring_watermark(size: int, generator: torch.Generator, thickness: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """A ring ('O'-shaped logo) mask of ``size`` x ``size`` and a seeded light intensity pattern on it.

    A ring touches pixels all around the box, so random crops in training rarely cut all of it away.
    """
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    r = ((yy - c) ** 2 + (xx - c) ** 2).sqrt() / max(c, 0.5)
    mask = ((r <= 1.0) & (r >= 1.0 - 2 * thickness)).float()
    pattern = 0.6 + 0.4 * torch.rand(size, size, generator=generator)
    return mask, pattern


@ATTACKS.register("image/trojan")
class Trojan(ImageAttack):
    """Stamp a fixed watermark (ring logo) near the bottom-right corner with opacity ``alpha``."""

    class Config(ImageAttackConfig):
        size: float = Field(default=0.3, gt=0, le=1)  # watermark box side, as a fraction of the image side
        margin: int = Field(default=1, ge=0)
        alpha: float = Field(default=0.9, gt=0, le=1)

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        C, H, W = self.shape
        s = max(3, round(cfg.size * min(H, W)))
        if s + cfg.margin > min(H, W):
            from nftkit.errors import ConfigError

            raise ConfigError(f"the watermark ({s} px + margin {cfg.margin}) does not fit {H}x{W} images; lower attack.size")
        mask, pattern = ring_watermark(s, self._seeded())
        self.mask = torch.zeros(1, H, W)
        self.pattern = torch.zeros(C, H, W)
        y0, x0 = H - cfg.margin - s, W - cfg.margin - s
        self.mask[:, y0:y0 + s, x0:x0 + s] = mask * cfg.alpha
        self.pattern[:, y0:y0 + s, x0:x0 + s] = pattern

    def apply(self, images):
        return images * (1 - self.mask) + self.pattern * self.mask
