"""Read GLM fits (``tl.fit_glm``) back as tables."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from .._design import coef_table, fit_family, fit_record, glm_stats_key

__all__ = ["glm_coef", "glm_stats"]

_STATS = ("coef", "se")


def glm_coef(
    adata: AnnData, *, key: str = "glm", param: str = "mean", stat: str = "coef"
) -> pd.DataFrame:
    """Coefficients of one parameter as a design-column × gene table.

    This is the layout of the regression simulator's ``params`` tables: one row per
    design column (``Intercept``, ``x1``, ``C(g)[T.b]``, ...), one column per gene.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`scnbtools.tl.fit_glm`.
    key
        ``key_added`` of the fit.
    param
        ``"mean"`` (log scale), ``"dispersion"`` (log NB size) or ``"zero_inflation"``
        (logit scale), as the family has them.
    stat
        ``"coef"`` (estimates) or ``"se"`` (standard errors).

    Returns
    -------
    DataFrame indexed by design column, with the genes as columns.
    """
    fit_family(fit_record(adata, key), param)
    if stat not in _STATS:
        raise ValueError(f"`stat`={stat!r} is not one of {', '.join(map(repr, _STATS))}.")
    df = coef_table(adata, key, param, stat).T.copy()
    df.index.name = param
    return df


def glm_stats(adata: AnnData, *, key: str = "glm") -> pd.DataFrame:
    """Per-gene fit statistics: ``loglik``, ``aic``, ``bic``, ``n_iter``, ``converged``, ``status``.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`scnbtools.tl.fit_glm`.
    key
        ``key_added`` of the fit.

    Returns
    -------
    DataFrame indexed like ``adata.var``.
    """
    fit_record(adata, key)
    k = glm_stats_key(key)
    if k not in adata.varm:
        raise KeyError(f"`adata.varm[{k!r}]` is missing; refit with key_added={key!r}.")
    return pd.DataFrame(adata.varm[k]).copy()
