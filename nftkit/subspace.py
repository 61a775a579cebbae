"""Clean-subspace projection: cut every input direction of a layer that clean data never excites.

A backdoor that clean data never drives (a corner patch on background, a rare word) lives in input
directions of some layers that no clean sample reaches. No clean-data loss gives a weight or a mask a
gradient towards them, which is why mask and weight tuning leave such backdoors in place. They can
be found from the data instead: for each Linear and Conv layer, in execution order, the uncentred
second moment of its inputs (patches, for a conv) over the clean set is eigen-decomposed, and the
weight W becomes W P, P the projector onto the leading eigenvectors that hold a share ``energy`` of
the input energy. A clean input keeps its output up to the discarded energy; a direction that clean
inputs hardly reach is cut. Layers are projected one at a time, each on the inputs its already
projected predecessors give, and BatchNorm statistics are then re-estimated on the clean data.

The edit changes weights only, so the model keeps its class and state_dict keys. With no ``energy``
given, it is chosen on the clean data by cross-validation: the most aggressive share on a grid whose
projection loses at most ``budget`` points of held-out accuracy against the original model, found by
bisection.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapter import Adapter
from .errors import ConfigError
from .targeting import matches_any

# shares of input energy tried, from gentle to aggressive
ENERGY_GRID = (0.999, 0.998, 0.995, 0.99, 0.985, 0.98, 0.975, 0.97, 0.96, 0.95, 0.93, 0.9)


@dataclass
class Projection:
    energy: float
    kept: dict[str, tuple[int, int]]  # layer -> (directions kept, input dimension)
    heldout_drop: Optional[float] = None  # points of cross-validated clean accuracy lost
    search: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"energy": self.energy, "heldout_drop": self.heldout_drop, "search": self.search,
                "kept": {name: list(k) for name, k in self.kept.items()}}


def projectable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and module.padding_mode == "zeros"


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The vectors a layer's weight multiplies: one row per position (a patch, for a conv)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, dilation, padding, stride = ((1, *module.kernel_size), (1, *module.dilation), (0, *module.padding),
                                             (1, *module.stride))
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    patches = F.unfold(x, kernel, dilation, padding, stride)  # N x (C k k) x positions
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


class CleanBatches:
    """The clean samples at ``indices`` as adapter batches on ``device``, collated once."""

    def __init__(self, adapter: Adapter, data, indices: list[int], batch_size: int, device: torch.device):
        self.adapter = adapter
        self.batches = [adapter.to_device(adapter.collate([data[i] for i in indices[s:s + batch_size]]), device)
                        for s in range(0, len(indices), batch_size)]

    def run(self, model: nn.Module) -> list[Any]:
        with torch.no_grad():
            return [self.adapter.forward(model, b) for b in self.batches]

    def right(self, model: nn.Module) -> torch.Tensor:
        """1.0 for each right prediction (a sample, a label, a token: what the adapter scores), 0.0 for
        each wrong one, in eval mode and in a fixed order, so two models' vectors pair up."""
        was_training = model.training
        model.eval()
        right = [self.adapter.correct_predictions(o, b).flatten().float().cpu() for o, b in zip(self.run(model), self.batches)]
        model.train(was_training)
        return torch.cat(right)


