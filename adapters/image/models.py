"""Image classifiers: PreActResNet18 (CIFAR layout), WideResNet-16-k, a small CNN, and torchvision models."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torch.nn.functional as F

from nftkit.errors import ConfigError
from nftkit.registry import Registry

# each factory takes (num_classes, in_channels, width, **kwargs)
IMAGE_MODELS: Registry[Callable[..., nn.Module]] = Registry("image model")


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        planes = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, in_planes = [], width
        for i, (p, n) in enumerate(zip(planes, blocks)):
            stage = []
            for j in range(n):
                stage.append(PreActBlock(in_planes, p, 2 if (j == 0 and i > 0) else 1))
                in_planes = p
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None if (in_planes == planes and stride == 1) else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(out)))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int = 16, widen: int = 1, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n+4 (16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups, in_planes = [], widths[0]
        for i, w in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(in_planes, w, 2 if (j == 0 and i > 0) else 1, dropout))
                in_planes = w
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1))


class SmallCNN(nn.Module):
    """Four 3x3 conv layers in two stages and a two-layer head; BatchNorm optional."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, batchnorm: bool = True):
        super().__init__()

        def stage(cin, cout):
            layers = []
            for c_in in (cin, cout):
                layers += [nn.Conv2d(c_in, cout, 3, padding=1)]
                layers += [nn.BatchNorm2d(cout)] if batchnorm else []
                layers += [nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, nn.MaxPool2d(2))

        self.features = nn.Sequential(stage(in_channels, width), stage(width, 2 * width), nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True),
                                        nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@IMAGE_MODELS.register("preactresnet18")
def preactresnet18(num_classes, in_channels, width=64, **kw):
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width)


@IMAGE_MODELS.register("wideresnet16_1")
def wideresnet16_1(num_classes, in_channels, width=1, **kw):
    return WideResNet(16, width, num_classes, in_channels, kw.get("dropout", 0.0))


@IMAGE_MODELS.register("cnn")
def small_cnn(num_classes, in_channels, width=16, **kw):
    return SmallCNN(num_classes, in_channels, width, batchnorm=True)


@IMAGE_MODELS.register("cnn_nobn")
def small_cnn_nobn(num_classes, in_channels, width=16, **kw):
    return SmallCNN(num_classes, in_channels, width, batchnorm=False)


def torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Any torchvision classifier by name, randomly initialised (nothing is downloaded)."""
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise ConfigError(f"unknown image model '{name}'; use one of {IMAGE_MODELS.names()} or a torchvision "
                          "model name (torchvision.models.list_models())") from None
    if in_channels != 3:
        first_name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        replacement = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                                first.dilation, first.groups, first.bias is not None)
        parent_name, _, child = first_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model


def build_image_model(arch: str, num_classes: int, in_channels: int, width=None, **kw) -> nn.Module:
    if arch in IMAGE_MODELS:
        extra = {"width": width} if width is not None else {}
        return IMAGE_MODELS.get(arch)(num_classes, in_channels, **extra, **kw)
    return torchvision_model(arch, num_classes, in_channels)
