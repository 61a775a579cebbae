"""Paper-scale image recipes: tiny fake datasets in each standard layout, loaded and smoke-run on CPU."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import nftkit
from nftkit.adapters.image.data import load_image_dataset
from nftkit.experiment import prepare, run

PAPER = ["image/cifar10_badnets", "image/gtsrb_lira", "image/tinyimagenet_wanet", "image/imagenet_trojan"]
TINY = ["device=cpu", "victim.steps=2", "victim.batch_size=4", "defense.steps=2", "defense.batch_size=4",
        "eval_batch_size=8"]
EXTRA = {  # per recipe: a small model, and the attacker's own training shrunk to two CPU steps
    "image/cifar10_badnets": ["model.width=4"],
    "image/gtsrb_lira": ["attack.device=cpu", "attack.gen_steps=2", "attack.gen_width=4", "attack.gen_batch_size=4"],
    "image/tinyimagenet_wanet": [],
    "image/imagenet_trojan": ["data.test_limit=6"],
}


def _rng_images(n, h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def fake_cifar10(root, per_file=20):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        labels = np.arange(per_file, dtype=np.uint8) % 10
        pixels = _rng_images(per_file, 32, 32, i).transpose(0, 3, 1, 2).reshape(per_file, -1)
        np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8).tofile(folder / name)


def fake_gtsrb(root):
    base = root / "gtsrb" / "GTSRB"
    for c in range(43):
        folder = base / "Training" / f"{c:05d}"
        folder.mkdir(parents=True)
        for k, img in enumerate(_rng_images(2, 30, 34, c)):
            Image.fromarray(img).save(folder / f"00000_{k:05d}.ppm")
    test = base / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for k, img in enumerate(_rng_images(8, 31, 31, 99)):
        Image.fromarray(img).save(test / f"{k:05d}.ppm")
        rows.append(f"{k:05d}.ppm;31;31;0;0;30;30;{k % 43}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def fake_tiny_imagenet(root, classes=("n01443537", "n01629819", "n01641577", "n01644900")):
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(classes) + "\n")
    for c, wnid in enumerate(classes):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k, img in enumerate(_rng_images(3, 64, 64, c)):
            Image.fromarray(img).save(folder / f"{wnid}_{k}.JPEG", format="JPEG")
    val = root / "val" / "images"
    val.mkdir(parents=True)
    rows = []
    for k, img in enumerate(_rng_images(8, 64, 64, 50)):
        Image.fromarray(img).save(val / f"val_{k}.JPEG", format="JPEG")
        rows.append(f"val_{k}.JPEG\t{classes[k % len(classes)]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def fake_imagenet(root, classes=("n01440764", "n01443537", "n01484850")):
    for split, n in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k, img in enumerate(_rng_images(n, 60, 80, c + (10 if split == "val" else 0))):
                Image.fromarray(img).save(folder / f"{wnid}_{k}.JPEG", format="JPEG")


FAKES = {"cifar10": fake_cifar10, "gtsrb": fake_gtsrb, "tiny_imagenet": fake_tiny_imagenet, "imagenet": fake_imagenet}
SHAPES = {"cifar10": (100, 20, 10, (3, 32, 32)), "gtsrb": (86, 8, 43, (3, 32, 32)),
          "tiny_imagenet": (12, 8, 4, (3, 64, 64)), "imagenet": (9, 6, 3, (3, 224, 224))}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_loaders_read_the_standard_layouts(name, tmp_path):
    FAKES[name](tmp_path)
    train, test, classes = load_image_dataset(name, str(tmp_path))
    n_train, n_test, n_classes, shape = SHAPES[name]
    assert len(train) == n_train and len(test) == n_test and len(classes) == n_classes
    assert tuple(train.images.shape[1:]) == shape and tuple(test.images.shape[1:]) == shape
    assert train.images.dtype == torch.float32 and 0 <= train.images.min() and train.images.max() <= 1
    assert set(train.targets.tolist()) == set(range(n_classes))


def test_tiny_imagenet_val_labels_follow_the_annotations(tmp_path):
    fake_tiny_imagenet(tmp_path)
    _, test, _ = load_image_dataset("tiny_imagenet", str(tmp_path))
    assert test.targets.tolist() == [k % 4 for k in range(8)]


@pytest.mark.parametrize("name", ["tiny_imagenet", "imagenet"])
def test_missing_dataset_says_where_to_put_it(name, tmp_path):
    with pytest.raises(nftkit.DataError, match="fmnist_badnets") as err:
        load_image_dataset(name, str(tmp_path / "nowhere"))
    assert "train" in str(err.value) and str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_uses_the_papers_settings(name):
    exp = prepare(name)
    s = exp.sections
    assert exp.recipe.device == "cuda" and s["attack"].poison_rate == 0.1
    assert s["defense"].method == "nft" and s["defense"].lr == 0.05 and s["defense"].momentum == 0.95
    expected = {"image/cifar10_badnets": ("cifar10", "preactresnet18", 0.01, 250),
                "image/gtsrb_lira": ("gtsrb", "wideresnet16_1", 0.03, 200),
                "image/tinyimagenet_wanet": ("tiny_imagenet", "resnet34", 0.05, 150),
                "image/imagenet_trojan": ("imagenet", "resnet50", 0.03, 200)}[name]
    assert (s["data"].dataset, s["model"].arch, s["data"].clean_fraction, s["victim"].epochs) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_smoke_runs_on_fake_data(name, tmp_path):
    dataset = prepare(name).sections["data"].dataset
    FAKES[dataset](tmp_path / "data")
    overrides = TINY + EXTRA[name] + [f"data.root={tmp_path / 'data'}"]
    results = run(name, overrides, tmp_path / "out", log=lambda *_: None)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["data"]["num_classes"] == SHAPES[dataset][2]
    for phase in ("before", "after"):
        assert {"acc", "asr", "lcr"} <= set(saved[phase])
    assert results["victim"]["steps"] == 2 and saved["method"] == "nft"