def moment_of(module: nn.Module, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Sum of r r^T over the input vectors r of ``module`` in ``x`` (float64), unfolded a few samples
    at a time: a deep conv's patches for a whole batch would not fit in memory at once."""
    total = None
    for part in x.detach().split(chunk):
        rows = input_rows(module, part)
        moment = (rows.T @ rows).double()
        total = moment if total is None else total + moment
    return total


def input_moment(model: nn.Module, layer: nn.Module, batches: CleanBatches) -> torch.Tensor:
    total: list[torch.Tensor] = []

    def hook(module, inputs, output):
        moment = moment_of(module, inputs[0])
        total[:] = [total[0] + moment if total else moment]

    _run_hooked(model, batches, [layer.register_forward_hook(hook)])
    return total[0]


def leading_basis(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """The leading eigenvectors of an input moment that hold a share ``energy`` of its trace.

    (Ranking directions by their share of the layer's clean *output* energy instead was measured to
    cut less of the BadNets pathway at the same accuracy; see docs/benchmarks.md.)"""
    values, vectors = torch.linalg.eigh(moment)
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    share = values.cumsum(0) / values.sum().clamp(min=1e-300)
    k = min(int((share < energy).sum()) + 1, len(values))
    return vectors[:, :k]


@torch.no_grad()
def project_weight(layer: nn.Module, basis: torch.Tensor) -> None:
    w = layer.weight.reshape(layer.weight.shape[0], -1).double()
    layer.weight.copy_((w @ basis @ basis.T).reshape(layer.weight.shape).to(layer.weight.dtype))


@torch.no_grad()
def recalibrate_norms(model: nn.Module, batches: CleanBatches) -> None:
    """Set BatchNorm running statistics to the mean and (unbiased) variance of each norm's inputs over
    the whole clean set, from one train-mode pass. Averaging per-batch variances instead would drop the
    between-batch part, which dominates when the clean set is stored class by class."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    sums: dict[nn.Module, list] = {}

    def accumulate(module, args):
        x = args[0].detach().double().transpose(0, 1).flatten(1)  # channels x (samples and positions)
        total = sums.setdefault(module, [0, 0.0, 0.0])
        total[0] += x.shape[1]
        total[1] = total[1] + x.sum(1)
        total[2] = total[2] + (x * x).sum(1)

    was_training = model.training
    model.eval()
    for m in norms:
        m.train()
    _run_hooked(model, batches, [m.register_forward_pre_hook(accumulate) for m in norms])
    for m in norms:
        if m not in sums:
            continue
        n, total, squares = sums[m]
        mean = total / n
        variance = (squares / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
        m.running_mean.copy_(mean)
        m.running_var.copy_(variance)
    model.train(was_training)


def record_input_means(model: nn.Module, layers: list[nn.Module], batches: CleanBatches) -> None:
    """Set each layer's ``input_mean``: the mean of its input features (the last axis) over the clean data,
    in eval mode."""
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module, args):
        flat = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        sums[module] = sums.get(module, 0) + flat.sum(0)
        counts[module] = counts.get(module, 0) + flat.shape[0]

    was_training = model.training
    model.eval()
    _run_hooked(model, batches, [m.register_forward_pre_hook(hook) for m in layers])
    model.train(was_training)
    for m in layers:
        m.input_mean = (sums[m] / counts[m]).to(m.mask.dtype)


def _run_hooked(model: nn.Module, batches: CleanBatches, handles: list) -> None:
    """One pass over the batches with the given hooks, removed afterwards whatever happens."""
    try:
        batches.run(model)
    finally:
        for h in handles:
            h.remove()


def _project_in_one_pass(model: nn.Module, layers: list[str], batches: CleanBatches, energy: float,
                         kept: dict[str, tuple[int, int]]) -> bool:
    """With the whole clean set in one batch, each layer is projected as the forward pass reaches it,
    so it sees the inputs of its projected predecessors: the layer-by-layer result in one pass.
    False (nothing changed) when a layer runs more than once per pass (its later calls would be missed)."""
    calls = {name: 0 for name in layers}
    _run_hooked(model, batches, [model.get_submodule(n).register_forward_hook(
        lambda *a, n=n: calls.__setitem__(n, calls[n] + 1)) for n in layers])
    if any(c != 1 for c in calls.values()):
        return False

    def project_on_arrival(module, inputs, name):
        basis = leading_basis(moment_of(module, inputs[0]), energy)
        project_weight(module, basis)
        kept[name] = (basis.shape[1], basis.shape[0])

    _run_hooked(model, batches, [model.get_submodule(n).register_forward_pre_hook(
        lambda m, i, n=n: project_on_arrival(m, i, n)) for n in layers])
    return True


def project_model(model: nn.Module, layers: list[str], batches: CleanBatches, energy: float,
                  recalibrate: bool = True) -> dict[str, tuple[int, int]]:
    """Project ``layers`` of ``model`` in place, in the given (execution) order."""
    was_training = model.training
    model.eval()
    kept: dict[str, tuple[int, int]] = {}
    if len(batches.batches) != 1 or not _project_in_one_pass(model, layers, batches, energy, kept):
        for name in layers:  # one pass over the batches per layer
            layer = model.get_submodule(name)
            basis = leading_basis(input_moment(model, layer, batches), energy)
            project_weight(layer, basis)
            kept[name] = (basis.shape[1], basis.shape[0])
    if recalibrate:
        recalibrate_norms(model, batches)
    model.train(was_training)
    return kept


def projected_layers(model: nn.Module, order: list[str], include: list[str], exclude: list[str]) -> list[str]:
    """Projectable layers in execution order, less those whose weight is tied to another parameter
    (a language model's output layer shares the token embeddings: projecting it would change them)."""
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    layers = [n for n in order if projectable(layer := model.get_submodule(n)) and owners[id(layer.weight)] == 1
              and (not include or matches_any(n, include)) and not matches_any(n, exclude)]
    if not layers:
        raise ConfigError("the clean-subspace projection found no Linear or Conv layer; loosen 'include'/'exclude'")
    return layers


def clean_subspace(model: nn.Module, layers: list[str], adapter: Adapter, data, energy: Optional[float],
                   budget: float, folds: int, recalibrate: bool, batch_size: int, device: torch.device,
                   generator: torch.Generator, confidence: float) -> Projection:
    """Project ``model`` in place; with ``energy=None`` choose it by the cross-validated budget: each
    candidate share is applied with the statistics of all folds but one and scored on the one left out,
    so every clean sample is scored once by a projection that never saw it. A share passes when the
    held-out drop plus ``confidence`` standard errors of it (paired over the predictions) is within
    ``budget``: on a few hundred samples the estimate alone misses the test cost by a point either way."""
    order = torch.randperm(len(data), generator=generator).tolist()
    everything = CleanBatches(adapter, data, order, batch_size, device)
    search: list[dict[str, float]] = []
    chosen, drop = energy, None
    if energy is None:
        chosen, drop = 1.0, 0.0  # unchanged when even the gentlest share costs too much
        if len(order) < folds:
            raise ConfigError(f"the clean set has {len(order)} samples, fewer than subspace_folds={folds}; "
                              "lower subspace_folds or give subspace_energy")
        parts = [order[k::folds] for k in range(folds)]
        splits = []
        for k, part in enumerate(parts):
            rest = [i for j, other in enumerate(parts) if j != k for i in other]
            splits.append((CleanBatches(adapter, data, rest, batch_size, device),
                           CleanBatches(adapter, data, part, batch_size, device)))
        original = copy.deepcopy(model.state_dict())
        reference = torch.cat([held.right(model) for _, held in splits])

        def cost(candidate: float) -> tuple[float, float]:
            right = []
            for fit, held in splits:
                project_model(model, layers, fit, candidate, recalibrate)
                right.append(held.right(model))
                model.load_state_dict(original)
            lost = (reference - torch.cat(right)) * 100  # per prediction: -100, 0 or 100
            mean = float(lost.mean())
            error = float(lost.std() / len(lost) ** 0.5) if len(lost) > 1 else 0.0
            search.append({"energy": candidate, "heldout_drop": round(mean, 3), "standard_error": round(error, 3)})
            return mean, error

        # bisection on the grid: the cost grows as the share falls (up to noise), so a few probes suffice
        low, high = -1, len(ENERGY_GRID)  # ENERGY_GRID[low] is within budget (-1: no projection), [high] is not
        while high - low > 1:
            mid = (low + high) // 2
            lost, error = cost(ENERGY_GRID[mid])
            if lost + confidence * error <= budget:
                low, chosen, drop = mid, ENERGY_GRID[mid], lost
            else:
                high = mid
    kept = project_model(model, layers, everything, chosen, recalibrate) if chosen < 1.0 else {}
    return Projection(chosen, kept, drop, search)
