"""Video backdoor attacks.

- ``video/clb``: the clean-label video backdoor of Zhao et al. (CVPR 2020). A patch trigger (20 x 20 at
  224 x 224, scaled with the frame size) is optimised on a surrogate model into a universal adversarial
  trigger for the target class; target-class training clips get a PGD perturbation that erases their
  natural evidence for the class (on the same surrogate) and then the trigger. Labels are unchanged.
- ``video/badnets``: the poison-label patch attack for quick tests (trigger pasted, label set to target).

The surrogate is the recipe's own model architecture, trained on the attacker's clean training clips
through the same loop as any victim (``nftkit.train``).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

import nftkit
from nftkit.attacks import ATTACKS
from nftkit.config import StrictModel
from nftkit.errors import ConfigError

from ..classification import LabelAttack, LabelAttackConfig
from .data import EditedVideos, VideoDataset


class VideoAttackConfig(LabelAttackConfig):
    mode: Literal["all2one"] = "all2one"  # the papers' video attacks send every clip to one class
    trigger_size: int = Field(default=20, ge=1)  # side in pixels at reference_size; scaled with the frame size
    reference_size: int = Field(default=224, ge=1)


class VideoAttack(LabelAttack):
    """All-to-one patch attack; the trigger sits in the bottom-right corner of every frame."""

    Config = VideoAttackConfig

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        t, c, h, w = info["clip_shape"]
        side = max(2, round(cfg.trigger_size * min(h, w) / cfg.reference_size))
        g = torch.Generator().manual_seed(cfg.trigger_seed)
        self.pattern = (torch.rand(c, side, side, generator=g) > 0.5).float()  # a high-contrast random patch

    def apply(self, clips: torch.Tensor, pattern: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Paste the trigger into every frame of float clips ``... x T x C x H x W`` in [0, 1]."""
        pattern = self.pattern if pattern is None else pattern
        s = pattern.shape[-1]
        out = clips.clone()
        out[..., -s:, -s:] = pattern.to(clips.device, clips.dtype)
        return out

    def poison_test(self, test: VideoDataset) -> VideoDataset:
        keep = self._candidates(test.targets)
        return EditedVideos(test, index=keep, triggered=keep, trigger=self.apply)


@ATTACKS.register("video/badnets")
class VideoBadNets(VideoAttack):
    """Poison-label patch attack: ``poison_rate`` of the training clips get the trigger and the target label."""

    def poison_train(self, train, generator):
        chosen = self._choose(train.targets, generator)
        targets = train.targets.clone()
        targets[chosen] = self.cfg.target
        return EditedVideos(train, targets=targets, triggered=chosen, trigger=self.apply)


class SurrogateConfig(StrictModel):
    """Training of the attacker's surrogate (the recipe's architecture, on the clean training clips)."""

    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    seed: int = 0


@ATTACKS.register("video/clb")
class CleanLabelVideo(VideoAttack):
    """Zhao et al. (CVPR 2020); ``poison_rate`` is the fraction of the target class that is poisoned."""

    class Config(VideoAttackConfig):
        poison_rate: float = Field(default=0.8, ge=0, le=1)
        trigger: Literal["universal", "random"] = "universal"
        trigger_steps: int = Field(default=200, ge=0)  # sign-gradient steps of the universal trigger
        trigger_lr: float = Field(default=0.02, gt=0)
        eps: float = Field(default=16 / 255, ge=0, le=1)  # L-inf budget of the PGD perturbation
        pgd_steps: int = Field(default=10, ge=0)
        pgd_step_size: Optional[float] = Field(default=None, gt=0)  # default 2.5 * eps / pgd_steps
        batch_size: int = Field(default=16, ge=1)
        device: str = "cpu"
        surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)

    def poison_train(self, train, generator):
        if self.adapter is None:
            raise ConfigError("the clean-label video attack trains a surrogate model and needs the adapter: "
                              "construct it as CleanLabelVideo(cfg, info, adapter)")
        cfg = self.cfg
        device = torch.device(cfg.device)
        surrogate = self._surrogate(train).to(device).eval()
        for p in surrogate.parameters():
            p.requires_grad_(False)
        if cfg.trigger == "universal" and cfg.trigger_steps > 0:
            self.pattern = self._universal_trigger(surrogate, train, generator, device)
        in_target = (train.targets == cfg.target).nonzero().flatten()
        n = round(cfg.poison_rate * len(in_target))
        chosen = in_target[torch.randperm(len(in_target), generator=generator)[:n]].sort().values
        replaced: dict[int, torch.Tensor] = {}
        for batch in chosen.split(cfg.batch_size):
            clips = torch.stack([train[int(i)][0] for i in batch]).to(device)
            labels = train.targets[batch].to(device)
            poisoned = self.apply(self._pgd(surrogate, clips, labels, generator))
            for i, clip in zip(batch.tolist(), poisoned.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()):
                replaced[i] = clip
        return EditedVideos(train, replaced=replaced)

    def _surrogate(self, train):
        s = self.cfg.surrogate
        torch.manual_seed(s.seed)
        model = self.adapter.build_model(self.adapter.model_cfg)
        return nftkit.train(model, self.adapter, train, steps=s.steps, batch_size=s.batch_size, lr=s.lr,
                            seed=s.seed, device=self.cfg.device).model

    def _universal_trigger(self, model, train, generator, device) -> torch.Tensor:
        """A patch that pushes clips of every other class to the target class on the surrogate."""
        others = self._candidates(train.targets)
        pattern = self.pattern.clone().to(device)
        target = torch.tensor(self.cfg.target, device=device)
        for _ in range(self.cfg.trigger_steps):
            pick = others[torch.randint(len(others), (min(self.cfg.batch_size, len(others)),), generator=generator)]
            clips = torch.stack([train[int(i)][0] for i in pick]).to(device)
            pattern.requires_grad_(True)
            loss = F.cross_entropy(model(self.apply(clips, pattern)), target.expand(len(pick)))
            (grad,) = torch.autograd.grad(loss, pattern)
            pattern = (pattern.detach() - self.cfg.trigger_lr * grad.sign()).clamp(0, 1)
        return pattern.detach().cpu()

    def _pgd(self, model, clips, labels, generator) -> torch.Tensor:
        """Untargeted L-inf PGD away from the true (target) class: the clip keeps its look to a person
        but loses the evidence a model would learn the class from, so the trigger has to carry it."""
        eps, steps = self.cfg.eps, self.cfg.pgd_steps
        if eps == 0 or steps == 0:
            return clips
        step = self.cfg.pgd_step_size or 2.5 * eps / steps
        delta = ((torch.rand(clips.shape, generator=generator) * 2 - 1) * eps).to(clips.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((clips + delta).clamp(0, 1)), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
        return (clips + delta).clamp(0, 1).detach()
