"""Victim cache: one backdoored model per (adapter, data, model, attack, victim training, seed)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn

from .io import load_tensors, save_tensors, write_json

CACHE_VERSION = 2  # 2: 3DPC-BA victims cached before its trigger search was seeded met a different test trigger


def cache_root() -> Path:
    return Path(os.environ.get("NFTKIT_CACHE_DIR", Path.home() / ".cache" / "nftkit"))


def victim_key(spec: dict[str, Any]) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_victim(model: nn.Module, key: str) -> Optional[dict[str, Any]]:
    folder = cache_root() / "victims" / key
    if not (folder / "model.safetensors").is_file() or not (folder / "meta.json").is_file():
        return None
    model.load_state_dict(load_tensors(folder / "model.safetensors"), strict=True)
    return json.loads((folder / "meta.json").read_text())


def store_victim(model: nn.Module, key: str, meta: dict[str, Any]) -> None:
    folder = cache_root() / "victims" / key
    save_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "meta.json", meta)  # written last: its presence marks a complete entry
