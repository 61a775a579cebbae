"""Two Gloo processes on one global batch reach what one process reaches."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nftkit
from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset
from nftkit.distributed import shard

from conftest import make_conv, make_mlp

CASES = {
    # without BatchNorm in train mode and without random augmentation, the shards' mean gradient is the
    # global batch's gradient, so the runs agree to float tolerance
    "nft_mlp": (make_mlp, dict(method="nft", augment="none", lr=0.5)),
    "nft_conv_bn_eval": (lambda: make_conv(True), dict(method="nft", augment="none", bn_mode="eval", lr=0.5)),
    "ft_conv": (lambda: make_conv(False), dict(method="ft", augment="none", lr=0.1)),
    "ft_sam_mlp": (make_mlp, dict(method="ft_sam", augment="none", lr=0.1)),
    "anp_mlp": (make_mlp, dict(method="anp", augment="none", anp_eps=0.2, anp_threshold=0.999, lr=0.5)),
    # the shared perturbation's radius comes from each rank's first batch: ranks must agree on it
    "adv_unlearn_mlp": (make_mlp, dict(method="adv_unlearn", augment="none", lr=0.1, bn_recalibrate=False)),
}


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 8, 8, generator=g)
    return ImageTensorDataset(x, torch.arange(48) % 3)


def _run(case):
    factory, kwargs = CASES[case]
    torch.manual_seed(0)
    model = factory()
    result = nftkit.purify(model, ImageClassificationAdapter(num_classes=3), _data(), steps=6, batch_size=16,
                           seed=0, **kwargs)
    return result.masks, result.model.state_dict()


def factory_state(case):
    torch.manual_seed(0)
    return CASES[case][0]().state_dict()


def _worker(rank, size, init_file, case, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        masks, state = _run(case)
        torch.save({"masks": masks, "state": state}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", CASES)
def test_two_gloo_processes_match_one_process(case, tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), case, str(out)), nprocs=2, join=True)
    got, other = (torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1))
    for name, tensor in got["state"].items():  # both ranks end with the same model
        assert torch.equal(tensor, other["state"][name]), name
    masks, state = _run(case)
    assert masks.keys() == got["masks"].keys()
    for name in masks:
        torch.testing.assert_close(got["masks"][name], masks[name], rtol=1e-5, atol=1e-6)
    for name in state:
        torch.testing.assert_close(got["state"][name], state[name], rtol=1e-5, atol=1e-6)
    # the runs did move away from the start, so agreeing is not trivial
    start = factory_state(case)
    assert any(not torch.equal(state[k], start[k]) for k in state)


def test_shard_needs_divisible_batch(monkeypatch):
    monkeypatch.setattr("nftkit.distributed.world", lambda: (1, 3))
    with pytest.raises(nftkit.ConfigError, match="multiple of 3"):
        shard(torch.zeros(2, 16, dtype=torch.long))
    monkeypatch.setattr("nftkit.distributed.world", lambda: (1, 2))
    assert shard(torch.arange(8).view(1, 8)).tolist() == [[4, 5, 6, 7]]


TORCHRUN = Path(sys.executable).parent / "torchrun"  # installed with torch, beside this Python


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_recipe_run_writes_one_run_folder(tmp_path):
    from test_recipes import TINY

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a new session, so a timeout can stop the workers too and not only torchrun
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "nftkit", "recipe", "run",
                             "image/fmnist_badnets", *TINY["image"], "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["after"]) >= {"acc", "asr", "lcr"}
    assert stdout.count("wrote ") == 1  # only rank 0 speaks
    assert not list(tmp_path.glob(".*partial"))
