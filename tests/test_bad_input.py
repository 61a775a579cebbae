"""The bad-input battery of `nftkit purify`: one clear line, non-zero exit, inputs unchanged, nothing written."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from nftkit.adapters.image.models import build_image_model
from nftkit.io import save_tensors


def _write_folder(root: Path, classes=3, per_class=4, channels=1, size=8):
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = (torch.rand(channels, size, size) * 255).to(torch.uint8)
            write_png(img, str(root / f"class{c}" / f"{i}.png"))
    return root


@pytest.fixture
def case(tmp_path):
    torch.manual_seed(0)
    model = build_image_model("cnn", 3, 1, width=4)
    ckpt = tmp_path / "model.safetensors"
    save_tensors(ckpt, model.state_dict())
    clean = _write_folder(tmp_path / "clean")
    return {"tmp": tmp_path, "ckpt": ckpt, "clean": clean, "model": model}


def _run(case, *extra, model=None, data=None, arch="cnn", out=None):
    out = out or case["tmp"] / "out"
    args = [sys.executable, "-m", "nftkit", "purify", "--model", str(model or case["ckpt"]), "--arch", arch,
            "--data", str(data or case["clean"]), "--out", str(out), "model.width=4", "steps=2", "batch_size=4", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120), out


def _digest(root: Path):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _expect_error(case, pattern, *extra, **kw):
    before = _digest(case["tmp"])
    proc, out = _run(case, *extra, **kw)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert pattern in err, err
    assert not out.exists() and not any(p.name.endswith(".partial") for p in out.parent.iterdir())
    assert _digest(case["tmp"]) == before, "input files changed"


def test_good_run_writes_every_output(case):
    test_dir = _write_folder(case["tmp"] / "test", per_class=3)
    proc, out = _run(case, "--test", str(test_dir), "--attack", "badnets", "attack.target=0")
    assert proc.returncode == 0, proc.stderr
    assert {"model.safetensors", "masks.safetensors", "results.json", "resolved.yaml", "report.md", "report.html"} <= {p.name for p in out.iterdir()}
    assert not (out / "state.safetensors").exists()


def test_missing_checkpoint(case):
    _expect_error(case, "does not exist", model=case["tmp"] / "nope.safetensors")


def test_not_a_checkpoint(case):
    junk = case["tmp"] / "notes.pt"
    junk.write_text("hello")
    _expect_error(case, "not a plain tensor checkpoint", model=junk)


def test_pickle_payload_refused(case):
    import os
    import pickle

    mark = case["tmp"] / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {mark}",))

    evil = case["tmp"] / "evil.pt"
    torch.save({"features.0.0.weight": Payload()}, evil)
    _expect_error(case, "never unpickles", model=evil)
    assert not mark.exists()


def test_wrong_architecture(case):
    _expect_error(case, "does not fit this architecture", arch="preactresnet18")


def test_wrong_number_of_classes(case):
    _expect_error(case, "expects (5, 128)", "--num-classes", "5")


def test_labels_out_of_range(case):
    data = case["tmp"] / "clean.safetensors"
    save_tensors(data, {"images": torch.rand(6, 1, 8, 8), "labels": torch.tensor([0, 1, 2, 0, 1, 7])})
    _expect_error(case, "out of range", "--num-classes", "3", data=data)


def test_empty_clean_set(case):
    data = case["tmp"] / "empty.safetensors"
    save_tensors(data, {"images": torch.rand(0, 1, 8, 8), "labels": torch.zeros(0, dtype=torch.long)})
    _expect_error(case, "empty", "--num-classes", "3", data=data)


def test_single_class_clean_set(case):
    data = _write_folder(case["tmp"] / "one", classes=1)
    _expect_error(case, "single class", "--num-classes", "3", data=data)


def test_wrong_channel_count(case):
    data = _write_folder(case["tmp"] / "rgb", channels=3)
    _expect_error(case, "image_shape=(3, 8, 8)", data=data)


def test_nan_weights(case):
    state = case["model"].state_dict()
    state["features.0.0.weight"][0, 0, 0, 0] = float("nan")
    bad = case["tmp"] / "nan.safetensors"
    save_tensors(bad, state)
    _expect_error(case, "NaN or inf", model=bad)


def test_unknown_key_and_bad_type(case):
    _expect_error(case, "unknown key 'stepz'", "stepz=3")
    _expect_error(case, "bad value for 'lr'", "lr=fast")


def test_output_not_writable(case):
    blocker = case["tmp"] / "afile"
    blocker.write_text("x")
    proc, _ = _run(case, out=blocker / "run")
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_output_holds_another_run(case):
    other = case["tmp"] / "other"
    other.mkdir()
    (other / "results.json").write_text("{}")
    proc, _ = _run(case, out=other)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (other / "results.json").read_text() == "{}"


def test_dataset_folder_missing(case):
    _expect_error(case, "does not exist", data=case["tmp"] / "nowhere")


def test_recipe_dataset_missing_names_where_to_put_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nftkit", "recipe", "run", "image/fmnist_badnets",
                           "data.root=/nonexistent", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "apt-get install dataset-fashion-mnist" in proc.stderr
    assert not (tmp_path / "r").exists()
