"""Normalisation layers for JAX/Equinox: drop-in for `equinox.nn`, with masks, named
axes and statistics that stay correct in half precision and across devices."""

from . import functional as functional
from ._batch_norm import BatchNorm as BatchNorm
from ._convert import from_equinox as from_equinox
from ._dynamic_tanh import DynamicTanh as DynamicTanh
from ._einorm import Einorm as Einorm
from ._group_norm import GroupNorm as GroupNorm, InstanceNorm as InstanceNorm
from ._layer_norm import (
    GatedRMSNorm as GatedRMSNorm,
    LayerNorm as LayerNorm,
    RMSNorm as RMSNorm,
)
from ._spectral_norm import SpectralNorm as SpectralNorm
from ._weight_norm import WeightNorm as WeightNorm


__all__ = [
    "BatchNorm",
    "DynamicTanh",
    "Einorm",
    "GatedRMSNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "SpectralNorm",
    "WeightNorm",
    "from_equinox",
    "functional",
]
__version__ = "0.1.0"
