"""The one optimisation loop. Every method (NFT, FT, victim training, ...) runs through it."""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .adapter import Adapter
from .config import PurifyConfig, validate
from .distributed import average_gradients, broadcast_state, is_main, local_device, shard, world
from .checkpoint import checkpoint_config, existing, load_state, save_state
from .errors import ConfigError, Interrupted, ModelError
from .methods import METHODS, Method
from .methods.base import Setup, StepContext
from .reparam import NeuronMask, PerturbedNeuronMask, Reparameterized, SpectralShift, fold_all, replace_module
from .regularizers import Distillation, MaskSparsity
from .schedules import lower_bounds
from .subspace import CleanBatches, clean_subspace, projected_layers, recalibrate_norms, record_input_means
from .targeting import Target, affine_layers, select_targets, trace_model


@dataclass
class PurifyResult:
    model: nn.Module  # plain module of the input's class, same state_dict keys
    masks: dict[str, torch.Tensor]  # layer name -> final tuned tensor (masks; singular-value shifts for fast SFT)
    history: list[dict[str, float]]  # one row per step
    config: PurifyConfig  # fully resolved
    runtime_s: float
    targets: list[Target] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # what the method decided (e.g. the projection's energy)


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
    if not chosen.trains:  # a recipe's length belongs to the method it was written for
        user.update(steps=0, epochs=None)
    return validate(PurifyConfig, {**chosen.defaults, **user})


def check_finite(model: nn.Module) -> None:
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"the model has NaN or inf values in '{name}'; the checkpoint is corrupt or "
                             "was saved mid-divergence: use another checkpoint")


