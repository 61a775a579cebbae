"""Singular-value shifts (fast SFT): W = U diag(relu(sigma + delta)) V^T, only delta is tuned."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from .base import Reparameterized


class SpectralShift(Reparameterized):
    """Wraps a layer whose ``weight`` has output units on axis 0 (Linear, Conv*).

    Conv kernels are reshaped to out x (in * k * k). The SVD is taken once, when wrapping, on the
    loaded weights; U, S, V are buffers; delta starts at 0.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight.detach()
        u, s, vh = torch.linalg.svd(weight.reshape(weight.shape[0], -1).double(), full_matrices=False)
        self.register_buffer("u", u.to(weight.dtype))
        self.register_buffer("s", s.to(weight.dtype))
        self.register_buffer("vh", vh.to(weight.dtype))
        self.delta = nn.Parameter(torch.zeros_like(self.s))

    def effective_weight(self) -> torch.Tensor:
        spectrum = torch.relu(self.s + self.delta)
        return ((self.u * spectrum) @ self.vh).reshape(self.base_layer.weight.shape)

    def forward(self, *args, **kwargs):
        return functional_call(self.base_layer, {"weight": self.effective_weight()}, args, kwargs)

    def tunable(self) -> list[nn.Parameter]:
        return [self.delta]

    @torch.no_grad()
    def fold(self) -> nn.Module:
        self.base_layer.weight.copy_(self.effective_weight())
        return self.base_layer

    def extra_repr(self) -> str:
        return f"rank={self.s.numel()}"
