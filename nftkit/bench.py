"""Benchmark suites: every method against every attack (and model) on shared cached victims, one table.

A suite is YAML data in recipes/bench/<domain>/<name>.yaml built on a base recipe.
"""
from __future__ import annotations

import math
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from pydantic import Field

from .config import StrictModel, validate
from .errors import ConfigError, ModelError
from .experiment import build_experiment, build_victim, environment
from .io import atomic_write, staged_dir, write_json, write_yaml
from .purify import purify, resolve_config
from .recipe import apply_overrides, load_recipe
from .report_html import render_bench_html


class SuiteConfig(StrictModel):
    description: str = ""
    base: str  # recipe the grid is built on
    overrides: list[str] = Field(default_factory=list)  # applied to the base recipe for every row
    models: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})  # name -> model section
    attacks: dict[str, dict[str, Any]]  # name -> attack section
    methods: dict[str, dict[str, Any]]  # row name -> defense keys (+ few_shot: n clean samples per class)
    reference: str = "nft"  # runtime ratios are relative to this row
    diagnostics: bool = False  # Hessian lambda_max / trace before and after (slow)


def list_suites(pattern: str = "*") -> list[str]:
    import fnmatch

    root = resources.files("nftkit.recipes").joinpath("bench")
    names = []
    if root.is_dir():
        for domain in root.iterdir():
            if domain.is_dir():
                names += [f"{domain.name}/{f.name[:-5]}" for f in domain.iterdir() if f.name.endswith(".yaml")]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def load_suite(name: str, overrides: list[str] = ()) -> SuiteConfig:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        item = resources.files("nftkit.recipes").joinpath("bench", *f"{name}.yaml".split("/"))
        if not item.is_file():
            raise ConfigError(f"unknown benchmark suite '{name}'; known suites: {', '.join(list_suites()) or 'none'}")
        text = item.read_text()
    raw = apply_overrides(yaml.safe_load(text) or {}, list(overrides))
    return validate(SuiteConfig, raw)


def defense_config(raw: dict[str, Any], spec: dict[str, Any]):
    """A row's defense keys, run under its cell recipe's seed and device."""
    return resolve_config(None, {"seed": raw.get("seed", 0), "device": raw.get("device", "cpu"), **spec})


def _row_config(suite: SuiteConfig, row: str, base: dict[str, Any]) -> tuple[Any, Optional[int]]:
    spec = dict(suite.methods[row])
    few_shot = spec.pop("few_shot", None)
    return defense_config(base, spec), few_shot


def cell_victim(exp, log=print):
    """A cell's data and its victim (poisoned, trained or taken from the cache), with the function that
    measures any model of the cell on its clean and poisoned test sets."""
    splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
    victim, attack, poisoned_test, meta = build_victim(exp, splits, log)
    device = torch.device(exp.recipe.device)

    def measure(model):
        return exp.adapter.evaluate(model, splits.test, poisoned_test, attack, device, exp.recipe.eval_batch_size)

    return splits, victim, meta, measure


def prepare_suite(name: str, overrides: list[str] = ()) -> tuple[SuiteConfig, list[tuple[str, str, dict, Any]]]:
    """Validate every row and every (model, attack) cell before any compute is spent; return the cells
    as (model name, attack name, raw recipe, experiment)."""
    suite = load_suite(name, overrides)
    if suite.reference not in suite.methods:
        raise ConfigError(f"reference method '{suite.reference}' is not one of the suite's methods {list(suite.methods)}")
    base = load_recipe(suite.base, suite.overrides)
    for row in suite.methods:
        _row_config(suite, row, base)
    cells = []
    for model_name, model_section in suite.models.items():
        for attack_name, attack_section in suite.attacks.items():
            raw = dict(base, model={**base.get("model", {}), **model_section}, attack=attack_section)
            cells.append((model_name, attack_name, raw, build_experiment(suite.base, raw)))
    return suite, cells


