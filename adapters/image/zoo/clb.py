"""Label-consistent backdoor, CLB (Turner et al., 2019).

Only target-class training images are poisoned and their labels stay correct. Each is first made hard
to classify by untargeted L-inf PGD against a surrogate trained on clean data, so the victim has to lean
on the trigger (a 3x3 checkerboard) to fit it. Test images get the trigger alone.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

import nftkit
from nftkit.attacks import ATTACKS

from ..attacks import ImageAttack
from ..data import ImageTensorDataset
from .common import TrainedAttackConfig, apply_batched, freeze, image_adapter, step_count, surrogate_model


def checkerboard(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy + xx) % 2 == 0).float()


@ATTACKS.register("image/clb")
class CLB(ImageAttack):
    class Config(TrainedAttackConfig):
        mode: Literal["all2one"] = "all2one"
        poison_rate: float = Field(default=0.8, ge=0, le=1)  # fraction of the target class
        eps: float = Field(default=16 / 255, ge=0)
        pgd_steps: int = Field(default=10, ge=0)
        pgd_step_size: float | None = None  # default eps / 4
        size: int = Field(default=3, ge=1)
        corners: Literal[1, 4] = 1  # 4: the paper's four-corner variant, robust to flips and crops
        amplitude: float = Field(default=1.0, gt=0, le=1)  # < 1 blends the checkerboard (less visible)
        surrogate_steps: int = Field(default=300, ge=1)
        surrogate_lr: float = Field(default=0.05, gt=0)
        # the paper perturbs with an adversarially trained (Madry) model: its adversarial examples carry
        # features of other classes and transfer; a plain model's do not, and the attack barely implants
        robust_surrogate: bool = True
        robust_pgd_steps: int = Field(default=5, ge=1)  # PGD steps per adversarial-training batch

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        C, H, W = self.shape
        s = cfg.size
        self.mask = torch.zeros(1, H, W)
        self.pattern = torch.zeros(C, H, W)
        board = checkerboard(s)
        spots = [(H - s, W - s)] + ([(0, 0), (0, W - s), (H - s, 0)] if cfg.corners == 4 else [])
        for y, x in spots:
            self.mask[:, y:y + s, x:x + s] = cfg.amplitude
            self.pattern[:, y:y + s, x:x + s] = board

    def apply(self, images):
        return images * (1 - self.mask) + self.pattern * self.mask

    def train_surrogate(self, train: ImageTensorDataset) -> torch.nn.Module:
        """A clean model of the attacker's own, trained with the same loop as the victims."""
        cfg = self.cfg
        model = surrogate_model(self, cfg.surrogate_arch, cfg.surrogate_width)
        steps = step_count(cfg, len(train), cfg.surrogate_steps, 128)
        if cfg.robust_surrogate:
            return freeze(self.train_robust(model.to(cfg.device), train, steps))
        result = nftkit.train(model, image_adapter(self), train, steps=steps, batch_size=128,
                              lr=cfg.surrogate_lr, seed=cfg.trigger_seed, device=cfg.device)
        return freeze(result.model.to(cfg.device))

    def train_robust(self, model: torch.nn.Module, train: ImageTensorDataset, steps: int) -> torch.nn.Module:
        """Madry et al.'s adversarial training: every batch replaced by its PGD examples (random start)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.trigger_seed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.surrogate_lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.surrogate_lr, total_steps=steps)
        for _ in range(steps):
            idx = torch.randint(0, len(train), (128,), generator=g)
            x, y = train.images[idx].to(cfg.device), train.targets[idx].to(cfg.device)
            start = (x + torch.empty_like(x).uniform_(-cfg.eps, cfg.eps, generator=g)).clamp(0, 1)
            model.eval()
            x_adv = self.pgd(model, x, y, start=start, steps=cfg.robust_pgd_steps, step=2.5 * cfg.eps / cfg.robust_pgd_steps)
            model.train()
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return model

    def pgd(self, model, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None = None,
            steps: int | None = None, step: float | None = None) -> torch.Tensor:
        """Untargeted L-inf PGD, by default from the clean image (no random start: deterministic)."""
        cfg = self.cfg
        step = step or cfg.pgd_step_size or cfg.eps / 4
        x0 = images
        x = images.clone() if start is None else start
        for _ in range(cfg.pgd_steps if steps is None else steps):
            with torch.enable_grad():  # also when called from a no_grad batch helper
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
            with torch.no_grad():
                x = x + step * grad.sign()
                x = (x0 + (x - x0).clamp(-cfg.eps, cfg.eps)).clamp(0, 1)
        return x.detach()

    def poison_train(self, train, generator):
        in_target = (train.targets == self.cfg.target).nonzero().flatten()
        chosen = in_target[torch.randperm(len(in_target), generator=generator)[:round(self.cfg.poison_rate * len(in_target))]]
        images = train.images.clone()
        if len(chosen):
            hard = images[chosen]
            if self.cfg.eps > 0 and self.cfg.pgd_steps > 0:
                model = self.train_surrogate(train)
                label = torch.full((1,), self.cfg.target)
                hard = apply_batched(lambda x: self.pgd(model, x, label.to(x.device).expand(len(x))), hard, self.cfg.device)
            images[chosen] = self.apply(hard)
        poisoned = ImageTensorDataset(images, train.targets.clone())
        poisoned.poisoned_indices = chosen
        return poisoned
