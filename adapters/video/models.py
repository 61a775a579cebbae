"""CNN+LSTM video classifiers: a per-frame torchvision ResNet, an LSTM over frames, a linear head.

Masks reach the backbone through its BatchNorm gammas and the LSTM through the engine's LSTM rule
(one mask per hidden unit, every gate); the head is the classifier and is left unmasked by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from nftkit.errors import ConfigError, ModelError
from nftkit.registry import Registry

# name -> builder(width) -> (backbone mapping N x 3 x H x W to N x F, F)
BACKBONES: Registry[Callable[[Optional[int]], tuple[nn.Module, int]]] = Registry("video backbone")


def _torchvision_resnet(name: str):
    def build(width: Optional[int]) -> tuple[nn.Module, int]:
        import torchvision

        if width is not None:
            raise ConfigError(f"model.width does not apply to backbone '{name}' (its widths are fixed); remove it")
        net = getattr(torchvision.models, name)(weights=None)  # weights come from model.weights, never a download
        features = net.fc.in_features
        net.fc = nn.Identity()
        return net, features

    return build


for _name in ("resnet18", "resnet34", "resnet50"):
    BACKBONES.register(_name)(_torchvision_resnet(_name))


@BACKBONES.register("resnet_mini")
def resnet_mini(width: Optional[int]) -> tuple[nn.Module, int]:
    """Three stages of torchvision's BasicBlock at widths w, 2w, 4w: a ResNet small enough for CPU
    recipes (the full ResNets' fixed 64..512 widths cost ~50x more per frame at 32 x 32)."""
    from torchvision.models.resnet import BasicBlock

    w = width or 16

    def stage(cin: int, cout: int, stride: int) -> BasicBlock:
        down = None
        if stride != 1 or cin != cout:
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return BasicBlock(cin, cout, stride, down)

    net = nn.Sequential(
        nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        stage(w, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return net, 4 * w


class CNNLSTM(nn.Module):
    """``B x T x 3 x H x W`` clips -> per-frame features -> LSTM -> mean over time -> logits."""

    def __init__(self, backbone: nn.Module, features: int, hidden: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        feats = self.backbone(clips.flatten(0, 1)).view(b, t, -1)
        out, _ = self.lstm(feats)
        # averaging over time (as LRCN does) uses every step; the last step alone trains slower
        return self.head(out.mean(1))


def build_video_model(backbone: str, num_classes: int, hidden: int = 256, width: Optional[int] = None,
                      weights: Optional[str] = None, pool: int = 1) -> CNNLSTM:
    """``pool`` is the spatial grid each frame's feature map is averaged to: 1 is the papers' global
    average; a larger grid keeps where things are in the frame, which classes defined by motion need
    (a global average is nearly blind to an object moving across the frame)."""
    net, features = BACKBONES.get(backbone)(width)
    if weights:
        _load_backbone(net, Path(weights).expanduser())
    if pool > 1:
        # every backbone here ends in AdaptiveAvgPool2d then a flatten, so the grid flattens into the features
        pools = [name for name, m in net.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
        net.set_submodule(pools[-1], nn.AdaptiveAvgPool2d(pool))
        features *= pool * pool
    return CNNLSTM(net, features, hidden, num_classes)


def _load_backbone(net: nn.Module, path: Path) -> None:
    """Pretrained backbone weights (e.g. ImageNet ResNet-50) from a local file, loaded safely."""
    if not path.is_file():
        raise ModelError(f"backbone weights {path} not found; put a .safetensors or .pth state_dict there or unset model.weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet head is not ours
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ModelError(f"backbone weights {path} do not fit (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "give a state_dict of the same torchvision architecture")
