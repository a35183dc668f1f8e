"""Raw-count checks and empty-gene / empty-cell filtering."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._logging import logger
from .._validate import check_adata, check_bool, counts_from

__all__ = ["check_counts", "filter_empty"]


def check_counts(adata: AnnData, *, layer: str | None = None) -> pd.Series:
    """Check that ``X`` (or ``layer``) holds raw counts and summarise it.

    Parameters
    ----------
    adata
        Cells × genes AnnData (or a view of one).
    layer
        Layer holding raw counts; ``None`` uses ``X``.

    Returns
    -------
    A Series with ``n_cells``, ``n_genes``, ``nonzero_fraction``, ``max_count``,
    ``n_zero_genes`` and ``n_zero_cells`` (all-zero genes and cells are reported, not
    rejected). Nothing is written to ``adata``.

    Raises
    ------
    ValueError
        Naming the matrix and the fix, for negative, non-integer, NaN or infinite values.
    """
    check_adata(adata, allow_view=True)  # read-only: a view is fine
    c = counts_from(adata, layer, allow_empty_genes=True, allow_empty_cells=True)
    X = c.X
    nnz = X.nnz if c.is_sparse else int(np.count_nonzero(X))
    mx = float(X.max()) if nnz else 0.0
    return pd.Series(
        {
            "n_cells": c.n_cells,
            "n_genes": c.n_genes,
            "nonzero_fraction": nnz / (c.n_cells * c.n_genes),
            "max_count": mx,
            "n_zero_genes": int(c.zero_genes().size),
            "n_zero_cells": int(c.zero_cells().size),
        }
    )


def filter_empty(adata: AnnData, *, layer: str | None = None, copy: bool = False) -> AnnData | None:
    """Drop genes and cells with no counts at all (what every fit requires).

    Parameters
    ----------
    adata
        Cells × genes AnnData (a view only with ``copy=True``).
    layer
        Layer holding raw counts; ``None`` uses ``X``. Emptiness is judged on these counts.
    copy
        Return a filtered copy instead of subsetting ``adata`` in place.

    Returns
    -------
    ``None``, or the filtered copy if ``copy=True``.
    """
    copy = check_bool(copy, "copy")
    check_adata(adata, allow_view=copy)  # a view can only be filtered into a copy
    c = counts_from(adata, layer, allow_empty_genes=True, allow_empty_cells=True)
    keep_g = c.gene_totals() > 0
    keep_c = c.cell_totals() > 0
    logger.info(
        "filter_empty: removing %d all-zero gene(s) and %d all-zero cell(s)",
        int((~keep_g).sum()),
        int((~keep_c).sum()),
    )
    if copy:
        return adata[keep_c, keep_g].copy()
    adata._inplace_subset_var(np.flatnonzero(keep_g))
    adata._inplace_subset_obs(np.flatnonzero(keep_c))
    return None
