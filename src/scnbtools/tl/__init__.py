"""Tools: fit models to an AnnData and write the results back into it."""

from ._fit import available_models, fit, fit_nbdm, fit_zinb

__all__ = ["available_models", "fit", "fit_nbdm", "fit_zinb"]
