"""nftkit: remove backdoors from trained neural networks with a small clean set."""
from .adapter import ADAPTERS, Adapter, Splits, register_adapter
from .attacks import ATTACKS, Attack
from .config import PurifyConfig
from .cpu_kernels import pin_portable_kernels
from .errors import ConfigError, DataError, ModelError, NftkitError
from .host_memory import keep_freed_memory
from .methods import METHODS, Method
from .purify import PurifyResult, purify, resolve_config

__version__ = "0.1.0"


def train(model, adapter, data, **overrides) -> PurifyResult:
    """Train all weights of ``model`` on ``data`` with the same loop (used to build victim models)."""
    return purify(model, adapter, data, method="train", **overrides)


__all__ = [
    "ADAPTERS", "ATTACKS", "Adapter", "Attack", "ConfigError", "DataError", "METHODS", "Method", "ModelError",
    "NftkitError", "PurifyConfig", "PurifyResult", "Splits", "keep_freed_memory", "pin_portable_kernels", "purify", "register_adapter", "resolve_config", "train",
]
