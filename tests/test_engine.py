"""Engine invariants over a table of tiny models (the PEFT way)."""
import copy

import pytest
import torch
import torch.nn as nn

import nftkit
from nftkit.purify import _wrap
from nftkit.reparam import NeuronMask, fold_all
from nftkit.reparam.neuron_mask import MaskRule, input_params
from nftkit.schedules import lower_bounds
from nftkit.targeting import select_targets, trace_model

from conftest import TINY_MODELS

PLACEMENTS = ["bn_gamma", "bn_output", "weight_rows"]


def _wrapped(model, data, adapter, placement="bn_gamma"):
    batch = adapter.collate([data[i] for i in range(8)])
    trace = trace_model(model, lambda m: adapter.forward(m, batch))
    targets = select_targets(model, trace, placement, [], [], mask_classifier=False)
    return _wrap(model, targets, "neuron_mask"), targets, batch


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_wrapped_equals_base_at_init_and_folded_equals_wrapped(name, placement, tiny_data, adapter3):
    torch.manual_seed(0)
    base = TINY_MODELS[name]().eval()
    model = copy.deepcopy(base)
    wrapped, targets, batch = _wrapped(model, tiny_data, adapter3, placement)
    assert targets, "every tiny model has maskable layers"
    with torch.no_grad():
        assert torch.allclose(model(batch[0]), base(batch[0]), atol=1e-6)
        for w in wrapped.values():
            w.mask.uniform_(0.2, 1.0)
        expected = model(batch[0])
    fold_all(model, wrapped)
    assert not any(isinstance(m, NeuronMask) for m in model.modules())
    assert type(model) is type(base)
    assert list(model.state_dict()) == list(base.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(batch[0]), expected, atol=1e-5)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_only_masks_get_gradients_and_bounds_hold_every_step(name, tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS[name]()
    seen = []

    def check(step, wrapped_model):
        wrappers = [m for m in wrapped_model.modules() if isinstance(m, NeuronMask)]
        for p in wrapped_model.parameters():
            is_mask = any(p is w.mask for w in wrappers)
            assert p.requires_grad == is_mask
            if not is_mask:
                assert p.grad is None
        masks = [w.mask for w in wrappers]
        seen.append([m.detach().clone() for m in masks])

    result = nftkit.purify(model, adapter3, tiny_data, steps=4, batch_size=8, lr=5.0, on_step=check)
    bounds = lower_bounds("exponential", [t.depth for t in result.targets], 0.8, 0.5)
    for masks in seen:
        for m, low in zip(masks, bounds):
            assert m.min() >= low - 1e-7 and m.max() <= 1 + 1e-7
    # lr=5 pushes masks onto their bounds: the projection really ran
    assert any(not torch.allclose(m, torch.ones_like(m)) for m in seen[-1])


@pytest.mark.parametrize("name", TINY_MODELS)
def test_user_model_untouched_and_result_is_plain(name, tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS[name]()
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = nftkit.purify(model, adapter3, tiny_data, steps=3, batch_size=8)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"user's {k} changed"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert type(result.model) is type(model)
    assert list(result.model.state_dict()) == list(before)
    assert set(result.masks) == {t.name for t in result.targets}
    assert len(result.history) == 3 and result.runtime_s > 0
    assert result.config.steps == 3 and result.config.method == "nft"


def test_placement_rules_on_conv_bn():
    model = TINY_MODELS["conv_bn"]()
    from nftkit.adapters.image import ImageClassificationAdapter

    adapter = ImageClassificationAdapter(3)
    x = torch.rand(4, 1, 8, 8)
    trace = trace_model(model, lambda m: m(x))
    names = lambda p: [t.name for t in select_targets(model, trace, p, [], [], False)]  # noqa: E731
    # conv feeding BN: the BN carries its mask; the classifier is excluded
    assert names("bn_gamma") == ["1", "4"]
    assert names("weight_rows") == ["0", "3"]
    rule = select_targets(model, trace, "bn_output", [], [], False)[0].rule
    assert set(rule.params) == {"weight", "bias"}
    assert names("bn_gamma") != [t.name for t in select_targets(model, trace, "bn_gamma", [], [], True)]
    assert [t.name for t in select_targets(model, trace, "weight_rows", ["^3$"], [], False)] == ["3"]
    assert [t.name for t in select_targets(model, trace, "weight_rows", [], ["^3$"], False)] == ["0"]
    assert adapter is not None


def test_depth_follows_execution_not_registration_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(8, 3)
            self.early = nn.Linear(4, 8)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.late(torch.relu(self.early(x))))

    model = Reversed()
    trace = trace_model(model, lambda m: m(torch.rand(2, 4)))
    targets = select_targets(model, trace, "bn_gamma", [], [], False)
    assert [(t.name, t.depth) for t in targets] == [("early", 1), ("late", 2)]


def test_masks_scale_weights_never_bias():
    layer = nn.Linear(3, 2)
    rule = nftkit.reparam.mask_rule(layer, "weight_rows")
    wrapper = NeuronMask(copy.deepcopy(layer), rule)
    with torch.no_grad():
        wrapper.mask.copy_(torch.tensor([0.5, 0.0]))
    folded = wrapper.fold()
    assert torch.equal(folded.weight[0], layer.weight[0] * 0.5)
    assert torch.equal(folded.weight[1], torch.zeros(3))
    assert torch.equal(folded.bias, layer.bias)


def test_lstm_units_masked_in_every_gate():
    lstm = nn.LSTM(3, 5, batch_first=True)
    rule = nftkit.reparam.mask_rule(lstm, "bn_gamma")
    wrapper = NeuronMask(copy.deepcopy(lstm), rule)
    x = torch.rand(2, 4, 3)
    with torch.no_grad():
        wrapper.mask.uniform_(0.3, 1.0)
        expected = wrapper(x)[0]
        folded = wrapper.fold()
        assert torch.allclose(folded(x)[0], expected, atol=1e-6)
        assert torch.allclose(folded.weight_hh_l0[5:10], lstm.weight_hh_l0[5:10] * wrapper.mask[:, None])


def test_input_masks_scale_input_columns_and_fold_exactly():
    lstm = nn.LSTM(3, 5, batch_first=True)
    rule = MaskRule(nftkit.reparam.mask_rule(lstm, "bn_gamma").params, input_params(lstm))
    assert rule.units(lstm) == 5 + 3  # hidden units, then input features
    wrapper = NeuronMask(copy.deepcopy(lstm), rule)
    x = torch.rand(2, 4, 3)
    with torch.no_grad():
        wrapper.mask.copy_(torch.tensor([1.0, 1, 1, 1, 1, 0.5, 0.0, 1.0]))
        # a masked input feature is the same as that feature scaled in the input
        assert torch.allclose(wrapper(x)[0], lstm(x * torch.tensor([0.5, 0.0, 1.0]))[0], atol=1e-6)
        # with the clean mean set, a masked-out feature becomes that mean, not 0
        wrapper.input_mean = torch.tensor([0.2, 0.4, 0.6])
        replaced = x.clone()
        replaced[..., 1] = 0.4
        replaced[..., 0] = 0.5 * x[..., 0] + 0.5 * 0.2
        assert torch.allclose(wrapper(x)[0], lstm(replaced)[0], atol=1e-6)
        wrapper.mask.uniform_(0.3, 1.0)
        expected = wrapper(x)[0]
        folded = wrapper.fold()
        assert torch.allclose(folded(x)[0], expected, atol=1e-6)
    head = nn.Linear(4, 2)
    only_inputs = MaskRule({}, input_params(head))
    assert only_inputs.units(head) == 4 and only_inputs.output_units(head) == 0
    assert NeuronMask(head, only_inputs).mask.shape == (4,)
    for unfoldable in (nn.BatchNorm1d(4), nn.Conv2d(3, 4, 3), nn.Linear(4, 2, bias=False)):
        assert input_params(unfoldable) is None  # no bias for a masked input's constant part


def test_input_masks_reach_the_head_and_unmatched_patterns_are_refused(tiny_data, adapter3):
    model = TINY_MODELS["mlp"]()
    batch = adapter3.collate([tiny_data[i] for i in range(8)])
    trace = trace_model(model, lambda m: adapter3.forward(m, batch))
    plain = select_targets(model, trace, "weight_rows", [], [], False)
    head = trace.order[-1]
    assert head not in [t.name for t in plain]
    targets = select_targets(model, trace, "weight_rows", [], [], False, (f"^{head}$",))
    extra = [t for t in targets if t.name == head]
    assert len(extra) == 1 and extra[0].units == model.get_submodule(head).in_features and extra[0].depth == len(targets)
    for unmaskable in ("^nothing$", "^2$"):  # no such layer; a ReLU
        with pytest.raises(nftkit.ConfigError, match="matched no executed layer whose inputs can be masked"):
            select_targets(model, trace, "weight_rows", [], [], False, (unmaskable,))
    with pytest.raises(nftkit.ConfigError, match="input_masks adds neural masks"):
        nftkit.purify(model, adapter3, tiny_data, method="ft", input_masks=[head], steps=1)


def test_the_report_shows_output_and_input_masks_of_a_layer_as_two_rows(tiny_data, adapter3):
    from nftkit.report import render_report

    model = TINY_MODELS["mlp"]()
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    layer = model.get_submodule(first)
    result = nftkit.purify(model, adapter3, tiny_data, input_masks=[f"^{first}$"], steps=1, batch_size=8)
    target = next(t for t in result.targets if t.name == first)
    assert (target.units, target.input_units) == (layer.out_features + layer.in_features, layer.in_features)
    results = {"before": {"acc": 1.0}, "after": {"acc": 1.0}, "recipe": "r", "method": "nft", "runtime_s": 0.0,
               "data": {}, "victim": {}}
    rows = [r for r in render_report(results, result).splitlines() if f"`{first}` " in r]
    assert [r.split("|")[3].strip() for r in rows] == [str(layer.out_features), str(layer.in_features)]
    assert rows[1].split("|")[2].strip().endswith("inputs")


def test_same_seed_gives_bit_identical_masks(tiny_data, adapter3):
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # same weights; the run's own seed drives batches and mixing
        model = TINY_MODELS["conv_bn"]()
        runs.append(nftkit.purify(model, adapter3, tiny_data, steps=5, batch_size=8, seed=7).masks)
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    torch.manual_seed(123)
    other = nftkit.purify(TINY_MODELS["conv_bn"](), adapter3, tiny_data, steps=5, batch_size=8, seed=8).masks
    assert any(not torch.equal(runs[0][k], other[k]) for k in other)


def test_full_finetuning_changes_weights_and_keeps_class(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["residual"]()
    result = nftkit.purify(model, adapter3, tiny_data, method="ft", steps=3, batch_size=8)
    assert result.masks == {} and result.targets == []
    assert type(result.model) is type(model)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), result.model.state_dict().values()))


def test_nan_weights_refused(tiny_data, adapter3):
    model = TINY_MODELS["mlp"]()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(nftkit.ModelError, match="NaN or inf"):
        nftkit.purify(model, adapter3, tiny_data, steps=1)