def _lr_at(cfg: PurifyConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return _scheduled_lr(cfg, cfg.warmup_steps, total) * (step + 1) / (cfg.warmup_steps + 1)
    return _scheduled_lr(cfg, step, total)


def _scheduled_lr(cfg: PurifyConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "cosine":
        floor = min(cfg.lr_min, cfg.lr)  # NFT's floor (0.02) is absolute: a smaller lr must not climb to it
        return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * step / total))
    if cfg.lr_schedule == "step":
        every = max(1, round(cfg.lr_step_every * total))
        return cfg.lr * cfg.lr_step_gamma ** (step // every)
    return cfg.lr


def _optimizer(cfg: PurifyConfig, tunables: list[torch.Tensor]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":  # momentum plays beta1's role, so one knob means the same in both
        return torch.optim.AdamW(tunables, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(tunables, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


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
        targets = select_targets(model, trace, cfg.placement, cfg.include, cfg.exclude, cfg.mask_classifier,
                                 cfg.input_masks)
    if not targets:
        raise ConfigError("no layer matched for re-parameterization; loosen 'include'/'exclude' or set mask_classifier=true")
    return targets


def purify(model: nn.Module, adapter: Adapter, data: Dataset, method: Optional[str] = None,
           config: Any = None, on_step: Optional[Callable[[int, nn.Module], None]] = None,
           checkpoint: Optional[Path] = None, resume: bool = False, **overrides) -> PurifyResult:
    """Purify ``model`` with the clean set ``data``; the input model is never modified.

    ``method`` and any :class:`PurifyConfig` field can be given as keywords (``steps=500, lr=0.05``).
    ``on_step(step, wrapped_model)`` is called after every optimiser step and projection.
    ``checkpoint``: a file the run state is written to every ``checkpoint_every`` steps and on Ctrl-C;
    with ``resume=True`` an existing one is read first and the run continues where it stopped.
    """
    cfg = resolve_config(method, config, **overrides)
    chosen = METHODS.get(cfg.method)
    if cfg.mask_sparsity > 0 and chosen.reparam != "neuron_mask":
        raise ConfigError(f"mask_sparsity pulls neural masks down, and method '{cfg.method}' trains none; use it with "
                          "nft, subspace_nft or adv_nft, or set mask_sparsity=0")
    if cfg.mask_sparsity_inputs_only and not cfg.input_masks:
        raise ConfigError("mask_sparsity_inputs_only pulls input-feature masks, and input_masks names no layer; "
                          "set input_masks or mask_sparsity_inputs_only=false")
    if cfg.input_masks and chosen.reparam != "neuron_mask":
        raise ConfigError(f"input_masks adds neural masks, and method '{cfg.method}' trains none; use it with "
                          "nft, subspace_nft or adv_nft, or leave input_masks empty")
    adapter.check_data(data)
    check_finite(model)
    device = local_device(cfg.device)
    world_size = world()[1]
    torch.manual_seed(cfg.seed)
    # the same on every rank: method randomness (ANP's noise) must agree; slices still differ in data
    generator = torch.Generator().manual_seed(cfg.seed)

    work = copy.deepcopy(model).to(device)
    broadcast_state(work)
    # fingerprinted before the projection below changes the model
    state_config = None if checkpoint is None else checkpoint_config(cfg, work, len(data))
    grad_flags = {n: p.requires_grad for n, p in work.named_parameters()}
    probe = adapter.to_device(adapter.collate([data[i] for i in range(min(len(data), 8))]), device)
    trace = trace_model(work, lambda m: adapter.forward(m, probe))
    start = time.perf_counter()  # a method's preparation (a projection, a Fisher pass) is part of its runtime
    adapter = adapter.aimed(work, data, cfg.augment, device, generator)
    info: dict[str, Any] = {}
    if cfg.project_first:
        info["subspace"] = _project(work, trace, cfg, adapter, data, device, generator)
    # after the projection, so distillation does not pull the cut directions back
    teacher = copy.deepcopy(work) if cfg.distill_weight > 0 else None
    for p in work.parameters():
        p.requires_grad_(chosen.reparam == "full")
    targets = _targets(work, trace, cfg, chosen.reparam)
    affine = affine_layers(work, trace)  # before wrapping: a wrapped layer no longer reads as Linear/Conv
    wrapped = _wrap(work, targets, chosen.reparam)
    input_masked = [w for w in wrapped.values() if isinstance(w, NeuronMask) and w.rule.inputs]
    if input_masked:
        record_input_means(work, input_masked, CleanBatches(adapter, data, list(range(len(data))), cfg.batch_size, device))
    bounds = [0.0] * len(targets)
    if chosen.reparam in ("neuron_mask", "perturbed_mask"):
        bounds = lower_bounds(cfg.schedule, [t.depth for t in targets], cfg.alpha, cfg.beta)
    tunables = [p for w in wrapped.values() for p in w.tunable()] or [p for p in work.parameters()]
    setup = Setup(cfg, work, wrapped, tunables, adapter, data, device, generator, adapter.samples_per_class(data),
                  affine[-1] if affine else None, affine[0] if affine else None, info=info)
    if chosen.prepare is not None:
        chosen.prepare(setup)
    regularizers = list(chosen.regularizers(setup))
    if teacher is not None:
        regularizers.append(Distillation(cfg.distill_weight, cfg.distill_temperature, teacher))
    if cfg.mask_sparsity > 0:
        regularizers.append(MaskSparsity(cfg.mask_sparsity, cfg.mask_sparsity_inputs_only))

    optimizer = _optimizer(cfg, tunables)
    if world_size > 1:
        optimizer.register_step_pre_hook(lambda *_: average_gradients(tunables))
    if cfg.max_grad_norm is not None:  # after averaging, so every rank clips the same gradient
        def clip(*_):
            torch.nn.utils.clip_grad_norm_(tunables, cfg.max_grad_norm)

        optimizer.register_step_pre_hook(clip)
    total = cfg.total_steps(len(data))
    # every step's sample indices are fixed up front by the seed, so a resumed run draws the same batches
    indices = torch.randint(len(data), (total, cfg.batch_size), generator=torch.Generator().manual_seed(cfg.seed))
    indices = shard(indices)
    history: list[dict[str, float]] = []
    first = 0
    if resume and existing(checkpoint):
        first, history = load_state(checkpoint, work, optimizer, generator, state_config, setup.state)
    loader = DataLoader(data, batch_sampler=indices[first:].tolist(), collate_fn=adapter.collate,
                        num_workers=cfg.num_workers)
    _set_train_mode(work, cfg.bn_mode)
    progress = _progress(total, cfg.progress and is_main(), cfg.method, first)
    hook_seconds = 0.0
    step = first - 1
    try:
        for step, batch in enumerate(loader, start=first):
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
                hook_start = time.perf_counter()
                on_step(step, work)
                hook_seconds += time.perf_counter() - hook_start  # monitoring is not purification time
            if checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                save_state(checkpoint, step, work, optimizer, generator, history, state_config, setup.state)
    except KeyboardInterrupt:
        if checkpoint is not None and step >= first:
            save_state(checkpoint, step, work, optimizer, generator, history, state_config, setup.state)
            raise Interrupted(f"interrupted after step {step + 1} of {total}; the state is saved in {checkpoint}: "
                              "run the same command with --resume to continue") from None
        raise
    if chosen.finish is not None:
        chosen.finish(setup)
    if cfg.bn_recalibrate and total > 0:
        recalibrate_norms(work, CleanBatches(adapter, data, list(range(len(data))), cfg.batch_size, device))
    runtime = time.perf_counter() - start - hook_seconds
    progress.close()

    masks = {name: w.tunable()[0].detach().cpu().clone() for name, w in wrapped.items()}
    fold_all(work, wrapped)
    broadcast_state(work)
    if cfg.project_after:  # its own generator, so it equals a clean_subspace run on this method's output
        setup.info["subspace_after"] = _project(work, trace, cfg, adapter, data, device,
                                                torch.Generator().manual_seed(cfg.seed))
        runtime = time.perf_counter() - start - hook_seconds
    for name, p in work.named_parameters():
        p.requires_grad_(grad_flags[name])
    work.train(model.training)
    resolved = cfg.model_copy(update={"steps": total, "epochs": None})
    return PurifyResult(work, masks, history, resolved, runtime, targets, setup.info)


def _project(work, trace, cfg, adapter, data, device, generator) -> dict[str, Any]:
    layers = projected_layers(work, trace.order, cfg.include, cfg.exclude)
    return clean_subspace(work, layers, adapter, data, cfg.subspace_energy, cfg.subspace_budget, cfg.subspace_folds,
                          cfg.subspace_recalibrate, cfg.subspace_batch_size or len(data), device, generator,
                          cfg.subspace_confidence).summary()


def _progress(total: int, enabled: bool, desc: str, done: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, disable=not enabled, desc=desc, unit="step", leave=False)
