import os
import pickle

import pytest
import torch

import nftkit
from nftkit.io import atomic_write, load_tensors, save_tensors, staged_dir


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['NFTKIT_PAYLOAD_MARK']}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("NFTKIT_PAYLOAD_MARK", str(mark))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    torch.save({"w": _Payload()}, tmp_path / "evil_zip.pt")
    for p in (path, tmp_path / "evil_zip.pt"):
        with pytest.raises(nftkit.ModelError, match="never unpickles"):
            load_tensors(p)
    assert not mark.exists()


def test_plain_checkpoints_load(tmp_path):
    sd = {"a": torch.rand(2, 3), "b": torch.arange(4)}
    torch.save(sd, tmp_path / "w.pt")
    save_tensors(tmp_path / "w.safetensors", sd)
    for name in ("w.pt", "w.safetensors"):
        loaded = load_tensors(tmp_path / name)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_staged_dir_appears_only_on_success(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "run") as stage:
            (stage / "half.json").write_text("{")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(tmp_path / "run") as stage:
        (stage / "done.json").write_text("{}")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["done.json"]
