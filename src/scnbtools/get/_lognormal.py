"""Read log-normal (PLN / NBLN) fits back: the gauge-invariant loadings, how much gauge slop
the raw loadings carry, and gene–gene correlations implied by the fitted covariance.

A log-normal fit stores (see ``tl.fit_pln`` / ``tl.fit_nbln``) the per-gene ``mu``, ``d``,
``sigma2`` (and ``r``) in ``varm[f"{key}_mean"]``, the raw loadings ``W`` and their
gauge-invariant projection ``W_perp`` in ``varm[f"{key}_W"]`` / ``varm[f"{key}_W_perp"]``, the
per-cell offsets ``eta`` in ``obsm[f"{key}_mean"]`` and everything else in ``uns[key]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys

__all__ = ["W_compositional", "correlation", "gauge_diagnostics"]

#: ``uns[key]["params"]["model"]`` of the log-normal fits
LN_MODELS = ("pln", "nbln")
#: largest number of genes of an all-genes (dense ``G × G``) correlation matrix
MAX_DENSE_GENES = 5000
#: canonical names of the parameters a cascade may freeze, with their descriptive aliases
FREEZE_ALIASES = {
    "r": "r",
    "dispersion": "r",
    "eta": "eta",
    "capture_efficiency": "eta",
    "mu": "mu",
    "expression": "mu",
    "mean_expression": "mu",
}


# ----------------------------------------------------------------------------- recognising fits
def is_lognormal_fit(adata, key) -> bool:
    """Whether ``adata.uns[key]`` is a log-normal fit (``params.model`` is pln or nbln)."""
    if not isinstance(adata, AnnData) or not isinstance(key, str):
        return False
    rec = adata.uns.get(_keys.uns_key(key))
    if not isinstance(rec, Mapping) or not isinstance(rec.get("params"), Mapping):
        return False
    return str(rec["params"].get("model", "")) in LN_MODELS


def lognormal_result(adata: AnnData, key) -> dict:
    """``adata.uns[key]`` of a log-normal fit (not a copy), after checking it is one.

    ``TypeError`` for a non-AnnData or a non-string key; ``KeyError`` (listing the log-normal
    fits present) when nothing is stored under ``key``; ``ValueError`` when ``key`` holds
    another kind of fit.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(
            f"`adata` must be an AnnData object, got {type(adata).__name__}. "
            "Pass the AnnData you fitted with `snb.tl.fit_pln` / `snb.tl.fit_nbln`."
        )
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string (a fit's `key_added`), got {key!r}.")
    rec = adata.uns.get(_keys.uns_key(key))
    if is_lognormal_fit(adata, key):
        return rec
    if isinstance(rec, Mapping) and isinstance(rec.get("params"), Mapping):
        model = rec["params"].get("model", "unknown")
        raise ValueError(
            f"`key`={key!r} holds a {model!s} fit, not a log-normal one (pln or nbln); pass the "
            "key of a `snb.tl.fit_pln` / `snb.tl.fit_nbln` fit."
        )
    found = [k for k in adata.uns if is_lognormal_fit(adata, k)]
    raise KeyError(
        f"`key`={key!r}: no log-normal (pln / nbln) fit under this key in `adata.uns` (log-normal "
        f"fits found: {', '.join(map(repr, found)) or 'none'}). Pass one of those as `key=`, or "
        f"run e.g. `snb.tl.fit_pln(adata, key_added={key!r})` first."
    )


def _refit_hint(key: str) -> str:
    return f"refit with `key_added={key!r}`"


def _varm_array(adata: AnnData, key: str, stat: str) -> np.ndarray:
    name = f"{key}_{stat}"
    if name not in adata.varm:
        raise KeyError(
            f"`adata.varm[{name!r}]` is missing (removed or subset away?); {_refit_hint(key)}."
        )
    return np.asarray(adata.varm[name], dtype=np.float64)


def _gene_frame(adata: AnnData, key: str) -> pd.DataFrame:
    name = f"{key}_mean"
    frame = adata.varm.get(name)
    if not isinstance(frame, pd.DataFrame):
        raise KeyError(
            f"`adata.varm[{name!r}]` (per-gene mu, d, sigma2) is missing; {_refit_hint(key)}."
        )
    return frame


def _gene_column(adata: AnnData, key: str, column: str) -> np.ndarray:
    frame = _gene_frame(adata, key)
    if column not in frame.columns:
        raise KeyError(
            f"`adata.varm[{key + '_mean'!r}]` has no column {column!r}; {_refit_hint(key)}."
        )
    return frame[column].to_numpy(dtype=np.float64)


def _cell_column(adata: AnnData, key: str, stat: str, column: str) -> np.ndarray:
    name = f"{key}_{stat}"
    frame = adata.obsm.get(name)
    if not isinstance(frame, pd.DataFrame) or column not in frame.columns:
        raise KeyError(
            f"`adata.obsm[{name!r}]` with column {column!r} is missing (removed or subset "
            f"away?); {_refit_hint(key)}."
        )
    return frame[column].to_numpy(dtype=np.float64)


def check_fitted_genes(adata: AnnData, key: str, n_genes: int) -> None:
    """A ``ValueError`` when the fit under ``key`` had another number of genes than ``adata``
    (genes subset after the fit: the gauge projection is over the fitted gene set)."""
    if n_genes != adata.n_vars:
        raise ValueError(
            f"the fit under key {key!r} has {n_genes} genes but `adata` has {adata.n_vars}; use "
            "the AnnData that was fitted (subsetting genes after a log-normal fit changes the "
            "gauge projection W_perp and is not supported)."
        )


def loadings(adata: AnnData, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(W, W_perp)`` as float64 ``[G, k]`` arrays: ``W`` as stored, ``W_perp`` recomputed
    from it and checked against the stored projection."""
    res = lognormal_result(adata, key)
    W = _varm_array(adata, key, "W")
    if W.ndim != 2:
        raise ValueError(
            f"`adata.varm[{key + '_W'!r}]` has shape {W.shape}, not (genes, latent_dim); "
            f"{_refit_hint(key)}."
        )
    laplace = res.get("laplace")
    if isinstance(laplace, Mapping) and "W" in laplace:
        check_fitted_genes(adata, key, int(np.shape(laplace["W"])[0]))
    W_perp = W - W.mean(axis=0, keepdims=True)
    stored = _varm_array(adata, key, "W_perp")
    scale = float(np.abs(W).max()) if W.size else 0.0
    if stored.shape != W.shape or not np.allclose(
        stored, W_perp, rtol=1e-5, atol=1e-6 * max(scale, 1e-12)
    ):
        raise ValueError(
            f"`adata.varm[{key + '_W_perp'!r}]` is not `adata.varm[{key + '_W'!r}]` minus its "
            "column means over genes (were the loadings edited, or genes subset after the "
            f"fit?); {_refit_hint(key)}."
        )
    return W, W_perp


def _factor_names(k: int) -> list[str]:
    return [f"factor_{j}" for j in range(k)]


# ----------------------------------------------------------------------------- everything the
# plotting side needs, in one place
@dataclass(frozen=True)
class LogNormalFit:
    """The arrays of a stored log-normal fit (float64), checked against ``adata``."""

    key: str
    model: str  # "pln" or "nbln"
    mu: np.ndarray  # [G]
    W: np.ndarray  # [G, k]
    W_perp: np.ndarray  # [G, k]
    d: np.ndarray  # [G]
    r: np.ndarray | None  # [G] (nbln)
    eta: np.ndarray  # [C]
    eta_sd: np.ndarray  # [C] (0 where fixed or frozen)
    layer: str | None  # None means X
    source: str | None  # cascade source key
    freeze: frozenset[str]  # canonical names ("r", "eta", "mu")

    @property
    def sigma2(self) -> np.ndarray:
        """``Σ_gg = |W_g|² + d_g``."""
        return np.einsum("gk,gk->g", self.W, self.W) + self.d


def parse_freeze(value, key: str) -> frozenset[str]:
    """Canonical names of ``uns[key]["cascade"]["freeze"]`` (comma-joined; aliases allowed)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = [str(p).strip() for p in np.asarray(value, dtype=object).ravel()]
    out = set()
    for p in filter(None, parts):
        if p not in FREEZE_ALIASES:
            raise ValueError(
                f"`adata.uns[{key!r}]['cascade']['freeze']` names {p!r}, which is not a parameter "
                f"a cascade can freeze ({', '.join(map(repr, FREEZE_ALIASES))}); "
                f"{_refit_hint(key)}."
            )
        out.add(FREEZE_ALIASES[p])
    return frozenset(out)


def lognormal_fit(adata: AnnData, key) -> LogNormalFit:
    """Every stored array of the log-normal fit under ``key``, validated."""
    res = lognormal_result(adata, key)
    params = res["params"]
    model = str(params["model"])
    W, W_perp = loadings(adata, key)
    check_fitted_genes(adata, key, W.shape[0])
    mu = _gene_column(adata, key, "mu")
    d = _gene_column(adata, key, "d")
    r = _gene_column(adata, key, "r") if model == "nbln" else None
    eta = _cell_column(adata, key, "mean", "eta")
    sd_frame = adata.obsm.get(f"{key}_sd")
    if isinstance(sd_frame, pd.DataFrame) and "eta" in sd_frame.columns:
        eta_sd = sd_frame["eta"].to_numpy(dtype=np.float64)
    else:
        eta_sd = np.zeros_like(eta)
    laplace = res.get("laplace")
    if isinstance(laplace, Mapping) and "eta" in laplace:
        n_cells = int(np.size(laplace["eta"]))
        if n_cells != adata.n_obs:
            raise ValueError(
                f"the fit under key {key!r} has {n_cells} cells but `adata` has {adata.n_obs}; "
                "use the AnnData that was fitted (subsetting cells after the fit is not "
                "supported)."
            )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(W)) and np.all(d > 0)):
        raise ValueError(
            f"the stored parameters of {key!r} are not finite (or `d` is not positive); "
            f"{_refit_hint(key)}."
        )
    if r is not None and not np.all((r > 0) & np.isfinite(r)):
        raise ValueError(f"the stored dispersions `r` of {key!r} are not positive; refit.")
    layer = params.get("layer", "X")
    layer = None if layer is None or str(layer) in ("", "X", "None") else str(layer)
    source, freeze = None, frozenset()
    cascade = res.get("cascade")
    if isinstance(cascade, Mapping) and cascade.get("source"):
        source = str(cascade["source"])
        freeze = parse_freeze(cascade.get("freeze", ""), key)
    return LogNormalFit(
        key=key,
        model=model,
        mu=mu,
        W=W,
        W_perp=W_perp,
        d=d,
        r=r,
        eta=eta,
        eta_sd=np.clip(np.nan_to_num(eta_sd), 0.0, None),
        layer=layer,
        source=source,
        freeze=freeze,
    )


