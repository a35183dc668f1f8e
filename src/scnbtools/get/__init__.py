"""Read results back from an AnnData (the supported reading API)."""

from ._glm import glm_coef, glm_stats
from ._lognormal import W_compositional, correlation, gauge_diagnostics
from ._posterior import fit_result, posterior_df, posterior_samples
from ._zipo import zipo_gene_programs

__all__ = [
    "W_compositional",
    "correlation",
    "fit_result",
    "gauge_diagnostics",
    "glm_coef",
    "glm_stats",
    "posterior_df",
    "posterior_samples",
    "zipo_gene_programs",
]
