"""``nftkit purify``: bring your own checkpoint, architecture and clean data."""
from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from .attacks import ATTACKS
from .config import PurifyConfig, validate
from .errors import ConfigError, ModelError
from .experiment import load_adapter_class, write_outputs
from .io import load_tensors, staged_dir, write_yaml
from .purify import check_finite, purify, resolve_config
from .recipe import parse_override


def build_user_model(arch: str, adapter, info: dict[str, Any], model_keys: dict[str, Any]) -> nn.Module:
    """A registered architecture, or ``module:Class`` from the user's own code (imported only on request)."""
    if ":" in arch:
        module_name, _, class_name = arch.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot import '{arch}' ({err}); check that the module is on PYTHONPATH") from None
        kwargs = dict(model_keys)
        if "num_classes" in inspect.signature(cls).parameters:
            kwargs.setdefault("num_classes", info["num_classes"])
        return cls(**kwargs)
    cfg = validate(adapter.ModelConfig, {"arch": arch, **model_keys}, "model")
    return adapter.build_model(cfg)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: str, built_for: str = "") -> None:
    expected = model.state_dict()
    problems = [f"missing '{k}'" for k in expected if k not in state]
    problems += [f"unexpected '{k}'" for k in state if k not in expected]
    problems += [f"'{k}' has shape {tuple(state[k].shape)}, the architecture expects {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ModelError(f"checkpoint '{path}' does not fit this architecture{built_for}: {'; '.join(problems[:4])}{more}; "
                         "check --arch, --num-classes, model.* options such as model.width, and the data's shape")


def _split(overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {"defense": {}, "model": {}, "attack": {}}
    for text in overrides:
        path, value = parse_override(text)
        section = path[0] if len(path) == 2 and path[0] in ("model", "attack") else "defense"
        key = path[-1] if section != "defense" else ".".join(path)
        sections[section][key] = value
    return sections["defense"], sections["model"], sections["attack"]


def purify_checkpoint(checkpoint: str, arch: str, adapter_name: str, data: str, overrides: list[str] = (),
                      out: Optional[str] = None, method: str = "nft", test: Optional[str] = None,
                      attack: Optional[str] = None, num_classes: Optional[int] = None, resume: bool = False,
                      log=print) -> dict[str, Any]:
    defense_keys, model_keys, attack_keys = _split(list(overrides))
    validate(PurifyConfig, defense_keys)  # report key mistakes before reading any file
    cfg = resolve_config(method, defense_keys)
    adapter_cls = load_adapter_class(adapter_name)
    adapter, clean, info = adapter_cls.from_user_data(data, num_classes)
    test_set = adapter.load_user_data(test) if test else None
    poisoned_test, attack_obj = None, None
    if attack:
        if test_set is None:
            raise ConfigError("--attack needs --test: ASR is measured on triggered test images")
        attack_cls = ATTACKS.get(f"{adapter_name}/{attack}")
        attack_obj = attack_cls(validate(attack_cls.Config, {"name": attack, **attack_keys}, "attack"), info, adapter)
        poisoned_test = attack_obj.poison_test(test_set)

    model = build_user_model(arch, adapter, info, model_keys)
    state = load_tensors(Path(checkpoint))
    shown = ", ".join(f"{k}={v}" for k, v in info.items() if isinstance(v, (int, tuple)))
    check_state_dict(model, state, checkpoint, f" (built for the data: {shown})" if shown else "")
    model.load_state_dict(state, strict=True)
    check_finite(model)
    adapter.check_data(clean)

    out_path = Path(out) if out else Path("runs") / "purify" / time.strftime("%Y%m%d-%H%M%S")
    device = torch.device(cfg.device)
    with staged_dir(out_path, resume) as stage:
        resolved = {"model": checkpoint, "arch": arch, "adapter": adapter_name, "data": data, "test": test,
                    "attack": {"name": attack, **attack_keys} if attack else None, "model_options": model_keys,
                    "defense": cfg.model_dump()}
        write_yaml(stage / "resolved.yaml", resolved)
        before = adapter.evaluate(model, test_set, poisoned_test, attack_obj, device) if test_set is not None else {}
        result = purify(model, adapter, clean, config=cfg, checkpoint=stage / "state.safetensors", resume=resume)
        after = adapter.evaluate(result.model, test_set, poisoned_test, attack_obj, device) if test_set is not None else {}
        resolved["defense"] = result.config.model_dump()
        results = write_outputs(stage, f"purify {checkpoint}", before, after, result,
                                {"key": checkpoint, "cached": True}, info, resolved)
    log(f"before: {before}\nafter {cfg.method}: {after} in {result.runtime_s:.1f}s\nwrote {out_path}")
    return results
