"""Attack registry. Attacks are domain code (in adapters) registered as '<adapter>/<name>'."""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from torch.utils.data import Dataset

from .config import StrictModel
from .registry import Registry


class Attack:
    """Builds the attacker's poisoned training set and the poisoned test set used to measure ASR.

    The poisoned test set keeps each sample's *true* label; :meth:`target_for` gives the label the
    attacker wants, so ASR and LCR are both computed from it. It holds only samples whose target
    differs from their true label.
    """

    Config: ClassVar[type[StrictModel]] = StrictModel

    def __init__(self, cfg: StrictModel, info: dict[str, Any], adapter: Any = None):
        # adapter: for attacks that train or query a surrogate model (clean-label PGD, learned triggers)
        self.cfg = cfg
        self.info = info
        self.adapter = adapter

    def poison_train(self, train: Dataset, generator: torch.Generator) -> Dataset:
        raise NotImplementedError

    def poison_test(self, test: Dataset) -> Dataset:
        raise NotImplementedError

    def target_for(self, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def placement(self) -> Optional[Any]:
        """What ``poison_train`` decided beyond the config (a searched trigger position, say), as JSON-able
        data. It joins the victim's cache key, so that a change in how the attack decides cannot reuse a
        victim trained on another trigger. None when the config and the seed decide everything."""
        return None


ATTACKS: Registry[type[Attack]] = Registry("attack")
