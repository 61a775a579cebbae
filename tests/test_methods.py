"""Every method runs through the one loop and folds back to a plain model; method-specific parts are checked."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nftkit
from nftkit.diagnostics import smoothness
from nftkit.reparam import SpectralShift
from nftkit.regularizers import _signed_sample_gradients

from conftest import TINY_MODELS


@pytest.mark.parametrize("method", ["nft", "ft", "ft_sam", "anp", "sft", "fast_sft", "fst", "subspace_nft"])
def test_every_method_runs_and_returns_a_plain_model(method, tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["conv_bn"]()
    result = nftkit.purify(model, adapter3, tiny_data, method=method, steps=3, batch_size=8)
    assert type(result.model) is type(model)
    assert list(result.model.state_dict()) == list(model.state_dict())
    assert result.config.method == method and len(result.history) == 3


def test_sam_takes_a_second_pass(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["mlp"]()
    sam = nftkit.purify(model, adapter3, tiny_data, method="ft_sam", steps=2, batch_size=8, sam_rho=0.5)
    ft = nftkit.purify(model, adapter3, tiny_data, method="ft", steps=2, batch_size=8)
    assert "sharp_loss" in sam.history[0] and sam.history[0]["sharp_loss"] > sam.history[0]["loss"]
    assert any(not torch.equal(a, b) for a, b in zip(sam.model.state_dict().values(), ft.model.state_dict().values()))


def test_anp_prunes_by_threshold(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["conv"]()
    result = nftkit.purify(model, adapter3, tiny_data, method="anp", steps=5, batch_size=8, lr=1.0, anp_threshold=0.999)
    for name, mask in result.masks.items():
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        pruned = mask == 0
        weight = result.model.get_submodule(name).weight
        assert torch.all(weight[pruned] == 0)
        assert torch.equal(weight[~pruned], model.get_submodule(name).weight[~pruned])
    assert any((m == 0).any() for m in result.masks.values()), "masks that moved at all fall under a 0.999 threshold"


def test_spectral_shift_wraps_and_folds_exactly():
    torch.manual_seed(0)
    for layer, x in [(nn.Linear(6, 4), torch.rand(3, 6)), (nn.Conv2d(2, 5, 3), torch.rand(2, 2, 7, 7))]:
        base = copy.deepcopy(layer)
        wrapper = SpectralShift(layer)
        assert [n for n, _ in wrapper.named_parameters()][0] == "delta"
        assert {"u", "s", "vh"} <= {n for n, _ in wrapper.named_buffers()}
        with torch.no_grad():
            assert torch.allclose(wrapper(x), base(x), atol=1e-5)
            wrapper.delta.uniform_(-0.3, 0.3)
            expected = wrapper(x)
            folded = wrapper.fold()
            assert torch.allclose(folded(x), expected, atol=1e-6)
            assert torch.equal(folded.bias, base.bias)


def test_signed_gradient_estimates_fisher_trace_and_diagonal(adapter3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    params = list(model.parameters())
    per_sample = [torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params) for i in range(5)]
    exact_diag = [sum(g[k] ** 2 for g in per_sample) for k in range(2)]
    g = torch.Generator().manual_seed(1)
    est = [torch.zeros_like(p) for p in params]
    draws = 3000
    for _ in range(draws):
        grads, _ = _signed_sample_gradients(adapter3, model, (x, y), params, g, False)
        for e, gr in zip(est, grads):
            e += gr ** 2 / draws
    for e, ex in zip(est, exact_diag):
        assert torch.allclose(e, ex, rtol=0.15, atol=1e-4)
    assert abs(sum(e.sum() for e in est) - sum(ex.sum() for ex in exact_diag)) < 0.05 * sum(ex.sum() for ex in exact_diag)


def test_sft_drift_term_anchors_at_the_start(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["mlp"]()
    result = nftkit.purify(model, adapter3, tiny_data, method="sft", steps=4, batch_size=8, fisher_every=2)
    rows = result.history
    assert rows[0]["fisher_drift"] == 0.0 and rows[3]["fisher_drift"] > 0
    assert "fisher_trace" in rows[0] and "fisher_trace" not in rows[1] and "fisher_trace" in rows[2]


def test_diagnostics_match_the_exact_hessian(adapter3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    data = [(torch.rand(1, 2, 2), i % 3) for i in range(12)]
    x = torch.stack([d[0] for d in data])
    y = torch.tensor([d[1] for d in data])
    w, b = model[1].weight, model[1].bias

    def loss(flat):
        return F.cross_entropy(x.flatten(1) @ flat[:12].view(3, 4).T + flat[12:], y)

    hessian = torch.autograd.functional.hessian(loss, torch.cat([w.detach().flatten(), b.detach()]))
    eig = torch.linalg.eigvalsh(hessian)
    out = smoothness(model, adapter3, data, samples=12, iterations=100, probes=2000)
    assert abs(out["lambda_max"] - eig.max().item()) < 1e-3 * max(1.0, eig.max().item())
    assert abs(out["hessian_trace"] - hessian.trace().item()) < 0.1 * hessian.trace().item()


def test_fst_reinitialises_the_head_and_keeps_the_class(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["residual"]()
    seen = {}

    def first(step, wrapped):
        if step == 0:
            seen["head"] = wrapped.head.weight.detach().clone()

    result = nftkit.purify(model, adapter3, tiny_data, method="fst", steps=2, batch_size=8, lr=1e-6, on_step=first)
    assert not torch.allclose(seen["head"], model.head.weight, atol=1e-3), "the head was re-initialised"
    assert "head_alignment" in result.history[0]
    assert torch.allclose(result.model.stem.weight, model.stem.weight, atol=1e-4)


def test_max_grad_norm_bounds_every_update(tiny_data, adapter3):
    from conftest import make_mlp

    torch.manual_seed(0)
    model = make_mlp()
    clipped = nftkit.purify(model, adapter3, tiny_data, method="ft", steps=3, batch_size=8, lr=0.1, momentum=0.0,
                            weight_decay=0.0, max_grad_norm=1e-3).model
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(clipped.parameters(), model.parameters())))
    assert 0 < moved <= 3 * 0.1 * 1e-3 + 1e-9
    free = nftkit.purify(model, adapter3, tiny_data, method="ft", steps=3, batch_size=8, lr=0.1, momentum=0.0,
                         weight_decay=0.0).model
    assert torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(free.parameters(), model.parameters()))) > 10 * moved


def test_adamw_with_linear_warmup(tiny_data, adapter3):
    from conftest import make_mlp

    torch.manual_seed(0)
    model = make_mlp()
    result = nftkit.purify(model, adapter3, tiny_data, method="ft", optimizer="adamw", lr=1e-3, lr_schedule="constant",
                           warmup_steps=3, steps=5, batch_size=8, weight_decay=0.0, augment="none")
    assert [round(h["lr"], 8) for h in result.history] == [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    first = nftkit.purify(model, adapter3, tiny_data, method="ft", optimizer="adamw", lr=1e-3, steps=1, batch_size=8,
                          weight_decay=0.0, augment="none", lr_schedule="constant").model
    # Adam's first update is lr * g / (|g| + eps): a weight with a clear gradient moves by lr, none by more
    moved = (first[1].weight - model[1].weight).abs()
    assert moved.max() <= 1.001e-3 and moved.median() > 0.99e-3


def test_cosine_never_rises_when_lr_is_below_the_floor(tiny_data, adapter3):
    torch.manual_seed(0)
    result = nftkit.purify(TINY_MODELS["mlp"](), adapter3, tiny_data, method="nft", lr=0.001, steps=4, batch_size=8)
    assert result.config.lr_min == 0.02 and all(h["lr"] == pytest.approx(0.001) for h in result.history)


def test_bn_recalibrate_leaves_the_statistics_of_the_clean_set(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["conv_bn"]()
    clean = torch.stack([tiny_data[i][0] for i in range(len(tiny_data))])

    def first_norm_stats(result):
        norm = next(m for m in result.model.modules() if isinstance(m, nn.BatchNorm2d))
        seen = []
        handle = norm.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
        result.model.eval()(clean)
        handle.remove()
        return norm, seen[0].transpose(0, 1).flatten(1)

    kwargs = dict(method="nft", steps=4, batch_size=len(tiny_data), lr=0.5)
    norm, inputs = first_norm_stats(nftkit.purify(model, adapter3, tiny_data, bn_recalibrate=True, **kwargs))
    assert torch.allclose(norm.running_mean, inputs.mean(1), atol=1e-5)
    assert torch.allclose(norm.running_var, inputs.var(1), atol=1e-5)
    norm, inputs = first_norm_stats(nftkit.purify(model, adapter3, tiny_data, **kwargs))
    assert not torch.allclose(norm.running_mean, inputs.mean(1), atol=1e-3)  # MixUp batches moved them


def test_input_masks_pull_a_feature_clean_data_holds_constant_towards_its_mean(tiny_data, adapter3):
    from nftkit.adapters.image import ImageTensorDataset

    images = tiny_data.images.clone()
    images[:, 0, 0, 0] = 0.5  # input feature 0 of layer "1": clean data never moves it, a trigger could
    data = ImageTensorDataset(images, tiny_data.targets)
    torch.manual_seed(0)
    model = TINY_MODELS["mlp"]()
    result = nftkit.purify(model, adapter3, data, method="nft", steps=30, batch_size=8, augment="none",
                           input_masks=["^1$"], mask_sparsity=0.2, mask_sparsity_inputs_only=True)
    masks, floor = result.masks["1"], 0.8 * math.exp(-0.5)
    assert masks.shape == (16 + 64,)  # output units, then input features
    assert masks[16] == pytest.approx(floor, abs=1e-6)
    assert (masks[:16] > floor + 0.1).all()  # the pull left the output units alone
    layer, original = result.model[1], model[1]
    clean = images[:1].flatten(1)
    moved = clean.clone()
    moved[0, 0] += 1.0
    with torch.no_grad():
        # a move of feature 0 away from its clean value reaches the layer scaled by its mask
        expected = masks[16] * masks[:16] * original.weight[:, 0]
        assert torch.allclose(layer(moved) - layer(clean), expected[None], atol=1e-5)
    with pytest.raises(nftkit.ConfigError, match="input_masks names no layer"):
        nftkit.purify(model, adapter3, data, method="nft", steps=1, mask_sparsity=0.2, mask_sparsity_inputs_only=True)


def test_mask_sparsity_prunes_a_neuron_clean_data_never_drives(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["mlp"]()
    with torch.no_grad():
        model[3].weight[:, 0] = 0  # unit 0 of the first layer reaches no output: its mask gets no clean gradient
    kept = nftkit.purify(model, adapter3, tiny_data, method="nft", steps=30, batch_size=8, augment="none")
    pruned = nftkit.purify(model, adapter3, tiny_data, method="nft", steps=30, batch_size=8, augment="none",
                           mask_sparsity=0.2)
    floor = 0.8 * math.exp(-0.5)  # mu(1), the first masked layer's lower bound
    assert kept.masks["1"][0] == 1.0
    assert pruned.masks["1"][0] == pytest.approx(floor, abs=1e-6)
    assert pruned.history[-1]["mask_sparsity"] > 0
    with pytest.raises(nftkit.ConfigError, match="mask_sparsity"):
        nftkit.purify(model, adapter3, tiny_data, method="ft", steps=1, mask_sparsity=0.2)
