"""Files: atomic writes, run folders that appear only when complete, safe checkpoint loading."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from safetensors.torch import load_file, save_file

from .distributed import barrier, is_main
from .errors import ModelError, NftkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> str:
    """A temporary file next to ``path`` with the permissions a plain open() would give."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half.
    In a distributed run only rank 0 writes."""
    if not is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False).encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # clone: safetensors refuses tensors that share storage (tied weights)
    if not is_main():
        return
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        save_file(plain, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint without ever unpickling: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint '{path}' does not exist; check the path")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte header length, then the JSON header
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        try:
            return load_file(str(path))
        except Exception as err:
            raise ModelError(f"'{path}' is not a valid safetensors file ({err}); re-export the weights with safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"refused to load '{path}': it is not a plain tensor checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160]}); nftkit never unpickles code from untrusted files — ask the "
                         "sender for a safetensors file or a torch.save(model.state_dict()) file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"'{path}' does not hold a state_dict (a mapping of names to tensors); save model.state_dict()")
    return state


@contextlib.contextmanager
def staged_dir(out: Path, resume: bool = False) -> Iterator[Path]:
    """Yield ``.<out>.partial`` to write into; it becomes ``out`` only when the block succeeds.

    An interrupted run (Ctrl-C, SIGKILL) leaves the partial folder with its saved state, which
    ``resume=True`` continues; any other failure removes it, so nothing half-written remains.
    """
    from .errors import Interrupted

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NftkitError(f"output folder '{out}' already exists and is not empty; choose another --out or remove it")
    stage = out.parent / f".{out.name}.partial"
    if stage.exists() and not resume:
        raise NftkitError(f"an unfinished run is in '{stage}'; continue it with --resume (same command), or delete it")
    if resume and not stage.exists():
        raise NftkitError(f"there is no unfinished run for '{out}' to resume; run without --resume")
    barrier()  # every rank has checked the folder before rank 0 creates it
    if not is_main():
        yield stage  # other ranks only read from it (a state to resume)
        return
    try:
        stage.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NftkitError(f"cannot write to '{out.parent}' ({err.strerror}); choose a writable --out") from None
    try:
        yield stage
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    except (Interrupted, KeyboardInterrupt):
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
