"""Re-parameterizations: wrappers that keep the original layer and fold back exactly."""
from .base import Reparameterized, fold_all, replace_module
from .neuron_mask import MaskRule, NeuronMask, mask_rule, register_mask_rule

__all__ = ["MaskRule", "NeuronMask", "Reparameterized", "fold_all", "mask_rule", "register_mask_rule", "replace_module"]
