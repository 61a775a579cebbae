"""The worked example of docs/writing-an-adapter.md (examples/audio_kws), run end to end on a tiny
espeak-ng dataset: synthesise, poison, train a victim with the engine, purify, evaluate."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nftkit
from nftkit.attacks import ATTACKS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # the example is user code, not part of the installed package

import audio_kws  # noqa: E402
from audio_kws import KeywordSpottingAdapter, KWSDataConfig, KWSModelConfig, KWSNet  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not on PATH (apt-get install espeak-ng, or `make setup`)")

WORDS = ["yes", "no", "up", "down"]


@pytest.fixture
def one_thread():
    # tiny convolutions: on a loaded 2-core machine two threads ran the victim ~10x slower than one
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@needs_espeak
def test_synthesis_layout_and_cache(tmp_path):
    clips = audio_kws.synthesize(tmp_path, ["yes", "go"], per_word=2, seed=3)
    assert clips == [("yes/0.wav", "yes"), ("yes/1.wav", "yes"), ("go/0.wav", "go"), ("go/1.wav", "go")]
    first = (tmp_path / "go" / "1.wav").read_bytes()
    stamp = (tmp_path / "go" / "1.wav").stat().st_mtime_ns
    audio_kws.synthesize(tmp_path, ["yes", "go"], per_word=2, seed=3)  # cached: nothing rewritten
    assert (tmp_path / "go" / "1.wav").stat().st_mtime_ns == stamp
    wave = audio_kws.read_audio(tmp_path / "go" / "1.wav", 16000)
    assert wave.dtype == torch.float32 and 2000 < len(wave) < 32000 and 0.05 < wave.abs().max() <= 1
    # deterministic from the seed: the same clip again in a fresh folder
    audio_kws.synthesize(tmp_path / "again", ["go"], per_word=2, seed=3)
    assert (tmp_path / "again" / "go" / "1.wav").read_bytes() == first
    with pytest.raises(nftkit.DataError, match="seed"):
        audio_kws.synthesize(tmp_path, ["yes"], per_word=1, seed=4)


def test_log_mels_match_the_transformers_reference():
    from transformers.audio_utils import spectrogram

    frontend = audio_kws.LogMel(16000, 40)
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    ref = spectrogram(wave.numpy(), frontend.window.numpy(), frame_length=frontend.n_fft, hop_length=frontend.hop,
                      power=2.0, mel_filters=frontend.mel.numpy(), mel_floor=1e-6, log_mel="log")
    assert torch.allclose(frontend(wave[None])[0, 0], torch.from_numpy(ref), atol=1e-2)


@needs_espeak
def test_backdoor_implants_and_nft_returns_the_same_architecture(tmp_path, one_thread):
    cfg = KWSDataConfig(root=str(tmp_path / "clips"), words=WORDS, per_word=16, test_per_class=5, clean_per_class=3,
                        n_mels=32)
    adapter = KeywordSpottingAdapter.from_recipe(cfg, KWSModelConfig(width=8))
    splits = adapter.load_data(cfg, seed=0)
    assert (len(splits.train), len(splits.clean), len(splits.test)) == (32, 12, 20)
    assert splits.train[0][0].shape == (1, 32, 101)

    attack_cls = ATTACKS.get("audio_kws/tone")
    attack = attack_cls(attack_cls.Config(name="tone", target=0, poison_rate=0.2), splits.info, adapter)
    train = attack.poison_train(splits.train, torch.Generator().manual_seed(0))
    poisoned_test = attack.poison_test(splits.test)
    assert len(train.poisoned_indices) == round(0.2 * len(splits.train))
    assert (poisoned_test.targets != 0).all()

    torch.manual_seed(0)
    victim = nftkit.purify(adapter.build_model(KWSModelConfig(width=8)), adapter, train, method="train",
                           steps=300, batch_size=16, lr=0.05).model
    device = torch.device("cpu")
    before = adapter.evaluate(victim, splits.test, poisoned_test, attack, device)
    assert before["acc"] >= 60 and before["asr"] >= 60, before  # the tone is a working backdoor

    result = nftkit.purify(victim, adapter, splits.clean, method="nft", steps=30, batch_size=12)
    after = adapter.evaluate(result.model, splits.test, poisoned_test, attack, device)
    assert type(result.model) is KWSNet
    assert list(result.model.state_dict()) == list(victim.state_dict())
    assert {t.kind for t in result.targets} == {"BatchNorm2d"} and len(result.masks) == 3
    assert set(after) == {"acc", "asr", "lcr"} and all(0 <= v <= 100 for v in after.values())


@needs_espeak
def test_recipe_runs_through_the_documented_command(tmp_path):
    """`nftkit recipe run <yaml>` with examples/ on the path (the guide's command), with tiny overrides."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1", "NFTKIT_CACHE_DIR": str(tmp_path / "cache")}
    tiny = ["data.words=[up,go,stop]", "data.per_word=5", "data.test_per_class=2", "data.clean_per_class=1",
            "data.n_mels=16", "model.width=2", "victim.steps=3", "victim.batch_size=4", "defense.steps=2",
            "defense.batch_size=3"]
    proc = subprocess.run([sys.executable, "-m", "nftkit", "recipe", "run",
                           str(EXAMPLES / "audio_kws" / "kws_tone.yaml"), *tiny, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
    assert "after nft: ACC" in proc.stdout
