"""Project every layer's weights onto the subspace its clean inputs span  (docs/benchmarks.md)

Usage: TAUS=0.99,0.97 SCOPES=linear,all VARIANTS=0:0,1:1 RECOVER=kd:300:0.01,ce:300:0.01 \
       python benchmarks/probes/clean_subspace.py image/fmnist_badnets [overrides ...]

The exploration behind `method: clean_subspace` (nftkit/subspace.py), at fixed energy shares TAU:
for each Linear (input vectors) and, with SCOPES=all, each Conv2d (input patches), the uncentred
second moment of its inputs on the clean set is eigen-decomposed and the weight replaced by W P, P the
projector onto the leading eigenvectors holding a share TAU of the energy. VARIANTS=seq:recal: 1:x
recomputes each layer's statistics after its predecessors are projected, x:1 re-estimates BatchNorm
statistics afterwards. RECOVER=kind:steps:lr fine-tunes every weight afterwards on clean MixUp batches
(kd: KL to the victim at T 4; ce: the labels), re-projecting the weights after each step.
Research probe.
"""
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from nftkit.experiment import build_victim, prepare

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
exp = prepare(sys.argv[1], sys.argv[2:])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
victim, attack, poisoned, _ = build_victim(exp, splits, lambda *a: None)
victim.eval()
cpu = torch.device("cpu")
xs = torch.stack([splits.clean[i][0] for i in range(len(splits.clean))])


def measure(model):
    return {k: round(v, 2) for k, v in exp.adapter.evaluate(model, splits.test, poisoned, attack, cpu).items()}


def input_rows(module, x):
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def second_moments(model, scope):
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, nn.Linear) or (scope == "all" and isinstance(m, nn.Conv2d) and m.groups == 1)}
    moments, hooks = {}, []
    for name, m in layers.items():
        def hook(mod, inp, out, name=name):
            rows = input_rows(mod, inp[0].detach()).double()
            moments[name] = moments.get(name, 0) + rows.T @ rows
        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for chunk in xs.split(200):
            model(chunk)
    for h in hooks:
        h.remove()
    return layers, moments


def recalibrate(model):
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the clean set
    model.train()
    with torch.no_grad():
        for chunk in xs.split(200):
            model(chunk)
    model.eval()


def project(scope, tau, sequential=False, recal=False):
    model = copy.deepcopy(victim)
    layers, moments = second_moments(model, scope)
    kept, bases = [], {}
    for name in layers:
        m = layers[name]
        if sequential:
            moments = second_moments(model, scope)[1]
        evals, evecs = torch.linalg.eigh(moments[name])
        evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
        share = evals.cumsum(0) / evals.sum()
        k = int((share < tau).sum()) + 1
        basis = evecs[:, :k]
        with torch.no_grad():
            w = m.weight.reshape(m.weight.shape[0], -1).double()
            m.weight.copy_((w @ basis @ basis.T).reshape(m.weight.shape).to(m.weight.dtype))
        kept.append(f"{name}:{k}/{len(evals)}")
        bases[name] = basis.float()
    if recal:
        recalibrate(model)
    return model, kept, bases


def reproject(model, bases):
    with torch.no_grad():
        for name, basis in bases.items():
            m = model.get_submodule(name)
            w = m.weight.reshape(m.weight.shape[0], -1)
            m.weight.copy_((w @ basis @ basis.T).reshape(m.weight.shape))


def recover(model, bases, steps, lr, loss_kind, T=4.0):
    """Fine-tune every weight on clean MixUp batches, weights re-projected after each step."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for step in range(steps):
        lr_now = lr * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())
        for grp in opt.param_groups:
            grp["lr"] = lr_now
        idx = torch.randint(len(splits.clean), (128,), generator=g).tolist()
        batch = exp.adapter.collate([splits.clean[i] for i in idx])
        batch = exp.adapter.augment(batch, "mix", g)
        if loss_kind == "kd":
            with torch.no_grad():
                teacher = victim(batch[0])
            student = exp.adapter.forward(model, batch)
            loss = T * T * F.kl_div(F.log_softmax(student / T, 1), F.log_softmax(teacher / T, 1), log_target=True,
                                    reduction="batchmean")
        else:
            loss = exp.adapter.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reproject(model, bases)
    model.eval()
    return model


print("victim", measure(victim), flush=True)
for scope in os.environ.get("SCOPES", "linear,all").split(","):
    for tau in [float(t) for t in os.environ.get("TAUS", "0.999,0.9999").split(",")]:
        for seq, recal in [(int(a), int(b)) for a, b in (v.split(":") for v in os.environ.get("VARIANTS", "0:0").split(","))]:
            model, kept, bases = project(scope, tau, seq, recal)
            print(f"scope={scope} tau={tau} sequential={seq} recal={recal}", measure(model), " ".join(kept), flush=True)
            for spec in filter(None, os.environ.get("RECOVER", "").split(",")):  # e.g. kd:300:0.01
                kind, steps, lr = spec.split(":")
                tuned = recover(copy.deepcopy(model), bases, int(steps), float(lr), kind)
                print(f"  + recover {spec}", measure(tuned), flush=True)
