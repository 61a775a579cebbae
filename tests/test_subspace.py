"""The clean-subspace projection: exact pieces, a silent pathway cut, the held-out budget honoured."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nftkit
from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset
from nftkit.subspace import CleanBatches, input_rows, leading_basis, project_model, recalibrate_norms

from conftest import TINY_MODELS


@pytest.mark.parametrize("layer, x", [
    (nn.Linear(5, 3), torch.rand(4, 2, 5)),
    (nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), torch.rand(2, 2, 7, 6)),
    (nn.Conv2d(2, 3, (3, 2), padding=(2, 0), dilation=2), torch.rand(2, 2, 9, 8)),
    (nn.Conv1d(3, 4, 3, stride=2, padding=1), torch.rand(2, 3, 11)),
])
def test_input_rows_are_what_the_weight_multiplies(layer, x):
    rows = input_rows(layer, x)
    out = layer(x)
    flat = rows @ layer.weight.reshape(layer.weight.shape[0], -1).T + layer.bias
    expected = out.reshape(-1, out.shape[-1]) if isinstance(layer, nn.Linear) else out.movedim(1, -1).reshape(-1, out.shape[1])
    assert torch.allclose(flat, expected, atol=1e-5)


def test_leading_basis_keeps_the_requested_share_of_energy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) * torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01, 0.0])
    moment = (x.T @ x).double()
    assert leading_basis(moment, 1.0).shape[1] >= 5  # the zero direction may tie with the last
    basis = leading_basis(moment, 0.99)
    kept = (basis.T @ moment @ basis).trace() / moment.trace()
    assert basis.shape[1] == 2 and kept >= 0.99
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=basis.dtype), atol=1e-8)


def _silent_pathway_model():
    """A classifier whose input 0 is always zero on clean data and drives class 2 when set (a backdoor)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight[:, 0] = 0
        model[1].weight[0] = torch.tensor([5.0, 0, 0, 0])
        model[3].weight[:, 0] = torch.tensor([0.0, 0, 10])
    return model


def _clean_set(n=60):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 1, 4, generator=g)
    x[..., 0] = 0
    return ImageTensorDataset(x, torch.arange(n) % 3)


def test_a_pathway_clean_data_never_drives_is_cut_and_clean_outputs_stay():
    model, data = _silent_pathway_model(), _clean_set()
    clean = torch.stack([data[i][0] for i in range(len(data))])
    triggered = clean.clone()
    triggered[..., 0] = 1.0
    assert (model(triggered).argmax(1) == 2).all()
    adapter = ImageClassificationAdapter(num_classes=3)
    result = nftkit.purify(model, adapter, data, method="clean_subspace", subspace_energy=0.999999)
    purified = result.model
    with torch.no_grad():
        assert torch.allclose(purified(clean), model(clean), atol=1e-5)
        assert torch.allclose(purified(triggered), purified(clean), atol=1e-5)
        assert purified[1].weight[:, 0].abs().max() < 1e-6
    assert result.history == [] and result.config.steps == 0
    assert nftkit.resolve_config("clean_subspace", {"steps": 1000}).steps == 0, "a recipe's length is not training"
    kept = result.info["subspace"]["kept"]
    assert kept["1"] == [3, 4] and kept["3"][1] == 8
    assert model[1].weight[0, 0] == 5.0, "the user's model is untouched"


@pytest.mark.parametrize("name", ["mlp", "conv", "conv_bn", "residual"])
def test_keeping_all_energy_changes_no_output(name, tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS[name]().eval()
    work = copy.deepcopy(model)
    batches = CleanBatches(adapter3, tiny_data, list(range(len(tiny_data))), 8, torch.device("cpu"))
    project_model(work, [n for n, m in work.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))], batches,
                  1.0, recalibrate=False)
    x = torch.stack([tiny_data[i][0] for i in range(len(tiny_data))])
    with torch.no_grad():
        assert torch.allclose(work(x), model(x), atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "conv_bn", "residual"])
def test_one_pass_over_the_whole_set_equals_one_pass_per_layer(name, tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS[name]()
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    whole, batched = copy.deepcopy(model), copy.deepcopy(model)
    everything = list(range(len(tiny_data)))
    kept_whole = project_model(whole, layers, CleanBatches(adapter3, tiny_data, everything, 100, torch.device("cpu")), 0.95,
                               recalibrate=False)
    kept_batched = project_model(batched, layers, CleanBatches(adapter3, tiny_data, everything, 5, torch.device("cpu")), 0.95,
                                 recalibrate=False)  # batch statistics differ with the batching
    assert kept_whole == kept_batched and any(k < d for k, d in kept_whole.values())
    for a, b in zip(whole.state_dict().values(), batched.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)


def test_norm_statistics_are_the_moments_of_the_whole_clean_set_when_it_is_stored_class_by_class(adapter3):
    from nftkit.adapters.image import ImageTensorDataset

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) // 8  # class-grouped: each batch of 8 holds one class
    data = ImageTensorDataset(0.3 * torch.rand(24, 1, 8, 8, generator=g) + 0.35 * labels.view(-1, 1, 1, 1).float(), labels)
    model = TINY_MODELS["conv_bn"]().eval()
    bn = model[1]
    recalibrate_norms(model, CleanBatches(adapter3, data, list(range(len(data))), 8, torch.device("cpu")))
    with torch.no_grad():
        features = model[0](data.images).transpose(0, 1).flatten(1)
    assert torch.allclose(bn.running_mean, features.mean(1), atol=1e-5)
    # the between-class spread is most of the variance: a mean of per-batch variances would miss it
    assert torch.allclose(bn.running_var, features.var(1), rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training and not bn.training, "momentum and modes are restored"


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_the_chosen_energy_keeps_held_out_accuracy_within_the_budget(confidence, tiny_data, adapter3):
    torch.manual_seed(0)
    model = nftkit.train(TINY_MODELS["conv_bn"](), adapter3, tiny_data, steps=40, batch_size=8, lr=0.1).model
    kwargs = dict(method="clean_subspace", subspace_budget=5.0, subspace_folds=4, subspace_confidence=confidence)
    result = nftkit.purify(model, adapter3, tiny_data, **kwargs)
    info = result.info["subspace"]
    assert type(result.model) is type(model) and list(result.model.state_dict()) == list(model.state_dict())
    assert info["search"], "the grid was searched"
    bound = {row["energy"]: row["heldout_drop"] + confidence * row["standard_error"] for row in info["search"]}
    assert confidence == 0 or any(row["standard_error"] > 0 for row in info["search"])
    passing = [energy for energy, b in bound.items() if b <= 5.0 + 1e-3]
    failing = [energy for energy, b in bound.items() if b > 5.0 + 1e-3]
    assert info["energy"] == (min(passing) if passing else 1.0)
    assert all(f < info["energy"] for f in failing), "bisection keeps the most aggressive share that passed"
    again = nftkit.purify(model, adapter3, tiny_data, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()))


