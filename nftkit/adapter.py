"""The domain contract. One subclass per modality; the engine calls only these methods.

The engine never looks inside a batch: it asks the adapter to collate, move, augment and score it.
The adapter never sees masks: it gets a model and returns a loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset, default_collate

from .config import StrictModel
from .errors import DataError
from .registry import Registry


@dataclass
class Splits:
    """What an experiment needs from a dataset: the attacker's training data, the defender's small
    clean set (held out from training), and the clean test set."""

    train: Dataset
    clean: Dataset
    test: Dataset
    info: dict[str, Any] = field(default_factory=dict)


class Adapter:
    """Base class of a domain adapter.

    Engine-facing methods (used by :func:`nftkit.purify`): :meth:`collate`, :meth:`to_device`,
    :meth:`augment`, :meth:`loss`, :meth:`forward`, :meth:`check_data`, :meth:`samples_per_class`,
    for SFT :meth:`sample_losses`, for the clean-subspace projection :meth:`correct_predictions`;
    for few-shot benchmarks :meth:`few_shot`.

    Experiment-facing methods (used by recipes): :meth:`load_data`, :meth:`build_model`,
    :meth:`evaluate`, plus the typed sections ``DataConfig`` and ``ModelConfig`` and the attacks
    this domain registers in :data:`nftkit.attacks.ATTACKS` under ``"<name>/<attack>"``.
    """

    name: ClassVar[str] = ""
    DataConfig: ClassVar[type[StrictModel]] = StrictModel
    ModelConfig: ClassVar[type[StrictModel]] = StrictModel

    # ---- engine-facing -------------------------------------------------------------------
    def collate(self, samples: list) -> Any:
        return default_collate(samples)

    def to_device(self, batch: Any, device: torch.device) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b, device) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v, device) for k, v in batch.items()}
        return batch

    def augment(self, batch: Any, kind: str, generator: torch.Generator) -> Any:
        """Return an augmented batch. ``kind`` is 'mix' (the mixing loss of NFT), 'basic' (label-
        preserving augmentation only) or 'none'."""
        return batch

    def forward(self, model: nn.Module, batch: Any) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def sample_losses(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """One loss per sample (shape B); needed by the Fisher terms of SFT."""
        raise NotImplementedError(f"{type(self).__name__} gives no per-sample losses; SFT and fast_sft need them")

    def correct_predictions(self, output: Any, batch: Any) -> torch.Tensor:
        """True for each prediction in ``output`` (what :meth:`forward` returned for ``batch``) that
        matches the batch's labels; the clean-subspace projection keeps held-out accuracy with it."""
        raise NotImplementedError(f"{type(self).__name__} does not score predictions; clean_subspace needs "
                                  "correct_predictions(output, batch), or give subspace_energy explicitly")

    def distillation_loss(self, output: Any, reference: Any, batch: Any, temperature: float) -> torch.Tensor:
        """How far ``output`` is from a reference model's ``reference`` on the same batch (both what
        :meth:`forward` returned), for ``distill_weight``; scaled by temperature**2 so the weight does not
        depend on the temperature."""
        raise NotImplementedError(f"{type(self).__name__} gives no distillation loss; distill_weight needs "
                                  "distillation_loss(output, reference, batch, temperature)")

    def aimed(self, model: nn.Module, data: Dataset, kind: str, device: torch.device,
              generator: torch.Generator) -> "Adapter":
        """The adapter that augments one run of the loop with augmentation ``kind``, given the input model
        and the clean set; called once before training. An adapter whose defense augmentation should go
        where the input model reacts most (where a trigger may sit) returns a copy that aims it there. By
        default the same adapter."""
        return self

    def check_data(self, data: Dataset) -> None:
        """Raise :class:`DataError` naming the problem and the fix if ``data`` cannot be a clean set."""
        if len(data) == 0:
            raise DataError("the clean set is empty; give at least one labelled sample per class")

    def few_shot(self, data: Dataset, per_class: int, generator: torch.Generator) -> Dataset:
        """A class-balanced subset of the clean set (the one-shot setting); domains without classes
        may return a random subset of ``per_class`` samples per distinct target."""
        raise NotImplementedError(f"{type(self).__name__} does not support few-shot subsets")

    def samples_per_class(self, data: Dataset) -> float:
        """n_c, which scales the NFT regulariser (eta_c = 5e-4 / n_c)."""
        return float(len(data))

    # ---- experiment-facing ---------------------------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg: StrictModel, model_cfg: StrictModel) -> "Adapter":
        return cls()

    def load_data(self, cfg: StrictModel, seed: int) -> Splits:
        raise NotImplementedError

    def for_defense(self) -> "Adapter":
        """The adapter a recipe's defense purifies with. The attacker chose how the victim was trained;
        an adapter whose config holds defense-only choices (a purification loss) returns a copy that
        applies them. By default the same adapter."""
        return self

    def build_model(self, cfg: StrictModel) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_user_data(cls, path: str, num_classes: Optional[int] = None) -> tuple["Adapter", Dataset, dict[str, Any]]:
        """For ``nftkit purify``: read the user's clean data at ``path`` and return (adapter, dataset, info)."""
        raise NotImplementedError(f"the {cls.name} adapter cannot read user data yet")

    def load_user_data(self, path: str) -> Dataset:
        """Read more data of the same kind (e.g. a test folder) for this adapter."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, test: Dataset, poisoned_test: Optional[Dataset], attack: Any,
                 device: torch.device, batch_size: int = 256) -> dict[str, float]:
        raise NotImplementedError


ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


def register_adapter(name: str):
    def decorator(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        return ADAPTERS.register(name)(cls)

    return decorator
