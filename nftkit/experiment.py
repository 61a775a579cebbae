"""Run a recipe: data -> attack -> (cached) victim -> evaluate -> purify -> evaluate -> outputs."""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .adapter import ADAPTERS, Adapter
from .attacks import ATTACKS
from .cache import load_victim, store_victim, victim_key
from .config import validate, victim_dump
from .cpu_kernels import cpu_kernels, pinned_kernels
from .distributed import is_main
from .errors import ConfigError
from .io import atomic_write, save_tensors, staged_dir, write_json, write_yaml
from .monitor import feature_sets, start_curves
from .purify import PurifyResult, purify, resolve_config
from .recipe import RecipeConfig, load_recipe
from .report import render_report
from .report_html import ReportExtras, render_html


def load_adapter_class(name: str) -> type[Adapter]:
    """Built-in adapters live in nftkit.adapters.<name>; a third-party one registers when its module is
    imported: an installed package's ``nftkit.adapters`` entry point, or a module of that name on the path."""
    if name not in ADAPTERS:
        from importlib.metadata import entry_points

        found = [ep.value for ep in entry_points(group="nftkit.adapters") if ep.name == name]
        for module in [f"nftkit.adapters.{name}", *found, name]:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                if err.name is None or not module.startswith(err.name):
                    raise  # the module exists but one of its own imports is missing
                continue
            if name in ADAPTERS:
                break
    return ADAPTERS.get(name)


@dataclass
class Experiment:
    """A recipe resolved into typed sections and built objects, ready to run."""

    name: str
    recipe: RecipeConfig
    adapter: Adapter
    sections: dict[str, Any]  # typed config per section

    def resolved(self) -> dict[str, Any]:
        out = self.recipe.model_dump()
        out.update({k: v.model_dump() for k, v in self.sections.items()})
        return out


def prepare(name: str, overrides: list[str] = ()) -> Experiment:
    return build_experiment(name, load_recipe(name, overrides))


def build_experiment(name: str, raw: dict[str, Any]) -> Experiment:
    recipe = validate(RecipeConfig, raw)
    adapter_cls = load_adapter_class(recipe.adapter)
    sections: dict[str, Any] = {
        "data": validate(adapter_cls.DataConfig, recipe.data, "data"),
        "model": validate(adapter_cls.ModelConfig, recipe.model, "model"),
    }
    if recipe.attack is not None:
        attack_name = recipe.attack.get("name")
        if not attack_name:
            raise ConfigError("attack.name is missing; name an attack, e.g. attack.name=badnets")
        attack_cls = ATTACKS.get(f"{recipe.adapter}/{attack_name}")
        sections["attack"] = validate(attack_cls.Config, recipe.attack, "attack")
    run_defaults = {"seed": recipe.seed, "device": recipe.device}
    victim_user = validate_section(recipe.victim, "victim")
    defense_user = validate_section(recipe.defense, "defense")
    sections["victim"] = resolve_config("train", {**run_defaults, **victim_user})
    sections["defense"] = resolve_config(None, {**run_defaults, **defense_user})
    adapter = adapter_cls.from_recipe(sections["data"], sections["model"])
    return Experiment(name, recipe, adapter, sections)


def validate_section(section: dict[str, Any], where: str) -> dict[str, Any]:
    from .config import PurifyConfig

    return validate(PurifyConfig, section, where).model_dump(exclude_unset=True)


def build_victim(exp: Experiment, splits, log, state_dir: Optional[Path] = None,
                 resume: bool = False) -> tuple[torch.nn.Module, Any, Any, dict[str, Any]]:
    """Poison the data, then train the victim or take it from the cache."""
    s = exp.sections
    attack = None
    train, poisoned_test = splits.train, None
    if "attack" in s:
        attack = ATTACKS.get(f"{exp.recipe.adapter}/{s['attack'].name}")(s["attack"], splits.info, exp.adapter)
        g = torch.Generator().manual_seed(exp.recipe.seed)
        train = attack.poison_train(splits.train, g)
        poisoned_test = attack.poison_test(splits.test)
    torch.manual_seed(exp.recipe.seed)  # initial weights must not depend on what ran before
    model = exp.adapter.build_model(s["model"])
    mixing = s["victim"].augment == "mix"
    spec = {"adapter": exp.recipe.adapter, "data": victim_dump(s["data"], mixing), "model": victim_dump(s["model"], mixing),
            "attack": s["attack"].model_dump() if attack else None, "victim": s["victim"].model_dump(exclude={"progress"}, exclude_defaults=True),
            "seed": exp.recipe.seed, "cpu_threads": torch.get_num_threads()}  # another count trains another model
    if pins := pinned_kernels():  # so do other kernels (keys of victims cached without a pin stay as they were)
        spec["pinned_kernels"] = pins
    placed = attack.placement() if attack else None
    if placed is not None:
        spec["placement"] = placed
    key = victim_key(spec)
    meta = load_victim(model, key) if exp.recipe.cache_victim else None
    if meta is not None:
        log(f"victim: cached ({key})")
        return model, attack, poisoned_test, {**meta, "cached": True, "key": key}
    log(f"victim: training {s['model'].model_dump()} on {len(train)} samples ...")
    torch.manual_seed(exp.recipe.seed)
    state = state_dir / "victim_state.safetensors" if state_dir is not None else None
    trained = purify(model, exp.adapter, train, config=s["victim"], checkpoint=state, resume=resume)
    meta = {"train_time_s": trained.runtime_s, "steps": trained.config.steps, "spec": spec, "environment": environment(),
            "loss_curve": loss_curve(trained.history)}
    if exp.recipe.cache_victim:
        store_victim(trained.model, key, meta)
    return trained.model, attack, poisoned_test, {**meta, "cached": False, "key": key}


