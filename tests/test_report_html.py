"""report.html of a run and table.html of a benchmark: self-contained, readable, and faithful to results.json."""
import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file

import nftkit
from nftkit.bench import run_suite
from nftkit.experiment import run
from nftkit.monitor import CurveRecorder
from nftkit.report_html import ReportExtras, render_html
from test_recipes import FMNIST, TINY

PNG = b"\x89PNG\r\n\x1a\n"
CURVES = ["report.curve_every=2", "report.curve_samples=40", "report.tsne_samples=60"]
quiet = lambda *_: None  # noqa: E731


class Page(HTMLParser):
    """Section ids, <img> sources, every src/href, and table rows (lists of cell texts)."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.links, self.rows, self.scripts = [], [], [], [], 0
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell.strip())
            self._cell = None


def check_self_contained(page: Page) -> None:
    assert page.images and page.scripts == 0
    assert not [u for u in page.links if u.lower().startswith(("http:", "https:", "//"))]
    for src in page.images:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG)
        try:
            from PIL import Image
        except ImportError:
            continue
        with Image.open(io.BytesIO(png)) as image:
            image.verify()
            assert image.size[0] > 100 and image.size[1] > 100


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run with curves and t-SNE, one without (same cached victim)."""
    if not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed (make setup installs it)")
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NFTKIT_CACHE_DIR", str(root / "cache"))
        torch.set_num_threads(2)
        base = TINY["image"] + ["defense.steps=5"]
        run("image/fmnist_badnets", base + CURVES, root / "curves", log=quiet)
        run("image/fmnist_badnets", base + ["report.curve_every=0", "report.tsne_samples=0"], root / "plain", log=quiet)
    return root


@pytest.mark.slow
def test_report_html_is_self_contained_and_matches_results(runs):
    out = runs / "curves"
    page = Page((out / "report.html").read_text())
    results = json.loads((out / "results.json").read_text())
    assert page.sections == ["metrics", "masks", "training", "tsne", "config"]
    assert len(page.images) == 4  # metric bars, mask heatmap, loss + metric curves, t-SNE
    check_self_contained(page)
    table = {row[0]: row[1:] for row in page.rows[1:]}
    assert set(table) == {k.upper() for k in results["before"]}
    for key, (before, after, change) in ((k.upper(), table[k.upper()]) for k in results["before"]):
        k = key.lower()
        assert float(before) == pytest.approx(results["before"][k], abs=0.005)
        assert float(after) == pytest.approx(results["after"][k], abs=0.005)
        assert float(change) == pytest.approx(results["after"][k] - results["before"][k], abs=0.01)
    assert results["runtime_s"] > 0  # curve evaluation is taken out of the purification runtime, not more
    resolved = yaml.safe_load((out / "resolved.yaml").read_text())
    assert resolved["report"] == {"curve_every": 2, "curve_samples": 40, "tsne_samples": 60}


@pytest.mark.slow
def test_curves_leave_training_bit_identical(runs):
    with_curves, plain = (load_file(runs / name / "masks.safetensors") for name in ("curves", "plain"))
    assert with_curves.keys() == plain.keys()
    assert all(torch.equal(with_curves[k], plain[k]) for k in plain)
    weights = [load_file(runs / name / "model.safetensors") for name in ("curves", "plain")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    histories = [json.loads((runs / name / "history.json").read_text()) for name in ("curves", "plain")]
    assert histories[0] == histories[1]
    # the page without curves or t-SNE says why instead of showing them
    page = Page((runs / "plain" / "report.html").read_text())
    text = (runs / "plain" / "report.html").read_text()
    assert len(page.images) == 3 and "report.curve_every=0" in text and "report.tsne_samples=0" in text


def test_curve_recorder_restores_modes_and_rng(tiny_data, adapter3):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # bn_mode=eval: one module stays in eval mode during training

    def measure(m):
        m.eval()
        return {"noise": float(torch.rand(()))}  # draws from the global RNG, as a DataLoader does

    recorder = CurveRecorder(measure, every=2, total=5, device=torch.device("cpu"))
    state = torch.get_rng_state()
    for step in range(5):
        recorder(step, model)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and [m.training for m in model] == [True, True, False, True]
    assert [row["step"] for row in recorder.rows] == [2, 4, 5]


def test_report_without_masks_curves_or_features(tiny_data, adapter3):
    from conftest import make_mlp

    result = nftkit.purify(make_mlp(), adapter3, tiny_data, method="ft", steps=2, batch_size=8)
    results = {"recipe": "x", "method": "ft", "before": {"acc": 50.0}, "after": {"acc": 60.0}, "runtime_s": 0.1}
    notes = {"tsne": "This run has no attack."}
    for extras in (None, ReportExtras(notes=notes)):
        text = render_html(results, result, {"defense": result.config.model_dump()}, extras)
        page = Page(text)
        assert page.sections == ["metrics", "masks", "training", "tsne", "config"]
        assert len(page.images) == 2 and "tunes no masks" in text and "not recorded" in text
        check_self_contained(page)
    assert "This run has no attack." in text


def run_tiny_suite(tmp_path, methods: dict) -> Path:
    """A one-attack suite on tiny Fashion-MNIST victims; returns its run folder."""
    if not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed (make setup installs it)")
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump({"base": "image/fmnist_badnets", "overrides": TINY["image"],
                                     "attacks": {"badnets": {"name": "badnets"}}, "methods": methods}))
    out = tmp_path / "bench"
    run_suite(str(suite), out=out, log=quiet)
    return out


@pytest.mark.slow
def test_bench_writes_table_html(tmp_path):
    out = run_tiny_suite(tmp_path, {"nft": {"method": "nft", "steps": 2, "batch_size": 16},
                                    "ft": {"method": "ft", "steps": 2, "batch_size": 16}})
    page = Page((out / "table.html").read_text())
    assert page.sections == ["rows", "averages", "runtime"] and len(page.images) == 1
    check_self_contained(page)
    saved = json.loads((out / "results.json").read_text())
    assert saved["environment"]["cpu_threads"] == torch.get_num_threads() and saved["environment"]["cpu"]
    header, *cells = page.rows[: 1 + len(saved["rows"])]
    assert header[:3] == ["model", "attack", "method"] and "ASR after" in header
    for row, shown in zip(saved["rows"], cells):
        assert shown[:3] == [row["model"], row["attack"], row["method"]]
        assert float(shown[header.index("ASR after")]) == pytest.approx(row["after"]["asr"], abs=0.005)
        assert float(shown[header.index("runtime (s)")]) == pytest.approx(row["runtime_s"], abs=0.05)
    averages = {r[0]: r for r in page.rows[2 + len(saved["rows"]):]}
    assert set(averages) == {"nft", "ft"}


@pytest.mark.slow
def test_bench_records_a_diverging_defense_and_goes_on(tmp_path):
    out = run_tiny_suite(tmp_path, {"diverges": {"method": "ft", "steps": 3, "batch_size": 16, "lr": 1e30},
                                    "nft": {"method": "nft", "steps": 2, "batch_size": 16}})
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["diverges", "nft"]
    assert "lower the learning rate" in rows[0]["error"] and "error" not in rows[1]
    assert "## Failed runs" in (out / "table.md").read_text()
