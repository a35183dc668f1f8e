"""``tl.denoise``: a denoised expression layer from a fitted model, dispatched on the fit type."""

from __future__ import annotations

import numbers

import numpy as np
from anndata import AnnData

from .._validate import check_adata, check_bool, check_key
from . import _zipo

__all__ = ["denoise"]

#: fit type (``uns[key]["params"]["model"]``) -> function computing the dense layer
_DENOISERS = {_zipo.MODEL_NAME: _zipo.zipo_denoised}


def denoise(
    adata: AnnData,
    *,
    key: str = "zipo",
    kind: str = "fractions",
    target_library: float | None = None,
    layer: str | None = None,
    layer_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Write a denoised expression matrix of a fitted model into ``adata.layers``.

    For a ZiPo fit (:func:`scnbtools.tl.fit_zipo`), with ``mu_cg`` the decoder's expression
    fraction of gene ``g`` in cell ``c`` (``sum_g mu_cg = 1``), ``z_cg`` the zero-inflation
    (dropout) probability and ``l_c`` the library size the fit uses (predicted by the library
    head, or the observed total with ``library="observed"``):

    * ``"fractions"``: ``mu_cg`` — composition, independent of sequencing depth; with
      ``target_library=T``, ``T * mu_cg`` (a denoised counterpart of
      ``sc.pp.normalize_total(target_sum=T)``);
    * ``"counts_without_dropout"``: ``l_c * mu_cg`` — the rate, i.e. the mean of the NB /
      Poisson part: what the cell would show with no dropout (imputation);
    * ``"counts"``: ``(1 - z_cg) * l_c * mu_cg`` — the expected *observed* count, dropout
      included (the model's reconstruction of the input); equal to the previous kind for the
      ``"nb"`` and ``"poisson"`` likelihoods.

    For the count kinds, ``target_library=T`` replaces ``l_c`` by ``T`` for every cell.

    Parameters
    ----------
    adata
        AnnData with a fit under ``key`` and raw counts of the genes it was fitted on.
    key
        Key of the fit.
    kind
        ``"fractions"``, ``"counts"`` or ``"counts_without_dropout"`` (see above).
    target_library
        Common library size for every cell, or ``None`` (each cell's own).
    layer
        Layer of raw counts fed to the encoder; ``None`` uses the layer of the fit.
    layer_added
        Name of the layer written; default ``f"{key}_{kind}"``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or the copy; writes a dense float32 ``adata.layers[layer_added]`` (cells ×
    genes, so it needs ``4 * n_obs * n_vars`` bytes).
    """
    check_adata(adata)
    res = _zipo.fit_entry(adata, key)
    model = str(res["params"].get("model", "?"))
    if model not in _DENOISERS:
        raise ValueError(
            f"denoising is not available yet for {model!r} fits (`adata.uns[{key!r}]`); it is "
            f"available for {', '.join(map(repr, _DENOISERS))} fits, e.g. "
            "`snb.tl.fit_zipo(adata)` then `snb.tl.denoise(adata, key='zipo')`."
        )
    if kind not in _zipo.DENOISE_KINDS:
        raise ValueError(
            f"`kind`={kind!r} is not one of {', '.join(map(repr, _zipo.DENOISE_KINDS))}."
        )
    if target_library is not None:
        if isinstance(target_library, bool) or not isinstance(target_library, numbers.Real):
            raise TypeError(f"`target_library` must be a number or None, got {target_library!r}.")
        if not np.isfinite(target_library) or target_library <= 0:
            raise ValueError(
                f"`target_library` must be a finite number > 0, got {target_library!r}."
            )
        target_library = float(target_library)
    name = f"{key}_{kind}" if layer_added is None else check_key(layer_added, "layer_added")
    copy = check_bool(copy, "copy")
    genes_fit = _zipo.fit_genes(res) if "var_names" in res else adata.var_names
    if len(genes_fit) != adata.n_vars or set(genes_fit) != set(adata.var_names):
        raise ValueError(
            f"`adata` has {adata.n_vars} genes but the fit under {key!r} has {len(genes_fit)}; a "
            "layer needs a value for every gene. Subset to the fit's genes first, e.g. "
            f"`adata = adata[:, adata.uns[{key!r}]['var_names']].copy()`."
        )
    values = _DENOISERS[model](adata, res, kind, target_library, layer)
    target = adata.copy() if copy else adata
    genes = target.var_names.get_indexer(genes_fit)
    if not np.array_equal(genes, np.arange(target.n_vars)):  # same genes, another order
        values = values[:, np.argsort(genes)]
    target.layers[name] = values
    return target if copy else None
