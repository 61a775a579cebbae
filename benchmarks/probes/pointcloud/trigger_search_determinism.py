"""Is the 3DPC-BA trigger search the same in two processes? Prints the placed centre."""
import torch
from nftkit.experiment import prepare
exp = prepare("pointcloud/cgal_3dpcba", ["attack.surrogate_steps=20", "attack.search_steps=5", "attack.search_starts=2"])
splits = exp.adapter.load_data(exp.sections["data"], exp.recipe.seed)
from nftkit.attacks import ATTACKS
a = ATTACKS.get("pointcloud/3dpcba")(exp.sections["attack"], splits.info, exp.adapter)
a.poison_train(splits.train, torch.Generator().manual_seed(0))
print(a.info["3dpcba_centre"], a.info["3dpcba_surrogate_loss"])
