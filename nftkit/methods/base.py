from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn as nn

from ..adapter import Adapter
from ..config import PurifyConfig
from ..registry import Registry
from ..reparam import Reparameterized


@dataclass
class Setup:
    """What a method sees once the model is wrapped, before the first step."""

    cfg: PurifyConfig
    model: nn.Module
    wrapped: dict[str, Reparameterized]
    tunables: list[nn.Parameter]
    adapter: Adapter
    data: Any  # the clean set
    device: torch.device
    generator: torch.Generator
    samples_per_class: float
    classifier: Optional[str] = None  # the last executed affine layer (the output head)
    input_layer: Optional[str] = None  # the first executed affine layer
    original_head: Optional[torch.Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)  # what the method decided, reported with the result
    # a method's working objects between prepare and finish; checkpoints keep those with state_dict/load_state_dict
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """One optimisation step: the batch is opaque; ``objective()`` is the adapter's loss plus regularisers."""

    step: int
    batch: Any
    setup: Setup
    optimizer: torch.optim.Optimizer
    regularizers: list[Any]

    def task_loss(self) -> torch.Tensor:
        return self.setup.adapter.loss(self.setup.model, self.batch)

    def objective(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {"task_loss": self.task_loss()}
        for reg in self.regularizers:
            value = reg(self)
            if value is not None:
                terms[reg.name] = value
        return sum(terms.values()), terms


def sgd_step(ctx: StepContext) -> dict[str, torch.Tensor]:
    loss, terms = ctx.objective()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    return {"loss": loss, **terms}


StepRule = Callable[[StepContext], dict[str, torch.Tensor]]
RegularizerFactory = Callable[[Setup], list[Any]]


@dataclass(frozen=True)
class Method:
    """What a method changes in the one loop.

    reparam: which tensors are tuned — 'neuron_mask' (per-unit masks on targeted layers, bounded by
        the depth schedule), 'perturbed_mask' (masks plus adversarial neuron noise, for ANP),
        'spectral_shift' (singular-value shifts of targeted weight matrices) or 'full' (every weight).
    defaults: config values this method starts from (the user's values override them).
    regularizers: built once from the Setup, each called every step with the StepContext.
    step: the update rule (plain SGD step by default; SAM and ANP take extra passes).
    prepare: a change to the model before the first step (FST re-initialises the head).
    finish: a last change to the wrapped layers before folding (ANP prunes by threshold).
    trains: whether the loop runs at all; False (the clean-subspace projection only edits weights) makes
        any steps a recipe gives 0.
    """

    name: str
    reparam: Literal["neuron_mask", "perturbed_mask", "spectral_shift", "full"]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    regularizers: RegularizerFactory = lambda setup: []
    step: StepRule = sgd_step
    prepare: Optional[Callable[[Setup], None]] = None
    finish: Optional[Callable[[Setup], None]] = None
    trains: bool = True


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    return METHODS.register(method.name)(method)
