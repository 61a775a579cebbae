"""Defense variants on a recipe's cached victim, through nftkit.purify  (docs/benchmarks.md)

Usage: [ADV_NORM=l2|linf ADV_R=0.3 ADV_LAM=1 ADV_K=1] python benchmarks/probes/defense_variants.py \
           image/fmnist_badnets "" '{"method": "fst", "steps": 2000}' '{"method": "ft_adv"}' ...

Each JSON argument is one purify() call. Besides the built-in methods it registers probe methods
nft_adv / ft_adv / fst_adv: the method plus adversarial unlearning, where a universal perturbation
of the first convolution's output (persistent across steps, ADV_K ascent steps per step, L2 or L-inf
budget ADV_R x the activation scale) is maximised and the loss on the perturbed batch (weight ADV_LAM)
is added. Research probe, not part of the package.
"""
import sys, time, json, os, torch
import nftkit
from nftkit.experiment import prepare, build_victim
from nftkit.methods.base import Method, register, METHODS
torch.set_num_threads(int(os.environ.get("THREADS", "2")))

NORM = os.environ.get("ADV_NORM", "linf"); R = float(os.environ.get("ADV_R", "1.0")); LAM = float(os.environ.get("ADV_LAM", "1.0")); K = int(os.environ.get("ADV_K", "1"))

def adv_step(ctx):
    s = ctx.setup
    if not hasattr(s, "adv"):
        first = next(m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d))
        s.adv = {"delta": None, "on": False}
        def hook(mod, inp, out):
            st = s.adv
            if st["delta"] is None:
                st["eps"] = R * out.detach().std()
                st["eps2"] = R * out.detach().flatten(1).norm(dim=1).mean()
                st["delta"] = torch.zeros_like(out[0])
            return out + st["delta"] if st["on"] else out
        first.register_forward_hook(hook)
        ctx.task_loss()
    st = s.adv
    st["on"] = True
    for _ in range(K):
        st["delta"].requires_grad_(True)
        g, = torch.autograd.grad(ctx.task_loss(), st["delta"])
        with torch.no_grad():
            if NORM == "l2":
                d = st["delta"] + st["eps2"] / 4 * g / (g.norm() + 1e-12)
                st["delta"] = d * torch.clamp(st["eps2"] / (d.norm() + 1e-12), max=1.0)
            else:
                st["delta"] = (st["delta"] + st["eps"] / 4 * g.sign()).clamp(-st["eps"], st["eps"])
    perturbed = ctx.task_loss()
    st["on"] = False
    loss, terms = ctx.objective()
    loss = loss + LAM * perturbed
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    return {"loss": loss, **terms, "perturbed": perturbed}

nft = METHODS.get("nft")
register(Method("nft_adv", "neuron_mask", "probe", defaults=dict(nft.defaults), regularizers=nft.regularizers, step=adv_step))
fst = METHODS.get("fst")
register(Method("fst_adv", "full", "probe", defaults=dict(fst.defaults), regularizers=fst.regularizers, prepare=fst.prepare, step=adv_step))
ft = METHODS.get("ft")
register(Method("ft_adv", "full", "probe", defaults=dict(ft.defaults), step=adv_step))

name = sys.argv[1]; overrides = sys.argv[2].split() if len(sys.argv) > 2 and sys.argv[2] else []
exp = prepare(name, overrides)
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
victim, attack, ptest, meta = build_victim(exp, splits, print)
dev = torch.device("cpu")
def ev(m): return exp.adapter.evaluate(m, splits.test, ptest, attack, dev)
print("before", ev(victim), flush=True)
for spec in sys.argv[3:]:
    kw = json.loads(spec)
    t = time.time()
    r = nftkit.purify(victim, exp.adapter, splits.clean, **kw)
    res = ev(r.model)
    nm = sum(int((v<0.5).sum()) for v in r.masks.values()) if r.masks else 0
    print(os.environ.get("ADV_R",""), os.environ.get("ADV_LAM",""), json.dumps(kw), {k: round(v, 2) for k, v in res.items()}, f"{time.time()-t:.0f}s", "masks<0.5:", nm, flush=True)