# ----------------------------------------------------------------------------- public accessors
def W_compositional(adata: AnnData, *, key: str) -> pd.DataFrame:
    """The gauge-invariant (compositional) loadings ``W_perp`` of a log-normal fit.

    ``W_perp = W - 1 w̄ᵀ`` removes from every factor its mean over genes, i.e. the component
    of the loadings along the all-ones direction. The likelihood of PLN / NBLN only sees
    ``x_c - η_c``, so a shift of every gene's log-rate by the same amount per cell (the
    per-cell rigid-translation gauge) is absorbed by ``η_c``: the all-ones part of the raw
    ``W`` reflects cell-scaling slop, not gene–gene biology. Compositional predictions and
    ``W_perp`` are invariant under this gauge; use them for cross-gene analyses.

    The projection is recomputed from ``adata.varm[f"{key}_W"]`` and checked against the
    stored ``adata.varm[f"{key}_W_perp"]`` (a ``ValueError`` if they disagree, e.g. after
    subsetting genes: the projection is over the fitted gene set).

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_pln` or :func:`scnbtools.tl.fit_nbln`.
    key
        The fit's ``key_added``.

    Returns
    -------
    DataFrame indexed by ``var_names`` with columns ``factor_0`` … ``factor_{k-1}``; every
    column sums to zero over genes.
    """
    _, W_perp = loadings(adata, key)
    return pd.DataFrame(
        W_perp, index=adata.var_names.copy(), columns=_factor_names(W_perp.shape[1])
    )


