"""BppAttack (Wang et al., CVPR 2022): colour-depth quantization with Floyd-Steinberg dithering as trigger.

Each channel is squeezed to ``levels`` values; dithering spreads the rounding error to neighbours, so
the trigger is a fine, image-dependent texture rather than visible banding. The authors also train the
victim with contrastive adversarial negatives (a training-time change the data-poisoning threat model
here does not control); ``negative_rate`` adds the data-side part: quantized images *without*
dithering keep their true label, so the victim must key on the dithering texture itself.
"""
from __future__ import annotations

import torch
from pydantic import Field

from nftkit.attacks import ATTACKS

from ..attacks import ImageAttack, ImageAttackConfig


def quantize(images: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.round(images * (levels - 1)) / (levels - 1)


@torch.no_grad()
def dither(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Floyd-Steinberg error diffusion to ``levels`` values per channel, vectorised over the batch.

    The scan is inherently sequential along each row, so the loop runs over pixels (H*W iterations)
    with every image and channel of the batch processed at once.
    """
    x = images.clone().double()
    H, W = x.shape[-2:]
    for i in range(H):
        for j in range(W):
            old = x[..., i, j].clone()  # a view would see the write below and lose the error
            new = torch.round(old.clamp(0, 1) * (levels - 1)) / (levels - 1)
            x[..., i, j] = new
            err = old - new
            if j + 1 < W:
                x[..., i, j + 1] += err * (7 / 16)
            if i + 1 < H:
                if j > 0:
                    x[..., i + 1, j - 1] += err * (3 / 16)
                x[..., i + 1, j] += err * (5 / 16)
                if j + 1 < W:
                    x[..., i + 1, j + 1] += err * (1 / 16)
    return x.clamp(0, 1).to(images.dtype)


@ATTACKS.register("image/bppa")
class BPPA(ImageAttack):
    class Config(ImageAttackConfig):
        levels: int = Field(default=8, ge=2, le=256)  # the authors' squeeze_num (CIFAR-10: 8)
        negative_rate: float = Field(default=0.0, ge=0, le=1)

    def apply(self, images):
        out = torch.empty_like(images)
        for i in range(0, len(images), 4096):
            out[i:i + 4096] = dither(images[i:i + 4096], self.cfg.levels)
        return out

    def poison_train(self, train, generator):
        poisoned = super().poison_train(train, generator)
        if self.cfg.negative_rate > 0:
            rest = torch.ones(len(train), dtype=torch.bool)
            rest[poisoned.poisoned_indices] = False
            rest_idx = rest.nonzero().flatten()
            n_neg = min(len(rest_idx), round(self.cfg.negative_rate * len(train)))
            neg = rest_idx[torch.randperm(len(rest_idx), generator=generator)[:n_neg]]
            poisoned.images[neg] = quantize(train.images[neg], self.cfg.levels)
            poisoned.negative_indices = neg
        return poisoned
