"""The one optimisation loop. Every method (NFT, FT, victim training, ...) runs through it."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .adapter import Adapter
from .config import PurifyConfig, validate
from .errors import ConfigError, ModelError
from .methods import METHODS, Method
from .methods.base import Setup, StepContext
from .reparam import NeuronMask, PerturbedNeuronMask, Reparameterized, SpectralShift, fold_all, replace_module
from .schedules import lower_bounds
from .targeting import Target, select_targets, trace_model


@dataclass
class PurifyResult:
    model: nn.Module  # plain module of the input's class, same state_dict keys
    masks: dict[str, torch.Tensor]  # layer name -> final tuned tensor (masks; singular-value shifts for fast SFT)
    history: list[dict[str, float]]  # one row per step
    config: PurifyConfig  # fully resolved
    runtime_s: float
    targets: list[Target] = field(default_factory=list)


def resolve_config(method: Optional[str] = None, config: Any = None, **overrides) -> PurifyConfig:
    """Method defaults, then ``config`` (a PurifyConfig or mapping), then keyword overrides."""
    user: dict[str, Any] = {}
    if isinstance(config, PurifyConfig):
        user.update(config.model_dump(exclude_unset=True))
    elif config is not None:
        user.update(validate(PurifyConfig, dict(config), "config").model_dump(exclude_unset=True))
    user.update(overrides)
    if method is not None:
        user["method"] = method
    validate(PurifyConfig, user)  # report the user's own mistakes before merging defaults
    chosen: Method = METHODS.get(user.get("method", "nft"))
    return validate(PurifyConfig, {**chosen.defaults, **user})


def check_finite(model: nn.Module) -> None:
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"the model has NaN or inf values in '{name}'; the checkpoint is corrupt or "
                             "was saved mid-divergence: use another checkpoint")


def _lr_at(cfg: PurifyConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / total))
    if cfg.lr_schedule == "step":
        every = max(1, round(cfg.lr_step_every * total))
        return cfg.lr * cfg.lr_step_gamma ** (step // every)
    return cfg.lr


def _set_train_mode(model: nn.Module, bn_mode: str) -> None:
    model.train()
    if bn_mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _wrap(model: nn.Module, targets: list[Target], reparam: str) -> dict[str, Reparameterized]:
    wrapped: dict[str, Reparameterized] = {}
    for t in targets:
        layer = model.get_submodule(t.name)
        if reparam == "spectral_shift":
            wrapper: Reparameterized = SpectralShift(layer)
        elif reparam == "perturbed_mask":
            wrapper = PerturbedNeuronMask(layer, t.rule)
        else:
            wrapper = NeuronMask(layer, t.rule)
        replace_module(model, t.name, wrapper)
        wrapped[t.name] = wrapper
    return wrapped


def _targets(model: nn.Module, trace, cfg: PurifyConfig, reparam: str) -> list[Target]:
    if reparam == "full":
        return []
    if reparam == "spectral_shift":
        # matrices only: layers whose mask rule is the plain weight-rows rule
        targets = select_targets(model, trace, "weight_rows", cfg.include, cfg.exclude, cfg.mask_classifier)
        targets = [t for t in targets if list(t.rule.params.items()) == [("weight", (0, 1))]]
    else:
        targets = select_targets(model, trace, cfg.placement, cfg.include, cfg.exclude, cfg.mask_classifier)
    if not targets:
        raise ConfigError("no layer matched for re-parameterization; loosen 'include'/'exclude' or set mask_classifier=true")
    return targets


def purify(model: nn.Module, adapter: Adapter, data: Dataset, method: Optional[str] = None,
           config: Any = None, on_step: Optional[Callable[[int, nn.Module], None]] = None,
           **overrides) -> PurifyResult:
    """Purify ``model`` with the clean set ``data``; the input model is never modified.

    ``method`` and any :class:`PurifyConfig` field can be given as keywords (``steps=500, lr=0.05``).
    ``on_step(step, wrapped_model)`` is called after every optimiser step and projection.
    """
    cfg = resolve_config(method, config, **overrides)
    chosen = METHODS.get(cfg.method)
    adapter.check_data(data)
    check_finite(model)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    work = copy.deepcopy(model).to(device)
    grad_flags = {n: p.requires_grad for n, p in work.named_parameters()}
    probe = adapter.to_device(adapter.collate([data[i] for i in range(min(len(data), 8))]), device)
    trace = trace_model(work, lambda m: adapter.forward(m, probe))
    for p in work.parameters():
        p.requires_grad_(chosen.reparam == "full")
    targets = _targets(work, trace, cfg, chosen.reparam)
    wrapped = _wrap(work, targets, chosen.reparam)
    bounds = [0.0] * len(targets)
    if chosen.reparam in ("neuron_mask", "perturbed_mask"):
        bounds = lower_bounds(cfg.schedule, [t.depth for t in targets], cfg.alpha, cfg.beta)
    tunables = [p for w in wrapped.values() for p in w.tunable()] or [p for p in work.parameters()]
    setup = Setup(cfg, work, wrapped, tunables, adapter, data, device, generator, adapter.samples_per_class(data))
    regularizers = chosen.regularizers(setup)

    optimizer = torch.optim.SGD(tunables, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(data))
    sampler = RandomSampler(data, replacement=True, num_samples=total * cfg.batch_size, generator=generator)
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, collate_fn=adapter.collate,
                        num_workers=cfg.num_workers)
    history: list[dict[str, float]] = []
    _set_train_mode(work, cfg.bn_mode)
    progress = _progress(total, cfg.progress, cfg.method)
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        lr = _lr_at(cfg, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = adapter.augment(adapter.to_device(batch, device), cfg.augment, generator)
        terms = chosen.step(StepContext(step, batch, setup, optimizer, regularizers))
        if not torch.isfinite(terms["loss"]):
            raise ModelError(f"the loss became {terms['loss'].item()} at step {step}; lower the learning rate (lr={lr:g})")
        with torch.no_grad():
            for w, low in zip(wrapped.values(), bounds):
                if isinstance(w, NeuronMask):
                    w.mask.clamp_(low, 1.0)
        history.append({"step": step, "lr": lr, **{k: float(v.detach()) for k, v in terms.items()}})
        progress.update(1)
        if on_step is not None:
            on_step(step, work)
    if chosen.finish is not None:
        chosen.finish(setup)
    runtime = time.perf_counter() - start
    progress.close()

    masks = {name: w.tunable()[0].detach().cpu().clone() for name, w in wrapped.items()}
    fold_all(work, wrapped)
    for name, p in work.named_parameters():
        p.requires_grad_(grad_flags[name])
    work.train(model.training)
    resolved = cfg.model_copy(update={"steps": total, "epochs": None})
    return PurifyResult(work, masks, history, resolved, runtime, targets)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="step", leave=False)
