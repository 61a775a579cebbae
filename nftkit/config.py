"""Typed configuration of one purification run. Unknown keys are errors."""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


# marks a data or model key that only the defense reads (its mixing augmentation, its loss): a victim
# trained without mixing does not depend on it, so changing it must not retrain (or miss the cache of) the
# victim. A victim that mixes keeps all of them in its key (mixing keys matter to it; the others are harmless)
DEFENSE_ONLY = {"defense_only": True}


def victim_dump(cfg: BaseModel, mixing: bool) -> dict[str, Any]:
    """``cfg`` as the victim depends on it: without DEFENSE_ONLY keys unless the victim mixes too."""
    fields = type(cfg).model_fields
    drop = set() if mixing else {n for n, f in fields.items() if isinstance(f.json_schema_extra, dict)
                                   and f.json_schema_extra.get("defense_only")}
    return cfg.model_dump(exclude=drop)


class StrictModel(BaseModel):
    """Base of every config: unknown keys and wrong types are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Placement = Literal["bn_gamma", "bn_output", "weight_rows"]
ScheduleShape = Literal["exponential", "linear", "cosine", "log", "cubic", "constant", "none"]


class PurifyConfig(StrictModel):
    """Every knob of :func:`nftkit.purify`. Method-specific defaults are filled in by the method."""

    method: str = "nft"
    # length: steps, or epochs over the data (epochs * len(data) / batch_size steps); steps wins if both are set
    steps: Optional[int] = Field(default=None, ge=0)  # 0: only the projection (clean_subspace)
    epochs: Optional[float] = Field(default=None, gt=0)
    batch_size: int = Field(default=128, ge=1)
    # optimiser
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw (with warmup) trains transformers that SGD cannot
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.95, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    lr_min: float = Field(default=0.02, ge=0)  # cosine floor; an lr below it stays constant instead of rising
    lr_step_every: float = Field(default=0.4, gt=0, le=1)  # fraction of training between decays
    lr_step_gamma: float = Field(default=0.1, gt=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)  # linear ramp from 0 to the scheduled lr
    max_grad_norm: Optional[float] = Field(default=None, gt=0)  # clip the tunables' gradient norm before each step
    # neural masks
    placement: Placement = "bn_gamma"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    mask_classifier: bool = False
    # layers (name patterns) whose input features get one mask each as well: a trigger confined to one
    # region of a feature map shares its channels with clean content, but not its flattened features
    input_masks: list[str] = Field(default_factory=list)
    schedule: ScheduleShape = "exponential"
    alpha: float = Field(default=0.8, ge=0, le=1)
    beta: float = Field(default=0.5, ge=0)
    # L1 drift regulariser: eta_c = eta_c_base / n_c unless eta_c is given
    eta_c: Optional[float] = Field(default=None, ge=0)
    eta_c_base: float = Field(default=5e-4, ge=0)
    # weight of a pull of every mask towards its lower bound (0: off), for neurons clean data never drives
    mask_sparsity: float = Field(default=0.0, ge=0)
    mask_sparsity_inputs_only: bool = False  # the pull acts on the input_masks alone
    # SFT: eta_F * Tr(F) every fisher_every steps + (eta_r / 2) * Fisher-weighted drift
    eta_f: float = Field(default=1e-3, ge=0)
    eta_r: float = Field(default=5.0, ge=0)
    fisher_every: int = Field(default=10, ge=1)
    # FT-SAM: neighbourhood radius
    sam_rho: float = Field(default=0.05, gt=0)
    # ANP: neuron noise bound, loss trade-off, ascent steps, pruning threshold
    anp_eps: float = Field(default=0.4, ge=0)
    anp_alpha: float = Field(default=0.2, ge=0, le=1)
    anp_steps: int = Field(default=1, ge=0)
    anp_threshold: float = Field(default=0.2, ge=0, le=1)
    # adv_unlearn: the universal perturbation's L2 radius as a share of the mean input norm at the first
    # layer, its ascent steps per training step, and the weight of the perturbed batch's loss
    uap_radius: float = Field(default=0.1, gt=0)
    uap_steps: int = Field(default=1, ge=1)
    uap_weight: float = Field(default=1.0, ge=0)
    # any method: weight and temperature of a distillation term that keeps the outputs on each clean batch
    # near the input model's (clean inputs are where a backdoored model is still right); 0 turns it off
    distill_weight: float = Field(default=0.0, ge=0)
    distill_temperature: float = Field(default=2.0, gt=0)
    # FST: weight of the penalty on alignment between the new and the original head
    fst_alpha: float = Field(default=0.2, ge=0)
    # clean-subspace projection before the method (nftkit.subspace): subspace_energy is the share of each
    # layer's clean input energy kept (None: the most aggressive share that loses at most subspace_budget
    # points of cross-validated clean accuracy)
    project_first: bool = False
    # the same projection after the method, on its folded model, with the same subspace_* settings: a method
    # that changes the model (NFT) moves what the projection would cut (docs/zoo.md, sessions 20-21)
    project_after: bool = False
    subspace_energy: Optional[float] = Field(default=None, gt=0, le=1)
    subspace_budget: float = Field(default=2.0, ge=0, le=100)
    subspace_folds: int = Field(default=5, ge=2)  # cross-validation folds of the clean set that check the budget
    # a share passes when its held-out drop plus this many standard errors is within the budget (0: the drop alone)
    subspace_confidence: float = Field(default=0.5, ge=0)
    # None: the whole clean set in one batch (one forward pass per projection); a size, for clean sets
    # too large for memory at once (one pass per layer)
    subspace_batch_size: Optional[int] = Field(default=None, ge=1)
    subspace_recalibrate: bool = True  # re-estimate BatchNorm statistics on the clean set after projecting
    # data
    augment: Literal["mix", "basic", "none"] = "mix"
    bn_mode: Literal["train", "eval"] = "train"
    # after training, re-estimate BatchNorm running statistics on the clean set without augmentation:
    # in train mode they follow the MixUp batches, whose statistics are not those of real inputs
    bn_recalibrate: bool = False
    num_workers: int = Field(default=0, ge=0)
    # run
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    checkpoint_every: int = Field(default=100, ge=0)  # steps between saved run states when a checkpoint file is given (0: only on Ctrl-C)

    def total_steps(self, n_samples: int) -> int:
        if self.steps is not None:
            return self.steps
        epochs = self.epochs if self.epochs is not None else 1.0
        return max(1, math.ceil(epochs * n_samples / self.batch_size))


def validation_message(err: ValidationError, where: str = "") -> str:
    """One line per problem: the key path, what is wrong, how to fix it."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        key = f"{where}.{loc}" if where and loc else (where or loc)
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}' (remove it or fix its spelling)")
        elif e["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            got = e.get("input")
            shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
            parts.append(f"bad value for '{key}'{shown}: {e['msg']}" if key else e["msg"])
    return "; ".join(parts)


def validate(model_cls: type[StrictModel], data: Any, where: str = "") -> Any:
    """Build ``model_cls`` from ``data`` or raise one clear ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or model_cls.__name__}' must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, where)) from None
