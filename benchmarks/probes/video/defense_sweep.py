"""Defense probe: build the recipe's victim (from nftkit's victim cache; the attack's surrogate cached beside it by this script),
then run several defense configs on it. Usage: dprobe.py "recipe overrides" "def1 k=v k=v" "def2 ..." ..."""
import sys, time, shlex, torch, hashlib, json
from nftkit.cache import cache_root
from nftkit.experiment import prepare, build_victim
from nftkit.purify import purify, resolve_config
import nftkit.adapters.video.attacks as va
from nftkit.recipe import parse_override
from nftkit.host_memory import keep_freed_memory

keep_freed_memory()

exp = prepare("video/atari_clb", shlex.split(sys.argv[1]))
s = exp.sections
orig = va.CleanLabelVideo._surrogate
def cached(self, train):
    key = hashlib.sha256(json.dumps([s["attack"].surrogate.model_dump(), s["model"].model_dump(), s["data"].model_dump()], sort_keys=True).encode()).hexdigest()[:10]
    path = cache_root() / f"probe-surrogate-{key}.pt"
    m = exp.adapter.build_model(s["model"])
    if path.exists():
        m.load_state_dict(torch.load(path, weights_only=True)); return m
    m = orig(self, train); torch.save(m.state_dict(), path); return m
va.CleanLabelVideo._surrogate = cached
splits = exp.adapter.load_data(s["data"], 0)
victim, attack, ptest, meta = build_victim(exp, splits, print)
dev = torch.device("cpu")
ev = lambda m: {k: round(float(v), 1) for k, v in exp.adapter.evaluate(m, splits.test, ptest, attack, dev).items()}
print("before", ev(victim), flush=True)
base = s["defense"].model_dump(exclude_unset=True)
for spec in sys.argv[2:]:
    user = dict(base)
    exp.adapter.mix = "mixup"
    for kv in shlex.split(spec):
        path, value = parse_override(kv)
        if path[0] == "adapter":
            setattr(exp.adapter, path[1], value)
        else:
            user[path[-1]] = value
    cfg = resolve_config(None, {**{"seed": 0, "device": "cpu"}, **user})
    t = time.time()
    r = purify(victim, exp.adapter, splits.clean, config=cfg)
    print(spec, "->", ev(r.model), f"{time.time() - t:.0f}s", flush=True)
