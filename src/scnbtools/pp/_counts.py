"""Raw-count checks and empty-gene / empty-cell filtering."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._validate import check_adata, counts_from

__all__ = ["check_counts", "filter_empty"]


def check_counts(adata: AnnData, *, layer: str | None = None) -> pd.Series:
    """Check that ``X`` (or ``layer``) holds raw counts and summarise it.

    Raises a ``ValueError`` naming the problem and the fix for negative, non-integer,
    NaN or infinite values. Returns cells, genes, non-zero fraction, maximum count and the
    numbers of all-zero genes and cells.
    """
    check_adata(adata)
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
    """Drop genes and cells with no counts at all (what every fit requires)."""
    check_adata(adata)
    c = counts_from(adata, layer, allow_empty_genes=True, allow_empty_cells=True)
    keep_g = c.gene_totals() > 0
    keep_c = c.cell_totals() > 0
    if copy:
        return adata[keep_c, keep_g].copy()
    adata._inplace_subset_var(np.flatnonzero(keep_g))
    adata._inplace_subset_obs(np.flatnonzero(keep_c))
    return None
