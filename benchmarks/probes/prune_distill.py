"""Dormant-input pruning of the head, then recovery by distilling the unpruned model  (docs/benchmarks.md)

Usage: FRACS=0.6,0.7 STEPS=500 python benchmarks/probes/prune_distill.py image/fmnist_badnets [overrides ...]

Trigger-free: ranks the inputs of the first dense layer by their variance on the clean set, prunes the
lowest fraction (weight columns zeroed, clean mean folded into the bias), then fine-tunes every weight
on the clean set against the victim's own soft predictions (KL at temperature T, MixUp images), with
the pruned columns held at zero. A backdoor pathway that is silent on clean data is cut by the pruning
and not relearnt, because the teacher's clean outputs never ask for it. Research probe.
"""
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import nftkit
from nftkit.experiment import build_victim, prepare
from nftkit.methods.base import METHODS, Method, register

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
T = float(os.environ.get("T", "4"))
exp = prepare(sys.argv[1], sys.argv[2:])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
victim, attack, poisoned, _ = build_victim(exp, splits, lambda *a: None)
victim.eval()
cpu = torch.device("cpu")


def measure(model):
    return {k: round(v, 2) for k, v in exp.adapter.evaluate(model, splits.test, poisoned, attack, cpu).items()}


def head_of(model):
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


seen = {}
handle = head_of(victim).register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
with torch.no_grad():
    victim(torch.stack([splits.clean[i][0] for i in range(len(splits.clean))]))
handle.remove()
clean = seen["x"]
mean, std = clean.mean(0), clean.std(0)


def distill_step(ctx):
    s = ctx.setup
    images = ctx.batch[0]
    with torch.no_grad():
        teacher = victim(images)
    student = s.adapter.forward(s.model, ctx.batch)
    loss = T * T * F.kl_div(F.log_softmax(student / T, 1), F.log_softmax(teacher / T, 1), log_target=True,
                            reduction="batchmean")
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    return {"loss": loss}


register(Method("ft_kd", "full", "probe: distil the victim", defaults=dict(METHODS.get("ft").defaults), step=distill_step))
print("victim", measure(victim), flush=True)
for frac in [float(f) for f in os.environ.get("FRACS", "0.6,0.7").split(",")]:
    model = copy.deepcopy(victim)
    layer = head_of(model)
    cols = std.argsort()[: int(frac * len(std))]
    with torch.no_grad():
        layer.bias += layer.weight[:, cols] @ mean[cols]
        layer.weight[:, cols] = 0
    print(f"prune {frac:.0%}", measure(model), flush=True)
    keep = torch.ones_like(layer.weight)
    keep[:, cols] = 0
    layer.weight.register_hook(lambda g, keep=keep: g * keep)  # pruned columns get no update

    def zero_cols(step, m, cols=cols):
        with torch.no_grad():
            head_of(m).weight[:, cols] = 0

    for kw in [dict(method="ft_kd", lr=0.01, augment=os.environ.get("AUG", "mix"), steps=int(os.environ.get("STEPS", "500")))]:
        result = nftkit.purify(model, exp.adapter, splits.clean, on_step=zero_cols, **kw)
        print(f"prune {frac:.0%} + {kw}", measure(result.model), f"{result.runtime_s:.0f}s", flush=True)
