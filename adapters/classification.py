"""Label checks shared by the single-label classification adapters (image, video, point clouds)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from nftkit.errors import DataError


def dataset_labels(data: Dataset) -> torch.Tensor:
    """The labels of a dataset of (input, label) pairs: its ``targets`` tensor if it has one, else a scan."""
    targets = getattr(data, "targets", None)
    if isinstance(targets, torch.Tensor) and len(targets) == len(data):
        return targets
    return torch.tensor([int(data[i][1]) for i in range(len(data))])


def check_class_labels(labels: torch.Tensor, num_classes: int, noun: str) -> None:
    """A clean set needs labels in 0..C-1 and at least two classes; ``noun`` names its samples."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(f"clean label {int(bad[0])} is out of range for a {num_classes}-class model; labels must be "
                        f"0..{num_classes - 1} (check num_classes or the label mapping)")
    if len(labels.unique()) < 2:
        raise DataError(f"the clean set holds a single class ({int(labels[0])}); purification needs clean {noun} of "
                        "at least two classes, ideally all of them")


def samples_per_class(labels: torch.Tensor) -> float:
    return len(labels) / max(1, len(labels.unique()))
