"""Video recipes end to end: the CLI's message for a missing UCF-101, a fake UCF-101 folder of real
video files, and the embedded Atari recipe, all with tiny overrides."""
import json
import os
import subprocess
import sys

import pytest

import nftkit
from nftkit.attacks import ATTACKS
from nftkit.experiment import prepare, run

pytest.importorskip("av")
from test_video import write_fake_ucf101  # noqa: E402

# a model and run lengths small enough for seconds on CPU
TINY = ["device=cpu", "data.num_frames=2", "data.size=16", "data.clean_per_class=2", "data.in_memory=true",
        "model.backbone=resnet_mini", "model.width=4", "model.hidden=6", "model.weights=null",
        "victim.steps=3", "victim.batch_size=4", "victim.num_workers=0",
        "defense.steps=2", "defense.batch_size=4", "defense.num_workers=0", "eval_batch_size=8"]
TINY_CLB = ["attack.device=cpu", "attack.trigger_steps=2", "attack.pgd_steps=2", "attack.batch_size=4",
            "attack.surrogate.steps=2", "attack.surrogate.batch_size=4"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nftkit", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_missing_ucf101_prints_one_clear_line_and_fails(tmp_path):
    out = _cli("recipe", "run", "video/ucf101_clb", "device=cpu", "--out", str(tmp_path / "run"),
               env={"HOME": str(tmp_path)})
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0
    assert f"dataset 'ucf101' not found at {tmp_path}/datasets/ucf101" in out.stderr
    assert "UCF-101/<Class>" in out.stderr and "ucfTrainTestlist" in out.stderr
    assert "video/atari_clb" in out.stderr and "data.root" in out.stderr
    assert not (tmp_path / "run").exists()


def test_missing_hmdb51_names_its_layout(tmp_path):
    # the same path as the CLI above, in-process (a second interpreter start costs seconds)
    with pytest.raises(nftkit.DataError, match="testTrainMulti_7030_splits.*video/atari_clb"):
        run("video/hmdb51_clb", ["device=cpu", f"data.root={tmp_path / 'none'}"], tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ucf101_recipe_runs_on_a_fake_ucf101_folder(tmp_path):
    write_fake_ucf101(tmp_path / "ucf", n_train=6, n_test=2)
    results = run("video/ucf101_clb", TINY + TINY_CLB + [f"data.root={tmp_path / 'ucf'}"], tmp_path / "run",
                  log=lambda *_: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for phase in ("before", "after"):
        assert {"acc", "asr", "lcr"} <= set(saved[phase])
    assert saved["data"]["n_clean"] == 6 and saved["data"]["n_train"] == 12 and saved["data"]["n_test"] == 6
    assert any(t["kind"] == "LSTM" for t in saved["targets"])
    assert results["runtime_s"] > 0 and (tmp_path / "run" / "masks.safetensors").is_file()


@pytest.mark.slow
def test_embedded_atari_recipe_runs_with_tiny_overrides(tmp_path):
    tiny_atari = ["data.atari.actions=[UP,DOWN]", "data.atari.train_per_class=5", "data.atari.test_per_class=2",
                  f"data.root={tmp_path / 'atari'}"]
    results = run("video/atari_clb", TINY + TINY_CLB + tiny_atari, tmp_path / "run", log=lambda *_: None)
    assert results["data"]["classes"] == ["Up", "Down"] and results["data"]["n_test"] == 4
    # the clips were written as real video files in the UCF-101 layout and read back by its loader
    assert len(list((tmp_path / "atari" / "UCF-101" / "Up").glob("*.avi"))) == 7
    assert (tmp_path / "atari" / "ucfTrainTestlist" / "trainlist01.txt").read_text().count("\n") == 10
    assert {"acc", "asr", "lcr"} <= set(results["after"])


def test_embedded_clean_label_trigger_is_wider_than_the_crop_jitter():
    # at 32 x 32 the paper's 20/224 trigger is 3 px, which the 4-px crop jitter of victim training
    # hides or moves in most clips: the clean-label attack then never implanted (docs/video.md)
    exp = prepare("video/atari_clb")
    data, cfg = exp.sections["data"], exp.sections["attack"]
    info = {"num_classes": 2, "clip_shape": (data.num_frames, 3, data.size, data.size)}
    side = ATTACKS.get("video/clb")(cfg, info, exp.adapter).pattern.shape[-1]
    assert side > exp.adapter.crop_pad(data.size)
