"""Where does a backdoor live in the head, and can clean data alone find it?  (docs/benchmarks.md)

Usage: [THEN_NFT=1] python benchmarks/probes/head_pathway.py image/fmnist_badnets [recipe overrides ...]

On the recipe's cached victim, looks at the input features of the first dense layer of the head:
1. oracle: the features the trigger shifts most (found WITH triggered test images) and what pruning
   them does (weight columns zeroed, their clean mean folded into the bias, so a plain model remains);
2. where those features rank under trigger-free scores computed on the clean set only (clean variance,
   first-order Taylor importance, weight-column norm);
3. universal adversarial perturbations (L2 budget R x mean image norm, 100 steps on the clean set):
   untargeted, and targeted to each class, and how many oracle features they move most.
Research probe, not part of the package.
"""
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from nftkit.experiment import build_victim, prepare

torch.set_num_threads(2)
exp = prepare(sys.argv[1], sys.argv[2:])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
victim, attack, poisoned, _ = build_victim(exp, splits, lambda *a: None)
victim.eval()
for p in victim.parameters():
    p.requires_grad_(False)
cpu = torch.device("cpu")
head = next(m for m in victim.modules() if isinstance(m, nn.Linear))
seen = {}
head.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))


def measure(model):
    return {k: round(v, 2) for k, v in exp.adapter.evaluate(model, splits.test, poisoned, attack, cpu).items()}


def features(images):
    victim(images)
    return seen["x"]


def prune(columns, clean_mean):
    model = copy.deepcopy(victim)
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        layer.bias += layer.weight[:, columns] @ clean_mean[columns]
        layer.weight[:, columns] = 0
    return measure(model)


xs = torch.stack([splits.clean[i][0] for i in range(len(splits.clean))])
ys = torch.tensor([splits.clean[i][1] for i in range(len(splits.clean))])
n = min(600, len(poisoned))
with torch.no_grad():
    shift = (features(torch.stack([poisoned[i][0] for i in range(n)]))
             - features(torch.stack([splits.test[i][0] for i in range(n)]))).mean(0)
    clean = features(xs)
mean, std = clean.mean(0), clean.std(0) + 1e-3
oracle = shift.abs().argsort(descending=True)
print("victim", measure(victim))
print(f"head input: {clean.shape[1]} features; trigger shift of the top 5: "
      f"{[round(float(shift[i] / std[i]), 1) for i in oracle[:5]]} clean standard deviations")
for k in (8, 16, 32, 64):
    print(f"oracle: prune the {k} features the trigger moves most ->", prune(oracle[:k], mean))

# first-order importance |x * dL/dx| of each head input feature on the clean set
def retain(module, inputs):
    inputs[0].requires_grad_(True).retain_grad()


handle = head.register_forward_pre_hook(retain)
with torch.enable_grad():
    F.cross_entropy(victim(xs), ys).backward()
handle.remove()
taylor = (seen["x"] * seen["x"].grad).abs().mean(0)
scores = {"clean variance": std, "Taylor importance": taylor, "weight-column norm": head.weight.norm(dim=0)}
for name, score in scores.items():
    ranks = score.argsort().argsort()
    print(f"rank of the 16 oracle features by {name} (0 = lowest of {len(score)}):", ranks[oracle[:16]].tolist())
for frac in (0.3, 0.5, 0.7):
    k = int(frac * len(std))
    print(f"prune the {int(frac * 100)}% lowest clean-variance features ->", prune(std.argsort()[:k], mean))
    print(f"prune the {int(frac * 100)}% least Taylor-important features ->", prune(taylor.argsort()[:k], mean))

norm = head.weight.norm(dim=0)
outliers = ((norm - norm.mean()) / norm.std() > 2).nonzero().flatten()
print(f"prune the {len(outliers)} weight-column norm outliers (z > 2; {len(set(outliers.tolist()) & set(oracle[:16].tolist()))} "
      "of them oracle features) ->", prune(outliers, mean))
if os.environ.get("THEN_NFT"):  # slow: prune the lowest-variance fraction, then NFT for 1000 steps
    import nftkit

    for frac in (0.6, 0.7):
        model = copy.deepcopy(victim)
        layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
        cols = std.argsort()[: int(frac * len(std))]
        with torch.no_grad():
            layer.bias += layer.weight[:, cols] @ mean[cols]
            layer.weight[:, cols] = 0
        purified = nftkit.purify(model, exp.adapter, splits.clean, method="nft").model
        print(f"prune the {int(frac * 100)}% lowest clean-variance features, then NFT ->", measure(purified))

top16 = set(oracle[:16].tolist())


def universal(budget, target=None):
    delta = torch.zeros_like(xs[0], requires_grad=True)
    labels = ys if target is None else torch.full_like(ys, target)
    sign = 1.0 if target is None else -1.0
    for _ in range(100):
        g, = torch.autograd.grad(F.cross_entropy(victim((xs + delta).clamp(0, 1)), labels), delta)
        with torch.no_grad():
            delta += sign * budget / 10 * g / (g.norm() + 1e-12)
            delta *= torch.clamp(budget / (delta.norm() + 1e-12), max=1.0)
    with torch.no_grad():
        pred = victim((xs + delta).clamp(0, 1)).argmax(1)
        moved = ((seen["x"] - clean).mean(0) / std).abs().argsort(descending=True)[:16]
    return pred, len(top16 & set(moved.tolist()))


for R in (0.1, 0.2, 0.3):
    budget = R * xs.flatten(1).norm(dim=1).mean()
    pred, overlap = universal(budget)
    print(f"untargeted UAP R={R}: predictions per class {torch.bincount(pred, minlength=10).tolist()}, "
          f"oracle features among the 16 it moves most: {overlap}")
for R in (0.1, 0.2):
    budget = R * xs.flatten(1).norm(dim=1).mean()
    rows = []
    for t in range(int(ys.max()) + 1):
        pred, overlap = universal(budget, t)
        rows.append(f"{t}: {float((pred == t).float().mean()) * 100:.0f}% / {overlap}")
    print(f"targeted UAP R={R} (class: success / oracle overlap):", ", ".join(rows))
