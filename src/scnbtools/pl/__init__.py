"""Plots that read only what ``tl`` wrote; they never fit and never mutate."""

from ._compare import model_comparison
from ._glm import glm_coef, mean_variance, simulation_check
from ._lognormal import compositional_corner, correlation_heatmap, loadings_spectrum
from ._nb import capture, loss, mixture_composition, ppc
from ._zipo import zipo_sparsity, zipo_training

__all__ = [
    "capture",
    "compositional_corner",
    "correlation_heatmap",
    "glm_coef",
    "loadings_spectrum",
    "loss",
    "mean_variance",
    "mixture_composition",
    "model_comparison",
    "ppc",
    "simulation_check",
    "zipo_sparsity",
    "zipo_training",
]
