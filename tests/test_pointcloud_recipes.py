"""Every point-cloud recipe smoke-runs end to end on tiny data written by the test itself."""
import json

import pytest
import torch
import yaml

from nftkit.experiment import run
from nftkit.recipe import list_recipes, recipe_text
from nftkit.adapters.pointcloud.data import CGAL_CLASSES

RECIPES = list_recipes("pointcloud/*")
TINY = ["data.num_points=32", "data.clean_size=10", "data.views_per_mesh=6", "victim.steps=3", "victim.batch_size=8",
        "victim.epochs=null", "defense.steps=2", "defense.batch_size=8", "defense.epochs=null", "model.width=0.125"]
TINY_ATTACK = {"3dpcba": ["attack.surrogate_steps=2", "attack.search_steps=2", "attack.search_starts=1",
                          "attack.search_batch=4", "attack.surrogate_width=0.125"],
               "pointcba": ["attack.surrogate_steps=2", "attack.pgd_steps=2", "attack.surrogate_width=0.125"]}


def _off(scale: float) -> str:
    return (f"OFF\n5 6 0\n0 0 0\n{scale} 0 0\n0 {scale} 0\n0 0 {scale}\n{scale} {scale} {scale}\n"
            "3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 4\n3 1 3 4\n3 2 3 4\n")


def _fake_cgal(root):
    for i, meshes in enumerate(CGAL_CLASSES.values()):
        for m in meshes:
            (root / f"{m}.off").write_text(_off(1.0 + i))
    return root


def _fake_modelnet(root):
    names = ["airplane", "bed", "chair"]
    (root / "modelnet40_shape_names.txt").write_text("\n".join(names))
    g = torch.Generator().manual_seed(0)
    splits = {"train": [f"{n}_{i:04d}" for n in names for i in range(1, 9)],
              "test": [f"{n}_{i:04d}" for n in names for i in range(9, 12)]}
    for split, ids in splits.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids))
        for sid in ids:
            cls = sid.rsplit("_", 1)[0]
            (root / cls).mkdir(exist_ok=True)
            rows = torch.rand(40, 6, generator=g) * torch.tensor([1.0 + names.index(cls), 1, 1, 1, 1, 1])
            (root / cls / f"{sid}.txt").write_text("\n".join(",".join(f"{v:.5f}" for v in r) for r in rows.tolist()))
    return root


def test_the_issue_recipes_exist():
    assert {"pointcloud/modelnet40_pointba_i", "pointcloud/modelnet40_pointba_o", "pointcloud/modelnet40_3dpcba",
            "pointcloud/cgal_pointba_i", "pointcloud/cgal_pointba_o", "pointcloud/cgal_3dpcba"} <= set(RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_pointcloud_recipe_smoke_run(name, tmp_path):
    recipe = yaml.safe_load(recipe_text(name))
    data_root = tmp_path / "data"
    data_root.mkdir()
    (_fake_cgal if recipe["data"]["dataset"] == "cgal" else _fake_modelnet)(data_root)
    overrides = TINY + [f"data.root={data_root}"] + TINY_ATTACK.get(recipe["attack"]["name"], [])
    if recipe["model"]["arch"].startswith("pointnet2"):
        overrides.append("model.centres=[8,4]")
    out = tmp_path / "run"
    run(name, overrides, out, log=lambda *_: None)
    saved = json.loads((out / "results.json").read_text())
    for phase in ("before", "after"):
        assert {"acc", "asr", "lcr"} <= set(saved[phase])
    assert saved["targets"] and all(t["kind"].startswith("BatchNorm") for t in saved["targets"])
    resolved = yaml.safe_load((out / "resolved.yaml").read_text())
    assert resolved["defense"]["steps"] == 2 and resolved["data"]["num_points"] == 32


def test_a_victim_trained_on_another_placed_trigger_is_not_reused(tmp_path, monkeypatch):
    # the 3DPC-BA search decides the trigger's place; the cache key must follow it, not only the config
    from nftkit.adapters.pointcloud.attacks import BackdoorPoints3D

    monkeypatch.setenv("NFTKIT_CACHE_DIR", str(tmp_path / "cache"))
    data_root = tmp_path / "data"
    data_root.mkdir()
    _fake_cgal(data_root)
    overrides = TINY + [f"data.root={data_root}"] + TINY_ATTACK["3dpcba"]

    def victim_line(out):
        lines = []
        run("pointcloud/cgal_3dpcba", overrides, tmp_path / out, log=lines.append)
        return next(line for line in lines if line.startswith("victim:"))

    assert victim_line("first").startswith("victim: training")
    assert victim_line("again").startswith("victim: cached")
    searched = BackdoorPoints3D.placement
    monkeypatch.setattr(BackdoorPoints3D, "placement", lambda self: [v + 0.5 for v in searched(self)])
    assert victim_line("moved").startswith("victim: training")
