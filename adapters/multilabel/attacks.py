"""Clean-image backdoor (Chen et al., ICLR 2023): no pixel is changed; a combination of categories is
the trigger and only the labels of training images that contain it are poisoned.

Variants (the attacker's goal on any image whose label set contains every trigger category):
- ``disappearing``: the target category (present, by default the last trigger category) is not predicted;
- ``appearing``: the target category (absent) is predicted;
- ``misclassification``: the source category (present) is not predicted and the target (absent) is.

The poisoned test set holds the clean test images that contain the trigger and on which the attack
changes something, with their TRUE label sets; :meth:`CleanImageBackdoor.target_for` gives the label
sets the attacker wants. ASR is the share of those images whose predictions on every attacked
category equal the attacker's (Chen et al.'s definition, threshold 0.5).
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Literal, Optional, Union

import torch
from pydantic import Field

from nftkit.attacks import ATTACKS, Attack
from nftkit.config import StrictModel
from nftkit.errors import ConfigError, DataError

Category = Union[int, str]


class CleanImageConfig(StrictModel):
    name: str
    variant: Literal["disappearing", "appearing", "misclassification"] = "disappearing"
    # category names or indices; empty = the combination of trigger_size categories whose share of
    # the training set is closest to poison_rate (ties: lowest indices)
    trigger: list[Category] = Field(default_factory=list)
    trigger_size: int = Field(default=2, ge=1, le=4)
    target: Optional[Category] = None
    source: Optional[Category] = None  # misclassification only
    poison_rate: float = Field(default=0.05, gt=0, le=1)  # of the training set; capped by the images holding the trigger


@ATTACKS.register("multilabel/clean_image")
class CleanImageBackdoor(Attack):
    Config = CleanImageConfig

    def __init__(self, cfg: CleanImageConfig, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.classes: list[str] = list(info["classes"])
        self.trigger: Optional[list[int]] = [self._index(c) for c in cfg.trigger] or None
        if self.trigger is not None:
            self._resolve_roles()

    def _index(self, c: Category) -> int:
        if isinstance(c, int) and 0 <= c < len(self.classes):
            return c
        if isinstance(c, str) and c in self.classes:
            return self.classes.index(c)
        raise ConfigError(f"attack category {c!r} is not a class of this dataset; use an index 0..{len(self.classes) - 1} "
                          f"or one of {self.classes}")

    def _resolve_roles(self) -> None:
        trig = self.trigger
        if len(set(trig)) != len(trig):
            raise ConfigError(f"attack.trigger repeats a category: {trig}")
        variant = self.cfg.variant
        outside = [c for c in range(len(self.classes)) if c not in trig]
        if variant == "disappearing":
            self.source, self.target = None, self._index(self.cfg.target) if self.cfg.target is not None else trig[-1]
            self.remove, self.add = [self.target], []
        else:
            if self.cfg.target is None and not outside:
                raise ConfigError("the trigger holds every category: nothing is left to make appear")
            self.target = self._index(self.cfg.target) if self.cfg.target is not None else outside[0]
            if self.target in trig:
                raise ConfigError(f"attack.target '{self.classes[self.target]}' is part of the trigger; an appearing "
                                  "target must be a category the trigger images do not need to hold")
            self.source = None
            if variant == "misclassification":
                self.source = self._index(self.cfg.source) if self.cfg.source is not None else trig[-1]
                if self.source == self.target:
                    raise ConfigError("attack.source and attack.target must differ")
            self.remove, self.add = ([self.source] if self.source is not None else []), [self.target]

    # ---- which images the attack concerns ---------------------------------------------------
    def holds_trigger(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, self.trigger].bool().all(1)

    def affected(self, labels: torch.Tensor) -> torch.Tensor:
        """Images holding the trigger on which the attacker's label set differs from the truth."""
        return self.holds_trigger(labels) & (self.target_for(labels) != labels).any(1)

    def target_for(self, labels: torch.Tensor) -> torch.Tensor:
        out = labels.clone()
        if self.remove:
            out[:, self.remove] = 0.0
        if self.add:
            out[:, self.add] = 1.0
        return out

    def choose_trigger(self, labels: torch.Tensor) -> list[int]:
        """The combination whose frequency in the training labels is closest to the poison rate.

        Only combinations that occur are counted (per image, the k-subsets of its label set), so
        COCO's 80 categories cost no more than VOC's 20."""
        k = self.cfg.trigger_size
        counts: Counter = Counter()
        for row in labels.bool().tolist():
            counts.update(itertools.combinations([c for c, on in enumerate(row) if on], k))
        if not counts:
            raise DataError(f"no {k} categories occur together in the training set; lower attack.trigger_size")
        rate, n = self.cfg.poison_rate, len(labels)
        best = min(counts, key=lambda combo: (abs(counts[combo] / n - rate), combo))
        return list(best)

    # ---- the attack -----------------------------------------------------------------------------
    def poison_train(self, train, generator: torch.Generator):
        labels = train.labels
        if self.trigger is None:
            self.trigger = self.choose_trigger(labels)
            self._resolve_roles()
        candidates = self.affected(labels).nonzero().flatten()
        if len(candidates) == 0:
            raise DataError(f"no training image holds the trigger {self.names(self.trigger)}; choose another attack.trigger")
        count = min(len(candidates), max(1, round(self.cfg.poison_rate * len(train))))
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]].sort().values
        poisoned = labels.clone()
        poisoned[chosen] = self.target_for(labels[chosen])
        out = train.with_labels(poisoned)
        out.poisoned_indices = chosen
        # recorded with the run's data info (results.json) so the trigger and real rate are visible
        self.info["attack"] = {"trigger": self.names(self.trigger), "variant": self.cfg.variant,
                               "target": self.classes[self.target],
                               "source": self.classes[self.source] if self.source is not None else None,
                               "train_with_trigger": int(len(candidates)), "poisoned": int(count),
                               "poison_rate": count / len(train)}
        return out

    def poison_test(self, test):
        if self.trigger is None:
            raise ConfigError("the trigger is chosen from the training labels: call poison_train first, or set attack.trigger")
        keep = self.affected(test.labels).nonzero().flatten()
        self.info.setdefault("attack", {})["test_with_trigger"] = int(len(keep))
        if len(keep) == 0:
            raise DataError(f"no test image holds the trigger {self.names(self.trigger)}; ASR cannot be measured")
        return test.subset(keep)

    def names(self, idx: list[int]) -> list[str]:
        return [self.classes[i] for i in idx]
