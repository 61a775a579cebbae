"""Every recipe validates without building anything, and smoke-runs in-process with tiny overrides."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import nftkit
from nftkit.bench import list_suites, prepare_suite
from nftkit.experiment import prepare, run
from nftkit.recipe import list_recipes, recipe_text

RECIPES = list_recipes()
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# tiny overrides per adapter, so each recipe runs in seconds on CPU
TINY = {
    "image": ["data.train_limit=300", "data.test_limit=200", "victim.steps=4", "victim.batch_size=32",
              "defense.steps=3", "defense.batch_size=16", "model.width=4"],
}


def test_there_are_recipes():
    assert "image/fmnist_badnets" in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_opens_with_its_command_and_validates(name):
    assert recipe_text(name).splitlines()[0] == f"# nftkit recipe run {name}"
    exp = prepare(name)
    assert exp.sections["defense"].method in nftkit.METHODS


@pytest.mark.parametrize("name", list_suites())
def test_every_bench_suite_validates_each_row_and_cell(name):
    suite, cells = prepare_suite(name)
    assert len(cells) == len(suite.models) * len(suite.attacks)


def test_a_bad_attack_key_in_a_suite_fails_before_any_compute(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "image/fmnist_badnets", "attacks": {"x": {"name": "badnets", "targte": 1}},
                                   "methods": {"nft": {"method": "nft"}}}))
    with pytest.raises(nftkit.ConfigError, match="targte"):
        prepare_suite(str(bad))


def test_unknown_recipe_key_names_the_key():
    with pytest.raises(nftkit.ConfigError, match="unknown key 'defense.stepz'"):
        prepare("image/fmnist_badnets", ["defense.stepz=3"])
    with pytest.raises(nftkit.ConfigError, match="unknown key 'data.datset'"):
        prepare("image/fmnist_badnets", ["data.datset=x"])
    with pytest.raises(nftkit.ConfigError, match="bad value for 'victim.lr'"):
        prepare("image/fmnist_badnets", ["victim.lr=abc"])


def _needs(name):
    data = yaml.safe_load(recipe_text(name))
    if data.get("data", {}).get("dataset", "fashion_mnist") == "fashion_mnist" and not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed (make setup installs it)")
    return data


@pytest.mark.slow
@pytest.mark.parametrize("name", [r for r in RECIPES if yaml.safe_load(recipe_text(r))["adapter"] in TINY])
def test_recipe_smoke_run(name, tmp_path):
    data = _needs(name)
    if data.get("data", {}).get("dataset", "fashion_mnist") != "fashion_mnist":
        pytest.skip("needs a local dataset")
    out = tmp_path / "run"
    results = run(name, TINY[data["adapter"]], out, log=lambda *_: None)
    files = {p.name for p in out.iterdir()}
    assert {"results.json", "resolved.yaml", "report.md", "model.safetensors", "history.json"} <= files
    saved = json.loads((out / "results.json").read_text())
    for phase in ("before", "after"):
        assert {"acc", "asr", "lcr"} <= set(saved[phase])
    assert saved["runtime_s"] > 0 and results["victim"]["cached"] is False
    # the thread count and the CPU's kernels change a CPU result's last bits, so a rerun needs them beside the seed
    assert saved["environment"]["cpu_threads"] == saved["victim"]["environment"]["cpu_threads"] == torch.get_num_threads()
    assert saved["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert saved["environment"]["pinned"] == {} and saved["environment"]["cpu"]
    resolved = yaml.safe_load((out / "resolved.yaml").read_text())
    assert resolved["defense"]["steps"] == 3 and resolved["model"]["width"] == 4
    # the victim is cached: a second run reuses it
    again = run(name, TINY[data["adapter"]], tmp_path / "again", log=lambda *_: None)
    assert again["victim"]["cached"] is True and again["before"] == saved["before"]
    assert [step for step, _ in saved["victim"]["loss_curve"]] == [0, 1, 2, 3]  # victim.steps=4
    assert again["victim"]["loss_curve"] == saved["victim"]["loss_curve"]


@pytest.mark.slow
def test_a_victim_cached_under_another_cpu_thread_count_or_kernel_pin_is_trained_again(tmp_path, monkeypatch):
    _needs("image/fmnist_badnets")
    quiet = lambda *_: None
    first = run("image/fmnist_badnets", TINY["image"], tmp_path / "a", log=quiet)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        other = run("image/fmnist_badnets", TINY["image"], tmp_path / "b", log=quiet)
    finally:
        torch.set_num_threads(threads)
    assert other["victim"]["cached"] is False and other["victim"]["key"] != first["victim"]["key"]
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    pinned = run("image/fmnist_badnets", TINY["image"], tmp_path / "c", log=quiet)
    assert pinned["victim"]["cached"] is False and pinned["victim"]["key"] != first["victim"]["key"]


def test_victim_loss_curve_averages_equal_stretches():
    from nftkit.experiment import loss_curve

    history = [{"step": i, "loss": float(i)} for i in range(120)]
    curve = loss_curve(history)
    assert len(curve) == 40 and curve[0] == [0, 1.0] and curve[-1] == [117, 118.0]


def test_existing_output_folder_is_not_overwritten(tmp_path):
    _needs("image/fmnist_badnets")
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(nftkit.NftkitError, match="already exists"):
        run("image/fmnist_badnets", TINY["image"], out, log=lambda *_: None)
    assert (out / "results.json").read_text() == "{}"


def test_failed_run_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(nftkit.DataError, match="not found"):
        run("image/fmnist_badnets", TINY["image"] + ["data.root=/nonexistent"], out, log=lambda *_: None)
    assert not out.exists() and os.listdir(tmp_path) == []