def loss_curve(history: list[dict[str, float]], points: int = 50) -> list[list[float]]:
    """[step, mean loss] over ``points`` equal stretches of training: enough to see whether a victim converged."""
    size = max(1, -(-len(history) // points))
    return [[history[i]["step"], sum(h["loss"] for h in history[i:i + size]) / len(history[i:i + size])]
            for i in range(0, len(history), size)]


def run(name: str, overrides: list[str] = (), out: Optional[Path] = None, log=print, resume: bool = False) -> dict[str, Any]:
    exp = prepare(name, overrides)
    if out is None:
        if resume:
            raise ConfigError("--resume needs the --out folder of the run to continue")
        out = Path("runs") / name.replace("/", "_").removesuffix(".yaml") / time.strftime("%Y%m%d-%H%M%S")
    with staged_dir(Path(out), resume) as stage:
        write_yaml(stage / "resolved.yaml", exp.resolved())
        splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
        victim, attack, poisoned_test, victim_meta = build_victim(exp, splits, log, stage, resume)
        device = torch.device(exp.recipe.device)

        def measure(model):
            return exp.adapter.evaluate(model, splits.test, poisoned_test, attack, device, exp.recipe.eval_batch_size)

        before = measure(victim)
        log(f"before: {_fmt(before)}")
        rep, defense, seed = exp.recipe.report, exp.sections["defense"], exp.recipe.seed
        extras = ReportExtras()
        curves, extras.notes["curves"] = start_curves(
            exp.adapter, victim, splits.test, poisoned_test, attack, device, exp.recipe.eval_batch_size,
            rep.curve_every, rep.curve_samples, defense.total_steps(len(splits.clean)), seed)
        result: PurifyResult = purify(victim, exp.adapter.for_defense(), splits.clean, config=defense, on_step=curves,
                                      checkpoint=stage / "state.safetensors", resume=resume)
        if curves is not None:
            extras.curves = curves.rows
        after = measure(result.model)
        log(f"after {result.config.method}: {_fmt(after)} in {result.runtime_s:.1f}s")
        extras.features, extras.notes["tsne"] = feature_sets(
            exp.adapter, victim, result.model, splits.test, poisoned_test, rep.tsne_samples, seed, device,
            exp.recipe.eval_batch_size)
        exp.sections["defense"] = result.config
        results = write_outputs(stage, name, before, after, result, victim_meta, splits.info, exp.resolved(), extras)
    log(f"wrote {out}")
    results["out"] = str(out)
    return results


def write_outputs(stage: Path, name: str, before: dict[str, float], after: dict[str, float], result: PurifyResult,
                  victim: dict[str, Any], info: dict[str, Any], resolved: dict[str, Any],
                  extras: Optional[ReportExtras] = None) -> dict[str, Any]:
    """Every file of a finished run; results.json last, and the resume state removed.
    ``extras``: what only a recipe run measures for report.html (curves, features); without it those
    parts of the page say they were not recorded."""
    results = {"recipe": name, "method": result.config.method, "before": before, "after": after,
               "runtime_s": result.runtime_s, "environment": environment(), "victim": victim, "data": info,
               "targets": [{"name": t.name, "kind": t.kind, "units": t.units, "input_units": t.input_units, "depth": t.depth}
                           for t in result.targets]}
    if result.info:
        results["method_info"] = result.info
    write_yaml(stage / "resolved.yaml", resolved)
    save_tensors(stage / "model.safetensors", result.model.state_dict())
    if result.masks:
        save_tensors(stage / "masks.safetensors", result.masks)
    write_json(stage / "history.json", result.history)
    atomic_write(stage / "report.md", render_report(results, result).encode())
    atomic_write(stage / "report.html", render_html(results, result, resolved, extras).encode())
    write_json(stage / "results.json", results)
    for state in stage.glob("*state.safetensors") if is_main() else ():
        state.unlink()
    return results


def environment() -> dict[str, Any]:
    """What a rerun needs besides the config and seed to repeat a result bit for bit: torch's CPU kernels
    split their sums by thread, and differ by CPU, so another thread count or CPU trains a different
    (equally good) model."""
    return {"nftkit": __version__, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), **cpu_kernels()}


def _fmt(metrics: dict[str, float]) -> str:
    # no unit: most adapters' metrics are percentages, but not all (a seq2seq token NLL is in nats)
    return ", ".join(f"{k.upper()} {v:.2f}" for k, v in metrics.items())
