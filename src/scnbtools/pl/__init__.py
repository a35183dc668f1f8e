"""Plots that read only what ``tl`` wrote; they never fit and never mutate."""

from ._compare import model_comparison
from ._glm import glm_coef, mean_variance, simulation_check
from ._nb import capture, loss, mixture_composition, ppc
from ._zipo import zipo_sparsity, zipo_training

__all__ = [
    "capture",
    "glm_coef",
    "loss",
    "mean_variance",
    "mixture_composition",
    "model_comparison",
    "ppc",
    "simulation_check",
    "zipo_sparsity",
    "zipo_training",
]
