from __future__ import annotations

from ..regularizers import MaskL1Drift
from .base import Method, register


def _nft_regularizers(cfg, n_c):
    eta = cfg.eta_c if cfg.eta_c is not None else cfg.eta_c_base / max(n_c, 1.0)
    return [MaskL1Drift(eta)] if eta > 0 else []


register(Method(
    name="nft",
    reparam="neuron_mask",
    description="Neural mask Fine-Tuning: MixUp loss on per-neuron masks in [mu(l), 1] with L1 drift penalty",
    defaults=dict(steps=1000, lr=0.05, momentum=0.95, lr_schedule="cosine", lr_min=0.02, augment="mix"),
    regularizers=_nft_regularizers,
))

register(Method(
    name="ft",
    reparam="full",
    description="vanilla fine-tuning of all weights with cross-entropy on the clean set",
    defaults=dict(steps=1000, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant", augment="basic"),
))

register(Method(
    name="train",
    reparam="full",
    description="training from scratch or further training of all weights (used to build victim models)",
    defaults=dict(lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", lr_min=0.0, augment="basic"),
))
