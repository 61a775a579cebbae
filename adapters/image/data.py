"""Image datasets from local files (nothing is downloaded) as in-memory tensor datasets."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from nftkit.errors import DataError
from nftkit.registry import Registry


class ImageTensorDataset(Dataset):
    """Images as one float tensor N x C x H x W in [0, 1] and integer labels N."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or len(images) != len(labels):
            raise DataError(f"expected images N x C x H x W and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.images = images
        self.targets = labels.long()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])

    def subset(self, index: torch.Tensor) -> "ImageTensorDataset":
        return ImageTensorDataset(self.images[index], self.targets[index])


# each loader returns (train, test, class_names) for a root folder
IMAGE_DATASETS: Registry[Callable[[Path], tuple[ImageTensorDataset, ImageTensorDataset, list[str]]]] = Registry("image dataset")
DEFAULT_ROOTS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "cifar10": "~/datasets/cifar10",
    "gtsrb": "~/datasets/gtsrb",
    "folder": "~/datasets/images",
}
WHERE = {
    "fashion_mnist": "install it with 'apt-get install dataset-fashion-mnist' (or put {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in ROOT)",
    "cifar10": "put the binary version (cifar-10-batches-bin/data_batch_1.bin ... test_batch.bin) or train/ and test/ class folders of images in ROOT",
    "gtsrb": "put torchvision's GTSRB layout in ROOT (ROOT/gtsrb/GTSRB/Training/<class>/*.ppm and the test images with GT-final_test.csv)",
    "folder": "put ROOT/train/<class>/*.png and ROOT/test/<class>/*.png (torchvision ImageFolder layout)",
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; replace it with the original dataset file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        for base in (root, root / "raw", root / "FashionMNIST" / "raw"):
            if (base / name).is_file():
                return base / name
    raise FileNotFoundError(stem)


def _to_tensor(images: np.ndarray, labels: np.ndarray) -> ImageTensorDataset:
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return ImageTensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


@IMAGE_DATASETS.register("fashion_mnist")
def fashion_mnist(root: Path):
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
        parts[split] = _to_tensor(images, labels)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return parts["train"], parts["test"], names


@IMAGE_DATASETS.register("cifar10")
def cifar10(root: Path):
    binary = root / "cifar-10-batches-bin"
    if binary.is_dir():
        def read(files):
            raw = np.concatenate([np.fromfile(binary / f, dtype=np.uint8).reshape(-1, 3073) for f in files])
            return _to_tensor(raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0])

        names = (binary / "batches.meta.txt").read_text().split() if (binary / "batches.meta.txt").exists() else [str(i) for i in range(10)]
        return read([f"data_batch_{i}.bin" for i in range(1, 6)]), read(["test_batch.bin"]), names
    return image_folder(root)


@IMAGE_DATASETS.register("gtsrb")
def gtsrb(root: Path, size: int = 32):
    import torchvision
    from torchvision.transforms import v2

    tf = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])
    splits = []
    for split in ("train", "test"):
        ds = torchvision.datasets.GTSRB(str(root), split=split, transform=tf, download=False)
        xs, ys = zip(*[ds[i] for i in range(len(ds))])
        splits.append(ImageTensorDataset(torch.stack(xs), torch.tensor(ys)))
    return splits[0], splits[1], [str(i) for i in range(43)]


@IMAGE_DATASETS.register("folder")
def image_folder(root: Path):
    import torchvision
    from torchvision.transforms import v2

    tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    splits, names = [], []
    for split in ("train", "test"):
        ds = torchvision.datasets.ImageFolder(str(root / split), transform=tf)
        names = ds.classes
        xs, ys = zip(*[ds[i] for i in range(len(ds))])
        splits.append(ImageTensorDataset(torch.stack(xs), torch.tensor(ys)))
    return splits[0], splits[1], names


def load_image_dataset(name: str, root: Optional[str]):
    loader = IMAGE_DATASETS.get(name)
    path = Path(os.path.expanduser(root or DEFAULT_ROOTS.get(name, "")))
    try:
        if not path.is_dir():
            raise FileNotFoundError(path)
        return loader(path)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"dataset '{name}' not found at {path} ({err}); {WHERE.get(name, '').replace('ROOT', str(path))}; "
                        "or set data.root to where it is, or try the embedded recipe image/fmnist_badnets") from None


def _open_image(path: str):
    """Keep grayscale images single-channel (torchvision's default loader turns everything into RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.copy() if img.mode in ("L", "RGB") else img.convert("RGB")


def read_user_images(path: str) -> tuple[ImageTensorDataset, list[str]]:
    """The user's images: an ImageFolder tree (class folders of image files) or a tensor file holding
    ``images`` (N x C x H x W, floats in [0, 1] or uint8) and ``labels`` (N)."""
    from nftkit.io import load_tensors

    root = Path(os.path.expanduser(path))
    if root.is_file():
        tensors = load_tensors(root)
        if "images" not in tensors or "labels" not in tensors:
            raise DataError(f"'{root}' must hold tensors named 'images' and 'labels', found {sorted(tensors)[:5]}")
        images = tensors["images"]
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if images.dim() != 4:
            raise DataError(f"'images' in '{root}' has shape {tuple(images.shape)}; it must be N x C x H x W")
        labels = tensors["labels"].long()
        return ImageTensorDataset(images, labels), [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if not root.is_dir():
        raise DataError(f"data folder '{root}' does not exist; give a folder of class subfolders of images "
                        "(ImageFolder layout) or a tensor file with 'images' and 'labels'")
    import torchvision
    from torchvision.transforms import v2

    try:
        folder = torchvision.datasets.ImageFolder(str(root), loader=_open_image,
                                                  transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"'{root}' is not an image folder ({err}); put images in one subfolder per class") from None
    items = [folder[i] for i in range(len(folder))]
    shapes = {tuple(x.shape) for x, _ in items}
    if len(shapes) > 1:
        raise DataError(f"the images in '{root}' have different sizes {sorted(shapes)[:3]}; resize them to one size")
    if not items:
        raise DataError(f"'{root}' holds no images; put images in one subfolder per class")
    return ImageTensorDataset(torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])), folder.classes
