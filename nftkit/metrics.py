"""Backdoor metrics: a functional core (torchmetrics) inside a thin stateful class.

ACC: clean test samples classified as their true label.
ASR: poisoned test samples (true label != attack target) classified as the attack target.
LCR: the same poisoned samples classified as their true label (label correction rate).
All in percent.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy


def accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * multiclass_accuracy(preds, labels, num_classes=num_classes, average="micro").item()


def attack_success_rate(preds: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    keep = targets != true_labels
    return accuracy(preds[keep], targets[keep], num_classes)


def label_correction_rate(preds: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    keep = targets != true_labels
    return accuracy(preds[keep], true_labels[keep], num_classes)


class BackdoorMetrics:
    """Accumulates predictions over batches; ``compute()`` gives acc, asr, lcr in percent."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._clean: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._poisoned: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update_clean(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        self._clean.append((preds.detach().cpu(), labels.detach().cpu()))

    def update_poisoned(self, preds: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor) -> None:
        self._poisoned.append((preds.detach().cpu(), true_labels.detach().cpu(), targets.detach().cpu()))

    def compute(self) -> dict[str, float]:
        out = {}
        if self._clean:
            p, y = (torch.cat(t) for t in zip(*self._clean))
            out["acc"] = accuracy(p, y, self.num_classes)
        if self._poisoned:
            p, y, t = (torch.cat(v) for v in zip(*self._poisoned))
            out["asr"] = attack_success_rate(p, y, t, self.num_classes)
            out["lcr"] = label_correction_rate(p, y, t, self.num_classes)
        return out


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, test, poisoned_test, attack, device: torch.device, num_classes: int,
                        batch_size: int = 256) -> dict[str, float]:
    """ACC on ``test`` and ASR/LCR on ``poisoned_test`` for a model that maps a batch of inputs to logits,
    over datasets of (input tensor, int label) pairs — the evaluate() of most single-label adapters."""
    model = model.to(device).eval()
    metrics = BackdoorMetrics(num_classes)
    for inputs, labels in DataLoader(test, batch_size=batch_size):
        metrics.update_clean(model(inputs.to(device)).argmax(1), labels)
    if poisoned_test is not None:
        for inputs, labels in DataLoader(poisoned_test, batch_size=batch_size):
            metrics.update_poisoned(model(inputs.to(device)).argmax(1), labels, attack.target_for(labels))
    return metrics.compute()
