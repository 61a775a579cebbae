"""ML-Decoder (Ridnik et al., 2023) on ResNet backbones, and the mask rules that let NFT reach its projections.

The head: spatial features -> linear embedding (+ReLU) -> one decoder layer in which learnable label
queries cross-attend to the spatial tokens (no self-attention, as in ML-Decoder) -> group decoding:
each query emits ``k`` logits through its own small projection (:class:`GroupFC`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

from nftkit.errors import ConfigError, ModelError
from nftkit.io import load_tensors
from nftkit.registry import Registry
from nftkit.reparam import register_mask_rule
from nftkit.reparam.neuron_mask import MaskRule

# each factory returns a module with .out_channels whose forward gives B x C x h x w features
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("multilabel backbone")


class ResNetFeatures(nn.Module):
    """A ResNet without its pooling and classifier. Attribute names match torchvision's ResNet, so
    torchvision checkpoints load into it (their ``fc.*`` keys are dropped)."""

    def __init__(self, conv1, bn1, maxpool, layers: list[nn.Module], out_channels: int):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = conv1, bn1, nn.ReLU(inplace=True), maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _torchvision_resnet(arch: str) -> ResNetFeatures:
    import torchvision

    net = torchvision.models.get_model(arch, weights=None)
    return ResNetFeatures(net.conv1, net.bn1, net.maxpool, [net.layer1, net.layer2, net.layer3, net.layer4],
                          net.fc.in_features)


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_arch)(lambda width=None, _a=_arch: _torchvision_resnet(_a))


@BACKBONES.register("resnet_small")
def resnet_small(width: Optional[int] = None, blocks: tuple[int, ...] = (1, 1, 1, 1)) -> ResNetFeatures:
    """torchvision BasicBlocks with a chosen base width and a 3x3 stride-1 stem, for small images on CPU."""
    width = width or 16

    def stage(cin, cout, n, stride):
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if (stride != 1 or cin != cout) else None
        return nn.Sequential(BasicBlock(cin, cout, stride, down), *[BasicBlock(cout, cout) for _ in range(n - 1)])

    planes = [width, 2 * width, 4 * width, 8 * width]
    layers, cin = [], width
    for p, n in zip(planes, blocks):
        layers.append(stage(cin, p, n, 2))
        cin = p
    return ResNetFeatures(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.Identity(), layers, cin)


class GroupFC(nn.Module):
    """Group decoding: query ``q`` maps its embedding to ``k`` logits with its own weights.

    The weight is stored as one row per output unit, ``(queries * k) x dim``, so an output unit's
    weights are one row — the shape a neuron mask needs — and reshaped to ``queries x k x dim`` to apply.
    """

    def __init__(self, queries: int, dim: int, num_classes: int):
        super().__init__()
        self.queries, self.k, self.num_classes = queries, math.ceil(num_classes / queries), num_classes
        self.weight = nn.Parameter(torch.empty(queries * self.k, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.xavier_normal_(self.weight.view(queries, self.k, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: B x queries x dim
        w = self.weight.view(self.queries, self.k, -1)
        out = torch.einsum("bqd,qkd->bqk", h, w).flatten(1)
        return out[:, : self.num_classes] + self.bias


class DecoderLayer(nn.Module):
    """ML-Decoder's 'optimal' layer: cross-attention + feed-forward, post-norm, no self-attention."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.norm1(queries + self.dropout(queries))
        q = self.norm2(q + self.dropout(self.attn(q, memory, memory, need_weights=False)[0]))
        return self.norm3(q + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(q))))))


class MLDecoder(nn.Module):
    def __init__(self, num_classes: int, in_features: int, dim: int = 768, heads: int = 8, ffn: int = 2048,
                 queries: Optional[int] = None, dropout: float = 0.1, learn_queries: bool = True):
        super().__init__()
        queries = min(num_classes, queries or 100)
        if dim % heads:
            raise ConfigError(f"model.decoder_dim={dim} must be divisible by model.heads={heads}")
        self.embed = nn.Linear(in_features, dim)
        self.queries = nn.Parameter(torch.randn(queries, dim) * dim ** -0.5, requires_grad=learn_queries)
        self.decoder = DecoderLayer(dim, heads, ffn, dropout)
        self.group_fc = GroupFC(queries, dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # B x C x h x w
        tokens = F.relu(self.embed(features.flatten(2).transpose(1, 2)))
        h = self.decoder(self.queries.unsqueeze(0).expand(len(tokens), -1, -1), tokens)
        return self.group_fc(h)


class MultiLabelNet(nn.Module):
    """Backbone + ML-Decoder; returns one logit per class."""

    def __init__(self, backbone: nn.Module, head: MLDecoder):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


def build_multilabel_model(num_classes: int, backbone: str = "resnet_small", width: Optional[int] = None,
                           backbone_weights: Optional[str] = None, **head) -> MultiLabelNet:
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone '{backbone}'; choose one of {BACKBONES.names()}")
    body = BACKBONES.get(backbone)(width=width)
    if backbone_weights:
        state = {k: v for k, v in load_tensors(backbone_weights).items() if not k.startswith("fc.")}
        missing, unexpected = body.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"'{backbone_weights}' does not fit backbone '{backbone}' (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); give a torchvision {backbone} state_dict")
    return MultiLabelNet(body, MLDecoder(num_classes, body.out_channels, **head))


# ---- neural-mask rules for the decoder's projections ------------------------------------------

@register_mask_rule(nn.MultiheadAttention)
def _attention(module: nn.MultiheadAttention, placement: str) -> Optional[MaskRule]:
    # One mask per row of the packed q/k/v projection (3 x dim rows). out_proj is not covered: the
    # attention forward reads out_proj.weight directly instead of calling the submodule, so the tracer
    # never sees it, and one rule carries one mask vector of a single length.
    if not module._qkv_same_embed_dim:
        return None
    return MaskRule({"in_proj_weight": (0, 1)})


@register_mask_rule(GroupFC)
def _group_fc(module: GroupFC, placement: str) -> Optional[MaskRule]:
    return MaskRule({"weight": (0, 1)})
