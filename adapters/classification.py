"""What the single-label classification adapters share (image, video, point clouds, and users' own):
label checks, the per-class split of a clean set, batch MixUp and CutMix, and the label side of their attacks."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset

from nftkit.adapter import Adapter
from nftkit.attacks import Attack
from nftkit.config import StrictModel
from nftkit.errors import ConfigError, DataError
from nftkit.regularizers import softmax_distillation


def dataset_labels(data: Dataset) -> torch.Tensor:
    """The labels of a dataset of (input, label) pairs: its ``targets`` tensor if it has one, else a scan."""
    targets = getattr(data, "targets", None)
    if isinstance(targets, torch.Tensor) and len(targets) == len(data):
        return targets
    return torch.tensor([int(data[i][1]) for i in range(len(data))])


def check_class_labels(labels: torch.Tensor, num_classes: int, noun: str) -> None:
    """A clean set needs labels in 0..C-1 and at least two classes; ``noun`` names its samples."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(f"clean label {int(bad[0])} is out of range for a {num_classes}-class model; labels must be "
                        f"0..{num_classes - 1} (check num_classes or the label mapping)")
    if len(labels.unique()) < 2:
        raise DataError(f"the clean set holds a single class ({int(labels[0])}); purification needs clean {noun} of "
                        "at least two classes, ideally all of them")


def samples_per_class(labels: torch.Tensor) -> float:
    return len(labels) / max(1, len(labels.unique()))


def balanced_split(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random indices of every class (e.g. the defender's clean set) and the rest, both sorted."""
    picked = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    chosen = torch.cat(picked).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[chosen] = False
    return chosen, rest.nonzero().flatten()


def _batch_lambda(generator: torch.Generator, alpha: float) -> float:
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _partners(targets: torch.Tensor, generator: torch.Generator, same_class: bool) -> torch.Tensor:
    """A random in-batch partner for every row; with ``same_class``, one of the row's own (argmax) class
    (itself when it is alone in the batch)."""
    perm = torch.randperm(len(targets), generator=generator)
    if same_class:
        classes = targets.argmax(-1).cpu()
        for c in classes.unique():
            rows = (classes == c).nonzero().flatten()
            perm[rows] = rows[torch.randperm(len(rows), generator=generator)]
    return perm.to(targets.device)


def mixup(inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
          same_class: bool = False):
    """MixUp with one lambda ~ Beta(alpha, alpha) per batch and an in-batch permutation as partner.

    ``targets`` are probabilities (one-hot or multi-hot); returns mixed inputs and mixed targets.
    """
    lam = _batch_lambda(generator, alpha)
    perm = _partners(targets, generator, same_class)
    return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm]


def cutmix(inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
           same_class: bool = False):
    """CutMix (Yun et al., 2019): a box of area about 1 - lambda, lambda ~ Beta(alpha, alpha), is cut
    from an in-batch partner and pasted at a random centre (clipped at the border); targets mix by the
    area actually pasted. The box spans the last two dimensions, so on clips (B x T x C x H x W) it runs
    through every frame: VideoMix's spatial variant. Not torchvision's ``v2.CutMix``: that one draws from
    the global RNG and pairs neighbouring rows, where runs here draw everything from their generator."""
    h, w = inputs.shape[-2:]
    lam = _batch_lambda(generator, alpha)
    ch, cw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    cy, cx = (int(torch.randint(0, n, (1,), generator=generator)) for n in (h, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    perm = _partners(targets, generator, same_class)
    mixed = inputs.clone()
    mixed[..., y0:y1, x0:x1] = inputs[perm][..., y0:y1, x0:x1]
    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, kept * targets + (1 - kept) * targets[perm]


class LabelAttackConfig(StrictModel):
    name: str
    target: int = Field(default=0, ge=0)
    mode: Literal["all2one", "all2all"] = "all2one"
    poison_rate: float = Field(default=0.1, ge=0, le=1)
    trigger_seed: int = 0


class LabelAttack(Attack):
    """The label side of a single-label attack: which label each sample is sent to, which samples can be
    poisoned (those whose target differs from their label), and how many. Subclasses add the trigger."""

    Config = LabelAttackConfig

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.num_classes = info["num_classes"]
        if cfg.target >= self.num_classes:
            raise ConfigError(f"attack.target={cfg.target} is not a class of this {self.num_classes}-class dataset")

    def target_for(self, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.mode == "all2all":
            return (labels + 1) % self.num_classes
        return torch.full_like(labels, self.cfg.target)

    def _candidates(self, labels: torch.Tensor) -> torch.Tensor:
        return (self.target_for(labels) != labels).nonzero().flatten()

    def _choose(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``poison_rate`` of all samples, drawn from the candidates (fewer if there are not enough)."""
        candidates = self._candidates(labels)
        count = min(len(candidates), round(self.cfg.poison_rate * len(labels)))
        return candidates[torch.randperm(len(candidates), generator=generator)[:count]]

    def _seeded(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.trigger_seed)


class SingleLabelAdapter(Adapter):
    """Forward and loss of a classifier whose batches are ``(inputs, labels)``: labels are class indices,
    or class probabilities after MixUp. An augmented batch may carry a third element, B bools: the rows
    where the input model's outputs are a target for distillation (False where the augmentation put in
    something the input model may answer with its backdoor)."""

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, model, batch):
        return F.cross_entropy(self.forward(model, batch), batch[1])

    def sample_losses(self, model, batch):
        return F.cross_entropy(self.forward(model, batch), batch[1], reduction="none")

    def distillation_loss(self, output, reference, batch, temperature):
        if isinstance(batch, (tuple, list)) and len(batch) > 2:
            rows = batch[2]
            if not rows.any():
                return output.sum() * 0.0
            output, reference = output[rows], reference[rows]
        return softmax_distillation(output, reference, temperature)

    def correct_predictions(self, output, batch):
        labels = batch[1].argmax(-1) if batch[1].is_floating_point() else batch[1]
        return output.argmax(-1) == labels
