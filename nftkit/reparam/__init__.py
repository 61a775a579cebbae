"""Re-parameterizations: wrappers that keep the original layer and fold back exactly."""
from .base import Reparameterized, fold_all, replace_module
from .neuron_mask import MaskRule, NeuronMask, PerturbedNeuronMask, mask_rule, register_mask_rule
from .spectral import SpectralShift

__all__ = ["MaskRule", "NeuronMask", "PerturbedNeuronMask", "Reparameterized", "SpectralShift", "fold_all",
           "mask_rule", "register_mask_rule", "replace_module"]
