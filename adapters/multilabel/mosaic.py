"""The embedded multi-label dataset: mosaics of 1-4 real Fashion-MNIST images per canvas.

No multi-label dataset ships in any package, so this one is built from the Debian Fashion-MNIST files
and written to disk in the COCO layout (PNG images + ``annotations/instances_<split>.json`` with real
boxes), then read back by the same COCO reader as MS-COCO. Train mosaics use Fashion-MNIST's training
images only and test mosaics its test images only, so no object is shared between the splits.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from nftkit.errors import DataError

from .data import DATASETS, DatasetSpec

DATASETS["fmnist_mosaic"] = DatasetSpec(
    "coco", "", "train", "test",
    "it is generated from Fashion-MNIST (apt-get install dataset-fashion-mnist) into ROOT on first use")


def mosaic_folder(cache: Path, **params) -> Path:
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache / "data" / f"fmnist_mosaic-{key}"


def _cache_root() -> Path:
    return Path(os.environ.get("NFTKIT_CACHE_DIR", Path.home() / ".cache" / "nftkit"))


def ensure_mosaics(root: Optional[str], n_train: int, n_test: int, max_objects: int = 4, grid: int = 2,
                   seed: int = 0, fmnist_root: Optional[str] = None) -> Path:
    """The folder holding the mosaics, written once (atomically) if it is not there yet."""
    params = dict(n_train=n_train, n_test=n_test, max_objects=max_objects, grid=grid, seed=seed, version=1)
    folder = Path(os.path.expanduser(root)) if root else mosaic_folder(_cache_root(), **params)
    if (folder / "annotations" / "instances_test.json").is_file():
        return folder
    if max_objects > grid * grid:
        raise DataError(f"data.mosaic_max_objects={max_objects} does not fit a {grid}x{grid} grid; lower it or raise data.mosaic_grid")
    from nftkit.adapters.image.data import load_image_dataset

    try:
        train, test, names = load_image_dataset("fashion_mnist", fmnist_root)
    except DataError as err:
        raise DataError(f"the embedded multi-label mosaics are built from Fashion-MNIST, which is missing: {err}") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        rng = np.random.default_rng(seed)
        for split, source, count in (("train", train, n_train), ("test", test, n_test)):
            write_split(stage, split, source.images[:, 0].mul(255).round().byte().numpy(), source.targets.numpy(),
                        names, count, max_objects, grid, rng)
        if folder.exists():  # another process finished first
            shutil.rmtree(stage)
        else:
            os.replace(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return folder


def write_split(root: Path, split: str, tiles: np.ndarray, tile_labels: np.ndarray, names: list[str], count: int,
                max_objects: int, grid: int, rng: np.random.Generator) -> None:
    """``count`` canvases of grid x grid cells; 1..max_objects cells get a random image of ``tiles``."""
    from PIL import Image

    size = tiles.shape[-1]
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        canvas = np.zeros((grid * size, grid * size), dtype=np.uint8)
        n = int(rng.integers(1, max_objects + 1))
        cells = rng.permutation(grid * grid)[:n]
        picks = rng.integers(0, len(tiles), size=n)
        for cell, pick in zip(cells, picks):
            y, x = divmod(int(cell), grid)
            canvas[y * size:(y + 1) * size, x * size:(x + 1) * size] = tiles[pick]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(tile_labels[pick]) + 1,
                                "bbox": [x * size, y * size, size, size], "area": size * size, "iscrowd": 0})
        file_name = f"{i:06d}.png"
        Image.fromarray(canvas, mode="L").save(root / split / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": grid * size, "height": grid * size})
    spec = {"info": {"description": f"Fashion-MNIST mosaics ({split}), 1-{max_objects} objects per canvas"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c + 1, "name": name, "supercategory": "fashion"} for c, name in enumerate(names)]}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(spec))
