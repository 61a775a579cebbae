"""The ASR a recipe's trigger scores on a model trained without poison, for every choice of target class:
the floor that no defense can go under. Pick a target whose floor is low.
usage: natural_asr.py RECIPE [recipe overrides...]   (the recipe's attack, attack.poison_rate forced to 0)"""
import sys
import torch
from nftkit.experiment import prepare, build_victim

exp = prepare(sys.argv[1], sys.argv[2:] + ["attack.poison_rate=0"])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
clean_model, attack, _, _ = build_victim(exp, splits, print)
clean_model.eval()
test = splits.test
with torch.no_grad():
    triggered = attack.apply(test.points, torch.Generator().manual_seed(1))
    pred = clean_model(triggered).argmax(1)
    print("clean model, ACC on untouched test clouds:", round(100 * (clean_model(test.points).argmax(1) == test.targets).float().mean().item(), 2))
for target in test.targets.unique().tolist():
    others = test.targets != target
    print(f"target {target}: {100 * (pred[others] == target).float().mean().item():.2f}% of the other classes' triggered clouds")
