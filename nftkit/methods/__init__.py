"""Purification methods as small declarations on the one loop in :mod:`nftkit.purify`."""
from .base import METHODS, Method
from . import builtin, adversarial  # noqa: F401  registers the built-in methods

__all__ = ["METHODS", "Method"]
