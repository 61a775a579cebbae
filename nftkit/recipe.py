"""Recipes: YAML data under recipes/<domain>/<name>.yaml, installed as nftkit.recipes."""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field

from .config import StrictModel, validate
from .errors import ConfigError


class ReportConfig(StrictModel):
    """What report.html measures beyond the before/after numbers. Defaults keep a CPU run about as fast."""

    curve_every: int = Field(default=100, ge=0)  # steps between ASR/ACC evaluations during purification (0: no curves)
    curve_samples: int = Field(default=512, ge=1)  # test samples per evaluation, clean and as many triggered
    tsne_samples: int = Field(default=300, ge=0)  # test samples in the feature t-SNE, half clean, half triggered (0: none)


class RecipeConfig(StrictModel):
    """The top level of a recipe. Sections are validated by the adapter's and the engine's typed configs."""

    adapter: str
    description: str = ""
    seed: int = 0
    device: str = "cpu"
    data: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    attack: Optional[dict[str, Any]] = None
    victim: dict[str, Any] = Field(default_factory=dict)
    defense: dict[str, Any] = Field(default_factory=dict)
    eval_batch_size: int = Field(default=256, ge=1)
    cache_victim: bool = True
    report: ReportConfig = Field(default_factory=ReportConfig)


def _root():
    return resources.files("nftkit.recipes")


def list_recipes(pattern: str = "*") -> list[str]:
    import fnmatch

    names = []
    for domain in _root().iterdir():
        if domain.is_dir() and domain.name not in ("bench", "__pycache__"):
            names += [f"{domain.name}/{f.name[:-5]}" for f in domain.iterdir() if f.name.endswith(".yaml")]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def recipe_text(name: str) -> str:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.read_text()
    item = _root().joinpath(*f"{name}.yaml".split("/"))
    if not item.is_file():
        known = ", ".join(list_recipes()) or "none"
        raise ConfigError(f"unknown recipe '{name}'; known recipes: {known} (or give a path to a .yaml file)")
    return item.read_text()


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value or section.key=value (e.g. defense.steps=200)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(recipe)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def load_recipe(name: str, overrides: list[str] = ()) -> dict[str, Any]:
    """The recipe as plain data with overrides applied, after validating its top level."""
    try:
        data = yaml.safe_load(recipe_text(name))
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe '{name}' is not valid YAML ({err})") from None
    data = apply_overrides(data or {}, list(overrides))
    validate(RecipeConfig, data)
    return data
