import pytest
import torch

from nftkit.attacks import ATTACKS
from nftkit.adapters.image import ImageTensorDataset

INFO = {"num_classes": 4, "image_shape": (1, 16, 16)}


def _data(n=200):
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.rand(n, 1, 16, 16, generator=g) * 0.5, torch.arange(n) % 4)


def _attack(name, **kw):
    cls = ATTACKS.get(f"image/{name}")
    return cls(cls.Config(name=name, **kw), INFO)


def test_badnets_patch_and_labels():
    attack = _attack("badnets", poison_rate=0.1)
    train = _data()
    poisoned = attack.poison_train(train, torch.Generator().manual_seed(1))
    idx = poisoned.poisoned_indices
    assert len(idx) == 20
    assert (poisoned.targets[idx] == 0).all() and (train.targets[idx] != 0).all()
    checker = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert torch.equal(poisoned.images[idx][:, 0, -3:, -3:], checker.expand(20, 3, 3))
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(poisoned.images[untouched], train.images[untouched])
    assert torch.equal(poisoned.targets[untouched], train.targets[untouched])


def test_poisoned_test_keeps_true_labels_and_skips_target_class():
    attack = _attack("badnets")
    test = _data(40)
    pt = attack.poison_test(test)
    assert len(pt) == 30 and (pt.targets != 0).all()
    assert (pt.images[:, 0, -1, -1] == 1).all()


def test_all2all_targets_next_class():
    attack = _attack("blend", mode="all2all")
    y = torch.tensor([0, 1, 2, 3])
    assert attack.target_for(y).tolist() == [1, 2, 3, 0]
    poisoned = attack.poison_train(_data(), torch.Generator().manual_seed(0))
    idx = poisoned.poisoned_indices
    assert torch.equal(poisoned.targets[idx], (_data().targets[idx] + 1) % 4)


def test_blend_mixes_fixed_noise():
    attack = _attack("blend")
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(attack.apply(x), 0.8 * x + 0.2 * attack.pattern)
    assert torch.equal(attack.pattern, _attack("blend").pattern)  # trigger_seed fixes it


def test_sig_is_clean_label_on_target_class():
    attack = _attack("sig")
    train = _data()
    poisoned = attack.poison_train(train, torch.Generator().manual_seed(0))
    idx = poisoned.poisoned_indices
    assert len(idx) == 40  # 80% of the 50 target-class samples
    assert (train.targets[idx] == 0).all()
    assert torch.equal(poisoned.targets, train.targets)
    diff = poisoned.images[idx] - train.images[idx]
    assert diff.abs().max() <= 20 / 255 + 1e-6 and diff.abs().max() > 0.05


def test_wanet_warps_poisoned_and_noise_samples():
    attack = _attack("wanet", poison_rate=0.1, cross_ratio=2, strength=4)
    train = _data()
    poisoned = attack.poison_train(train, torch.Generator().manual_seed(0))
    changed = (poisoned.images != train.images).flatten(1).any(1)
    assert changed.sum() == 60  # 20 poisoned + 40 noise-mode samples
    relabelled = (poisoned.targets != train.targets).nonzero().flatten()
    assert torch.equal(relabelled.sort().values, poisoned.poisoned_indices.sort().values)
    x = train.images[:2]
    assert torch.equal(attack.apply(x), attack.apply(x))


@pytest.mark.parametrize("name", ["badnets", "blend", "sig", "wanet"])
def test_unknown_attack_key_rejected(name):
    cls = ATTACKS.get(f"image/{name}")
    with pytest.raises(Exception, match="extra"):
        cls.Config(name=name, bogus=1)


def test_sig_refuses_a_frequency_that_aliases_to_zero():
    from nftkit.errors import ConfigError

    cls = ATTACKS.get("image/sig")
    with pytest.raises(ConfigError, match="zero signal"):
        cls(cls.Config(name="sig", frequency=6), {"num_classes": 4, "image_shape": (1, 12, 12)})
