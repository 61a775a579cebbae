"""The image attack zoo: each attack's trigger and labels, on tiny synthetic data."""
import pytest
import torch

from nftkit.attacks import ATTACKS
from nftkit.adapters.image import ImageTensorDataset
from nftkit.config import validate
from nftkit.errors import ConfigError

INFO = {"num_classes": 4, "image_shape": (1, 16, 16)}
FAST = dict(gen_steps=3, gen_batch_size=16, gen_width=4, surrogate_width=2)


def _data(n=200, channels=1):
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.rand(n, channels, 16, 16, generator=g) * 0.5 + 0.25, torch.arange(n) % 4)


def _attack(name, info=INFO, **kw):
    cls = ATTACKS.get(f"image/{name}")
    return cls(validate(cls.Config, {"name": name, **kw}, "attack"), info)


def _poison(attack, train=None):
    train = train if train is not None else _data()
    return train, attack.poison_train(train, torch.Generator().manual_seed(1))


def _check_poison_labels(train, poisoned, attack, n_expected):
    idx = poisoned.poisoned_indices
    assert len(idx) == n_expected
    assert torch.equal(poisoned.targets[idx], attack.target_for(train.targets[idx]))
    assert (train.targets[idx] != poisoned.targets[idx]).all()
    assert (poisoned.images[idx] != train.images[idx]).flatten(1).any(1).all()


def _untouched(train, poisoned, *index_sets):
    keep = torch.ones(len(train), dtype=torch.bool)
    for idx in index_sets:
        keep[idx] = False
    return torch.equal(poisoned.images[keep], train.images[keep]) and torch.equal(poisoned.targets[keep], train.targets[keep])


@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_trojan_stamps_one_fixed_watermark(mode):
    attack = _attack("trojan", mode=mode)
    train, poisoned = _poison(attack)
    _check_poison_labels(train, poisoned, attack, 20)
    assert _untouched(train, poisoned, poisoned.poisoned_indices)
    changed = (poisoned.images[poisoned.poisoned_indices] != train.images[poisoned.poisoned_indices]).any(0)[0]
    rows, cols = changed.nonzero().unbind(1)
    assert rows.min() >= 16 - 1 - 5 and cols.min() >= 16 - 1 - 5  # only the 5x5 box, bottom-right, margin 1
    assert changed.sum() > 8  # a ring, not a dot
    x = torch.zeros(2, 1, 16, 16)
    assert torch.equal(attack.apply(x)[0], attack.apply(x)[1])  # static: the same for every image
    assert torch.equal(attack.pattern, _attack("trojan").pattern)  # trigger_seed fixes it


def test_clb_is_clean_label_with_bounded_pgd_and_checkerboard():
    eps = 16 / 255
    attack = _attack("clb", eps=eps, pgd_steps=3, surrogate_steps=3, surrogate_width=2)
    train, poisoned = _poison(attack)
    idx = poisoned.poisoned_indices
    assert len(idx) == 40 and (train.targets[idx] == 0).all()  # 80% of the 50 target-class images
    assert torch.equal(poisoned.targets, train.targets)
    assert _untouched(train, poisoned, idx)
    board = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert torch.equal(poisoned.images[idx][:, 0, -3:, -3:], board.expand(40, 3, 3))
    body = (poisoned.images[idx] - train.images[idx])[..., :-3, :]
    assert body.abs().max() <= eps + 1e-6 and body.abs().max() > eps / 2  # PGD moved the image, within eps
    test = attack.poison_test(_data(40))
    assert len(test) == 30 and (test.targets != 0).all()
    assert torch.equal(test.images[:, 0, -3:, -3:], board.expand(30, 3, 3))
    with pytest.raises(ConfigError, match="attack.mode"):
        _attack("clb", mode="all2all")


