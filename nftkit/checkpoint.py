"""Crash-safe run state: written atomically every N steps, read back by ``resume``.

Holds everything the loop needs to continue bit-identically: the wrapped model's state (tunables and
BatchNorm statistics), the optimiser's state (momentum, Adam moments), a method's own working tensors
(any ``Setup.state`` object with ``state_dict``/``load_state_dict``, such as adv_unlearn's perturbation),
the random generators and the history so far.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import safe_open

from .errors import NftkitError
from .io import save_tensors


def save_state(path: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, history: list[dict[str, float]], config: dict[str, Any],
               method_state: Optional[dict[str, Any]] = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for name, holder in _resumable(method_state).items():
        tensors.update({f"method.{name}.{k}": v for k, v in holder.state_dict().items()})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for name, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                tensors[f"optim.{i}.{name}"] = value
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": str(step), "history": json.dumps(history), "config": json.dumps(config, sort_keys=True)}
    save_tensors(path, tensors, metadata=meta)


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               config: dict[str, Any], method_state: Optional[dict[str, Any]] = None) -> tuple[int, list[dict[str, float]]]:
    """Restore the state in place; return (next step, history so far)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    saved = json.loads(meta.get("config", "{}"))
    if saved.get("input_model") != config.get("input_model"):
        # the run state holds the model's weights, so a resume would silently continue the other model's run
        raise NftkitError(f"checkpoint '{path}' was made for a different input model; resume with the model the run "
                          "started from, or start a new run with another checkpoint file or output folder")
    if saved != json.loads(json.dumps(config, sort_keys=True)):
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise NftkitError(f"checkpoint '{path}' was made with a different config (differs in {changed[:5]}); "
                          "resume with the same recipe and overrides, or start a new run")
    model.load_state_dict(_under(tensors, "model."), strict=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = _under(tensors, f"optim.{i}.")
        if state:  # AdamW keeps its step count on the CPU; moments live beside the parameter
            optimizer.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in state.items()}
    for name, holder in _resumable(method_state).items():
        holder.load_state_dict(_under(tensors, f"method.{name}."))
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]) + 1, json.loads(meta["history"])


def _resumable(method_state: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in (method_state or {}).items() if hasattr(v, "state_dict") and hasattr(v, "load_state_dict")}


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors saved under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def checkpoint_config(cfg, model: nn.Module, samples: int) -> dict[str, Any]:
    """What must match for a resume to be exact: the config, the input model and the clean set's size."""
    resolved = cfg.model_copy(update={"steps": cfg.total_steps(samples)})
    return {**resolved.model_dump(exclude={"progress", "num_workers", "checkpoint_every"}),
            "input_model": fingerprint(model), "clean_samples": samples}


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of every tensor of the state_dict, by name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def existing(path: Optional[Path]) -> bool:
    return path is not None and Path(path).is_file()
