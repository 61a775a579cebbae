"""Does re-estimating BatchNorm statistics on the clean set alone cost ACC? (no mask or weight change)"""
import sys, copy, torch
from nftkit.experiment import prepare, build_victim
from nftkit.subspace import CleanBatches, recalibrate_norms
exp = prepare(sys.argv[1], sys.argv[2:])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
victim, attack, ptest, meta = build_victim(exp, splits, print)
dev = torch.device("cpu")
ev = lambda m: {k: round(v, 2) for k, v in exp.adapter.evaluate(m, splits.test, ptest, attack, dev).items()}
print("victim", ev(victim))
clean = splits.clean
def recal(kind, passes, batch=32):
    m = copy.deepcopy(victim)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats(); mod.momentum = None
    m.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(passes):
            perm = torch.randperm(len(clean), generator=g)
            for i in range(0, len(clean), batch):
                idx = perm[i:i + batch]
                x, y = exp.adapter.augment((clean.points[idx], clean.targets[idx]), kind, g)
                m(x)
    return ev(m)
print("recal none", recal("none", 1))
# the engine's re-estimate (purify's bn_recalibrate): exact moments of the whole clean set, in stored order
exact = copy.deepcopy(victim)
recalibrate_norms(exact, CleanBatches(exp.adapter, clean, list(range(len(clean))), 32, dev))
print("recal exact (nftkit)", ev(exact))
print("recal basic", recal("basic", 10))
print("recal mix", recal("mix", 10))
# the same on the poisoned training set (what the victim saw)
tr = attack.poison_train(splits.train, torch.Generator().manual_seed(exp.recipe.seed))
clean = tr
print("recal basic on full poisoned train", recal("basic", 1))
