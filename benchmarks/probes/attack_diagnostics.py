"""Does a trained image attack's trigger survive its own training?  (docs/zoo.md, session 6)

Usage: python benchmarks/probes/attack_diagnostics.py image/fmnist_issba [overrides ...]

Fits the recipe's attack on its training set (no victim) and reports, on 500 test images, the
trigger's mean L-inf and L2 size, the share of pixels it moves by more than 0.05, how alike the
triggers of different images are (mean pairwise cosine), and for ISSBA the decoder's bit accuracy.
With SURROGATE=1 and an all2one dynamic attack it also reports the jointly trained surrogate's own clean
accuracy, ASR and cross-trigger accuracy. Research probe.
"""
import os
import sys

import torch

import nftkit.adapters.image.zoo.dynamic as dynamic
from nftkit.attacks import ATTACKS
from nftkit.experiment import prepare

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
captured = {}
build_surrogate = dynamic.surrogate_model


def keep_surrogate(*args, **kwargs):
    captured["model"] = build_surrogate(*args, **kwargs)
    return captured["model"]


dynamic.surrogate_model = keep_surrogate
exp = prepare(sys.argv[1], sys.argv[2:])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
attack = ATTACKS.get(f"image/{exp.sections['attack'].name}")(exp.sections["attack"], splits.info, exp.adapter)
attack.poison_train(splits.train, torch.Generator().manual_seed(exp.recipe.seed))
x, y = splits.test.images[:500], splits.test.targets[:500]
delta = attack.apply(x) - x
unit = delta.flatten(1) / (delta.flatten(1).norm(dim=1, keepdim=True) + 1e-8)
print(f"L-inf {delta.abs().flatten(1).max(1).values.mean():.4f}  L2 {delta.flatten(1).norm(dim=1).mean():.3f}  "
      f"pixels moved > 0.05: {(delta.abs() > 0.05).float().mean():.4f}  "
      f"mean pairwise cosine {((unit @ unit.T).sum() - len(unit)) / (len(unit) * (len(unit) - 1)):.3f}")
if hasattr(attack, "bit_accuracy"):
    print(f"bit accuracy {attack.bit_accuracy(x):.3f}")
if os.environ.get("SURROGATE") and "model" in captured:
    model, keep = captured["model"].eval(), y != attack.cfg.target
    with torch.no_grad():
        print(f"surrogate: clean {(model(x).argmax(1) == y).float().mean():.3f}  "
              f"ASR {(model(attack.apply(x[keep])).argmax(1) == attack.cfg.target).float().mean():.3f}  "
              f"cross {(model(attack.apply(x[keep], x[keep].roll(1, 0))).argmax(1) == y[keep]).float().mean():.3f}")
