import numpy as np
import torch

from nftkit.metrics import BackdoorMetrics, accuracy, attack_success_rate, label_correction_rate


def _reference(preds, true, targets):
    p, y, t = (np.asarray(a) for a in (preds, true, targets))
    keep = t != y
    return 100 * np.mean(p == y), 100 * np.mean(p[keep] == t[keep]), 100 * np.mean(p[keep] == y[keep])


def test_metrics_match_numpy_reference():
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (200,), generator=g)
    true = torch.randint(0, 5, (200,), generator=g)
    targets = torch.zeros_like(true)  # all2one to class 0: samples of class 0 do not count
    acc, asr, lcr = _reference(preds, true, targets)
    assert accuracy(preds, true, 5) == np.float64(acc).item() or abs(accuracy(preds, true, 5) - acc) < 1e-4
    assert abs(attack_success_rate(preds, true, targets, 5) - asr) < 1e-4
    assert abs(label_correction_rate(preds, true, targets, 5) - lcr) < 1e-4


def test_stateful_class_accumulates_batches():
    m = BackdoorMetrics(3)
    m.update_clean(torch.tensor([0, 1]), torch.tensor([0, 2]))
    m.update_clean(torch.tensor([2]), torch.tensor([2]))
    m.update_poisoned(torch.tensor([0, 0, 2]), torch.tensor([1, 2, 2]), torch.tensor([0, 0, 0]))
    out = m.compute()
    assert abs(out["acc"] - 200 / 3) < 1e-4
    assert abs(out["asr"] - 200 / 3) < 1e-4 and abs(out["lcr"] - 100 / 3) < 1e-4
    m.reset()
    assert m.compute() == {}