def gauge_diagnostics(adata: AnnData, *, key: str) -> dict:
    """How much of a log-normal fit's raw loadings lies along the gauge (all-ones) direction.

    With ``w̄`` the column means of ``W`` (``[k]``) and ``W_perp = W - 1 w̄ᵀ``, the raw loadings
    split orthogonally, ``‖W‖² = ‖W_perp‖² + G ‖w̄‖²`` (Frobenius). A fit whose gauge is
    pinned (e.g. NBLN with the cascade freeze of ``η``) has little all-ones content; a large
    share means the raw ``W`` (and the covariance ``W Wᵀ`` built from it) mixes cell-scaling
    slop into the gene–gene structure, so use :func:`W_compositional` /
    ``correlation(..., compositional=True)`` for cross-gene analyses.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_pln` or :func:`scnbtools.tl.fit_nbln`.
    key
        The fit's ``key_added``.

    Returns
    -------
    dict with

    ``fraction_total``
        ``‖W - W_perp‖² / ‖W‖² = G ‖w̄‖² / ‖W‖²`` in ``[0, 1]``: the share of the raw
        loadings along the all-ones direction (0: orthogonal to it, 1: every factor constant
        over genes).
    ``fraction_per_factor``
        ``[k]``: the same share per factor, ``G w̄_j² / ‖W_j‖²`` (the squared cosine between
        factor ``j`` and the all-ones vector).
    ``mean_loading``
        ``[k]``: ``w̄``, the mean loading of each factor over genes (signed).
    ``norm_raw``, ``norm_perp``
        ``[k]``: column norms of ``W`` and of ``W_perp``.
    ``covariance_fraction``
        Share of the low-rank covariance that the gauge contributes:
        ``1 - ‖W_perp W_perpᵀ‖² / ‖W Wᵀ‖²`` (an orthogonal split too, as
        ``W_perpᵀ 1 = 0``), in ``[0, 1]``.
    ``n_genes``, ``latent_dim``
        ``G`` and ``k``.
    """
    W, W_perp = loadings(adata, key)
    G, k = W.shape
    m = W.mean(axis=0)
    col2 = np.einsum("gk,gk->k", W, W)
    total = float(col2.sum())
    tiny = np.finfo(np.float64).tiny
    per_factor = np.where(col2 > tiny, G * m**2 / np.maximum(col2, tiny), 0.0)
    gram, gram_perp = W.T @ W, W_perp.T @ W_perp
    cov_total = float(np.sum(gram**2))
    return {
        "fraction_total": float(G * np.sum(m**2) / total) if total > tiny else 0.0,
        "fraction_per_factor": np.clip(per_factor, 0.0, 1.0),
        "mean_loading": m,
        "norm_raw": np.sqrt(col2),
        "norm_perp": np.sqrt(np.einsum("gk,gk->k", W_perp, W_perp)),
        "covariance_fraction": float(np.clip(1.0 - np.sum(gram_perp**2) / cov_total, 0.0, 1.0))
        if cov_total > tiny
        else 0.0,
        "n_genes": int(G),
        "latent_dim": int(k),
    }


