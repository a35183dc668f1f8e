"""Plots that read only what ``tl`` wrote; they never fit and never mutate."""

from ._glm import glm_coef, mean_variance, simulation_check
from ._nb import loss, ppc
from ._zipo import zipo_sparsity, zipo_training

__all__ = [
    "glm_coef",
    "loss",
    "mean_variance",
    "ppc",
    "simulation_check",
    "zipo_sparsity",
    "zipo_training",
]
