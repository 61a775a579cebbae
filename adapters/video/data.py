"""Video datasets from local files, decoded with PyAV (nothing is downloaded, no frames pre-extracted).

Clips are uint8 ``T x C x H x W`` tensors inside the datasets (a quarter of float32 memory) and float
in [0, 1] when read. ``UCF-101`` and ``HMDB-51`` are read from their standard layouts with their
official split files; the embedded Atari dataset is written in the UCF-101 layout and read back
through the very same loader.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from nftkit.errors import DataError
from nftkit.registry import Registry

EMBEDDED_RECIPE = "video/atari_clb"


@dataclass(frozen=True)
class ClipSpec:
    """How a video file becomes a clip: keep one frame of every ``frame_stride``, then ``num_frames``
    of those (a centred window; short videos repeat their last frame), resized to ``height x width``."""

    num_frames: int = 16
    frame_stride: int = 5
    height: int = 224
    width: int = 224


def read_clip(path: Path, spec: ClipSpec) -> torch.Tensor:
    """Decode one video file into a uint8 clip ``T x 3 x H x W``."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i % spec.frame_stride == 0:
                    # resizing in FFmpeg's scaler is much cheaper than on decoded full-size arrays
                    frames.append(frame.reformat(width=spec.width, height=spec.height, format="rgb24").to_ndarray())
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise DataError(f"cannot decode video {path} ({err}); replace the file or remove it from the split list") from None
    if not frames:
        raise DataError(f"video {path} has no frames; replace the file or remove it from the split list")
    if len(frames) >= spec.num_frames:
        start = (len(frames) - spec.num_frames) // 2
        frames = frames[start:start + spec.num_frames]
    else:
        frames += [frames[-1]] * (spec.num_frames - len(frames))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


class VideoDataset(Dataset):
    """Base of the video datasets: ``targets`` (N labels) and ``clip_u8(i)``; items are (float clip, label)."""

    targets: torch.Tensor

    def clip_u8(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.clip_u8(i).float().div_(255.0), int(self.targets[i])


class ClipTensorDataset(VideoDataset):
    """Decoded clips held in memory as one uint8 tensor ``N x T x C x H x W``."""

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor):
        if clips.dim() != 5 or len(clips) != len(labels):
            raise DataError(f"expected clips N x T x C x H x W and N labels, got {tuple(clips.shape)} and {tuple(labels.shape)}")
        self.clips = clips
        self.targets = labels.long()

    def clip_u8(self, i):
        return self.clips[i]

    def subset(self, index: torch.Tensor) -> "ClipTensorDataset":
        return ClipTensorDataset(self.clips[index], self.targets[index])