def gene_indices(adata: AnnData, genes, arg: str = "genes") -> np.ndarray:
    """Indices of the named genes (a name or a non-empty list of distinct names)."""
    given = [genes] if isinstance(genes, str) else genes
    if not isinstance(given, Sequence | np.ndarray | pd.Index) or len(given) == 0:
        raise TypeError(f"`{arg}` must be a gene name or a non-empty list of names, got {genes!r}.")
    given = [str(g) for g in given]
    missing = [g for g in given if g not in adata.var_names]
    if missing:
        raise KeyError(
            f"`{arg}` not found in `adata.var_names`: {', '.join(map(repr, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}."
        )
    if len(set(given)) != len(given):
        dup = sorted({g for g in given if given.count(g) > 1})
        raise ValueError(f"`{arg}` names some genes twice: {', '.join(map(repr, dup))}.")
    if not adata.var_names.is_unique:
        raise ValueError("`adata.var_names` are not unique; call `adata.var_names_make_unique()`.")
    return adata.var_names.get_indexer(given)


def correlation(
    adata: AnnData,
    *,
    key: str,
    compositional: bool = False,
    genes: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Gene–gene correlation of the latent log-rates implied by a log-normal fit.

    ``compositional=False``: the correlation matrix of ``Σ = W Wᵀ + diag(d)``, the fitted
    covariance of the log-rates ``x``. ``compositional=True``: that of
    ``Σ_perp = W_perp W_perpᵀ + diag(d)``, i.e. the covariance with the gauge (all-ones)
    component of the low-rank part removed; ``diag(d)`` is gauge-invariant and kept as is. This
    is the recommended correlation for cross-gene analyses. (It is not exactly the covariance
    of centred log-ratios, ``P Σ P`` with ``P = I - 11ᵀ/G``, which would also centre ``diag(d)``;
    the two differ by terms of order ``1/G``, and ``Σ_perp`` keeps the genes' own variances.)

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_pln` or :func:`scnbtools.tl.fit_nbln`.
    key
        The fit's ``key_added``.
    compositional
        Use the gauge-invariant loadings ``W_perp`` instead of the raw ``W``.
    genes
        Gene name(s) (``var_names``) to return; only that block is computed (``W_perp`` is
        still centred over all fitted genes). ``None`` returns every gene, allowed up to 5000
        genes (a dense ``G × G`` matrix).

    Returns
    -------
    Symmetric DataFrame (genes × genes, in the order given), ones on the diagonal.
    """
    if not isinstance(compositional, bool | np.bool_):
        raise TypeError(f"`compositional` must be True or False, got {compositional!r}.")
    lognormal_result(adata, key)
    if genes is None:
        if adata.n_vars > MAX_DENSE_GENES:
            raise ValueError(
                f"`genes=None` would build a dense {adata.n_vars} × {adata.n_vars} correlation "
                f"matrix (more than {MAX_DENSE_GENES} genes); pass the genes you need via "
                "`genes=[...]`."
            )
        idx = np.arange(adata.n_vars)
    else:
        idx = gene_indices(adata, genes)
    W, W_perp = loadings(adata, key)
    d = _gene_column(adata, key, "d")
    L = (W_perp if compositional else W)[idx]
    cov = L @ L.T
    cov[np.diag_indices_from(cov)] += d[idx]
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    corr = 0.5 * (corr + corr.T)
    np.fill_diagonal(corr, 1.0)
    names = adata.var_names[idx]
    return pd.DataFrame(corr, index=names.copy(), columns=names.copy())
