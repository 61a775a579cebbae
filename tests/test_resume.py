"""A run killed with SIGKILL resumes to the same final masks as an uninterrupted run; Ctrl-C saves state."""
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open

import nftkit

SCRIPT = textwrap.dedent("""
    import sys, time, torch, torch.nn as nn
    import nftkit
    from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset

    def setup():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                              nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
        g = torch.Generator().manual_seed(0)
        data = ImageTensorDataset(torch.rand(24, 1, 8, 8, generator=g), torch.arange(24) % 3)
        return model, ImageClassificationAdapter(3), data

    KW = dict(steps=12, batch_size=8, seed=3)
    if __name__ == "__main__":
        model, adapter, data = setup()
        nftkit.purify(model, adapter, data, checkpoint=sys.argv[1], checkpoint_every=1,
                      on_step=lambda step, m: time.sleep(0.3), **KW)
""")


def _step(path):
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.metadata()["step"])
    except Exception:
        return -1


def test_sigkill_then_resume_gives_the_same_masks(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "state.safetensors"
    child = subprocess.Popen([sys.executable, str(script), str(ckpt)])
    deadline = time.time() + 120
    while _step(ckpt) < 4 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = _step(ckpt)
    assert 4 <= killed_at < 11, "the child was killed mid-run"

    sys.path.insert(0, str(tmp_path))
    import job

    model, adapter, data = job.setup()
    resumed = nftkit.purify(model, adapter, data, checkpoint=ckpt, resume=True, checkpoint_every=1, **job.KW)
    assert [row["step"] for row in resumed.history] == list(range(12))
    model, adapter, data = job.setup()
    straight = nftkit.purify(model, adapter, data, **job.KW)
    for name in straight.masks:
        assert torch.equal(resumed.masks[name], straight.masks[name])
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()))


def test_resume_refuses_a_different_config(tmp_path, tiny_data, adapter3):
    from conftest import TINY_MODELS

    ckpt = tmp_path / "state.safetensors"
    model = TINY_MODELS["conv_bn"]()
    nftkit.purify(model, adapter3, tiny_data, steps=4, batch_size=8, checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(nftkit.NftkitError, match="different config"):
        nftkit.purify(model, adapter3, tiny_data, steps=4, batch_size=8, lr=0.1, checkpoint=ckpt, resume=True)


def test_resume_refuses_a_different_input_model(tmp_path, tiny_data, adapter3):
    """The state holds the model's weights: resuming with another model would continue the first one's run."""
    from conftest import TINY_MODELS

    ckpt = tmp_path / "state.safetensors"
    kw = dict(steps=4, batch_size=8, checkpoint=ckpt, checkpoint_every=2)
    nftkit.purify(TINY_MODELS["conv_bn"](), adapter3, tiny_data, **kw)
    other = TINY_MODELS["conv_bn"]()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3  # one weight changed
    with pytest.raises(nftkit.NftkitError, match="different input model"):
        nftkit.purify(other, adapter3, tiny_data, resume=True, **kw)
    nftkit.purify(TINY_MODELS["conv_bn"](), adapter3, tiny_data, resume=True, **kw)  # the same model resumes


def test_ctrl_c_saves_state_and_says_how_to_resume(tmp_path, tiny_data, adapter3):
    from conftest import TINY_MODELS

    def interrupt(step, model):
        if step == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "state.safetensors"
    with pytest.raises(nftkit.errors.Interrupted, match="--resume"):
        nftkit.purify(TINY_MODELS["conv_bn"](), adapter3, tiny_data, steps=6, batch_size=8, checkpoint=ckpt, on_step=interrupt)
    assert _step(ckpt) == 2


def test_adamw_state_survives_a_resume(tmp_path, tiny_data, adapter3):
    from conftest import TINY_MODELS

    kw = dict(method="ft", optimizer="adamw", lr=1e-3, warmup_steps=2, steps=6, batch_size=8, checkpoint_every=3)
    ckpt, midway = tmp_path / "state.safetensors", tmp_path / "midway.safetensors"

    def keep_midway(step, model):
        if step == 3:  # the file now holds the state after step 2, Adam moments included
            midway.write_bytes(ckpt.read_bytes())

    whole = nftkit.purify(TINY_MODELS["conv_bn"](), adapter3, tiny_data, checkpoint=ckpt, on_step=keep_midway, **kw)
    resumed = nftkit.purify(TINY_MODELS["conv_bn"](), adapter3, tiny_data, checkpoint=midway, resume=True, **kw)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_adv_unlearn_perturbation_survives_a_resume(tmp_path, tiny_data, adapter3):
    """The universal perturbation is carried between steps, so a resume must restore it, not restart at zero."""
    from conftest import TINY_MODELS

    kw = dict(method="adv_unlearn", steps=6, batch_size=8, checkpoint_every=3, bn_recalibrate=False)
    ckpt, midway = tmp_path / "state.safetensors", tmp_path / "midway.safetensors"

    def keep_midway(step, model):
        if step == 3:
            midway.write_bytes(ckpt.read_bytes())

    model = TINY_MODELS["conv_bn"]()  # one input model: the distillation teacher is a copy of it
    whole = nftkit.purify(model, adapter3, tiny_data, checkpoint=ckpt, on_step=keep_midway, **kw)
    resumed = nftkit.purify(model, adapter3, tiny_data, checkpoint=midway, resume=True, **kw)
    assert [row["perturbation_norm"] for row in resumed.history] == [row["perturbation_norm"] for row in whole.history]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
