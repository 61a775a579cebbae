"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): Dyn-one (all2one) and Dyn-all (all2all).

A generator maps each image to its own trigger (a pattern and a sparse mask). It is trained jointly with
a surrogate classifier on three kinds of samples: backdoor (own trigger -> target), cross (another
image's trigger -> true label, so a trigger only works on the image it was made for) and clean; a
diversity loss keeps triggers of different images apart and a norm loss keeps masks sparse. The
trained generator then poisons the victim's training set the same three ways.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from nftkit.attacks import ATTACKS

from ..attacks import ImageAttack
from ..data import ImageTensorDataset
from .common import TinyGenerator, TrainedAttackConfig, apply_batched, batches, freeze, seeded_fit, surrogate_model


@ATTACKS.register("image/dynamic")
class InputAware(ImageAttack):
    class Config(TrainedAttackConfig):
        cross_rate: float = Field(default=0.1, ge=0, le=1)  # samples with another image's trigger, label kept
        mask_density: float = Field(default=0.032, gt=0, le=1)
        lambda_div: float = Field(default=1.0, ge=0)
        lambda_norm: float = Field(default=100.0, ge=0)

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.generator = None

    def _trigger(self, gen, x):
        out = gen(x)
        pattern = torch.sigmoid(out[:, :-1])
        # the authors' squashing: pushes the mask towards {0, 1} while keeping a gradient
        mask = (torch.tanh(20 * torch.sigmoid(out[:, -1:]) - 10) + 1) / 2
        return pattern, mask

    @staticmethod
    def _stamp(x, pattern, mask):
        return x + mask * (pattern - x)

    @seeded_fit
    def fit(self, train: ImageTensorDataset) -> None:
        cfg = self.cfg
        g = self._seeded()
        gen = TinyGenerator(self.shape[0], self.shape[0] + 1, cfg.gen_width).to(cfg.device)
        clf = surrogate_model(self, cfg.surrogate_arch, cfg.surrogate_width).to(cfg.device)
        opt = torch.optim.Adam([*gen.parameters(), *clf.parameters()], lr=cfg.gen_lr)
        for idx in batches(cfg, len(train), g):
            x, y = train.images[idx].to(cfg.device), train.targets[idx].to(cfg.device)
            partner = x[torch.randperm(len(x), generator=g).to(cfg.device)]
            n_bd = max(1, round(cfg.poison_rate * len(x)))
            n_cross = max(1, round(cfg.cross_rate * len(x)))
            pattern, mask = self._trigger(gen, x)
            p_pattern, p_mask = self._trigger(gen, partner)
            bd = self._stamp(x[:n_bd], pattern[:n_bd], mask[:n_bd])
            cross = self._stamp(x[n_bd:n_bd + n_cross], p_pattern[n_bd:n_bd + n_cross], p_mask[n_bd:n_bd + n_cross])
            inputs = torch.cat([bd, cross, x[n_bd + n_cross:]])
            labels = torch.cat([self.target_for(y[:n_bd]), y[n_bd:]])
            loss_ce = F.cross_entropy(clf(inputs), labels)
            # the diversity loss on the masks too (the paper's mask-generator stage): without it the
            # density penalty drives every mask to zero, where the squashing has no gradient left
            d_in = (x - partner).flatten(1).norm(dim=1)
            loss_div = sum((d_in / ((a - b).flatten(1).norm(dim=1) + 1e-3)).mean()
                           for a, b in ((pattern, p_pattern), (mask, p_mask)))
            loss_norm = F.relu(mask.flatten(1).mean(1) - cfg.mask_density).mean()
            loss = loss_ce + cfg.lambda_div * loss_div + cfg.lambda_norm * loss_norm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.generator = freeze(gen)

    def _require_generator(self):
        if self.generator is None:
            raise RuntimeError("the trigger generator is trained in poison_train; call it before poison_test")

    def apply(self, images, partners=None):
        """Each image gets the trigger generated from itself (or from ``partners``: the cross samples)."""
        self._require_generator()
        partners = images if partners is None else partners
        both = torch.cat([images, partners], dim=1)
        C = images.shape[1]

        def stamp(xp):
            x, p = xp[:, :C], xp[:, C:]
            pattern, mask = self._trigger(self.generator, p)
            return self._stamp(x, pattern, mask)

        return apply_batched(stamp, both, self.cfg.device)

    def poison_train(self, train, generator):
        self.fit(train)
        poisoned = super().poison_train(train, generator)
        rest = torch.ones(len(train), dtype=torch.bool)
        rest[poisoned.poisoned_indices] = False
        rest_idx = rest.nonzero().flatten()
        n_cross = min(len(rest_idx), round(self.cfg.cross_rate * len(train)))
        cross = rest_idx[torch.randperm(len(rest_idx), generator=generator)[:n_cross]]
        partners = torch.randint(0, len(train), (n_cross,), generator=generator)
        poisoned.images[cross] = self.apply(train.images[cross], train.images[partners])
        poisoned.cross_indices = cross
        return poisoned
