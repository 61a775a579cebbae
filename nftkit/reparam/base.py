from __future__ import annotations

import torch.nn as nn


class Reparameterized(nn.Module):
    """A wrapper around one layer (kept as ``base_layer``) whose weights are a function of tunable tensors.

    ``fold()`` writes the effective weights into ``base_layer`` and returns it, so the wrapped
    model can be turned back into the original architecture with its original state_dict keys.
    """

    base_layer: nn.Module

    def tunable(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def fold(self) -> nn.Module:
        raise NotImplementedError


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fold_all(root: nn.Module, wrapped: dict[str, Reparameterized]) -> nn.Module:
    for name, wrapper in wrapped.items():
        replace_module(root, name, wrapper.fold())
    return root
