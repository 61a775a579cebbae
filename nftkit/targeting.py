"""Which layers get a re-parameterization, in which depth order.

Order and connectivity are observed, not guessed from names: one forward pass with hooks records
the execution order of leaf modules and which layer's output feeds a BatchNorm directly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .errors import ConfigError, ModelError
from .reparam.neuron_mask import INPUT_MASKABLE, MaskRule, input_params, is_batchnorm, mask_rule


@dataclass
class Target:
    name: str
    kind: str  # module class name
    units: int
    depth: int  # 1..L in execution order
    rule: Optional[MaskRule] = None
    input_units: int = 0  # the last ones of the units: masks on input features (input_masks)


@dataclass
class Trace:
    order: list[str]  # modules in order of their first call's end (leaves in execution order)
    feeds_norm: set[str]  # modules whose output is the direct input of a BatchNorm


def trace_model(model: nn.Module, run_forward: Callable[[nn.Module], object]) -> Trace:
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    produced_by: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []  # ids of freed tensors could be reused
    feeds_norm: set[str] = set()

    def hook(module, inputs, output):
        name = names[module]
        if name not in order:
            order.append(name)
        if is_batchnorm(module) and inputs and isinstance(inputs[0], torch.Tensor):
            src = produced_by.get(id(inputs[0]))
            if src is not None:
                feeds_norm.add(src)
        # a container returns its last child's tensor: only leaves say who produced it
        is_leaf = next(module.children(), None) is None
        if isinstance(output, torch.Tensor) and (is_leaf or id(output) not in produced_by):
            produced_by[id(output)] = name
            keep_alive.append(output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_forward(model)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ModelError(f"the model failed on a batch of the clean data ({err}); check that the data fits the model "
                         "(image size, channel count, number of classes)") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Trace(order, feeds_norm)


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def select_targets(model: nn.Module, trace: Trace, placement: str, include: list[str], exclude: list[str],
                   mask_classifier: bool, input_masks: Sequence[str] = ()) -> list[Target]:
    """Layers that get one mask per output unit (and per input feature where ``input_masks`` matches),
    with their depth index l = 1..L."""
    head = None if mask_classifier else classifier_name(model, trace)
    candidates = []
    for name in trace.order:
        module = model.get_submodule(name)
        rule = mask_rule(module, placement)
        # a mask on a layer that feeds BatchNorm is normalised away in train mode: the norm carries it
        if placement != "weight_rows" and name in trace.feeds_norm or name == head:
            rule = None
        if rule is not None and (include and not matches_any(name, include) or exclude and matches_any(name, exclude)):
            rule = None
        inputs = input_params(module) if matches_any(name, input_masks) else None
        if inputs:
            rule = MaskRule(rule.params if rule is not None else {}, inputs)
        if rule is not None:
            candidates.append((name, module, rule))
    for pattern in input_masks:
        if not any(rule.inputs and matches_any(name, [pattern]) for name, _, rule in candidates):
            raise ConfigError(f"input_masks pattern '{pattern}' matched no executed layer whose inputs can be masked "
                              f"({INPUT_MASKABLE}); layer names are module paths such as 'lstm' or 'classifier.1'")
    return [Target(name, type(m).__name__, rule.units(m), depth, rule, rule.input_units(m))
            for depth, (name, m, rule) in enumerate(candidates, start=1)]


def affine_layers(model: nn.Module, trace: Trace) -> list[str]:
    """Executed layers with a plain weight-rows mask rule (Linear, Conv), in execution order."""
    return [n for n in trace.order
            if (rule := mask_rule(model.get_submodule(n), "weight_rows")) is not None and list(rule.params) == ["weight"]]


def classifier_name(model: nn.Module, trace: Trace) -> Optional[str]:
    """The output head: the last executed affine layer."""
    layers = affine_layers(model, trace)
    return layers[-1] if layers else None
