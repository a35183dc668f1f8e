"""``tl.denoise``: a denoised expression layer from a fitted model, dispatched on the fit type."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from .. import _keys
from .._validate import check_adata, check_bool, check_key
from . import _zipo
from ._nb_denoise import NB_DENOISE_KINDS, NB_MODELS, check_target, nb_denoised

__all__ = ["denoise"]


def _zipo_denoiser(adata, res, kind, target_library, layer, key):
    return _zipo.zipo_denoised(adata, res, kind, target_library, layer)


def _nb_denoiser(adata, res, kind, target_library, layer, key):
    return nb_denoised(adata, res, kind, target_library, layer, key=key)


#: fit type (``uns[key]["params"]["model"]``) -> function computing the dense layer
_DENOISERS = {_zipo.MODEL_NAME: _zipo_denoiser, **dict.fromkeys(NB_MODELS, _nb_denoiser)}
#: fit type -> the ``kind`` values it supports
_KINDS = {_zipo.MODEL_NAME: _zipo.DENOISE_KINDS, **dict.fromkeys(NB_MODELS, NB_DENOISE_KINDS)}


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

    **ZiPo fits** (:func:`scnbtools.tl.fit_zipo`), with ``mu_cg`` the decoder's expression
    fraction of gene ``g`` in cell ``c`` (``sum_g mu_cg = 1``), ``z_cg`` the zero-inflation
    (dropout) probability and ``l_c`` the library size the fit uses (``library="matched"``, the
    default: the library at which the cell's expected total count, dropout included, equals
    its observed total; ``"predicted"``: the library head's prediction; ``"observed"``: the
    observed total):

    * ``"fractions"``: ``mu_cg`` — composition, independent of sequencing depth; with
      ``target_library=T``, ``T * mu_cg`` (a denoised counterpart of
      ``sc.pp.normalize_total(target_sum=T)``);
    * ``"counts_without_dropout"``: ``l_c * mu_cg`` — the rate, i.e. the mean of the NB /
      Poisson part: what the cell would show with no dropout (imputation);
    * ``"counts"``: ``(1 - z_cg) * l_c * mu_cg`` — the expected *observed* count, dropout
      included (the model's reconstruction of the input); equal to the previous kind for the
      ``"nb"`` and ``"poisson"`` likelihoods.

    For the ZiPo count kinds, ``target_library=T`` replaces ``l_c`` by ``T`` for every cell.

    **NB-family fits** (:func:`scnbtools.tl.fit`: ``nbdm``, ``zinb``, ``nbvcp``, ``zinbvcp``,
    mixtures too) are posterior means given each cell's counts ``x_c``, from the
    Gamma–Poisson view (NumPyro convention, ``NB(r, p)`` has mean ``r p / (1 - p)``):
    ``NB(r, p) = Poisson(λ)`` with ``λ ~ Gamma(shape r, rate β)``, ``β = (1 - p) / p``.
    With capture, ``x_gc ~ Poisson(ν_c λ_gc)``; zero-inflated models put ``x = 0`` with
    probability ``π_g`` regardless of ``λ``. For one posterior draw and component ``k``:

    * given ``x_gc`` (no zero inflation, or ``x > 0``): ``λ_gc | x_gc ~ Gamma(r + x,
      β + ν_c)``, so ``E[λ | x] = (r + x) / (β + ν_c)``;
    * zero-inflated and ``x = 0``: with ``w = π / (π + (1 - π) (1 - p̂_c)^r)`` (the
      probability that the zero is a dropout),
      ``E[λ | 0] = w r / β + (1 - w) r / (β + ν_c)``;
    * no zero inflation: every gene of a cell shares the rate, so
      ``λ_c / Σ_g λ_gc | x ~ Dirichlet(r + x_c)`` and the posterior mean fraction is exactly
      ``(r_g + x_gc) / (Σ_g r_g + U_c)`` (``U_c`` the library size) — the
      Dirichlet–multinomial view; zero-inflated models use the ratio of posterior means
      ``E[λ_g | x] / Σ_g E[λ_g | x]`` (equal to the former without zero inflation);
    * mixtures: the per-component quantities averaged with that draw's ``P(k | x_c)``.

    The kinds, averaged over 100 posterior draws (seed 0; a MAP fit uses its point estimate;
    for other numbers of draws see :func:`scnbtools.tl.normalize`):

    * ``"fractions"``: the posterior-mean transcript fractions above (rows sum to 1; the
      same as :func:`scnbtools.tl.normalize`); with ``target_library=T``, ``T`` × fractions;
    * ``"counts"``: ``E[ν_c λ_gc | x_c]`` — denoised counts at each cell's own capture and
      depth, without dropout (``ν = 1`` for models without capture);
    * ``"true_counts"``: ``E[λ_gc | x_c]`` — expected counts before capture and dropout;
      equal to ``"counts"`` for models without capture.

    For the NB-family count kinds, ``target_library=T`` rescales each cell (after averaging
    over draws) so that its row sums to ``T``.

    Parameters
    ----------
    adata
        AnnData with a fit under ``key`` and raw counts of the genes it was fitted on (for
        NB-family capture models and mixtures also the same cells, in the same order).
    key
        Key of the fit.
    kind
        ZiPo fits: ``"fractions"``, ``"counts"`` or ``"counts_without_dropout"``; NB-family
        fits: ``"fractions"``, ``"counts"`` or ``"true_counts"`` (see above).
    target_library
        ``"fractions"``: multiply by this number; count kinds: a common library size for
        every cell (see above); ``None``: each cell's own.
    layer
        Layer of raw counts (fed to the encoder of a ZiPo fit; conditioned on for NB-family
        fits); ``None`` uses the layer of the fit.
    layer_added
        Name of the layer written (overwritten if present); default ``f"{key}_{kind}"``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or the copy; writes a dense float32 ``adata.layers[layer_added]`` (cells ×
    genes, so it needs ``4 * n_obs * n_vars`` bytes) and changes nothing else.
    """
    check_adata(adata)
    check_key(key, "key")
    res = adata.uns.get(_keys.uns_key(key))
    if not isinstance(res, dict) or "params" not in res:
        fits = [k for k, v in adata.uns.items() if isinstance(v, dict) and "params" in v]
        raise KeyError(
            f"no scnbtools fit under key {key!r} in `adata.uns` (fits found: "
            f"{', '.join(map(repr, fits)) or 'none'}). Fit first, e.g. `snb.tl.fit_zinb(adata, "
            f"key_added={key!r})` or `snb.tl.fit_zipo(adata, key_added={key!r})`, or pass the "
            "key of an existing fit."
        )
    model = str(res["params"].get("model", "?"))
    if model not in _DENOISERS:
        raise ValueError(
            f"denoising is not available yet for {model!r} fits (`adata.uns[{key!r}]`); it is "
            f"available for {', '.join(map(repr, _DENOISERS))} fits, e.g. "
            "`snb.tl.fit_zinb(adata)` then `snb.tl.denoise(adata, key='zinb')`."
        )
    if model in NB_MODELS and "variational_params" not in res:
        raise ValueError(
            f"denoising is not available yet for {model!r} entries without a fitted posterior: "
            f"`adata.uns[{key!r}]` has no `variational_params`. Refit with "
            f"`snb.tl.fit(adata, model={model!r}, key_added={key!r})`."
        )
    kinds = _KINDS[model]
    if kind not in kinds:
        raise ValueError(
            f"`kind`={kind!r} is not one of {', '.join(map(repr, kinds))} (the kinds of "
            f"{model!r} fits)."
        )
    target_library = check_target(target_library, "target_library")
    name = f"{key}_{kind}" if layer_added is None else check_key(layer_added, "layer_added")
    copy = check_bool(copy, "copy")
    genes_fit = _zipo.fit_genes(res) if "var_names" in res else adata.var_names
    if len(genes_fit) != adata.n_vars or set(genes_fit) != set(adata.var_names):
        raise ValueError(
            f"`adata` has {adata.n_vars} genes but the fit under {key!r} has {len(genes_fit)}; a "
            "layer needs a value for every gene. Subset to the fit's genes first, e.g. "
            f"`adata = adata[:, adata.uns[{key!r}]['var_names']].copy()`."
        )
    values = _DENOISERS[model](adata, res, kind, target_library, layer, key)
    target = adata.copy() if copy else adata
    genes = target.var_names.get_indexer(genes_fit)
    if not np.array_equal(genes, np.arange(target.n_vars)):  # same genes, another order
        values = values[:, np.argsort(genes)]
    target.layers[name] = values
    return target if copy else None
