"""Read a ZiPo fit back: the first layer as gene programs."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.models.zipo import normalized_first_layer
from .._validate import check_positive_int
from ..tl._zipo import fit_genes, zipo_result

__all__ = ["zipo_gene_programs"]


def zipo_gene_programs(
    adata: AnnData,
    *,
    key: str = "zipo",
    min_relative_weight: float = 0.0,
    n_top: int | None = None,
) -> pd.DataFrame:
    """The genes of each first-layer neuron of a ZiPo fit (its "pathway" view).

    The first encoder layer maps genes to neurons; with the sparsity penalty ``alpha_w`` and
    :func:`scnbtools.tl.zipo_prune`, each neuron keeps few genes with non-zero weight. A
    weight's *relative weight* is its magnitude divided by the neuron's largest magnitude
    (the normalisation pruning uses).

    Parameters
    ----------
    adata
        AnnData with a ZiPo fit under ``key``.
    key
        Key of the fit.
    min_relative_weight
        Keep weights whose relative weight is above this (default: every non-zero weight).
    n_top
        Keep at most this many genes per neuron (the largest relative weights).

    Returns
    -------
    DataFrame with one row per (neuron, gene) pair kept, sorted by neuron then decreasing
    relative weight; columns ``neuron`` (int), ``gene``, ``weight`` (signed) and
    ``relative_weight`` (in (0, 1]), plus ``n_genes`` (non-zero weights of the neuron).
    """
    res = zipo_result(adata, key)
    if (
        isinstance(min_relative_weight, bool)
        or not isinstance(min_relative_weight, numbers.Real)
        or not 0 <= min_relative_weight < 1
    ):
        raise ValueError(
            f"`min_relative_weight` must be a number in [0, 1), got {min_relative_weight!r}."
        )
    if n_top is not None:
        n_top = check_positive_int(n_top, "n_top")
    W = np.asarray(res["weights"]["enc_0"]["W"], dtype=np.float64)  # genes × neurons
    rel = normalized_first_layer(W)
    genes = fit_genes(res).to_numpy()
    g_idx, n_idx = np.nonzero((rel > min_relative_weight) & (W != 0))
    df = pd.DataFrame(
        {
            "neuron": n_idx.astype(np.int64),
            "gene": genes[g_idx],
            "weight": W[g_idx, n_idx],
            "relative_weight": rel[g_idx, n_idx],
        }
    )
    df["n_genes"] = df["neuron"].map(pd.Series((W != 0).sum(axis=0), dtype=np.int64))
    df = df.sort_values(["neuron", "relative_weight"], ascending=[True, False], kind="stable")
    if n_top is not None:
        df = df.groupby("neuron", sort=False).head(n_top)
    return df.reset_index(drop=True)