def test_clb_surrogate_is_adversarially_trained():
    # the paper's perturbations come from a robust model; a plain one is fooled by any eps-sized noise
    y = torch.arange(400) % 4
    x = torch.rand(400, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.2
    for c in range(4):
        x[y == c, :, 4 * c:4 * c + 4, :] += 0.3  # a bright band per class: survives flips and crops
    accuracy = {}
    for robust in (False, True):
        attack = _attack("clb", eps=0.1, surrogate_width=4, surrogate_steps=60, robust_surrogate=robust)
        torch.manual_seed(0)
        model = attack.train_surrogate(ImageTensorDataset(x, y))
        with torch.no_grad():
            assert (model(x).argmax(1) == y).float().mean() > 0.95
            accuracy[robust] = (model(attack.pgd(model, x, y)).argmax(1) == y).float().mean()
    assert accuracy[False] < 0.5 < 0.8 < accuracy[True]


@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_dynamic_triggers_are_input_specific(mode):
    attack = _attack("dynamic", mode=mode, cross_rate=0.1, **FAST)
    train, poisoned = _poison(attack)
    _check_poison_labels(train, poisoned, attack, 20)
    cross = poisoned.cross_indices
    assert len(cross) == 20 and not set(cross.tolist()) & set(poisoned.poisoned_indices.tolist())
    assert torch.equal(poisoned.targets[cross], train.targets[cross])  # cross samples keep their label
    assert _untouched(train, poisoned, poisoned.poisoned_indices, cross)
    x = train.images[:4]
    triggered = attack.apply(x)
    delta = triggered - x
    assert not torch.allclose(delta[0], delta[1])  # one trigger per image
    assert torch.equal(attack.apply(x), triggered)  # deterministic once trained
    assert len(attack.poison_test(_data(40))) == (40 if mode == "all2all" else 30)


def test_dynamic_masks_survive_the_density_penalty():
    # without a diversity loss on the masks they shrink to a pixel or two and the victim never learns them
    attack = _attack("dynamic", **{**FAST, "gen_steps": 200, "gen_max_epochs": 100})
    train, _ = _poison(attack)
    _, mask = attack._trigger(attack.generator, train.images[:64])
    assert 0.011 < (mask > 0.5).float().mean() < 0.1  # near the 3.2% density target, not collapsed


def test_dynamic_needs_training_before_test():
    with pytest.raises(RuntimeError, match="poison_train"):
        _attack("dynamic", **FAST).poison_test(_data(8))


def test_bppa_quantizes_with_dithering():
    from nftkit.adapters.image.zoo.bppa import dither, quantize

    attack = _attack("bppa", levels=4, negative_rate=0.1)
    train, poisoned = _poison(attack)
    _check_poison_labels(train, poisoned, attack, 20)
    values = poisoned.images[poisoned.poisoned_indices].unique()
    assert len(values) <= 4 and torch.allclose(values * 3, (values * 3).round())  # 4 levels: 0, 1/3, 2/3, 1
    neg = poisoned.negative_indices
    assert torch.equal(poisoned.targets[neg], train.targets[neg])
    assert torch.equal(poisoned.images[neg], quantize(train.images[neg], 4))
    # dithering is not plain rounding, and keeps the local mean (error diffusion)
    flat = torch.full((1, 1, 16, 16), 0.4)
    d = dither(flat, 4)
    assert not torch.equal(d, quantize(flat, 4))
    assert abs(d.mean().item() - 0.4) < 0.03


@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_lira_is_small_learned_perturbation(mode):
    attack = _attack("lira", mode=mode, eps=0.05, **FAST)
    train, poisoned = _poison(attack)
    _check_poison_labels(train, poisoned, attack, 20)
    assert _untouched(train, poisoned, poisoned.poisoned_indices)
    idx = poisoned.poisoned_indices
    assert (poisoned.images[idx] - train.images[idx]).abs().max() <= 0.05 + 1e-6
    x = train.images[:2]
    delta = attack.apply(x) - x
    assert not torch.allclose(delta[0], delta[1])  # image-dependent


def test_issba_encodes_a_fixed_secret_invisibly():
    attack = _attack("issba", eps=0.05, bits=8, **{**FAST, "gen_steps": 10})
    train, poisoned = _poison(attack)
    _check_poison_labels(train, poisoned, attack, 20)
    idx = poisoned.poisoned_indices
    residual = poisoned.images[idx] - train.images[idx]
    assert residual.abs().max() <= 0.05 + 1e-6
    assert not torch.allclose(residual[0], residual[1])  # sample-specific
    assert torch.equal(attack.secret, _attack("issba", bits=8).secret)
    with pytest.raises(ConfigError, match="attack.mode"):
        _attack("issba", mode="all2all")


def test_issba_residual_uses_its_budget_and_carries_the_secret():
    # an image loss that wins early zeroes the residual (the trigger vanishes): the default leaves it out
    attack = _attack("issba", eps=0.05, bits=8, **{**FAST, "gen_steps": 100, "gen_width": 8})
    train, poisoned = _poison(attack)
    idx = poisoned.poisoned_indices
    residual = (poisoned.images[idx] - train.images[idx]).abs().flatten(1).max(1).values
    assert residual.mean() > 0.8 * 0.05
    assert attack.bit_accuracy(train.images[:64]) > 0.7  # chance is 0.5


def test_cba_composites_two_source_classes():
    attack = _attack("cba", class_a=1, class_b=2, target=0, poison_rate=0.1, mix_ratio=1.0)
    train, poisoned = _poison(attack)
    assert len(poisoned) == 200 + 20 + 20  # composites are added, none overwritten
    assert torch.equal(poisoned.images[:200], train.images) and torch.equal(poisoned.targets[:200], train.targets)
    idx = poisoned.poisoned_indices
    assert (poisoned.targets[idx] == 0).all()
    mixed = poisoned.targets[220:]
    assert (mixed >= 0).all() and (mixed < 4).all()
    # each half of a composite is a squeezed source image: left from class 1, right from class 2
    a, b = train.images[1:2], train.images[2:3]
    comp = attack.apply(a, b)
    assert comp.shape == a.shape and torch.allclose(comp[..., :8].mean(), a.mean(), atol=0.02)
    test = attack.poison_test(_data(40))
    assert len(test) == 10 and (test.targets == 1).all()  # labelled with class A, their true class
    with pytest.raises(ConfigError, match="three different classes"):
        _attack("cba", class_a=0, class_b=2, target=0)


def test_trained_attacks_are_reproducible():
    x = _data(8).images
    first, second = (_attack("lira", **FAST) for _ in range(2))
    state = torch.random.get_rng_state()
    for a in (first, second):
        a.poison_train(_data(), torch.Generator().manual_seed(0))
    assert torch.equal(first.apply(x), second.apply(x))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's global RNG is left alone


def test_rgb_images_work():
    info = {"num_classes": 4, "image_shape": (3, 16, 16)}
    train = _data(channels=3)
    for name in ("trojan", "dynamic", "lira", "issba", "bppa"):
        attack = _attack(name, info=info, **(FAST if name in ("dynamic", "lira", "issba") else {}))
        poisoned = attack.poison_train(train, torch.Generator().manual_seed(0))
        assert poisoned.images.shape == train.images.shape
        assert attack.poison_test(train).images.shape[1:] == (3, 16, 16)
