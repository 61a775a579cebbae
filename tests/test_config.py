import math

import pytest

import nftkit
from nftkit.config import PurifyConfig
from nftkit.schedules import SCHEDULES, lower_bounds


def test_unknown_key_is_named():
    with pytest.raises(nftkit.ConfigError, match="unknown key 'stepz'"):
        nftkit.resolve_config(stepz=3)


def test_bad_type_is_named():
    with pytest.raises(nftkit.ConfigError, match="'lr'"):
        nftkit.resolve_config(lr="fast")


def test_method_defaults_then_user_values():
    cfg = nftkit.resolve_config("nft")
    assert (cfg.lr, cfg.momentum, cfg.lr_min, cfg.steps, cfg.augment) == (0.05, 0.95, 0.02, 1000, "mix")
    assert nftkit.resolve_config("nft", {"lr": 0.1}, steps=5).lr == 0.1
    ft = nftkit.resolve_config("ft")
    assert ft.lr == 0.01 and ft.augment == "basic"


def test_unknown_method():
    with pytest.raises(nftkit.ConfigError, match="unknown method 'nfx'"):
        nftkit.resolve_config("nfx")


def test_steps_or_epochs():
    assert PurifyConfig(steps=3, epochs=1).total_steps(1000) == 3  # steps wins (a later override)
    assert PurifyConfig(epochs=2, batch_size=10).total_steps(25) == 5


def test_exponential_schedule_matches_paper():
    assert lower_bounds("exponential", [1, 2, 3], 0.8, 0.5) == pytest.approx([0.8 * math.exp(-0.5 * l) for l in (1, 2, 3)])


@pytest.mark.parametrize("shape", SCHEDULES.names())
def test_every_schedule_is_a_decreasing_bound_in_unit_interval(shape):
    bounds = lower_bounds(shape, list(range(1, 11)), 0.8, 0.5)
    assert all(0 <= b <= 1 for b in bounds)
    assert all(a >= b - 1e-12 for a, b in zip(bounds, bounds[1:]))


def test_defense_only_keys_stay_out_of_the_victim_key_unless_the_victim_mixes():
    from nftkit.adapters.image import ImageClassificationAdapter
    from nftkit.adapters.pointcloud import PointCloudAdapter
    from nftkit.config import victim_dump

    data = ImageClassificationAdapter.DataConfig(mix_alpha=0.2)
    assert "mix_alpha" not in victim_dump(data, mixing=False) and "clean_fraction" in victim_dump(data, mixing=False)
    assert victim_dump(data, mixing=True)["mix_alpha"] == 0.2
    assert ImageClassificationAdapter.from_recipe(data, None).mix_alpha == 0.2  # and the defense's MixUp reads it
    points = victim_dump(PointCloudAdapter.DataConfig(mix="rsmix"), mixing=False)
    assert not {"mix", "mix_alpha", "assignment"} & set(points) and "jitter" in points  # the victim's own augmentation stays
