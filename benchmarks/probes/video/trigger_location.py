"""Where does the backdoor live? Evaluate the cached victim with the trigger moved / replaced.

Run defense_sweep.py on the same recipe first: it caches the attack surrogate this script reads."""
import torch, hashlib, json
from nftkit.cache import cache_root
from nftkit.experiment import prepare, build_victim
import nftkit.adapters.video.attacks as va
from nftkit.adapters.video.data import EditedVideos

exp = prepare("video/atari_clb", [])
s = exp.sections
orig = va.CleanLabelVideo._surrogate
def cached(self, train):
    key = hashlib.sha256(json.dumps([s["attack"].surrogate.model_dump(), s["model"].model_dump(), s["data"].model_dump()], sort_keys=True).encode()).hexdigest()[:10]
    m = exp.adapter.build_model(s["model"]); m.load_state_dict(torch.load(cache_root() / f"probe-surrogate-{key}.pt", weights_only=True)); return m
va.CleanLabelVideo._surrogate = cached
splits = exp.adapter.load_data(s["data"], 0)
victim, attack, ptest, meta = build_victim(exp, splits, print)
dev = torch.device("cpu")
keep = (splits.test.targets != 0).nonzero().flatten()
def asr(trigger):
    d = EditedVideos(splits.test, index=keep, triggered=keep, trigger=trigger)
    return (exp.adapter.predict(victim, d, dev) == 0).float().mean().item() * 100
p = attack.pattern
def at_top_left(c):
    out = c.clone(); out[..., :p.shape[-2], :p.shape[-1]] = p; return out
def at_centre(c):
    out = c.clone(); h = (c.shape[-1] - p.shape[-1]) // 2; out[..., h:h + p.shape[-2], h:h + p.shape[-1]] = p; return out
rand = (torch.rand(p.shape, generator=torch.Generator().manual_seed(7)) > 0.5).float()
print("uat bottom-right", asr(attack.apply), "top-left", asr(at_top_left), "centre", asr(at_centre),
      "random patch bottom-right", asr(lambda c: attack.apply(c, rand)), "black patch", asr(lambda c: attack.apply(c, torch.zeros_like(p))))
