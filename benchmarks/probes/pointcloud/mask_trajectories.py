"""Where do the NFT masks go, and how large are their gradients, under a given defense setting?"""
import sys, json, torch
from nftkit.experiment import prepare, build_victim
from nftkit.purify import purify
args = sys.argv[1:]; cut = args.index("--")
exp = prepare(args[0], args[1:cut])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
victim, attack, ptest, meta = build_victim(exp, splits, print)
dev = torch.device("cpu")
for s in args[cut + 1:]:
    cfg = dict(exp.sections["defense"].model_dump(exclude_unset=True))
    cfg.update({k: json.loads(v) for k, v in (kv.split("=", 1) for kv in s.split())})
    r = purify(victim, exp.adapter, splits.clean, config=cfg)
    print(s, {k: round(v, 2) for k, v in exp.adapter.evaluate(r.model, splits.test, ptest, attack, dev).items()})
    for k, v in r.masks.items():
        print(f"  {k:20s} min {v.min():.3f} mean {v.mean():.3f} frac<0.9 {(v < 0.9).float().mean():.2f}")
    h = r.history
    print("  task_loss", [round(x["task_loss"], 2) for x in h[::25]])
