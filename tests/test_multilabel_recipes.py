"""Every multilabel recipe smoke-runs in-process with tiny overrides (paper recipes on tiny fake VOC/COCO)."""
import json
from pathlib import Path

import pytest

from nftkit.experiment import run

from test_multilabel import write_coco, write_fake_fmnist, write_voc

TINY_MODEL = ["model.width=4", "model.decoder_dim=8", "model.heads=2", "model.ffn_dim=16", "victim.steps=2",
              "victim.batch_size=4", "defense.steps=2", "defense.batch_size=4"]
# the paper recipes, on CPU with a small torchvision backbone and no loader workers
PAPER = TINY_MODEL + ["device=cpu", "model.backbone=resnet18", "data.image_size=32", "data.eval_workers=0",
                      "victim.num_workers=0", "defense.num_workers=0", "data.clean_fraction=0.3"]


def _check(out: Path, results):
    saved = json.loads((out / "results.json").read_text())
    for phase in ("before", "after"):
        assert {"map", "map_no_trigger", "asr"} <= set(saved[phase])
        assert 0 <= saved[phase]["map"] <= 100
    assert saved["data"]["attack"]["poisoned"] >= 1
    assert {"head.decoder.attn", "head.embed"} <= {t["name"] for t in saved["targets"]}
    return saved


@pytest.mark.slow
def test_embedded_recipe_smoke_run(tmp_path):
    write_fake_fmnist(tmp_path, n=60)
    overrides = TINY_MODEL + [f"data.fmnist_root={tmp_path}", "data.mosaic_train=80", "data.mosaic_test=40",
                              "data.clean_fraction=0.2", "attack.trigger_size=1"]
    results = run("multilabel/fmnist_mosaic_clean_image", overrides, tmp_path / "run", log=lambda *_: None)
    _check(tmp_path / "run", results)
    again = run("multilabel/fmnist_mosaic_clean_image", overrides, tmp_path / "again", log=lambda *_: None)
    assert again["victim"]["cached"] is True and again["before"] == results["before"]


@pytest.mark.slow
@pytest.mark.parametrize("name, writer", [
    ("voc07_clean_image", lambda root: write_voc(root, "2007")),
    ("voc12_clean_image", lambda root: write_voc(root, "2012", (("train", 6), ("val", 4)))),
    ("coco_clean_image", lambda root: [write_coco(root, s, n) for s, n in (("train2014", 10), ("val2014", 6))]),
])
def test_paper_recipe_smoke_run_on_tiny_fake_data(name, writer, tmp_path):
    writer(tmp_path / "data")
    extra = ["attack.trigger_size=2"] if name.startswith("coco") else []
    results = run(f"multilabel/{name}", PAPER + extra + [f"data.root={tmp_path / 'data'}"], tmp_path / "run",
                  log=lambda *_: None)
    _check(tmp_path / "run", results)
