"""A Markdown report of one run."""
from __future__ import annotations

from typing import Any


def render_report(results: dict[str, Any], purified) -> str:
    before, after = results["before"], results["after"]
    keys = list(dict.fromkeys([*before, *after]))
    nan = float("nan")
    rows = "\n".join(f"| {k.upper()} | {before.get(k, nan):.2f} | {after.get(k, nan):.2f} | "
                     f"{after.get(k, nan) - before.get(k, nan):+.2f} |" for k in keys)
    lines = [
        f"# nftkit run: {results['recipe']}",
        "",
        f"Method **{results['method']}**, purification runtime {results['runtime_s']:.1f} s "
        f"({purified.config.steps} steps of batch {purified.config.batch_size} on {purified.config.device}).",
        "",
        "| metric | backdoored | purified | change |",
        "|---|---|---|---|",
        rows,
        "",
        f"Data: {results['data'].get('n_train', '?')} training samples (attacker), "
        f"{results['data'].get('n_clean', '?')} clean samples (defender), {results['data'].get('n_test', '?')} test samples.",
        f"Victim: {'from cache' if results['victim'].get('cached') else 'trained in this run'} "
        f"(key {results['victim'].get('key')}, training {results['victim'].get('train_time_s', 0):.1f} s).",
    ]
    projection = results.get("method_info", {}).get("subspace")
    if projection and projection["kept"]:
        drop = projection["heldout_drop"]
        lines += ["", "## Clean-subspace projection", "",
                  f"Energy share kept: {projection['energy']}"
                  + (f" (cross-validated clean accuracy {-drop:+.2f} points)" if drop is not None else "") + ".",
                  "", "| layer | input directions kept | of |", "|---|---|---|"]
        lines += [f"| `{name}` | {k} | {d} |" for name, (k, d) in projection["kept"].items()]
    if purified.masks:
        lines += ["", "## Masks per layer (depth order)", "", "| l | layer | units | lower bound | min | mean |", "|---|---|---|---|---|---|"]
        from .schedules import lower_bounds

        cfg = purified.config
        bounds = lower_bounds(cfg.schedule, [t.depth for t in purified.targets], cfg.alpha, cfg.beta)
        for t, low in zip(purified.targets, bounds):
            split = t.units - t.input_units
            mask = purified.masks[t.name]
            for label, m in ((f"`{t.name}` ({t.kind})", mask[:split]), (f"`{t.name}` ({t.kind}) inputs", mask[split:])):
                if len(m):
                    lines.append(f"| {t.depth} | {label} | {len(m)} | {low:.3f} | {m.min():.3f} | {m.mean():.3f} |")
    lines += ["", "Files: `results.json`, `resolved.yaml` (the full config of this run), `model.safetensors` "
              "(purified weights, original keys), `masks.safetensors`, `history.json` (per-step loss).", ""]
    return "\n".join(lines)
