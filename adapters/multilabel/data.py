"""Multi-label image datasets from local folders: Pascal VOC (XML) and MS-COCO (instances JSON).

Every dataset, the embedded mosaics included, ends in one place: a list of image files with a
multi-hot label matrix (:class:`MultiLabelImages`). Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from nftkit.errors import DataError
from nftkit.registry import Registry

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
EMBEDDED = "multilabel/fmnist_mosaic_clean_image"


class MultiLabelImages(Dataset):
    """Images read from files (resized to ``size`` x ``size``, RGB, float in [0, 1]) with a multi-hot
    label matrix N x C. ``preload`` decodes every image once into memory (small datasets)."""

    def __init__(self, files: list[str], labels: torch.Tensor, size: Optional[int], preload: bool = False,
                 _pixels: Optional[torch.Tensor] = None):
        if labels.dim() != 2 or len(files) != len(labels):
            raise DataError(f"expected one multi-hot label row per image, got {len(files)} images and labels {tuple(labels.shape)}")
        self.files, self.labels, self.size = list(files), labels.float(), size
        self._pixels = _pixels
        if preload and _pixels is None and files:
            self._pixels = torch.stack([self._read(f) for f in self.files])

    def _read(self, path: str) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            if self.size is not None and img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # uint8: 4x less memory

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        pixels = self._pixels[i] if self._pixels is not None else self._read(self.files[i])
        return pixels.float().div(255.0), self.labels[i]

    def subset(self, index: torch.Tensor) -> "MultiLabelImages":
        idx = index.tolist()
        pixels = self._pixels[index] if self._pixels is not None else None
        return MultiLabelImages([self.files[i] for i in idx], self.labels[index], self.size, _pixels=pixels)

    def with_labels(self, labels: torch.Tensor) -> "MultiLabelImages":
        """The same images with other labels (the clean-image attack changes labels only)."""
        return MultiLabelImages(self.files, labels, self.size, _pixels=self._pixels)


@dataclass
class RawSplit:
    files: list[str]
    labels: torch.Tensor  # N x C multi-hot


# each reader: (root, split name, options) -> (RawSplit, class names)
READERS: Registry[Callable[..., tuple[RawSplit, list[str]]]] = Registry("multilabel dataset format")


def _voc_dir(root: Path, year: str) -> Path:
    for cand in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (cand / "Annotations").is_dir():
            return cand
    raise FileNotFoundError(f"no Annotations/ folder under {root}")


@READERS.register("voc")
def read_voc(root: Path, split: str, year: str = "2007", include_difficult: bool = False,
             classes: Optional[list[str]] = None) -> tuple[RawSplit, list[str]]:
    """VOCdevkit/VOC<year>/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/<split>.txt}."""
    base = _voc_dir(root, year)
    ids_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(ids_file)
    classes = list(classes or VOC_CLASSES)
    index = {c: i for i, c in enumerate(classes)}
    ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    labels = torch.zeros(len(ids), len(classes))
    files = []
    for row, image_id in enumerate(ids):
        tree = ET.parse(base / "Annotations" / f"{image_id}.xml").getroot()
        for obj in tree.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in index:
                raise DataError(f"{base}/Annotations/{image_id}.xml names class '{name}', which is not one of {classes}")
            if include_difficult or obj.findtext("difficult", "0").strip() != "1":
                labels[row, index[name]] = 1.0
        files.append(str(base / "JPEGImages" / (tree.findtext("filename") or f"{image_id}.jpg")))
    return RawSplit(files, labels), classes


@READERS.register("coco")
def read_coco(root: Path, split: str, **_) -> tuple[RawSplit, list[str]]:
    """ROOT/annotations/instances_<split>.json and ROOT/<split>/<file_name>; classes in category-id order."""
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise FileNotFoundError(ann_file)
    spec = json.loads(ann_file.read_text())
    cats = sorted(spec["categories"], key=lambda c: c["id"])
    col = {c["id"]: i for i, c in enumerate(cats)}
    images = sorted(spec["images"], key=lambda im: im["id"])
    row = {im["id"]: i for i, im in enumerate(images)}
    labels = torch.zeros(len(images), len(cats))
    for ann in spec.get("annotations", []):
        if ann["image_id"] in row:
            labels[row[ann["image_id"]], col[ann["category_id"]]] = 1.0
    folder = root / split
    return RawSplit([str(folder / im["file_name"]) for im in images], labels), [c["name"] for c in cats]


@dataclass(frozen=True)
class DatasetSpec:
    reader: str
    root: str
    train_split: str
    test_split: str
    where: str
    options: tuple = ()


DATASETS: dict[str, DatasetSpec] = {
    "voc2007": DatasetSpec("voc", "~/datasets/voc", "trainval", "test",
                           "put VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main} (trainval and test) in ROOT",
                           (("year", "2007"),)),
    "voc2012": DatasetSpec("voc", "~/datasets/voc", "train", "val",
                           "put VOCdevkit/VOC2012/{Annotations,JPEGImages,ImageSets/Main} in ROOT (the test labels are "
                           "not public: train/val are used)", (("year", "2012"),)),
    "coco2014": DatasetSpec("coco", "~/datasets/coco", "train2014", "val2014",
                            "put annotations/instances_{train2014,val2014}.json and the train2014/, val2014/ image folders in ROOT"),
    "coco2017": DatasetSpec("coco", "~/datasets/coco", "train2017", "val2017",
                            "put annotations/instances_{train2017,val2017}.json and the train2017/, val2017/ image folders in ROOT"),
}


def read_dataset(name: str, root: Optional[str], train_split: Optional[str] = None, test_split: Optional[str] = None,
                 **options) -> tuple[RawSplit, RawSplit, list[str]]:
    """Both splits of a registered dataset, or one DataError naming where the files belong."""
    if name not in DATASETS:
        from nftkit.errors import ConfigError

        raise ConfigError(f"unknown multilabel dataset '{name}'; choose one of {sorted(DATASETS)} or fmnist_mosaic")
    spec = DATASETS[name]
    path = Path(os.path.expanduser(root or spec.root))
    reader = READERS.get(spec.reader)
    opts = {**dict(spec.options), **options}
    try:
        if not path.is_dir():
            raise FileNotFoundError(path)
        train, classes = reader(path, train_split or spec.train_split, **opts)
        test, test_classes = reader(path, test_split or spec.test_split, **opts)
    except (FileNotFoundError, ET.ParseError, json.JSONDecodeError, KeyError) as err:
        raise DataError(f"dataset '{name}' not found or unreadable at {path} ({type(err).__name__}: {err}); "
                        f"{spec.where.replace('ROOT', str(path))}; or set data.root to where it is, or try the "
                        f"embedded recipe {EMBEDDED}") from None
    if classes != test_classes:
        raise DataError(f"the {name} train and test annotations list different categories; use files of one release")
    missing = [f for f in train.files[:1] + test.files[:1] if not Path(f).is_file()]
    if missing:
        raise DataError(f"image file {missing[0]} listed in the {name} annotations is missing; "
                        f"{spec.where.replace('ROOT', str(path))}, or try the embedded recipe {EMBEDDED}")
    return train, test, classes


def random_split(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(picked, rest): a random ``fraction`` of ``n`` indices (at least one) and the others, both sorted."""
    perm = torch.randperm(n, generator=generator)
    k = max(1, round(fraction * n))
    return perm[:k].sort().values, perm[k:].sort().values
