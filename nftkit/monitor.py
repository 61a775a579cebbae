"""What a recipe run measures for report.html besides the before/after numbers: metric curves during
purification, and the features the output head sees (for the t-SNE). Domain-agnostic: only the adapter
looks inside samples."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .targeting import classifier_name, trace_model


def fixed_subset(data: Dataset, n: int, seed: int) -> Dataset:
    """At most ``n`` samples of ``data``; the same ones for the same seed, so every point of a curve
    is measured on the same samples."""
    if n >= len(data):
        return data
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(data, pick.sort().values.tolist())


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Evaluate without side effects on training: every module's train/eval flag is restored
    (evaluate() calls model.eval(), and bn_mode=eval keeps some modules in eval mode on purpose), and the
    RNG is forked because DataLoaders draw a seed from it."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode  # not m.train(): that would also set every child


class CurveRecorder:
    """An ``on_step`` callback for :func:`nftkit.purify` that measures the masked model every ``every``
    steps and after the last one. Final masks are bit-identical to a run without it, and purify() does not
    count its time as purification time."""

    def __init__(self, measure: Callable[[nn.Module], dict[str, float]], every: int, total: int, device: torch.device):
        self.measure, self.every, self.total, self.device = measure, every, total, device
        self.rows: list[dict[str, float]] = []

    def record(self, steps_done: int, model: nn.Module) -> None:
        with _untouched(model, self.device):
            self.rows.append({"step": steps_done, **self.measure(model)})

    def __call__(self, step: int, model: nn.Module) -> None:
        done = step + 1
        if done % self.every == 0 or done == self.total:
            self.record(done, model)


def start_curves(adapter, victim: nn.Module, test: Dataset, poisoned_test: Optional[Dataset], attack: Any,
                 device: torch.device, batch_size: int, every: int, samples: int, total: int,
                 seed: int) -> tuple[Optional[CurveRecorder], str]:
    """A recorder with its step-0 point (the victim) measured, or None and why there are no curves."""
    if not every:
        return None, "Metric curves are off (report.curve_every=0)."
    test_part = fixed_subset(test, samples, seed)
    poisoned_part = fixed_subset(poisoned_test, samples, seed) if poisoned_test is not None else None
    recorder = CurveRecorder(lambda m: adapter.evaluate(m, test_part, poisoned_part, attack, device, batch_size),
                             every, total, device)
    try:
        recorder.record(0, victim)
    except Exception as err:  # an adapter whose evaluate() needs its own dataset type rather than a Subset
        return None, f"Metric curves could not be measured on a test subset ({type(err).__name__}: {err})."
    return recorder, ""


def head_features(model: nn.Module, adapter, samples: list, head: str, device: torch.device,
                  batch_size: int) -> np.ndarray:
    """The input of module ``head`` for each sample (N x D); extra positions (tokens) are averaged."""
    module = model.get_submodule(head)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].detach()))
    chunks = []
    try:
        with _untouched(model, device):
            model.eval()
            for i in range(0, len(samples), batch_size):
                adapter.forward(model, adapter.to_device(adapter.collate(samples[i:i + batch_size]), device))
                x = seen[-1]
                # a Linear head reads the last dimension, a convolution the channel dimension
                x = x.reshape(len(x), -1, x.shape[-1]).mean(1) if isinstance(module, nn.Linear) else x.flatten(1)
                chunks.append(x.float().cpu())
    finally:
        handle.remove()
    return torch.cat(chunks).numpy()


def feature_sets(adapter, before: nn.Module, after: nn.Module, test: Dataset, poisoned_test: Optional[Dataset],
                 n: int, seed: int, device: torch.device,
                 batch_size: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """{"before"/"after": (features, is_triggered)} on the same clean and triggered test samples, or {} and why not."""
    if not n:
        return {}, "The feature t-SNE is off (report.tsne_samples=0)."
    if poisoned_test is None:
        return {}, "This run has no attack, so there are no triggered samples to compare with clean ones."
    g = torch.Generator().manual_seed(seed)
    clean, triggered = ([data[i] for i in torch.randperm(len(data), generator=g)[: max(1, n // 2)].tolist()]
                        for data in (test, poisoned_test))
    is_triggered = np.array([False] * len(clean) + [True] * len(triggered))
    try:
        probe = adapter.to_device(adapter.collate(clean[:8]), device)
        head = classifier_name(before, trace_model(before, lambda m: adapter.forward(m, probe)))
        if head is None:
            return {}, "No output head (a last Linear or convolution layer) was found, so no features were captured."
        sets = {phase: (head_features(model, adapter, clean + triggered, head, device, batch_size), is_triggered)
                for phase, model in (("before", before), ("after", after))}
    except Exception as err:  # a model or data the hook cannot read: the report says so instead of failing the run
        return {}, f"Features could not be captured ({type(err).__name__}: {err})."
    for phase, (points, _) in sets.items():
        if not np.isfinite(points).all() or np.ptp(points, axis=0).max() == 0:
            return {}, f"The head's input features of the {phase} model are not finite or all equal; no t-SNE."
    return sets, ""
