import os

import pytest
import torch
import torch.nn as nn

from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset
from nftkit.host_memory import keep_freed_memory

keep_freed_memory()  # as the nftkit command does: CPU steps fault their activations in again otherwise


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NFTKIT_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


class ResidualBlock(nn.Module):
    def __init__(self, c=4, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stem(x)
        out = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.head((out + x).mean((2, 3)))


def make_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make_conv(bn: bool):
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU()]
    layers += [nn.Conv2d(4, 6, 3, padding=1)] + ([nn.BatchNorm2d(6)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def make_torchvision():
    from nftkit.adapters.image.models import torchvision_model

    return torchvision_model("resnet18", 3, 1)


TINY_MODELS = {
    "mlp": make_mlp,
    "conv": lambda: make_conv(False),
    "conv_bn": lambda: make_conv(True),
    "residual": ResidualBlock,
    "torchvision_resnet18": make_torchvision,
}


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g)
    y = torch.arange(24) % 3
    return ImageTensorDataset(x, y)


@pytest.fixture
def adapter3():
    return ImageClassificationAdapter(num_classes=3)
