"""Distillation from the input model (distill_weight): each domain's divergence, and what it holds in place."""
import pytest
import torch
import torch.nn.functional as F

import nftkit
from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset
from nftkit.adapters.multilabel import MultiLabelAdapter
from nftkit.adapters.seq2seq import Seq2SeqAdapter

from test_adv_unlearn import _backdoored_mlp


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("adapter, shape, batch", [
    (ImageClassificationAdapter(num_classes=5), (6, 5), None),
    (MultiLabelAdapter(4), (6, 4), None),
    (Seq2SeqAdapter(), (2, 3, 7), {"labels": torch.tensor([[1, 2, -100], [3, -100, -100]])}),
])
def test_each_divergence_is_zero_at_the_reference_and_positive_away_from_it(adapter, shape, batch):
    reference = _logits(*shape)
    same = adapter.distillation_loss(reference.clone(), reference, batch, 2.0)
    other = adapter.distillation_loss(_logits(*shape, seed=1), reference, batch, 2.0)
    assert abs(float(same)) < 1e-6 and float(other) > 1e-3


def test_seq2seq_divergence_ignores_padding():
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    reference, output = _logits(2, 3, 7), _logits(2, 3, 7, seed=1)
    padded = output.clone()
    padded[labels == -100] += 100.0
    adapter = Seq2SeqAdapter()
    assert torch.equal(adapter.distillation_loss(output, reference, {"labels": labels}, 1.0),
                       adapter.distillation_loss(padded, reference, {"labels": labels}, 1.0))


def test_softmax_divergence_scales_with_temperature_squared():
    reference, output = _logits(8, 5), _logits(8, 5, seed=1)
    adapter = ImageClassificationAdapter(num_classes=5)
    expected = F.kl_div(F.log_softmax(output / 3, -1), F.softmax(reference / 3, -1), reduction="batchmean") * 9
    assert torch.allclose(adapter.distillation_loss(output, reference, None, 3.0), expected)


def test_distillation_keeps_the_input_models_answers_on_unseen_inputs():
    """Fine-tuning hard on 30 clean images drifts on the rest; the distillation term holds it near the input model."""
    model, images, labels, _ = _backdoored_mlp()
    clean = ImageTensorDataset(images[:30], labels[:30])
    adapter = ImageClassificationAdapter(num_classes=3)
    with torch.no_grad():
        original = model(images[30:])

    def drift(weight):
        result = nftkit.purify(model, adapter, clean, method="ft", lr=0.5, steps=60, batch_size=30, augment="none",
                               distill_weight=weight)
        with torch.no_grad():
            return float(adapter.distillation_loss(result.model(images[30:]), original, None, 1.0)), result.history

    free, _ = drift(0.0)
    held, history = drift(5.0)
    assert "distill" in history[0] and history[0]["distill"] == pytest.approx(0.0, abs=1e-6)
    assert held < 0.5 * free
