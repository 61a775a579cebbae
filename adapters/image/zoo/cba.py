"""Composite backdoor, CBA (Lin et al., CCS 2020): the trigger is a combination of existing benign features.

A mixer puts an image of class A beside an image of class B (each squeezed to half width); such
composites are labelled with the target. So that the victim learns "A together with B" rather than
"any composite", as many composites of two images of one class c are added with label c (the
paper's obfuscation samples). The poisoned test set holds A+B composites labelled A (their true
class); no pixel pattern is added anywhere. all2one, as in the paper.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nftkit.attacks import ATTACKS
from nftkit.errors import ConfigError

from ..attacks import ImageAttack, ImageAttackConfig
from ..data import ImageTensorDataset


def half_and_half(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Squeeze both batches to half width and put them side by side (the mixer of the paper)."""
    H, W = left.shape[-2:]
    wl = W // 2
    a = F.interpolate(left, size=(H, wl), mode="bilinear", align_corners=False, antialias=True)
    b = F.interpolate(right, size=(H, W - wl), mode="bilinear", align_corners=False, antialias=True)
    return torch.cat([a, b], dim=-1).clamp(0, 1)


@ATTACKS.register("image/cba")
class CBA(ImageAttack):
    class Config(ImageAttackConfig):
        mode: Literal["all2one"] = "all2one"
        class_a: int = Field(default=1, ge=0)
        class_b: int = Field(default=2, ge=0)
        mix_ratio: float = Field(default=1.0, ge=0)  # same-class composites per poisoned composite

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        classes = {cfg.class_a, cfg.class_b, cfg.target}
        if len(classes) < 3 or max(classes) >= self.num_classes:
            raise ConfigError(f"CBA needs three different classes of the {self.num_classes}: attack.class_a "
                              f"({cfg.class_a}), attack.class_b ({cfg.class_b}) and attack.target ({cfg.target})")

    def apply(self, images, partners=None):
        if partners is None:
            raise ConfigError("CBA composes two images; its trigger needs the partner images of class B")
        return half_and_half(images, partners)

    def _pairs(self, labels: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        a = (labels == self.cfg.class_a).nonzero().flatten()
        b = (labels == self.cfg.class_b).nonzero().flatten()
        if len(a) == 0 or len(b) == 0:
            raise ConfigError(f"CBA needs images of class {self.cfg.class_a} and {self.cfg.class_b} in the data")
        return a[torch.randint(0, len(a), (n,), generator=generator)], b[torch.randint(0, len(b), (n,), generator=generator)]

    def poison_train(self, train, generator):
        n_poison = round(self.cfg.poison_rate * len(train))
        n_mix = round(self.cfg.mix_ratio * n_poison)
        ia, ib = self._pairs(train.targets, n_poison, generator)
        composites = [half_and_half(train.images[ia], train.images[ib])]
        labels = [torch.full((n_poison,), self.cfg.target)]
        # obfuscation: same-class composites keep their class
        first = torch.randint(0, len(train), (n_mix,), generator=generator)
        second = torch.empty_like(first)
        for c in train.targets[first].unique():
            pool = (train.targets == c).nonzero().flatten()
            where = (train.targets[first] == c).nonzero().flatten()
            second[where] = pool[torch.randint(0, len(pool), (len(where),), generator=generator)]
        composites.append(half_and_half(train.images[first], train.images[second]))
        labels.append(train.targets[first])
        # composites are added to the set (the paper's mixer creates new samples, it does not overwrite)
        images = torch.cat([train.images, *composites])
        targets = torch.cat([train.targets, *labels])
        poisoned = ImageTensorDataset(images, targets)
        poisoned.poisoned_indices = torch.arange(len(train), len(train) + n_poison)
        return poisoned

    def poison_test(self, test):
        a = (test.targets == self.cfg.class_a).nonzero().flatten()
        b = (test.targets == self.cfg.class_b).nonzero().flatten()
        if len(a) == 0 or len(b) == 0:
            raise ConfigError(f"the test set has no images of class {self.cfg.class_a} or {self.cfg.class_b} for CBA")
        # fixed pairing (A_i with B_(i mod |B|)) so the poisoned test set is the same in every run
        partners = b[torch.arange(len(a)) % len(b)]
        return ImageTensorDataset(half_and_half(test.images[a], test.images[partners]), test.targets[a])
