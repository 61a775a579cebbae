"""Regularisers: callables over the wrapped layers, added to the adapter's loss by the loop."""
from __future__ import annotations

from typing import Protocol

import torch

from .reparam import NeuronMask, Reparameterized


class Regularizer(Protocol):
    name: str

    def __call__(self, wrapped: dict[str, Reparameterized]) -> torch.Tensor: ...


class MaskL1Drift:
    """eta * sum |1 - m| over all neural masks (NFT Eq. 9): keeps the purified model near the original."""

    name = "mask_l1"

    def __init__(self, eta: float):
        self.eta = eta

    def __call__(self, wrapped: dict[str, Reparameterized]) -> torch.Tensor:
        drifts = [(1 - w.mask).abs().sum() for w in wrapped.values() if isinstance(w, NeuronMask)]
        return self.eta * torch.stack(drifts).sum() if drifts else torch.zeros(())
