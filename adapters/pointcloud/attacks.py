"""Point-cloud backdoor attacks: PointBA-I, PointBA-O and the clean-label PointCBA (Li et al., ICCV 2021),
and 3DPC-BA (Xiang et al., ICCV 2021). Clouds are unit-sphere normalised, y up."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nftkit.attacks import ATTACKS
from nftkit.errors import ConfigError

from ..classification import LabelAttack, LabelAttackConfig
from .augment import ball_points, insert_cluster
from .data import PointCloudDataset, rotation


PointAttackConfig = LabelAttackConfig


class PointAttack(LabelAttack):
    """Poison-label: ``poison_rate`` of the training clouds get the trigger and the target label."""

    def apply(self, points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The trigger applied to clouds (B, N, 3)."""
        raise NotImplementedError

    def poison_train(self, train: PointCloudDataset, generator: torch.Generator) -> PointCloudDataset:
        chosen = self._choose(train.targets, generator)
        points, labels = train.points.clone(), train.targets.clone()
        points[chosen] = self.apply(points[chosen], generator)
        labels[chosen] = self.target_for(labels[chosen])
        poisoned = PointCloudDataset(points, labels)
        poisoned.poisoned_indices = chosen
        return poisoned

    def poison_test(self, test: PointCloudDataset) -> PointCloudDataset:
        keep = self._candidates(test.targets)
        g = torch.Generator().manual_seed(self.cfg.trigger_seed + 1)
        return PointCloudDataset(self.apply(test.points[keep], g), test.targets[keep])


@ATTACKS.register("pointcloud/pointba_i")
class PointBAI(PointAttack):
    """Interaction trigger: a small ball of points at a fixed position beside the object."""

    class Config(PointAttackConfig):
        n_points: int = Field(default=32, ge=1)
        radius: float = Field(default=0.05, gt=0)
        # outside the unit sphere that normalised clouds fill, where clean points rarely are
        centre: tuple[float, float, float] = (0.6, 0.6, 0.6)

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.cluster = ball_points(cfg.n_points, cfg.radius, self._seeded()) + torch.tensor(cfg.centre)

    def apply(self, points, generator):
        return insert_cluster(points, self.cluster, generator)


@ATTACKS.register("pointcloud/pointba_o")
class PointBAO(PointAttack):
    """Orientation trigger: the whole cloud rotated by a fixed angle about a fixed axis. Keep the axis
    off the up axis: 'basic' augmentation rotates about it and would erase the trigger."""

    class Config(PointAttackConfig):
        axis: Literal["x", "y", "z"] = "x"
        degrees: float = Field(default=45.0, gt=-360, lt=360)

    def apply(self, points, generator):
        return points @ rotation(self.cfg.axis, self.cfg.degrees).T.to(points)


class SurrogateConfig(PointAttackConfig):
    surrogate_arch: str = "pointnet"
    surrogate_width: float = Field(default=0.25, gt=0)
    surrogate_steps: int = Field(default=200, ge=1)
    surrogate_lr: float = Field(default=0.05, gt=0)
    device: str = "cpu"  # where the surrogate trains and the attacker's optimisation runs


class SurrogateAttack(PointAttack):
    """An attack that shapes its poison against a classifier the attacker trains on the clean training set."""

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        if adapter is None:
            raise ConfigError(f"the {cfg.name} attack trains a surrogate model and needs the adapter (run it from a recipe)")

    def train_surrogate(self, train: PointCloudDataset, generator: torch.Generator) -> torch.nn.Module:
        import nftkit

        cfg = self.cfg
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        # the initial weights come from the global RNG: seed it, or every run shapes a different poison and
        # a cached victim meets a test trigger it was never trained on
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            untrained = self.adapter.build_model(self.adapter.ModelConfig(arch=cfg.surrogate_arch, width=cfg.surrogate_width))
        surrogate = nftkit.train(untrained, self.adapter, train, steps=cfg.surrogate_steps,
                                 lr=cfg.surrogate_lr, batch_size=32, seed=seed, device=cfg.device).model.eval()
        for p in surrogate.parameters():
            p.requires_grad_(False)
        return surrogate