def run_suite(name: str, overrides: list[str] = (), out: Optional[Path] = None, log=print) -> dict[str, Any]:
    suite, cells = prepare_suite(name, overrides)
    if out is None:
        out = Path("runs") / "bench" / name.replace("/", "_") / time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    with staged_dir(Path(out)) as stage:
        write_yaml(stage / "resolved.yaml", suite.model_dump())
        for model_name, attack_name, raw, exp in cells:
            splits, victim, meta, measure = cell_victim(exp, log)
            device = torch.device(exp.recipe.device)
            before = measure(victim)
            log(f"[{model_name} / {attack_name}] backdoored: {before}")
            for row in suite.methods:
                cfg, few_shot = _row_config(suite, row, raw)
                clean = splits.clean
                if few_shot:
                    clean = exp.adapter.few_shot(clean, few_shot, torch.Generator().manual_seed(cfg.seed))
                extra = {}
                if suite.diagnostics:
                    from .diagnostics import smoothness

                    extra["before_diag"] = smoothness(victim, exp.adapter, splits.clean, device=device)
                try:
                    result = purify(victim, exp.adapter.for_defense(), clean, config=cfg)
                except ModelError as err:  # one diverging defense must not cost the rest of a long suite
                    log(f"[{model_name} / {attack_name}] {row}: failed: {err}")
                    rows.append({"model": model_name, "attack": attack_name, "method": row, "before": before,
                                 "after": {k: math.nan for k in before}, "runtime_s": math.nan,
                                 "n_clean": len(clean), "victim_cached": meta["cached"], "error": str(err),
                                 "config": cfg.model_dump(), **extra})
                    write_json(stage / "rows.json", rows)
                    continue
                after = measure(result.model)
                if suite.diagnostics:
                    extra["after_diag"] = smoothness(result.model, exp.adapter, splits.clean, device=device)
                log(f"[{model_name} / {attack_name}] {row}: {after} in {result.runtime_s:.1f}s")
                rows.append({"model": model_name, "attack": attack_name, "method": row, "before": before,
                             "after": after, "runtime_s": result.runtime_s, "n_clean": len(clean),
                             "victim_cached": meta["cached"], "config": result.config.model_dump(),
                             "method_info": result.info, **extra})
                write_json(stage / "rows.json", rows)  # partial progress visible inside the staged folder
        summary = summarize(rows, suite.reference)
        table = render_table(rows, summary, name)
        atomic_write(stage / "table.md", table.encode())
        atomic_write(stage / "table.html", render_bench_html(name, table_cells(rows, summary), summary).encode())
        write_json(stage / "results.json", {"suite": name, "rows": rows, "summary": summary, "environment": environment()})
    log(table)
    log(f"wrote {out}")
    return {"rows": rows, "summary": summary, "out": str(out)}


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def summarize(rows: list[dict[str, Any]], reference: str) -> dict[str, dict[str, float]]:
    """Per method: mean of each metric after, mean change from before, mean runtime and ratio to the reference."""
    summary: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        keys = list(dict.fromkeys(k for r in mine for k in r["after"]))
        entry = {k: _mean([r["after"].get(k) for r in mine]) for k in keys}
        entry.update({f"{k}_change": _mean([r["after"].get(k, math.nan) - r["before"].get(k, math.nan) for r in mine])
                      for k in keys})
        entry["runtime_s"] = _mean([r["runtime_s"] for r in mine])
        summary[method] = entry
    ref = summary.get(reference, {}).get("runtime_s")
    for entry in summary.values():
        entry["runtime_ratio"] = entry["runtime_s"] / ref if ref else float("nan")
    return summary


def table_cells(rows: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of the per-run table and of the per-method averages, shared by table.md and table.html."""
    keys = list(dict.fromkeys(k for r in rows for k in r["after"]))
    runs = (["model", "attack", "method", *[f"{k.upper()} {p}" for k in keys for p in ("before", "after")], "runtime (s)"],
            [[r["model"], r["attack"], r["method"],
              *[f"{r[p].get(k, math.nan):.2f}" for k in keys for p in ("before", "after")], f"{r['runtime_s']:.1f}"]
             for r in rows])
    averages = (["method", *[h for k in keys for h in (k.upper(), f"{k.upper()} change")], "runtime (s)", "runtime / reference"],
                [[method, *[c for k in keys for c in (f"{s[k]:.2f}", f"{s[k + '_change']:+.2f}")],
                  f"{s['runtime_s']:.1f}", f"{s['runtime_ratio']:.2f}"] for method, s in summary.items()])
    return [runs, averages]


def render_table(rows: list[dict[str, Any]], summary: dict[str, dict[str, float]], name: str) -> str:
    def markdown(header, cells):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(c) + " |" for c in cells)]

    runs, averages = table_cells(rows, summary)
    lines = [f"# nftkit bench {name}", "", *markdown(*runs), "", "## Averages per method", "", *markdown(*averages)]
    failed = [f"- {r['model']} / {r['attack']} / {r['method']}: {r['error']}" for r in rows if r.get("error")]
    if failed:
        lines += ["", "## Failed runs (nan above; a method's averages include them as nan)", "", *failed]
    return "\n".join(lines) + "\n"
