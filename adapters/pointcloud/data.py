"""Point-cloud datasets: ModelNet40 from local folders, and real CGAL meshes as the embedded default.

Every mesh, whatever its source, goes through the same path: :func:`read_off` -> :func:`sample_surface`
-> :func:`normalize`. Clouds use y as the up axis (as the resampled ModelNet40 layout does).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from nftkit.errors import DataError
from nftkit.registry import Registry

EMBEDDED_RECIPE = "pointcloud/cgal_pointba_i"
POINT_DATASETS: Registry[Callable] = Registry("point-cloud dataset")


class PointCloudDataset(Dataset):
    """Clouds (N, P, 3) with integer labels (N,); items are ``(points P x 3, label)``."""

    def __init__(self, points: torch.Tensor, targets: torch.Tensor):
        if len(points) != len(targets):
            raise DataError(f"{len(points)} clouds but {len(targets)} labels; give one label per cloud")
        self.points = points.float()
        self.targets = targets.long()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.points[i], self.targets[i]

    def subset(self, idx: torch.Tensor) -> "PointCloudDataset":
        return PointCloudDataset(self.points[idx], self.targets[idx])


# ---- meshes --------------------------------------------------------------------------------
def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of an OFF file; polygons are fan-triangulated.

    Accepts OFF/COFF/NOFF headers, '#' comments, and the header glued to the counts ('OFF490 518 0')
    that many ModelNet files have.
    """
    lines = [ln.split("#", 1)[0].strip() for ln in Path(path).read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or "OFF" not in lines[0][:5]:
        raise DataError(f"{path} is not an OFF mesh (first line must be OFF); re-export it as .off")
    head = lines[0][lines[0].index("OFF") + 3:].split()
    rest = lines[1:]
    if not head:
        head, rest = rest[0].split(), rest[1:]
    try:
        nv, nf = int(head[0]), int(head[1])
        verts = np.array([ln.split()[:3] for ln in rest[:nv]], dtype=np.float64)
        tris = []
        for ln in rest[nv:nv + nf]:
            vals = ln.split()
            k = int(vals[0])
            poly = [int(v) for v in vals[1:1 + k]]
            tris.extend((poly[0], poly[j], poly[j + 1]) for j in range(1, k - 1))
    except (ValueError, IndexError):
        raise DataError(f"{path} is a truncated or malformed OFF file; re-export it") from None
    faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    if len(verts) != nv or len(faces) == 0 or faces.max(initial=0) >= nv:
        raise DataError(f"{path} is truncated or malformed (no usable triangles, or faces index missing vertices); re-export it")
    return verts, faces


def sample_surface(verts, faces, n: int, generator: torch.Generator, count: Optional[int] = None) -> torch.Tensor:
    """``n`` points uniform on the surface (triangles by area, then uniform barycentric coordinates);
    ``count`` independent clouds (count, n, 3) at once, else one cloud (n, 3)."""
    v = torch.as_tensor(verts, dtype=torch.float64)
    tri = v[torch.as_tensor(faces)]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if not area.sum() > 0:
        raise DataError("the mesh has zero surface area; it cannot be sampled")
    total = n * (count or 1)
    chosen = tri[torch.multinomial(area, total, replacement=True, generator=generator)]
    u, w = torch.rand(2, total, 1, generator=generator, dtype=torch.float64)
    flip = (u + w) > 1  # reflect into the triangle instead of rejecting
    u, w = torch.where(flip, 1 - u, u), torch.where(flip, 1 - w, w)
    pts = chosen[:, 0] + u * (chosen[:, 1] - chosen[:, 0]) + w * (chosen[:, 2] - chosen[:, 0])
    return pts.float().reshape(count, n, 3) if count else pts.float()


def normalize(points: torch.Tensor) -> torch.Tensor:
    """Centre each cloud and scale it into the unit sphere (the usual ModelNet preprocessing)."""
    points = points - points.mean(-2, keepdim=True)
    return points / points.norm(dim=-1).amax(-1)[..., None, None].clamp_min(1e-9)


def rotation(axis: str, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = torch.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


Z_UP_TO_Y_UP = rotation("x", -90.0)


def _missing(what: str, root: Path, layout_hint: str) -> DataError:
    return DataError(f"{what} not found at {root}; put it there ({layout_hint}) or set data.root, "
                     f"or try the embedded recipe '{EMBEDDED_RECIPE}'")


# ---- ModelNet40 -----------------------------------------------------------------------------
def _modelnet_resampled(root: Path, num_points: int):
    names = [s for s in (root / "modelnet40_shape_names.txt").read_text().split() if s]
    index = {n: i for i, n in enumerate(names)}
    splits = []
    for split in ("train", "test"):
        ids = [s for s in (root / f"modelnet40_{split}.txt").read_text().split() if s]
        clouds, labels = [], []
        for sid in ids:
            cls = sid.rsplit("_", 1)[0]
            f = root / cls / f"{sid}.txt"
            if not f.is_file():
                raise _missing(f"ModelNet40 file {f.name}", f.parent, "modelnet40_normal_resampled layout")
            # x,y,z,nx,ny,nz per line; the first points of these files are already a uniform sample
            arr = np.loadtxt(f, delimiter=",", dtype=np.float32, max_rows=num_points, usecols=(0, 1, 2))
            if len(arr) < num_points:
                raise DataError(f"{f} holds {len(arr)} points, fewer than data.num_points={num_points}; lower it")
            clouds.append(torch.from_numpy(arr))
            labels.append(index[cls])
        splits.append(PointCloudDataset(normalize(torch.stack(clouds)), torch.tensor(labels)))
    return splits[0], splits[1], names


def _modelnet_off(root: Path, num_points: int, seed: int):
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    g = torch.Generator().manual_seed(seed)
    splits = []
    for split in ("train", "test"):
        clouds, labels = [], []
        for label, cls in enumerate(names):
            for f in sorted((root / cls / split).glob("*.off")):
                clouds.append(sample_surface(*read_off(f), num_points, g))
                labels.append(label)
        if not clouds:
            raise _missing(f"ModelNet40 {split} meshes", root, "<class>/{train,test}/*.off")
        # raw ModelNet meshes are z-up; the resampled layout (and this adapter) is y-up
        splits.append(PointCloudDataset(normalize(torch.stack(clouds) @ Z_UP_TO_Y_UP.T), torch.tensor(labels)))
    return splits[0], splits[1], names


@POINT_DATASETS.register("modelnet40")
def load_modelnet40(root: Optional[str], num_points: int, seed: int, **_):
    base = Path(root or "~/data/modelnet40_normal_resampled").expanduser()
    hint = "modelnet40_normal_resampled/ with modelnet40_{shape_names,train,test}.txt, or ModelNet40/<class>/{train,test}/*.off"
    if not base.is_dir():
        raise _missing("ModelNet40", base, hint)
    if (base / "modelnet40_shape_names.txt").is_file():
        return _modelnet_resampled(base, num_points)
    if any((p / "train").is_dir() for p in base.iterdir() if p.is_dir()):
        return _modelnet_off(base, num_points, seed)
    raise _missing("ModelNet40", base, hint)


# ---- embedded: real CGAL demo meshes (Debian libcgal-demo, CC0) -----------------------------
CGAL_CLASSES = {
    "animal": ["bear", "bull", "camel", "cow", "dino", "diplodocus", "elephant", "elk", "lion", "pig", "triceratops"],
    "human": ["armadillo", "hand", "head", "homer", "man", "mannequin-devil", "nefertiti"],
    "mechanical": ["anchor", "blade", "couplingdown", "dragknob", "fandisk", "joint", "part", "pinion_small",
                   "rotor", "spool", "turbine", "mech-holes-shark"],
    "blob": ["blobby", "cube-meshed", "cylinder", "ellipsoid", "geosphere", "larger_sphere", "oblong", "mushroom"],
    "ring": ["3torus", "double-torus-example", "eight", "handle", "knot", "knot1", "knot2"],
}
CGAL_ROOT = "/usr/share/datasets/cgal-meshes"


@POINT_DATASETS.register("cgal")
def load_cgal(root: Optional[str], num_points: int, seed: int, views_per_mesh: int = 40, test_fraction: float = 0.25,
              random_heading: bool = True, **_):
    """Each mesh gives ``views_per_mesh`` clouds (fresh surface sample, a random rotation about the up axis
    unless ``random_heading`` is off, anisotropic scale 0.8-1.25); a class-balanced ``test_fraction`` of
    every mesh's views is held out."""
    base = Path(root or CGAL_ROOT).expanduser()
    hint = "the *.off files of data/meshes from Debian libcgal-demo's data.tar.gz"
    if not base.is_dir():
        raise _missing("the CGAL demo meshes", base, hint)
    g = torch.Generator().manual_seed(seed)
    sets = {"train": ([], []), "test": ([], [])}
    n_test = max(1, round(test_fraction * views_per_mesh))
    for label, cls in enumerate(CGAL_CLASSES):
        for mesh in CGAL_CLASSES[cls]:
            f = base / f"{mesh}.off"
            if not f.is_file():
                raise _missing(f"CGAL mesh {f.name}", base, hint)
            verts, faces = read_off(f)
            views = sample_surface(verts, faces, num_points, g, count=views_per_mesh)
            # drawn either way, so that every other draw (and the default data) stays the same
            angles = torch.rand(views_per_mesh, generator=g) * (360 if random_heading else 0)
            rots = torch.stack([rotation("y", float(a)) for a in angles])
            scales = torch.exp((torch.rand(views_per_mesh, 1, 3, generator=g) * 2 - 1) * math.log(1.25))
            views = normalize(normalize(views) @ rots.transpose(1, 2) * scales)
            for split, part in (("test", views[:n_test]), ("train", views[n_test:])):
                sets[split][0].append(part)
                sets[split][1].extend([label] * len(part))
    train, test = (PointCloudDataset(torch.cat(c), torch.tensor(y)) for c, y in (sets["train"], sets["test"]))
    return train, test, list(CGAL_CLASSES)


def load_point_dataset(name: str, root: Optional[str], num_points: int, seed: int, **kwargs):
    return POINT_DATASETS.get(name)(root, num_points, seed, **kwargs)
