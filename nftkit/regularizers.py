"""Regularisers: callables over the step context, added to the adapter's loss by the loop.

Each is built once from the method's Setup and called every step; returning None skips a step.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .reparam import NeuronMask


class MaskL1Drift:
    """eta * sum |1 - m| over all neural masks (NFT Eq. 9): keeps the purified model near the original."""

    name = "mask_l1"

    def __init__(self, eta: float):
        self.eta = eta

    def __call__(self, ctx) -> torch.Tensor:
        drifts = [(1 - w.mask).abs().sum() for w in ctx.setup.wrapped.values() if isinstance(w, NeuronMask)]
        return self.eta * torch.stack(drifts).sum() if drifts else None


class MaskSparsity:
    """eta * sum m over all neural masks: pulls every mask towards its lower bound mu(l), so a neuron
    survives only where the clean loss pays for it. A neuron that clean data leaves silent (where a
    trigger's pathway runs) gets no clean gradient, and MaskL1Drift alone would leave it at 1.
    ``inputs_only``: the pull acts on input-feature masks alone (``input_masks``), which tend to the
    feature's clean mean, not to 0."""

    name = "mask_sparsity"

    def __init__(self, eta: float, inputs_only: bool = False):
        self.eta, self.inputs_only = eta, inputs_only

    def __call__(self, ctx) -> torch.Tensor:
        masks = [w for w in ctx.setup.wrapped.values() if isinstance(w, NeuronMask)]
        if self.inputs_only:
            sizes = [w.mask[w.rule.output_units(w.base_layer):].sum() for w in masks if w.rule.inputs]
        else:
            sizes = [w.mask.sum() for w in masks]
        return self.eta * torch.stack(sizes).sum() if sizes else None


def _signed_sample_gradients(adapter, model, batch, params, generator, create_graph: bool):
    """grad of sum_i s_i * loss_i with Rademacher signs s.

    Its elementwise square and its squared norm are unbiased estimates of sum_i g_i^2 and
    sum_i ||g_i||^2 (cross terms vanish in expectation), with one backward pass for the batch.
    """
    losses = adapter.sample_losses(model, batch)
    signs = (torch.randint(0, 2, (len(losses),), generator=generator) * 2 - 1).to(losses)
    grads = torch.autograd.grad((signs * losses).sum(), params, create_graph=create_graph)
    return grads, len(losses)


class FisherTrace:
    """eta_F * Tr(F) of the empirical Fisher with true labels, E_x ||grad log p(y|x)||^2 (SFT).

    Back-propagated every ``every`` steps: it needs a double backward.
    """

    name = "fisher_trace"

    def __init__(self, eta: float, every: int, params: list[nn.Parameter], generator: torch.Generator):
        self.eta, self.every, self.params, self.generator = eta, every, params, generator

    def __call__(self, ctx) -> Optional[torch.Tensor]:
        if ctx.step % self.every:
            return None
        s = ctx.setup
        grads, n = _signed_sample_gradients(s.adapter, s.model, ctx.batch, self.params, self.generator, True)
        return self.eta * sum((g * g).sum() for g in grads) / n


class FisherWeightedDrift:
    """(eta_r / 2) * sum_i diag(Fbar)_i (theta_i - theta0_i)^2, Fbar estimated once on the clean set (SFT)."""

    name = "fisher_drift"

    def __init__(self, eta: float, params: list[nn.Parameter], fisher: list[torch.Tensor]):
        self.eta, self.params, self.fisher = eta, params, fisher
        self.anchors = [p.detach().clone() for p in params]

    def __call__(self, ctx) -> torch.Tensor:
        return 0.5 * self.eta * sum((f * (p - a) ** 2).sum() for p, a, f in zip(self.params, self.anchors, self.fisher))


def fisher_diagonal(setup, params: list[nn.Parameter], batch_size: int) -> list[torch.Tensor]:
    """Mean per-sample squared gradients of the loss over the whole clean set, in eval mode."""
    from torch.utils.data import DataLoader

    model, adapter = setup.model, setup.adapter
    was_training = model.training
    model.eval()
    total = [torch.zeros_like(p) for p in params]
    count = 0
    for batch in DataLoader(setup.data, batch_size=batch_size, collate_fn=adapter.collate):
        batch = adapter.to_device(batch, setup.device)
        grads, n = _signed_sample_gradients(adapter, model, batch, params, setup.generator, False)
        for t, g in zip(total, grads):
            t += g.detach() ** 2
        count += n
    model.train(was_training)
    return [t / max(count, 1) for t in total]


class HeadAlignment:
    """alpha * <w, w0> over the output head's weights (FST, Min et al. 2023): pushes the re-initialised
    head away from the backdoored one, so the features must shift to fit the clean data."""

    name = "head_alignment"

    def __init__(self, alpha: float, head: nn.Module, original: torch.Tensor):
        self.alpha, self.head, self.original = alpha, head, original

    def __call__(self, ctx) -> torch.Tensor:
        return self.alpha * (self.head.weight * self.original).sum()


class Distillation:
    """eta_D * the adapter's distillation loss between the model's outputs on the batch and a frozen copy
    of the input model's (knowledge distillation, Hinton et al. 2015).

    It holds the clean behaviour that a small clean set alone under-determines, so tuning can spend
    its changes on what the clean set does not check.
    """

    name = "distill"

    def __init__(self, eta: float, temperature: float, teacher: nn.Module):
        self.eta, self.temperature, self.teacher = eta, temperature, teacher.eval().requires_grad_(False)

    def __call__(self, ctx) -> torch.Tensor:
        adapter = ctx.setup.adapter
        with torch.no_grad():
            reference = adapter.forward(self.teacher, ctx.batch)
        output = adapter.forward(ctx.setup.model, ctx.batch)
        return self.eta * adapter.distillation_loss(output, reference, ctx.batch, self.temperature)


def softmax_distillation(output: torch.Tensor, reference: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(reference / T) || softmax(output / T)) * T^2, averaged over the rows (the last dim holds classes)."""
    t = temperature
    output, reference = output.reshape(-1, output.shape[-1]), reference.reshape(-1, reference.shape[-1])
    return F.kl_div(F.log_softmax(output / t, -1), F.log_softmax(reference / t, -1), log_target=True,
                    reduction="batchmean") * t * t