def test_projection_first_then_a_method(tiny_data, adapter3):
    torch.manual_seed(0)
    model = TINY_MODELS["conv_bn"]()
    result = nftkit.purify(model, adapter3, tiny_data, method="nft", project_first=True, subspace_energy=0.9,
                           steps=3, batch_size=8)
    assert "subspace" in result.info and len(result.history) == 3
    assert list(result.model.state_dict()) == list(model.state_dict())


def test_projection_after_a_method_equals_projecting_its_output(tiny_data, adapter3):
    torch.manual_seed(0)
    model = nftkit.train(TINY_MODELS["conv_bn"](), adapter3, tiny_data, steps=40, batch_size=8, lr=0.1).model
    run = dict(method="nft", steps=5, batch_size=8, subspace_budget=5.0, subspace_folds=4)
    chained = nftkit.purify(model, adapter3, tiny_data, project_after=True, **run)
    first = nftkit.purify(model, adapter3, tiny_data, **run)
    second = nftkit.purify(first.model, adapter3, tiny_data, method="clean_subspace", subspace_budget=5.0, subspace_folds=4)
    assert chained.info["subspace_after"]["energy"] == second.info["subspace"]["energy"] < 1.0
    assert all(torch.equal(a, b) for a, b in zip(chained.model.state_dict().values(), second.model.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(chained.model.state_dict().values(), first.model.state_dict().values()))


def test_adapters_score_their_predictions():
    image = ImageClassificationAdapter(num_classes=3)
    logits = torch.tensor([[2.0, 0, 0], [0, 0, 1]])
    assert image.correct_predictions(logits, (None, torch.tensor([0, 0]))).tolist() == [True, False]
    soft = F.one_hot(torch.tensor([0, 2]), 3).float()
    assert image.correct_predictions(logits, (None, soft)).tolist() == [True, True]


def test_held_out_accuracy_is_counted_per_prediction(tiny_data, adapter3):
    """A multi-label or seq2seq adapter scores several predictions per sample; the drop is a share of those."""
    class FourPerSample(type(adapter3)):
        def correct_predictions(self, output, batch):
            right = super().correct_predictions(output, batch)
            return torch.stack([right, right, torch.ones_like(right), torch.ones_like(right)], dim=1)

    four = FourPerSample(num_classes=3)
    model = TINY_MODELS["conv_bn"]().eval()
    everything = list(range(len(tiny_data)))
    single = CleanBatches(adapter3, tiny_data, everything, 8, torch.device("cpu")).right(model)
    several = CleanBatches(four, tiny_data, everything, 8, torch.device("cpu")).right(model)
    assert len(single) == len(tiny_data) and len(several) == 4 * len(tiny_data)
    assert several.mean() == pytest.approx(0.5 * single.mean() + 0.5)


def test_tied_and_excluded_layers_are_left_alone():
    from nftkit.subspace import projected_layers

    embed = nn.Embedding(10, 4)
    model = nn.Sequential(embed, nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    model[2].weight = embed.weight  # an output layer tied to the embeddings
    order = ["0", "1", "2"]
    assert projected_layers(model, order, [], []) == ["1"]
    with pytest.raises(nftkit.ConfigError, match="no Linear or Conv"):
        projected_layers(model, order, [], ["^1$"])


def test_a_recipe_run_with_the_projection_reports_what_it_chose(tmp_path):
    from pathlib import Path
    import json

    from nftkit.experiment import run

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (make setup installs it)")
    tiny = ["data.train_limit=300", "data.test_limit=200", "victim.steps=4", "victim.batch_size=32",
            "model.width=4", "defense.method=clean_subspace"]  # the recipe's defense.steps=1000 is ignored
    run("image/fmnist_badnets", tiny, tmp_path / "run", log=lambda *_: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    projection = saved["method_info"]["subspace"]
    assert projection["search"] and 0.9 <= projection["energy"] <= 1.0
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == []
    report = (tmp_path / "run" / "report.md").read_text()
    assert ("## Clean-subspace projection" in report) == bool(projection["kept"])
    assert "0 steps" in report
    assert "takes no training steps" in (tmp_path / "run" / "report.html").read_text()