class VideoFileDataset(VideoDataset):
    """Clips decoded from their files on every access (datasets too large for memory)."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, spec: ClipSpec):
        self.paths = list(paths)
        self.targets = labels.long()
        self.spec = spec

    def clip_u8(self, i):
        return read_clip(self.paths[i], self.spec)

    def subset(self, index: torch.Tensor) -> "VideoFileDataset":
        return VideoFileDataset([self.paths[int(i)] for i in index], self.targets[index], self.spec)

    def materialize(self) -> ClipTensorDataset:
        clips = torch.stack([self.clip_u8(i) for i in range(len(self))]) if len(self) else torch.zeros(
            0, self.spec.num_frames, 3, self.spec.height, self.spec.width, dtype=torch.uint8)
        return ClipTensorDataset(clips, self.targets)


class EditedVideos(VideoDataset):
    """A view of ``base``: the samples ``index`` (all by default), with some clips replaced by stored
    uint8 clips (e.g. PGD-perturbed ones), a trigger applied on the fly to ``triggered`` base
    indices, and labels ``targets``. Poisoned sets are views, so large datasets are never copied."""

    def __init__(self, base: VideoDataset, index: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None,
                 replaced: Optional[dict[int, torch.Tensor]] = None, triggered: Optional[torch.Tensor] = None,
                 trigger: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.base = base
        self.index = torch.arange(len(base)) if index is None else index.long()
        self.targets = (base.targets[self.index] if targets is None else targets).long()
        self.replaced = replaced or {}
        self._triggered = set(triggered.tolist()) if triggered is not None else set()
        self.trigger = trigger
        self.poisoned_indices = torch.tensor(sorted(set(self.replaced) | self._triggered), dtype=torch.long)

    def clip_u8(self, i):
        j = int(self.index[i])
        clip = self.replaced.get(j)
        clip = self.base.clip_u8(j) if clip is None else clip
        if j in self._triggered and self.trigger is not None:
            clip = (self.trigger(clip.float()[None] / 255.0)[0] * 255.0).round().clamp(0, 255).to(torch.uint8)
        return clip


# ---- dataset layouts -------------------------------------------------------------------------
@dataclass
class VideoList:
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    classes: list[str]


# each reader maps (root folder, split number) to the official train/test lists
VIDEO_DATASETS: Registry[Callable[[Path, int], VideoList]] = Registry("video dataset")
DEFAULT_ROOTS = {"ucf101": "~/datasets/ucf101", "hmdb51": "~/datasets/hmdb51"}
WHERE = {
    "ucf101": "put the videos as ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi and the official split files as "
              "ROOT/ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt",
    "hmdb51": "put the videos as ROOT/hmdb51_org/<class>/<name>.avi and the official split files as "
              "ROOT/testTrainMulti_7030_splits/<class>_test_splitN.txt",
}


def _first_dir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"none of {', '.join(names)} under {root}")


@VIDEO_DATASETS.register("ucf101")
def ucf101(root: Path, split: int = 1) -> VideoList:
    # torchvision.datasets.UCF101 would also scan every video's timestamps up front (minutes on the
    # full set) to cut many clips per video; we take one clip per video, as the attack papers do
    videos = _first_dir(root, ("UCF-101", "UCF101", "videos"))
    lists = _first_dir(root, ("ucfTrainTestlist", "splits"))
    classes = [line.split()[1] for line in (lists / "classInd.txt").read_text().splitlines() if line.strip()]
    label = {name: i for i, name in enumerate(classes)}

    def read(kind: str) -> list[tuple[Path, int]]:
        items = []
        for line in (lists / f"{kind}list0{split}.txt").read_text().splitlines():
            if line.strip():
                rel = line.split()[0]
                items.append((videos / rel, label[rel.split("/")[0]]))
        return items

    return VideoList(read("train"), read("test"), classes)


@VIDEO_DATASETS.register("hmdb51")
def hmdb51(root: Path, split: int = 1) -> VideoList:
    videos = _first_dir(root, ("hmdb51_org", "hmdb51", "videos"))
    lists = _first_dir(root, ("testTrainMulti_7030_splits", "splits"))
    files = sorted(lists.glob(f"*_test_split{split}.txt"))
    if not files:
        raise FileNotFoundError(f"no *_test_split{split}.txt in {lists}")
    classes = [f.name.removesuffix(f"_test_split{split}.txt") for f in files]
    out: dict[str, list] = {"1": [], "2": []}  # 1 = train, 2 = test, 0 = unused in this split
    for label, (name, f) in enumerate(zip(classes, files)):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] in out:
                out[parts[1]].append((videos / name / parts[0], label))
    return VideoList(out["1"], out["2"], classes)


def find_videos(name: str, root: Optional[str], split: int = 1) -> tuple[VideoList, Path]:
    reader = VIDEO_DATASETS.get(name)
    path = Path(os.path.expanduser(root or DEFAULT_ROOTS.get(name, "")))
    try:
        if not path.is_dir():
            raise FileNotFoundError(f"no folder {path}")
        found = reader(path, split)
        missing = [p for p, _ in found.train + found.test if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} listed videos are missing, e.g. {missing[0]}")
        if not found.train or not found.test:
            raise FileNotFoundError("the split lists are empty")
    except (FileNotFoundError, KeyError, IndexError) as err:
        where = WHERE.get(name, "put the videos in ROOT").replace("ROOT", str(path))
        raise DataError(f"dataset '{name}' not found at {path} ({err}); {where}; or set data.root to where it is; "
                        f"or try the embedded recipe {EMBEDDED_RECIPE} (runs offline)") from None
    return found, path


def balanced_split(labels: torch.Tensor, fraction: float, per_class: Optional[int],
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``per_class`` (or ``fraction`` of each class, at least one) samples per class as the
    defender's clean set; return (clean, rest)."""
    picked = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n = per_class if per_class is not None else max(1, round(fraction * len(idx)))
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    clean = torch.cat(picked).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[clean] = False
    return clean, rest.nonzero().flatten()