@ATTACKS.register("pointcloud/3dpcba")
class BackdoorPoints3D(SurrogateAttack):
    """Backdoor points (Xiang et al., 2021): a cluster whose position is optimised so that a surrogate
    classifier, trained by the attacker on clean data, already leans to the target class when the
    cluster is inserted; the poisoned samples then teach the victim that association quickly."""

    class Config(SurrogateConfig):
        n_points: int = Field(default=32, ge=1)
        radius: float = Field(default=0.05, gt=0)
        max_norm: float = Field(default=1.2, gt=0)  # the cluster centre stays near the object
        search_steps: int = Field(default=100, ge=1)
        search_starts: int = Field(default=8, ge=1)
        search_candidates: int = Field(default=8, ge=1)  # places scored per start; the best become the starts
        search_batch: int = Field(default=64, ge=1)

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.shape = ball_points(cfg.n_points, cfg.radius, self._seeded())
        self.cluster = None

    def apply(self, points, generator):
        if self.cluster is None:
            raise RuntimeError("poison_train must run first: it places the backdoor points")
        return insert_cluster(points, self.cluster, generator)

    def placement(self):
        return None if self.cluster is None else [round(v, 4) for v in self.cluster.mean(0).tolist()]

    def poison_train(self, train, generator):
        self.cluster = self.shape + self._search(train, generator)
        self.info["3dpcba_centre"] = self.cluster.mean(0).tolist()
        return super().poison_train(train, generator)

    def _search(self, train: PointCloudDataset, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        surrogate = self.train_surrogate(train, generator)
        pool = self._candidates(train.targets)
        pick = pool[torch.randperm(len(pool), generator=generator)[: cfg.search_batch]]
        clouds = train.points[pick].to(cfg.device)
        target = self.target_for(train.targets[pick]).to(cfg.device)
        shape = self.shape.to(cfg.device)
        # the objective is not convex in the centre: start from the best of many places on a sphere around
        # the object (gradient steps from a few random starts can all sink into the object, where a cluster
        # is just more object)
        candidates = F.normalize(torch.randn(cfg.search_candidates * cfg.search_starts, 3, generator=generator), dim=-1).to(cfg.device) * cfg.max_norm
        with torch.no_grad():
            losses = torch.stack([F.cross_entropy(surrogate(insert_cluster(clouds, shape + c, generator)), target)
                                  for c in candidates])
        starts = candidates[losses.argsort()[: cfg.search_starts]]
        best, best_loss = starts[0], math.inf
        for start in starts:
            centre = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([centre], lr=0.05)
            for _ in range(cfg.search_steps):
                loss = F.cross_entropy(surrogate(insert_cluster(clouds, shape + centre, generator)), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    centre.mul_((cfg.max_norm / centre.norm().clamp_min(1e-9)).clamp(max=1.0))
            with torch.no_grad():
                final = F.cross_entropy(surrogate(insert_cluster(clouds, shape + centre, generator)), target).item()
            if final < best_loss:
                best, best_loss = centre.detach().clone(), final
        self.info["3dpcba_surrogate_loss"] = best_loss
        return best.cpu()


@ATTACKS.register("pointcloud/pointcba")
class PointCBA(SurrogateAttack):
    """Clean-label (PointCBA): only target-class training clouds are poisoned, and they keep their label.
    Each is first displaced point by point, within ``eps`` per coordinate, until the attacker's surrogate
    sees in it (trigger on) the features of a cloud of another class (trigger on too): with its own
    evidence taken away, the victim can only fit it through the trigger. Test clouds of the other classes
    get the trigger alone. The trigger is PointBA-I's ball or PointBA-O's rotation."""

    class Config(SurrogateConfig):
        mode: Literal["all2one"] = "all2one"
        poison_rate: float = Field(default=0.8, ge=0, le=1)  # share of the target class's training clouds
        trigger: Literal["ball", "rotation"] = "ball"
        n_points: int = Field(default=32, ge=1)
        radius: float = Field(default=0.05, gt=0)
        centre: tuple[float, float, float] = (0.6, 0.6, 0.6)
        axis: Literal["x", "y", "z"] = "x"
        degrees: float = Field(default=45.0, gt=-360, lt=360)
        eps: float = Field(default=0.05, ge=0)
        pgd_steps: int = Field(default=50, ge=0)
        pgd_batch: int = Field(default=64, ge=1)  # clouds per step of the displacement search

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        self.cluster = ball_points(cfg.n_points, cfg.radius, self._seeded()) + torch.tensor(cfg.centre)

    def apply(self, points, generator):
        if self.cfg.trigger == "rotation":
            return points @ rotation(self.cfg.axis, self.cfg.degrees).T.to(points)
        return insert_cluster(points, self.cluster, generator)

    def poison_train(self, train, generator):
        cfg = self.cfg
        in_target = (train.targets == cfg.target).nonzero().flatten()
        chosen = in_target[torch.randperm(len(in_target), generator=generator)[:round(cfg.poison_rate * len(in_target))]]
        others = (train.targets != cfg.target).nonzero().flatten()
        points = train.points.clone()
        search = cfg.eps > 0 and cfg.pgd_steps > 0 and len(chosen) > 0 and len(others) > 0
        partners = others[torch.randint(len(others), (len(chosen),), generator=generator)] if search else None
        surrogate = self.train_surrogate(train, generator) if search else None
        # the trigger replaces random points: one seed per slice, so the search sees the cloud it writes
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        for start in range(0, len(chosen), cfg.pgd_batch):
            rows = chosen[start:start + cfg.pgd_batch]
            hard = points[rows]
            if search:
                hard = self._disentangle(surrogate, hard, train.points[partners[start:start + cfg.pgd_batch]], seed + start)
            points[rows] = self.apply(hard, torch.Generator().manual_seed(seed + start))
        poisoned = PointCloudDataset(points, train.targets.clone())
        poisoned.poisoned_indices = chosen
        return poisoned

    def _disentangle(self, surrogate, clouds: torch.Tensor, partners: torch.Tensor, seed: int) -> torch.Tensor:
        """Sign-gradient steps on a per-point displacement that pull the surrogate's head input for the
        triggered cloud onto that of its triggered partner."""
        cfg = self.cfg
        head = getattr(surrogate, "head", None)
        if not isinstance(head, torch.nn.Module):
            raise ConfigError(f"pointcba reads the surrogate's features at its 'head' module; "
                              f"surrogate_arch={cfg.surrogate_arch!r} has none (use pointnet or pointnet2_*)")
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
        try:
            clouds, partners = clouds.to(cfg.device), partners.to(cfg.device)
            with torch.no_grad():
                surrogate(self.apply(partners, torch.Generator().manual_seed(seed)))
            goal = seen.pop()
            step = 2.5 * cfg.eps / cfg.pgd_steps
            shift = torch.zeros_like(clouds)
            for _ in range(cfg.pgd_steps):
                shift.requires_grad_(True)
                surrogate(self.apply(clouds + shift, torch.Generator().manual_seed(seed)))
                (grad,) = torch.autograd.grad((seen.pop() - goal).square().sum(), shift)
                with torch.no_grad():
                    shift = (shift - step * grad.sign()).clamp(-cfg.eps, cfg.eps)
        finally:
            hook.remove()
        return (clouds + shift).detach().cpu()
