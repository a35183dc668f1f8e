"""Tools: fit models to an AnnData and write the results back into it."""

from ._compare import compare_models
from ._denoise import denoise
from ._fit import available_models, fit, fit_nbdm, fit_nbvcp, fit_zinb, fit_zinbvcp
from ._glm import fit_glm, glm_test, predict, simulate
from ._lognormal import fit_nbln, fit_pln
from ._nb_denoise import normalize
from ._zipo import fit_zipo, zipo_heldout_nll, zipo_prune, zipo_rate_mse, zipo_transform

__all__ = [
    "available_models",
    "compare_models",
    "denoise",
    "fit",
    "fit_glm",
    "fit_nbdm",
    "fit_nbln",
    "fit_nbvcp",
    "fit_pln",
    "fit_zinb",
    "fit_zinbvcp",
    "fit_zipo",
    "glm_test",
    "normalize",
    "predict",
    "simulate",
    "zipo_heldout_nll",
    "zipo_prune",
    "zipo_rate_mse",
    "zipo_transform",
]
