"""Batch augmentation for images, driven by an explicit generator so runs are reproducible."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int, flip: bool = True) -> torch.Tensor:
    """Per-sample random crop after zero padding, and random horizontal flip."""
    n, _, h, w = images.shape
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
        images = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flips.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
    return images
