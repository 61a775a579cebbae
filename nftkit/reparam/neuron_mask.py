"""Per-neuron soft masks (NFT Eq. 7-8): one scalar per output unit scales that unit's weights, never its bias;
where asked, one scalar per input feature scales that feature's weights too."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.func import functional_call

from .base import Reparameterized


@dataclass(frozen=True)
class MaskRule:
    """Which parameters of a module carry one unit's weights.

    ``params`` maps a parameter name to ``(axis, repeats)``: the axis indexing output units, and how
    many consecutive blocks of units the axis holds (4 for an LSTM's gate-stacked rows). ``inputs``
    maps a 2-D weight whose columns are input features to the bias that takes a masked input's constant
    part, for layers whose inputs get masks too (``input_masks``). One mask vector holds the output
    units' masks, then the inputs'.
    """

    params: dict[str, tuple[int, int]]
    inputs: dict[str, str] = field(default_factory=dict)

    def output_units(self, module: nn.Module) -> int:
        if not self.params:
            return 0
        name, (axis, repeats) = next(iter(self.params.items()))
        return getattr(module, name).shape[axis] // repeats

    def input_units(self, module: nn.Module) -> int:
        weight = next(iter(self.inputs), None)
        return getattr(module, weight).shape[1] if weight else 0

    def units(self, module: nn.Module) -> int:
        return self.output_units(module) + self.input_units(module)

    def scaled(self, module: nn.Module, mask: torch.Tensor,
               input_mean: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """The effective parameters. A masked-out input feature tends to ``input_mean`` (its clean mean), not
        to 0: x' = m x + (1 - m) mean, whose constant part folds into the bias."""
        split = self.output_units(module)
        out = {}
        for name, (axis, repeats) in self.params.items():
            weight = getattr(module, name)
            out[name] = weight * _along(mask[:split].repeat(repeats), axis, weight.dim())
        for name, bias in self.inputs.items():
            weight, keep = out.get(name, getattr(module, name)), mask[split:]
            if input_mean is not None:
                out[bias] = getattr(module, bias) + weight @ ((1 - keep) * input_mean)
            out[name] = weight * keep
        return out


def _along(scale: torch.Tensor, axis: int, dims: int) -> torch.Tensor:
    shape = [1] * dims
    shape[axis] = -1
    return scale.view(shape)


def input_params(module: nn.Module) -> Optional[dict[str, str]]:
    """For ``input_masks``: the weight whose columns are ``module``'s input features, and the bias that
    takes a masked input's constant part; None where there is no such bias."""
    if isinstance(module, (nn.LSTM, nn.GRU)) and module.num_layers == 1 and not module.bidirectional and module.bias:
        return {"weight_ih_l0": "bias_ih_l0"}
    if isinstance(module, nn.Linear) and module.bias is not None:
        return {"weight": "bias"}
    return None


INPUT_MASKABLE = "Linear with a bias, single-layer one-direction LSTM/GRU with biases"


RuleFactory = Callable[[nn.Module, str], Optional[MaskRule]]
_RULES: list[tuple[tuple[type, ...], RuleFactory]] = []


def register_mask_rule(*module_types: type) -> Callable[[RuleFactory], RuleFactory]:
    """Teach the engine where one unit's weights live in a module type (later registrations win)."""

    def decorator(factory: RuleFactory) -> RuleFactory:
        _RULES.insert(0, (module_types, factory))
        return factory

    return decorator


def mask_rule(module: nn.Module, placement: str) -> Optional[MaskRule]:
    for types, factory in _RULES:
        if isinstance(module, types):
            return factory(module, placement)
    return None


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS)


@register_mask_rule(nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _weight_rows(module: nn.Module, placement: str) -> Optional[MaskRule]:
    return MaskRule({"weight": (0, 1)})


@register_mask_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _transposed(module: nn.Module, placement: str) -> Optional[MaskRule]:
    # weight is (in, out/groups, k...): with groups the output units are not one axis
    return MaskRule({"weight": (1, 1)}) if module.groups == 1 else None


@register_mask_rule(*_NORMS)
def _batchnorm(module: nn.Module, placement: str) -> Optional[MaskRule]:
    if not module.affine or placement == "weight_rows":
        return None
    if placement == "bn_output":
        return MaskRule({"weight": (0, 1), "bias": (0, 1)})
    return MaskRule({"weight": (0, 1)})


@register_mask_rule(nn.LSTM, nn.GRU)
def _recurrent(module: nn.Module, placement: str) -> Optional[MaskRule]:
    # one mask per hidden unit of a single-layer, one-direction RNN; it scales that unit's rows in
    # every gate of both input and recurrent weights
    if module.num_layers != 1 or module.bidirectional or getattr(module, "proj_size", 0):
        return None
    gates = 4 if isinstance(module, nn.LSTM) else 3
    return MaskRule({"weight_ih_l0": (0, gates), "weight_hh_l0": (0, gates)})


class NeuronMask(Reparameterized):
    def __init__(self, base_layer: nn.Module, rule: MaskRule):
        super().__init__()
        self.base_layer = base_layer
        self.rule = rule
        ref = getattr(base_layer, next(iter(rule.params or rule.inputs)))
        self.mask = nn.Parameter(torch.ones(rule.units(base_layer), dtype=ref.dtype, device=ref.device))
        # where the rule masks inputs: their clean mean, what a masked-out input tends to (set by purify)
        self.register_buffer("input_mean", None)

    def forward(self, *args, **kwargs):
        params = self.rule.scaled(self.base_layer, self.mask, self.input_mean)
        return functional_call(self.base_layer, params, args, kwargs)

    def tunable(self) -> list[nn.Parameter]:
        return [self.mask]

    @torch.no_grad()
    def fold(self) -> nn.Module:
        for name, value in self.rule.scaled(self.base_layer, self.mask.detach(), self.input_mean).items():
            getattr(self.base_layer, name).copy_(value)
        return self.base_layer

    def extra_repr(self) -> str:
        return f"units={self.mask.numel()}, params={list(self.rule.params)}"


class PerturbedNeuronMask(NeuronMask):
    """A neural mask plus multiplicative neuron noise on weights and bias (ANP, Wu & Wang 2021).

    With ``perturb`` on, unit j's weights are scaled by (m_j + d_j) and its bias by (1 + e_j);
    d and e are the adversary's, bounded by eps, and are not folded.
    """

    def __init__(self, base_layer: nn.Module, rule: MaskRule):
        super().__init__(base_layer, rule)
        self.noise = nn.Parameter(torch.zeros_like(self.mask), requires_grad=False)
        has_bias = isinstance(getattr(base_layer, "bias", None), torch.Tensor) and "bias" not in rule.params
        self.noise_bias = nn.Parameter(torch.zeros_like(self.mask), requires_grad=False) if has_bias else None
        self.perturb = False

    def adversarial(self) -> list[nn.Parameter]:
        return [p for p in (self.noise, self.noise_bias) if p is not None]

    def forward(self, *args, **kwargs):
        if not self.perturb:
            return super().forward(*args, **kwargs)
        params = self.rule.scaled(self.base_layer, self.mask + self.noise)
        if self.noise_bias is not None and self.base_layer.bias.shape[0] == self.mask.shape[0]:
            params["bias"] = self.base_layer.bias * (1 + self.noise_bias)
        return functional_call(self.base_layer, params, args, kwargs)
