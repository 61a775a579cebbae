"""Smoothness diagnostics of the loss surface: lambda_max and trace of the Hessian w.r.t. the weights.

Computed on one batch of clean samples in eval mode with Hessian-vector products; usable on any
model and adapter (SFT's claim is that purification makes the surface smooth).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .adapter import Adapter


def _hvp(loss_grads, params, vector):
    dot = sum((g * v).sum() for g, v in zip(loss_grads, vector))
    return torch.autograd.grad(dot, params, retain_graph=True)


def _dot(a, b) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def smoothness(model: nn.Module, adapter: Adapter, data: Dataset, samples: int = 200, iterations: int = 20,
               probes: int = 20, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, float]:
    """{'lambda_max': power iteration on HVPs, 'hessian_trace': Hutchinson with Rademacher probes}."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=g)[:samples].tolist()
    batch = adapter.to_device(adapter.collate([data[i] for i in index]), device)
    work = copy.deepcopy(model).to(device).eval()
    params = [p for p in work.parameters()]
    for p in params:
        p.requires_grad_(True)
    grads = torch.autograd.grad(adapter.loss(work, batch), params, create_graph=True)

    vector = [torch.randn(p.shape, generator=g).to(p) for p in params]
    eigen = torch.zeros(())
    for _ in range(iterations):
        norm = torch.sqrt(_dot(vector, vector))
        vector = [v / norm for v in vector]
        hv = _hvp(grads, params, vector)
        eigen = _dot(vector, hv).detach()
        vector = [h.detach() for h in hv]

    trace = 0.0
    for _ in range(probes):
        probe = [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) for p in params]
        trace += float(_dot(probe, _hvp(grads, params, probe)))
    return {"lambda_max": float(eigen), "hessian_trace": trace / probes}
