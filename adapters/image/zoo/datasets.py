"""Tiny-ImageNet and ImageNet from their standard local layouts (nothing is downloaded).

Both load into memory as float tensors, like every image dataset of the adapter: Tiny-ImageNet
(100k x 3 x 64 x 64) takes ~5 GB; ImageNet at 224 px takes ~600 kB per image, so on one machine
use a class/image subset in the same layout (the SFT paper's smoothness study uses 12 classes).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import DEFAULT_ROOTS, IMAGE_DATASETS, WHERE, ImageTensorDataset

DEFAULT_ROOTS.update({"tiny_imagenet": "~/datasets/tiny-imagenet-200", "imagenet": "~/datasets/imagenet"})
WHERE.update({
    "tiny_imagenet": "unpack tiny-imagenet-200.zip so that ROOT/wnids.txt, ROOT/train/<wnid>/images/*.JPEG and "
                     "ROOT/val/val_annotations.txt with ROOT/val/images/*.JPEG exist",
    "imagenet": "put ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (the usual ILSVRC-2012 layout after "
                "sorting val into class folders)",
})


class _Files(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def _decode(paths: list[Path], transform) -> torch.Tensor:
    """Decode and transform images (in worker processes for big sets); N x C x H x W floats in [0, 1]."""
    workers = min(8, os.cpu_count() or 1) if len(paths) > 2000 else 0
    return torch.cat(list(DataLoader(_Files(paths, transform), batch_size=256, num_workers=workers)))


def _float(size: int | None = None, crop: int | None = None):
    from torchvision.transforms import v2

    steps = [v2.ToImage()] + ([v2.Resize(size, antialias=True)] if size else [])
    steps += [v2.CenterCrop(crop)] if crop else []
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


@IMAGE_DATASETS.register("tiny_imagenet")
def tiny_imagenet(root: Path):
    wnids = (root / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise FileNotFoundError(root / "train" / w / "images")
        train_paths += files
        train_labels += [index[w]] * len(files)
    val_paths, val_labels = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        val_paths.append(root / "val" / "images" / name)
        val_labels.append(index[wnid])
    tf = _float(crop=64)
    train = ImageTensorDataset(_decode(train_paths, tf), torch.tensor(train_labels))
    test = ImageTensorDataset(_decode(val_paths, tf), torch.tensor(val_labels))
    return train, test, wnids


@IMAGE_DATASETS.register("imagenet")
def imagenet(root: Path, size: int = 224):
    splits, classes = [], None
    tf = _float(size=round(size * 256 / 224), crop=size)  # the standard resize-256 / centre-crop-224
    for split in ("train", "val"):
        folder = root / split
        names = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if not names:
            raise FileNotFoundError(folder)
        if classes is None:
            classes = names
        elif names != classes:
            raise FileNotFoundError(f"{folder} has different class folders from {root / 'train'}")
        paths, labels = [], []
        for i, c in enumerate(classes):
            files = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
            paths += files
            labels += [i] * len(files)
        splits.append(ImageTensorDataset(_decode(paths, tf), torch.tensor(labels)))
    return splits[0], splits[1], classes
