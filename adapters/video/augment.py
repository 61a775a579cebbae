"""Clip augmentation: every spatial change and every mixing weight is shared by all frames of a clip,
so the motion inside a clip stays coherent. Driven by an explicit generator for reproducible runs."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _beta(generator: torch.Generator, alpha: float, n: int) -> torch.Tensor:
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n)).float()


def crop_flip_clips(clips: torch.Tensor, generator: torch.Generator, pad: int, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, one draw per clip (``B x T x C x H x W``)."""
    b, _, _, h, w = clips.shape
    if pad > 0:
        padded = F.pad(clips, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()
        clips = torch.stack([padded[i, ..., dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if flip:
        flips = (torch.rand(b, generator=generator) < 0.5).view(-1, 1, 1, 1, 1).to(clips.device)
        clips = torch.where(flips, clips.flip(-1), clips)
    return clips


def mixup_clips(clips: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, alpha: float = 1.0):
    """Video MixUp: each clip gets its own lambda ~ Beta(alpha, alpha), shared by all of its frames;
    the partner is an in-batch permutation. ``targets`` are probabilities."""
    lam = _beta(generator, alpha, len(clips)).to(clips.device)
    perm = torch.randperm(len(clips), generator=generator).to(clips.device)
    mixed = lam.view(-1, 1, 1, 1, 1) * clips + (1 - lam.view(-1, 1, 1, 1, 1)) * clips[perm]
    return mixed, lam[:, None] * targets + (1 - lam[:, None]) * targets[perm]
