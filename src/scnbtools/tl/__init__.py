"""Tools: fit models to an AnnData and write the results back into it."""

from ._denoise import denoise
from ._fit import available_models, fit, fit_nbdm, fit_zinb
from ._glm import fit_glm, glm_test, predict, simulate
from ._zipo import fit_zipo, zipo_heldout_nll, zipo_prune, zipo_rate_mse, zipo_transform

__all__ = [
    "available_models",
    "denoise",
    "fit",
    "fit_glm",
    "fit_nbdm",
    "fit_zinb",
    "fit_zipo",
    "glm_test",
    "predict",
    "simulate",
    "zipo_heldout_nll",
    "zipo_prune",
    "zipo_rate_mse",
    "zipo_transform",
]
