"""LIRA (Doan et al., ICCV 2021): a learnable, imperceptible additive trigger x + eps * tanh(T(x)).

Stage 1 of the paper trains the trigger generator T jointly with a classifier: the classifier learns
clean and triggered samples, T learns to make triggered samples land on the target. Here the
classifier is the attacker's surrogate; the victim is then trained from scratch on data poisoned by
the frozen T (the paper's stage 2 fine-tunes its own classifier with T fixed instead). all2one and
all2all, as in the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from nftkit.attacks import ATTACKS

from ..attacks import ImageAttack
from .common import TinyGenerator, TrainedAttackConfig, apply_batched, batches, freeze, seeded_fit, surrogate_model


@ATTACKS.register("image/lira")
class LIRA(ImageAttack):
    class Config(TrainedAttackConfig):
        eps: float = Field(default=0.05, gt=0, le=1)  # L-inf bound of the perturbation
        clean_weight: float = Field(default=0.5, ge=0, le=1)  # the paper's alpha between clean and backdoor loss

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.generator = None

    def _perturb(self, gen, x):
        return (x + self.cfg.eps * torch.tanh(gen(x))).clamp(0, 1)

    @seeded_fit
    def fit(self, train) -> None:
        cfg = self.cfg
        g = self._seeded()
        gen = TinyGenerator(self.shape[0], self.shape[0], cfg.gen_width).to(cfg.device)
        clf = surrogate_model(self, cfg.surrogate_arch, cfg.surrogate_width).to(cfg.device)
        opt_gen = torch.optim.Adam(gen.parameters(), lr=cfg.gen_lr)
        opt_clf = torch.optim.SGD(clf.parameters(), lr=0.01, momentum=0.9)
        for idx in batches(cfg, len(train), g):
            x, y = train.images[idx].to(cfg.device), train.targets[idx].to(cfg.device)
            target = self.target_for(y)
            # generator step: triggered images should land on the target under the current classifier
            loss_gen = F.cross_entropy(clf(self._perturb(gen, x)), target)
            opt_gen.zero_grad(set_to_none=True)
            loss_gen.backward()
            opt_gen.step()
            # classifier step: learn the clean task and the current trigger
            with torch.no_grad():
                x_bd = self._perturb(gen, x)
            loss_clf = cfg.clean_weight * F.cross_entropy(clf(x), y) + (1 - cfg.clean_weight) * F.cross_entropy(clf(x_bd), target)
            opt_clf.zero_grad(set_to_none=True)
            loss_clf.backward()
            opt_clf.step()
        self.generator = freeze(gen)

    def apply(self, images):
        if self.generator is None:
            raise RuntimeError("the LIRA trigger generator is trained in poison_train; call it before poison_test")
        return apply_batched(lambda x: self._perturb(self.generator, x), images, self.cfg.device)

    def poison_train(self, train, generator):
        self.fit(train)
        return super().poison_train(train, generator)
