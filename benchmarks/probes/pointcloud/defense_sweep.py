"""Load a recipe's (cached) victim once, then purify it with several defense settings.
usage: sweep.py RECIPE [recipe overrides...] -- "defense.k=v defense.k2=v2" "..." """
import sys, time, json
import torch
from nftkit.experiment import prepare, build_victim
from nftkit.purify import purify
from nftkit.host_memory import keep_freed_memory

keep_freed_memory()

args = sys.argv[1:]
cut = args.index("--") if "--" in args else len(args)
name, overrides, settings = args[0], args[1:cut], args[cut + 1:]
exp = prepare(name, overrides)
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
t = time.time()
victim, attack, ptest, meta = build_victim(exp, splits, print)
print("victim", "cached" if meta.get("cached") else f"trained in {time.time()-t:.0f}s", meta.get("key"), flush=True)
dev = torch.device("cpu")
ev = lambda m: {k: round(v, 2) for k, v in exp.adapter.evaluate(m, splits.test, ptest, attack, dev).items()}
print("before", ev(victim), flush=True)
# how well the victim fits its own poisoned training clouds
g = torch.Generator().manual_seed(exp.recipe.seed)
train = attack.poison_train(splits.train, g)
idx = train.poisoned_indices
victim.eval()
with torch.no_grad():
    print("fit on poisoned train clouds:", (victim(train.points[idx]).argmax(1) == train.targets[idx]).float().mean().item())


def asr_by_class(model):
    model.eval()
    with torch.no_grad():
        pred = model(ptest.points).argmax(1)
    hits = pred == attack.target_for(ptest.targets)
    return {c: round(hits[ptest.targets == c].float().mean().item(), 2) for c in ptest.targets.unique().tolist()}


print("victim's ASR by true class", asr_by_class(victim), flush=True)
base = exp.sections["defense"].model_dump(exclude_unset=True)
data_cfg = exp.adapter.cfg
for s in settings:
    cfg = dict(base)
    exp.adapter.cfg = data_cfg  # 'data.' keys (the adapter's mixing) change only this setting's purification
    for kv in s.split():
        k, v = kv.split("=", 1)
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
        if k.startswith("data."):
            exp.adapter.cfg = exp.adapter.cfg.model_copy(update={k[5:]: v})
            continue
        k = k.removeprefix("defense.")
        if k == "method" and v != base.get("method"):
            cfg = {kk: vv for kk, vv in cfg.items() if kk in ("batch_size", "steps", "epochs")}
        cfg[k] = v
    t = time.time()
    r = purify(victim, exp.adapter, splits.clean, config=cfg)
    print(f"[{s}] after {ev(r.model)} in {time.time()-t:.0f}s; ASR by true class {asr_by_class(r.model)}", flush=True)
