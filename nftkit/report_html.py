"""report.html of a run and table.html of a benchmark: one self-contained page each.

Figures are drawn with matplotlib's Figure API (the Agg renderer, no pyplot state, no display needed)
and embedded as data:image/png;base64 URIs; the CSS is inline and there are no scripts, so a page
opens offline and can be mailed as one file.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from string import Template
from typing import Any

import numpy as np
import yaml

CLEAN, TRIGGERED = "#4c72b0", "#c44e52"

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; font-style: italic; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
</style>
</head>
<body>
<h1>$title</h1>
$body
</body>
</html>
""")


@dataclass
class ReportExtras:
    """What only a recipe run measures; a missing part becomes a sentence (its note) in the report."""

    curves: list[dict[str, float]] = field(default_factory=list)  # {"step": steps done, metric: value}, on test subsets
    features: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # phase -> (N x D, is_triggered)
    notes: dict[str, str] = field(default_factory=dict)  # "curves" / "tsne" -> why it is missing


# ---- figures --------------------------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols)


def _img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def metrics_figure(before: dict[str, float], after: dict[str, float]) -> str:
    keys = list(dict.fromkeys([*before, *after]))
    fig, ax = _figure(2 + 1.3 * len(keys), 3.2)
    x, w = np.arange(len(keys)), 0.38
    for offset, label, values, color in ((-w / 2, "backdoored", before, TRIGGERED), (w / 2, "purified", after, CLEAN)):
        bars = ax.bar(x + offset, [values.get(k, math.nan) for k in keys], w, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [k.upper() for k in keys])
    ax.set_ylim(0, max([100.0, *[v for v in (*before.values(), *after.values()) if math.isfinite(v)]]) * 1.1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Full test set, before and after purification")
    return _img(fig, "metrics before and after")


def masks_figure(masks: dict[str, Any], targets: list) -> str:
    rows = sorted((t for t in targets if t.name in masks), key=lambda t: t.depth)
    values = [masks[t.name].detach().flatten().float().cpu().numpy() for t in rows]
    grid = np.full((len(rows), max(v.size for v in values)), np.nan)  # narrower layers are padded with blanks
    for i, v in enumerate(values):
        grid[i, : v.size] = v
    import matplotlib

    fig, ax = _figure(10, min(1.5 + 0.25 * len(rows), 30))
    image = ax.imshow(grid, aspect="auto", interpolation="nearest",
                      cmap=matplotlib.colormaps["viridis"].with_extremes(bad="white"))
    fig.colorbar(image, ax=ax, label="mask value")
    if len(rows) <= 60:
        ax.set_yticks(range(len(rows)), [f"{t.depth}: {t.name} ({t.units})" for t in rows], fontsize=7)
    ax.set_xlabel("unit")
    ax.set_ylabel("layer (depth order)")
    return _img(fig, "mask heatmap")


def training_figure(history: list[dict[str, float]], curves: list[dict[str, float]]) -> str:
    fig, axes = _figure(11 if curves else 6, 3.4, 2 if curves else 1)
    loss_ax = axes[0] if curves else axes
    steps = np.array([row["step"] + 1 for row in history])
    window = max(1, len(history) // 25)  # per-step losses are noisy: a running mean shows the trend
    terms = {key: np.array([row.get(key, math.nan) for row in history])
             for key in dict.fromkeys(k for row in history for k in row if k not in ("step", "lr"))}
    for key, y in terms.items():
        line, = loss_ax.plot(steps, y, linewidth=0.6, alpha=0.35 if window > 1 else 1.0)
        loss_ax.plot(steps[window - 1:], np.convolve(y, np.ones(window) / window, "valid"), color=line.get_color(), label=key)
    if terms and all(np.nanmin(y) >= 0 and np.nanmax(y) > 0 for y in terms.values()):
        loss_ax.set_yscale("log", nonpositive="mask")  # regularisers are orders of magnitude below the task loss
    loss_ax.set(xlabel="steps done", title="Loss terms" + (f" (running mean of {window} steps)" if window > 1 else ""))
    loss_ax.legend(fontsize=8)
    if curves:
        steps = [row["step"] for row in curves]
        for key in dict.fromkeys(k for row in curves for k in row if k != "step"):
            axes[1].plot(steps, [row.get(key, math.nan) for row in curves], marker="o", markersize=3, label=key.upper())
        axes[1].set(xlabel="steps done", title="Metrics on a fixed test subset")
        axes[1].legend(fontsize=8)
    return _img(fig, "training curves")


def tsne_figure(features: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 0) -> str:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    fig, axes = _figure(10, 4.5, 2)
    for ax, (phase, title) in zip(axes, (("before", "backdoored model"), ("after", "purified model"))):
        points, triggered = features[phase]
        # exact, not Barnes-Hut: a few hundred points are cheap either way, and the Barnes-Hut OpenMP
        # code crashed (SIGSEGV) beside torch's OpenMP runtime in our tests; one thread, because OpenMP
        # threads on busy cores stall (1.4 s vs 11-27 s for 300 points on a loaded 2-core machine)
        tsne = TSNE(2, perplexity=min(30.0, (len(points) - 1) / 3), init="pca", random_state=seed, method="exact")
        with threadpool_limits(1):
            xy = tsne.fit_transform(points)
        ax.scatter(*xy[~triggered].T, s=7, c=CLEAN, label="clean", alpha=0.7)
        ax.scatter(*xy[triggered].T, s=7, c=TRIGGERED, label="triggered", alpha=0.7)
        ax.set(title=title, xticks=[], yticks=[])
    axes[0].legend(fontsize=8)
    return _img(fig, "t-SNE of head features")


# ---- pages ----------------------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == "n/a"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(c: Any) -> str:
        return f'<td class="num">{c}</td>' if _is_number(str(c)) else f"<td>{html.escape(str(c))}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "\n".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _section(ident: str, title: str, *parts: str) -> str:
    return f'<section id="{ident}">\n<h2>{html.escape(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _num(value: Any, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def render_html(results: dict[str, Any], purified, resolved: dict[str, Any], extras: ReportExtras | None = None) -> str:
    """report.html of one run: ``results`` as in results.json, ``purified`` the PurifyResult."""
    extras = extras or ReportExtras()
    before, after, cfg = results["before"], results["after"], purified.config
    keys = list(dict.fromkeys([*before, *after]))
    rows = [[k.upper(), _num(before.get(k)), _num(after.get(k)), _num(after.get(k, math.nan) - before.get(k, math.nan), "+.2f")]
            for k in keys]
    summary = (f"<p>Method <b>{html.escape(str(results['method']))}</b>, purification runtime {results['runtime_s']:.1f} s "
               f"({cfg.steps} steps of batch {cfg.batch_size} on {html.escape(cfg.device)}).</p>")
    sections = [summary, _section("metrics", "Before and after",
                                  _table(["metric", "backdoored", "purified", "change"], rows) if keys
                                  else _note("No test set was given, so nothing was measured."),
                                  metrics_figure(before, after) if keys else "")]
    sections.append(_section("masks", "Masks per layer",
                             masks_figure(purified.masks, purified.targets) if purified.masks and purified.targets
                             else _note(f"Method {cfg.method} tunes no masks.")))
    if not purified.history:
        training = [_note(f"Method {cfg.method} takes no training steps: it only edits the weights.")]
    else:
        training = [training_figure(purified.history, extras.curves),
                    _note(extras.notes.get("curves", "Metric curves were not recorded in this run; recipe runs "
                                           "record them (report.curve_every).")) if not extras.curves else ""]
    sections.append(_section("training", "Purification over steps", *training))
    tsne_note = extras.notes.get("tsne", "No features were captured in this run.")
    sections.append(_section("tsne", "Clean and triggered test features (t-SNE of the head's input)",
                             tsne_figure(extras.features, cfg.seed) if extras.features else _note(tsne_note)))
    sections.append(_section("config", "Configuration", "<details><summary>resolved.yaml</summary>"
                             f"<pre>{html.escape(yaml.safe_dump(resolved, sort_keys=False))}</pre></details>"))
    return PAGE.substitute(title=html.escape(f"nftkit run: {results['recipe']}"), body="\n".join(sections))


def render_bench_html(name: str, tables: list[tuple[list[str], list[list[str]]]], summary: dict[str, dict[str, float]]) -> str:
    """table.html of a benchmark: its tables (per row, then per method) and the mean runtime per method."""
    methods = list(summary)
    fig, ax = _figure(7, 1 + 0.4 * len(methods))
    bars = ax.barh(methods, [summary[m]["runtime_s"] for m in methods], color=CLEAN)
    ax.bar_label(bars, labels=[f"{summary[m]['runtime_s']:.1f} s (x{_num(summary[m]['runtime_ratio'])})" for m in methods],
                 fontsize=8, padding=3)
    ax.invert_yaxis()
    ax.set(xlabel="mean purification runtime (s)", title="Runtime per method (ratio to the reference)")
    ax.margins(x=0.25)
    body = [_section("rows", "Every run", _table(*tables[0])),
            _section("averages", "Averages per method", _table(*tables[1])),
            _section("runtime", "Runtime per method", _img(fig, "runtime per method"))]
    return PAGE.substitute(title=html.escape(f"nftkit bench {name}"), body="\n".join(body))
