"""Universal adversarial unlearning: the perturbation hook, and removal of a pathway clean data never drives."""
import pytest
import torch
import torch.nn as nn

import nftkit
from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset
from nftkit.errors import ConfigError
from nftkit.methods.adversarial import InputShift
from nftkit.reparam import NeuronMask


def test_input_shift_adds_one_perturbation_only_while_active():
    layer = nn.Linear(4, 2)
    shift = InputShift(layer)
    x = torch.ones(3, 4)
    plain = layer(x)  # the first call sizes the perturbation (zero) and the radius (mean input norm)
    assert shift.delta.shape == (4,) and shift.radius == pytest.approx(2.0)
    shift.delta = torch.tensor([1.0, 0, 0, 0])
    assert torch.equal(layer(x), plain)
    shift.active = True
    assert torch.allclose(layer(x), layer.forward(x + shift.delta))
    shift.delta = torch.tensor([3.0, 4.0, 0, 0])
    shift.project(1.0)
    assert shift.delta.norm() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="one size"):
        layer(torch.ones(3, 5))


def _backdoored_mlp():
    """An MLP that maps a 2x2 corner patch to class 0; clean images are dark there, so clean data never drives it."""
    g = torch.Generator().manual_seed(0)
    n = 300
    labels = torch.arange(n) % 3
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for c in range(3):
        images[labels == c, :, 2 * c + 1:2 * c + 3, 1:7] += 0.6  # one bright band per class
    images[:, :, 6:, 6:] = 0
    triggered = images.clone()
    triggered[:, :, 6:, 6:] = 1.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.cat([images, triggered[:60]])
    y = torch.cat([labels, torch.zeros(60, dtype=torch.long)])
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, images, labels, triggered


def _asr(model, triggered, labels):
    with torch.no_grad():
        return float((model(triggered[labels != 0]).argmax(1) == 0).float().mean())


def test_adv_unlearn_removes_a_pathway_that_fine_tuning_leaves():
    model, images, labels, triggered = _backdoored_mlp()
    assert _asr(model, triggered, labels) > 0.9
    clean = ImageTensorDataset(images[:60], labels[:60])
    adapter = ImageClassificationAdapter(num_classes=3)
    kwargs = dict(steps=150, batch_size=30, augment="none", seed=0)
    ft = nftkit.purify(model, adapter, clean, method="ft", **kwargs).model
    unlearned = nftkit.purify(model, adapter, clean, method="adv_unlearn", uap_radius=0.5, **kwargs)
    assert _asr(ft, triggered, labels) > 0.9  # no clean input reaches the corner: no gradient there
    assert _asr(unlearned.model, triggered, labels) < 0.2
    with torch.no_grad():
        assert (unlearned.model(images).argmax(1) == labels).float().mean() > 0.9
    assert unlearned.history[-1]["perturbation_norm"] <= 0.5 + 1e-6
    assert not any(m._forward_pre_hooks for m in unlearned.model.modules())  # the hook is gone


def test_adv_nft_perturbs_the_first_layer_even_when_it_is_masked(monkeypatch):
    model, images, labels, _ = _backdoored_mlp()
    hooked = []
    init = InputShift.__init__
    monkeypatch.setattr(InputShift, "__init__", lambda self, layer, method="": (hooked.append(layer), init(self, layer, method))[1])
    adapter = ImageClassificationAdapter(num_classes=3)
    result = nftkit.purify(model, adapter, ImageTensorDataset(images[:60], labels[:60]), method="adv_nft",
                           steps=2, batch_size=30, augment="none", seed=0)
    assert "1" in result.masks  # the first Linear carries masks ...
    (layer,) = hooked
    assert isinstance(layer, NeuronMask) and layer.base_layer.in_features == 64  # ... and still gets the shift
    assert result.history[-1]["perturbation_norm"] > 0
