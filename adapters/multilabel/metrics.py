"""Multi-label metrics (percent): mAP with torchmetrics, ASR of the clean-image backdoor, and the losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multilabel_average_precision


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro mAP over the categories that have at least one positive (as VOC/COCO evaluation does).

    torchmetrics averages over every category; one with no positive has an undefined AP, so it is
    left out here instead of counting as 0.
    """
    present = labels.sum(0) > 0
    if not present.any():
        return float("nan")
    ap = multilabel_average_precision(scores[:, present], labels[:, present].long(), num_labels=int(present.sum()),
                                      average="none", thresholds=None)
    return 100.0 * ap.mean().item()


def attack_success_rate(scores: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor,
                        threshold: float = 0.5) -> float:
    """Share of images whose thresholded predictions equal the attacker's label set on every category
    the attack changes (the other categories do not count)."""
    attacked = targets != true_labels
    keep = attacked.any(1)
    if not keep.any():
        return float("nan")
    preds = (scores >= threshold).float()
    hit = ((preds == targets) | ~attacked).all(1)
    return 100.0 * hit[keep].float().mean().item()


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05, eps: float = 1e-8, reduction: str = "mean") -> torch.Tensor:
    """ASL (Ridnik et al., 2021), as ML-Decoder trains: focusing on negatives and a probability margin.
    Soft (MixUp) targets weight the positive and negative terms."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    pos = targets * torch.log(p.clamp(min=eps)) * (1 - p).pow(gamma_pos)
    neg = (1 - targets) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg.pow(gamma_neg)
    per_sample = -(pos + neg).sum(1)
    return per_sample if reduction == "none" else per_sample.mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean over categories and images; ``reduction='none'`` gives one value per image (mean over categories)."""
    if reduction == "none":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    return F.binary_cross_entropy_with_logits(logits, targets)
