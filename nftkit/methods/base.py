from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..config import PurifyConfig
from ..registry import Registry
from ..regularizers import Regularizer

RegularizerFactory = Callable[[PurifyConfig, float], list[Regularizer]]


@dataclass(frozen=True)
class Method:
    """What a method changes in the one loop.

    reparam: which tensors are tuned ('neuron_mask': per-unit masks on targeted layers,
        bounded by the depth schedule; 'full': every weight of the model).
    defaults: config values this method starts from (the user's values override them).
    regularizers: built from the resolved config and n_c (clean samples per class).
    """

    name: str
    reparam: Literal["neuron_mask", "full"]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    regularizers: RegularizerFactory = lambda cfg, n_c: []


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    return METHODS.register(method.name)(method)
