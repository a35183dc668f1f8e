"""Formula regression and simulation: ``tl.fit_glm``, ``tl.glm_test``, ``tl.predict``, ``tl.simulate``.

Per gene, each parameter of an NB / ZINB / Poisson / ZIP count model gets its own
linear predictor from a formula over ``adata.obs``::

    log  mean            = offset + X beta       (formula ``mean``)
    log  dispersion      = Z gamma               (formula ``dispersion``; NB size r,
                                                   Var = mean + mean^2 / r)
    logit zero_inflation = W zeta                (formula ``zero_inflation``)

and every gene's exact maximum-likelihood estimate is computed at once by batched
Newton steps (see :mod:`scnbtools._core.models.glm`).
"""

from __future__ import annotations

import importlib.metadata as md
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats as st
from anndata import AnnData

from .._core._progress import progress
from .._core.models.glm import (
    FAMILIES,
    GLMFamily,
    fit_glm_counts,
    get_family,
    marginal_cdf,
    marginal_ppf,
    sample_counts,
)
from .._design import (
    Design,
    build_design,
    coef_table,
    designs_for,
    fit_family,
    fit_record,
    glm_stats_key,
    glm_varm_key,
    glm_vcov_key,
    layer_arg,
    linear_predictors,
    log_library,
    natural_params,
    obs_of,
    offset_from,
    resolve_offset,
)
from .._logging import logger
from .._validate import (
    check_adata,
    check_key,
    check_positive_float,
    check_positive_int,
    counts_from,
    get_matrix,
    resolve_progress,
    resolve_rng,
)
from ._fit import _versions as _fit_versions

__all__ = ["fit_glm", "glm_test", "predict", "simulate"]

_DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------- helpers
def _versions() -> dict[str, str]:
    try:
        formulaic = md.version("formulaic")
    except md.PackageNotFoundError:  # pragma: no cover
        formulaic = "unknown"
    return {**_fit_versions(), "formulaic": formulaic}


def _formulas(family: GLMFamily, mean, dispersion, zero_inflation) -> dict[str, str]:
    given = {"mean": mean, "dispersion": dispersion, "zero_inflation": zero_inflation}
    out = {}
    for name in ("dispersion", "zero_inflation"):
        if name not in family.params and given[name] is not None:
            fams = [f.name for f in FAMILIES.values() if name in f.params]
            raise ValueError(
                f"`{name}`={given[name]!r} was given but family {family.name!r} has no "
                f"{name} parameter; use family {' or '.join(map(repr, fams))}, or leave "
                f"`{name}=None`."
            )
    for name in family.params:
        out[name] = "~ 1" if given[name] is None else given[name]
    return out


def _check_dtype(dtype) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"`dtype`={dtype!r} is not one of {', '.join(map(repr, _DTYPES))}.")
    return name


def _ridge_arrays(ridge, designs: dict[str, Design]) -> tuple[list[np.ndarray], dict[str, float]]:
    if isinstance(ridge, Mapping):
        unknown = sorted(set(ridge) - set(designs))
        if unknown:
            raise ValueError(
                f"`ridge` has key(s) {unknown} that are not parameters of this family "
                f"({', '.join(designs)})."
            )
        lam = {p: ridge.get(p, 0.0) for p in designs}
    else:
        lam = dict.fromkeys(designs, ridge)
    out, clean = [], {}
    for p, v in lam.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
            raise ValueError(
                f"`ridge` must be a number >= 0 (or a dict of them), got {v!r} for {p!r}."
            )
        clean[p] = float(v)
        mask = np.asarray([c != "Intercept" for c in designs[p].columns], dtype=float)
        out.append(float(v) * mask)
    return out, clean


# --------------------------------------------------------------------------- fit
def fit_glm(
    adata: AnnData,
    *,
    mean: str = "~ 1",
    dispersion: str | None = None,
    zero_inflation: str | None = None,
    family: str = "nb",
    offset: str | float | np.ndarray | None = None,
    layer: str | None = None,
    key_added: str = "glm",
    ridge: float | Mapping[str, float] = 0.0,
    dtype: str = "float32",
    max_iter: int = 100,
    tol: float = 1e-8,
    block_size: int | None = None,
    rng: int | np.random.Generator = 0,
    progress_bar: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit a count GLM per gene with one formula per parameter (NB, ZINB, Poisson, ZIP).

    Every gene gets its exact maximum-likelihood estimate (optionally with a weak ridge
    prior), computed for all genes at once by damped Newton steps in JAX with exact
    gradients and Hessians. Sparse counts are processed in gene blocks, never
    densified as a whole.

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw integer counts in ``X`` or ``layers[layer]``.
    mean
        Formula of the log mean, over ``adata.obs`` (``"~ x1 + C(group)"``, ``"~ x - 1"``,
        ``"~ bs(t, df=4)"``, ``"~ ."`` for all obs columns).
    dispersion
        Formula of the log NB dispersion ``r`` (size; ``Var = mu + mu^2 / r``). Default
        ``"~ 1"`` (one dispersion per gene) for ``"nb"``/``"zinb"``; must stay ``None``
        for ``"poisson"``/``"zip"``.
    zero_inflation
        Formula of the logit zero-inflation probability. Default ``"~ 1"`` for
        ``"zinb"``/``"zip"``; must stay ``None`` for ``"nb"``/``"poisson"``.
    family
        ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"zip"``.
    offset
        Log-scale offset of the mean: ``None``; ``"log_library"`` (log total counts per
        cell, centred to mean 0 so coefficients refer to a typical cell); the name of an
        obs column holding log-scale offsets; or an array / number.
    layer
        Layer with raw counts; ``None`` uses ``X``.
    key_added
        Prefix of every key written.
    ridge
        Precision of a zero-mean Gaussian prior on every non-intercept coefficient
        (``0`` = plain MLE), or a dict per parameter, e.g. ``{"dispersion": 0.1}``.
    dtype
        ``"float32"`` (default: per-cell work in float32, sums over cells in float64;
        estimates agree with the float64 MLE to ~1e-3 standard errors, log-likelihoods
        to ~1e-6 relative) or ``"float64"`` (the exact MLE).
    max_iter
        Maximum Newton iterations (evaluations, counting backtracking) per gene block.
    tol
        Convergence tolerance: half the squared Newton decrement, in log-likelihood
        units (the estimate is then within ``sqrt(2 tol)`` standard errors of the MLE).
    block_size
        Genes per block (default: about a quarter of a million cells × genes per block,
        at least 8 genes, so the per-cell arrays stay in cache).
    rng
        Recorded for reproducibility; the fit itself is deterministic.
    progress_bar
        Show a tqdm bar over gene blocks; ``None`` follows ``snb.settings.progress_bar``.
    copy
        Return a fitted copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the fitted copy if ``copy=True``. Writes

    * ``adata.varm[f"{key}_{param}_coef"]`` and ``[f"{key}_{param}_se"]`` for every
      ``param`` of the family (``mean``, ``dispersion``, ``zero_inflation``): DataFrames
      indexed like ``var`` whose columns are the design column names;
    * ``adata.varm[f"{key}_stats"]``: per-gene ``loglik``, ``aic``, ``bic``, ``n_iter``,
      ``converged`` and ``status`` (``converged``, ``max_iter``, ``line_search_failed``,
      ``non_finite_start``, ``all_zero``; a flagged gene keeps finite values);
    * ``adata.varm[f"{key}_vcov"]``: each gene's coefficient covariance (all parameters,
      flattened ``P × P``), used by :func:`glm_test`;
    * ``adata.uns[key]``: ``params`` (every argument, versions), ``family``,
      ``param_names``, ``design`` (per parameter: formula, expanded formula, columns,
      categories and reference levels of categorical variables, and the JSON design
      state used by :func:`predict`), ``offset`` (kind, column, centre, values),
      ``n_converged``, ``n_genes``, ``n_cells``, ``n_params`` and ``runtime_s``.
    """
    check_adata(adata)
    key = check_key(key_added)
    fam = get_family(family)
    formulas = _formulas(fam, mean, dispersion, zero_inflation)
    dtype = _check_dtype(dtype)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_positive_float(tol, "tol")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    seed = resolve_rng(rng)
    show = resolve_progress(progress_bar)
    if not isinstance(copy, bool):
        raise TypeError(f"`copy` must be True or False, got {copy!r}.")

    designs = {p: build_design(f, adata.obs, param=p) for p, f in formulas.items()}
    lam, ridge_clean = _ridge_arrays(ridge, designs)
    counts = counts_from(adata, layer, allow_empty_genes=True)

    off_info: dict[str, Any] = {"kind": "none", "column": "", "center": 0.0}
    if offset is None:
        off = np.zeros(adata.n_obs)
    elif isinstance(offset, str) and offset == "log_library":
        raw = log_library(counts.X, counts.name)
        center = float(np.mean(raw))
        off = raw - center
        off_info.update(kind="log_library", center=center)
    else:
        off = offset_from(offset, adata.obs, "offset")
        if isinstance(offset, str):
            off_info.update(kind="column", column=offset)
        else:
            off_info.update(kind="array")
    off_info["values"] = np.asarray(off, dtype=np.float64)

    n, G = counts.shape
    logger.info("fitting GLM (%s) to %d cells × %d genes", fam.name, n, G)
    with progress(total=G, enabled=show, desc=f"GLM {fam.name}") as bar:
        res = fit_glm_counts(
            counts,
            [designs[p].matrix for p in fam.params],
            fam,
            offset=off,
            ridge=lam,
            dtype=dtype,
            max_iter=max_iter,
            tol=tol,
            block_size=block_size,
            progress=bar.update,
        )
    conv = res.converged
    if not conv.all():
        bad = np.flatnonzero(~conv)
        logger.warning(
            "%d of %d genes were not fitted to convergence (e.g. %s: %s); their values are "
            "finite but flagged in `adata.varm[%r]` ('converged', 'status').",
            bad.size,
            G,
            adata.var_names[bad[0]],
            res.status[bad[0]],
            glm_stats_key(key),
        )

    target = adata.copy() if copy else adata
    idx = target.var_names.copy()
    col0 = 0
    for p, size in zip(fam.params, res.sizes, strict=True):
        cols = designs[p].columns
        sl = slice(col0, col0 + size)
        target.varm[glm_varm_key(key, p, "coef")] = pd.DataFrame(
            res.coef[:, sl], index=idx, columns=cols
        )
        target.varm[glm_varm_key(key, p, "se")] = pd.DataFrame(
            res.se[:, sl], index=idx, columns=cols
        )
        col0 += size
    P = res.coef.shape[1]
    target.varm[glm_stats_key(key)] = pd.DataFrame(
        {
            "loglik": res.loglik,
            "aic": 2.0 * P - 2.0 * res.loglik,
            "bic": P * np.log(n) - 2.0 * res.loglik,
            "n_iter": res.n_iter.astype(np.int64),
            "converged": conv.astype(bool),
            "status": pd.Categorical(res.status.astype(str)),
        },
        index=idx,
    )
    target.varm[glm_vcov_key(key)] = res.vcov.reshape(G, P * P)
    target.uns[key] = {
        "params": {
            "family": fam.name,
            "mean": formulas["mean"],
            "dispersion": formulas.get("dispersion", ""),
            "zero_inflation": formulas.get("zero_inflation", ""),
            "offset": _offset_param(offset),
            "layer": "X" if layer is None else layer,
            "key_added": key,
            "ridge": ridge_clean,
            "dtype": dtype,
            "max_iter": max_iter,
            "tol": tol,
            "block_size": -1 if block_size is None else block_size,
            "rng": seed,
            "versions": _versions(),
        },
        "family": fam.name,
        "param_names": np.asarray(fam.params, dtype=object),
        "design": {p: designs[p].to_uns() for p in fam.params},
        "offset": off_info,
        "n_converged": int(conv.sum()),
        "n_genes": int(G),
        "n_cells": int(n),
        "n_params": int(P),
        "n_traces": int(res.n_traces),
        "runtime_s": float(res.runtime_s),
    }
    return target if copy else None


def _offset_param(offset) -> str:
    if offset is None:
        return "none"
    if isinstance(offset, str):
        return offset
    return "array"


# --------------------------------------------------------------------------- predict
def predict(
    adata: AnnData,
    *,
    key: str = "glm",
    obs: pd.DataFrame | AnnData | None = None,
    offset: str | float | np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """Fitted parameters of every gene for any table of cells.

    Parameters
    ----------
    adata
        The AnnData holding the fit (``key``).
    key
        ``key_added`` of :func:`fit_glm`.
    obs
        Cells to predict for: a DataFrame with the formulas' columns, an AnnData (its
        ``obs``; its counts give ``log_library`` offsets) or ``None`` (``adata.obs``).
        Categorical variables are encoded exactly as at fit time; a level not seen then
        raises a ``ValueError``.
    offset
        Log-scale mean offsets for these cells: an obs column, ``"log_library"``, a
        number (``0`` = a cell with the fit's typical library size when the fit used
        ``"log_library"``) or an array. ``None`` derives them as the fit did (nothing,
        the same obs column, the cells' library sizes, or the stored values for the
        fitted cells).

    Returns
    -------
    ``{param: DataFrame}`` (cells × genes) on the natural scale: ``mean`` (of the count
    component), ``dispersion`` (NB size ``r``) and ``zero_inflation`` (probability),
    as the family has them.
    """
    rec = fit_record(adata, key)
    fam = fit_family(rec)
    obs_df, source = obs_of(obs, adata)
    off = resolve_offset(rec, obs_df, source, offset)
    etas = linear_predictors(adata, rec, key, obs_df, off)
    nat = natural_params(fam, etas)
    return {
        p: pd.DataFrame(v, index=obs_df.index.copy(), columns=adata.var_names.copy())
        for p, v in nat.items()
    }


# --------------------------------------------------------------------------- simulate
def _pit_normal(
    fam: GLMFamily, y: np.ndarray, params: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Randomized probability-integral transform of counts, mapped to N(0, 1) scores."""
    hi = marginal_cdf(fam, y, params)
    lo = np.where(y > 0, marginal_cdf(fam, y - 1, params), 0.0)
    u = lo + rng.random(y.shape) * (hi - lo)
    return st.norm.ppf(np.clip(u, 1e-9, 1 - 1e-9))


def _copula_factors(
    adata, rec, key, fam, groups: np.ndarray | None, rng: np.random.Generator, block: int
) -> dict[Any, np.ndarray]:
    """Per-group square roots ``L`` (``L L' = R``) of the gene-gene correlation of PIT scores."""
    X, _name = get_matrix(adata, layer_arg(rec))
    off = resolve_offset(rec, adata.obs, adata, None)
    designs = designs_for(rec, adata.obs)
    coefs = {p: coef_table(adata, key, p).to_numpy(dtype=np.float64) for p in fam.params}
    G = adata.n_vars
    labels = np.zeros(adata.n_obs, dtype=object) if groups is None else groups
    acc: dict[Any, list] = {}
    for a in range(0, adata.n_obs, block):
        b = min(a + block, adata.n_obs)
        etas = {p: designs[p][a:b] @ coefs[p].T for p in fam.params}
        etas["mean"] = etas["mean"] + off[a:b, None]
        params = natural_params(fam, etas)
        yb = X[a:b]
        yb = np.asarray(yb.toarray() if sp.issparse(yb) else yb, dtype=np.float64)
        z = _pit_normal(fam, yb, params, rng)
        for g in pd.unique(labels[a:b]):
            m = labels[a:b] == g
            zg = z[m]
            s = acc.setdefault(g, [0, np.zeros(G), np.zeros((G, G))])
            s[0] += zg.shape[0]
            s[1] += zg.sum(axis=0)
            s[2] += zg.T @ zg
    out = {}
    for g, (cnt, s1, s2) in acc.items():
        if cnt < 3:
            raise ValueError(
                f"copula group {g!r} has {cnt} cell(s); at least 3 are needed to estimate a "
                "correlation. Merge small groups or use `copula_groups=None`."
            )
        mu = s1 / cnt
        cov = s2 / cnt - np.outer(mu, mu)
        sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
        R = cov / np.outer(sd, sd)
        np.fill_diagonal(R, 1.0)
        e, V = np.linalg.eigh(R)
        out[g] = V * np.sqrt(np.maximum(e, 0.0))[None, :]
    return out


def simulate(
    adata: AnnData,
    *,
    key: str = "glm",
    obs: pd.DataFrame | AnnData | None = None,
    offset: str | float | np.ndarray | None = None,
    rng: int | np.random.Generator = 0,
    copula: str | None = None,
    copula_groups: str | None = None,
    block_size: int = 4096,
) -> AnnData:
    """Sample a new count matrix from a fitted GLM.

    Parameters
    ----------
    adata
        The AnnData holding the fit (and, for the copula, its counts).
    key
        ``key_added`` of :func:`fit_glm`.
    obs
        Cells to simulate (DataFrame or AnnData); ``None`` re-simulates ``adata.obs``.
    offset
        Log-scale mean offsets, as in :func:`predict`.
    rng
        Seed (int) or ``numpy.random.Generator``: the same seed gives the same counts.
    copula
        ``None`` (genes independent given the covariates) or ``"gaussian"``: gene–gene
        dependence from a Gaussian copula whose correlation is estimated from the fit's
        randomized probability-integral-transform residuals on ``adata``'s counts;
        counts are then the fitted marginal quantiles of correlated normal scores.
    copula_groups
        An obs column: one copula correlation per group (the column must exist in both
        ``adata.obs`` and ``obs`` with no new groups).
    block_size
        Cells per block when computing residuals and sampling.

    Returns
    -------
    AnnData with the simulated counts in ``X`` (CSR if the fit's counts were sparse,
    otherwise dense; float32), ``obs`` the simulated cells, ``var`` a copy of
    ``adata.var`` and ``uns["simulation"]`` recording how it was made.
    """
    rec = fit_record(adata, key)
    fam = fit_family(rec)
    seed = resolve_rng(rng)
    block = check_positive_int(block_size, "block_size")
    if copula not in (None, "gaussian"):
        raise ValueError(f"`copula`={copula!r} is not one of None, 'gaussian'.")
    if copula_groups is not None and copula is None:
        raise ValueError("`copula_groups` needs `copula='gaussian'`.")
    obs_df, source = obs_of(obs, adata)
    off = resolve_offset(rec, obs_df, source, offset)
    designs = designs_for(rec, obs_df)
    coefs = {p: coef_table(adata, key, p).to_numpy(dtype=np.float64) for p in fam.params}
    X_fit, _ = get_matrix(adata, layer_arg(rec))
    sparse_out = sp.issparse(X_fit)

    groups_new = None
    factors = None
    gen = np.random.default_rng(seed)
    if copula == "gaussian":
        groups_fit = None
        if copula_groups is not None:
            for name, df in (("adata.obs", adata.obs), ("obs", obs_df)):
                if copula_groups not in df.columns:
                    raise KeyError(
                        f"`copula_groups`={copula_groups!r} is not a column of `{name}`."
                    )
            groups_fit = adata.obs[copula_groups].to_numpy()
            groups_new = obs_df[copula_groups].to_numpy()
            unseen = sorted(
                set(map(str, pd.unique(groups_new))) - set(map(str, pd.unique(groups_fit)))
            )
            if unseen:
                raise ValueError(
                    f"`obs[{copula_groups!r}]` has group(s) {unseen} without a fitted copula; "
                    "simulate only groups present in the fitted data."
                )
        counts_from(adata, layer_arg(rec), allow_empty_genes=True)
        factors = _copula_factors(adata, rec, key, fam, groups_fit, gen, block)

    n, G = obs_df.shape[0], adata.n_vars
    parts = []
    labels = np.zeros(n, dtype=object) if groups_new is None else groups_new
    for a in range(0, n, block):
        b = min(a + block, n)
        etas = {p: designs[p][a:b] @ coefs[p].T for p in fam.params}
        etas["mean"] = etas["mean"] + off[a:b, None]
        params = natural_params(fam, etas)
        if factors is None:
            y = sample_counts(fam, gen, params)
        else:
            z = np.empty((b - a, G))
            for g in pd.unique(labels[a:b]):
                m = labels[a:b] == g
                L = factors[g] if g in factors else factors[_match_group(g, factors)]
                z[m] = gen.standard_normal((int(m.sum()), G)) @ L.T
            y = marginal_ppf(fam, st.norm.cdf(z), params)
        y = np.asarray(y, dtype=np.float32)
        parts.append(sp.csr_matrix(y) if sparse_out else y)
    Xs = sp.vstack(parts, format="csr") if sparse_out else np.concatenate(parts, axis=0)
    out = AnnData(X=Xs, obs=obs_df.copy(), var=adata.var.copy())
    out.uns["simulation"] = {
        "key": key,
        "family": fam.name,
        "rng": seed,
        "copula": "none" if copula is None else copula,
        "copula_groups": "" if copula_groups is None else copula_groups,
    }
    return out


def _match_group(g, factors: dict):
    for k in factors:
        if str(k) == str(g):
            return k
    raise KeyError(g)  # pragma: no cover - excluded by the check in simulate


# --------------------------------------------------------------------------- tests
def _factor_columns(name: str, cols: list[str]) -> list[str]:
    """Main-effect columns of a factor: ``name[...]``, also when the formula wrapped the
    variable as ``C(name, ...)`` (quotes normalised as formulaic prints them)."""
    norm = name.replace('"', "'")
    prefixes = (f"{name}[", f"{norm}[", f"C({name})[", f"C({name},")
    return [c for c in cols if c.startswith(prefixes) and ":" not in c]


def _contrast_matrix(contrast, columns: list[str], param: str) -> tuple[np.ndarray, str]:
    p = len(columns)
    cols = list(columns)
    if isinstance(contrast, str):
        if contrast in cols:
            C = np.zeros((1, p))
            C[0, cols.index(contrast)] = 1.0
            return C, contrast
        members = _factor_columns(contrast, cols)
        if members:
            C = np.zeros((len(members), p))
            for i, c in enumerate(members):
                C[i, cols.index(c)] = 1.0
            return C, contrast
        raise KeyError(
            f"`contrast`={contrast!r} is not a column of the {param} design (columns: "
            f"{', '.join(map(repr, cols))}) nor a variable / factor with columns '{contrast}[...]'."
        )
    if isinstance(contrast, Mapping):
        unknown = [k for k in contrast if k not in cols]
        if unknown:
            raise KeyError(
                f"`contrast` names {unknown} that are not columns of the {param} design "
                f"(columns: {', '.join(map(repr, cols))})."
            )
        C = np.zeros((1, p))
        for k, w in contrast.items():
            C[0, cols.index(k)] = float(w)
        label = " ".join(f"{w:+g}*{k}" for k, w in contrast.items())
        return C, label
    if isinstance(contrast, Sequence) and contrast and all(isinstance(c, str) for c in contrast):
        rows = [_contrast_matrix(c, cols, param)[0] for c in contrast]
        return np.vstack(rows), " & ".join(contrast)
    try:
        C = np.atleast_2d(np.asarray(contrast, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(
            "`contrast` must be a column name, a factor name, a list of column names, a "
            f"{{column: weight}} dict or a numeric vector/matrix, got {type(contrast).__name__}."
        ) from None
    if C.ndim != 2 or C.shape[1] != p:
        raise ValueError(
            f"a numeric `contrast` needs {p} entries per row (the {param} columns), got shape {C.shape}."
        )
    label = "[" + "; ".join(", ".join(f"{v:g}" for v in row) for row in C) + "]"
    return C, label


def _bh(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[0]
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out


def glm_test(
    adata: AnnData,
    *,
    key: str = "glm",
    contrast: Any,
    param: str = "mean",
    method: str = "wald",
    progress_bar: bool | None = None,
) -> pd.DataFrame:
    """Wald or likelihood-ratio test of coefficients or contrasts, per gene, with BH.

    Parameters
    ----------
    adata
        The AnnData holding the fit (and its counts, for ``method="lr"``).
    key
        ``key_added`` of :func:`fit_glm`.
    contrast
        What to test (``= 0``) among the columns of ``param``'s design: a column name
        (``"x1"``, ``"C(g)[T.b]"``); a categorical variable or factor (all its main-effect
        columns jointly, e.g. ``"cell_type"``, also when the formula wrote
        ``C(cell_type, ...)``); a list of column names (jointly); a ``{column: weight}`` dict
        (one linear contrast, e.g. ``{"g[T.b]": 1, "g[T.c]": -1}``); or a numeric vector
        (one contrast) or matrix (rows tested jointly).
    param
        ``"mean"``, ``"dispersion"`` or ``"zero_inflation"``.
    method
        ``"wald"`` (from the stored covariance) or ``"lr"`` (refits the model under the
        constraint and compares log-likelihoods; chi-squared with ``rank(C)`` df).
    progress_bar
        Progress of the refit for ``method="lr"``.

    Returns
    -------
    Tidy DataFrame, one row per gene: ``gene``, ``param``, ``contrast``, ``method``,
    ``estimate`` and ``se`` (single contrasts only; log or logit scale), ``statistic``
    (chi-squared), ``df``, ``pvalue``, ``padj`` (Benjamini–Hochberg over genes) and the
    gene's ``converged`` flag.
    """
    rec = fit_record(adata, key)
    fam = fit_family(rec, param)
    if method not in ("wald", "lr"):
        raise ValueError(f"`method`={method!r} is not one of 'wald', 'lr'.")
    if method == "lr" and any(float(v) > 0 for v in rec["params"].get("ridge", {}).values()):
        raise ValueError(
            "`method='lr'` compares maximum likelihoods, but this fit used a ridge prior; "
            "use `method='wald'` or refit with `ridge=0`."
        )
    cols = [str(c) for c in rec["design"][param]["columns"]]
    C, label = _contrast_matrix(contrast, cols, param)
    m = int(np.linalg.matrix_rank(C))
    if m < C.shape[0]:
        raise ValueError(
            f"`contrast` has linearly dependent rows (rank {m} < {C.shape[0]} rows); drop redundant rows."
        )
    beta = coef_table(adata, key, param).to_numpy(dtype=np.float64)
    stats_df = adata.varm[glm_stats_key(key)]
    conv = np.asarray(stats_df["converged"], dtype=bool)
    G = adata.n_vars
    est = beta @ C.T  # [G, m]
    out: dict[str, Any] = {
        "gene": adata.var_names.to_numpy(),
        "param": param,
        "contrast": label,
        "method": method,
    }
    # covariance block of this parameter
    sizes = [len(rec["design"][p]["columns"]) for p in fam.params]
    P = int(sum(sizes))
    start = int(sum(sizes[: fam.params.index(param)]))
    V = np.asarray(adata.varm[glm_vcov_key(key)], dtype=np.float64).reshape(G, P, P)
    Vp = V[:, start : start + len(cols), start : start + len(cols)]
    CVC = C[None] @ Vp @ C.T[None]
    if m == 1:
        se = np.sqrt(np.maximum(CVC[:, 0, 0], 1e-300))
        out["estimate"] = est[:, 0]
        out["se"] = se
    if method == "wald":
        sol = np.linalg.solve(CVC + 1e-300 * np.eye(m)[None], est[:, :, None])[:, :, 0]
        stat = np.maximum(np.sum(est * sol, axis=1), 0.0)
    else:
        stat = _lr_statistic(adata, rec, key, fam, param, C, progress_bar)
    pval = st.chi2.sf(stat, m)
    out.update(statistic=stat, df=m, pvalue=pval, padj=_bh(pval), converged=conv)
    return pd.DataFrame(out)


def _lr_statistic(adata, rec, key, fam, param, C, progress_bar) -> np.ndarray:
    from scipy.linalg import null_space

    N = null_space(C)
    if N.shape[1] == 0:
        raise ValueError(
            f"the constraint removes every column of the {param} design; the LR test needs at "
            "least one remaining column (use method='wald')."
        )
    designs = designs_for(rec, adata.obs)
    designs[param] = designs[param] @ N
    counts = counts_from(adata, layer_arg(rec), allow_empty_genes=True)
    off = resolve_offset(rec, adata.obs, adata, None)
    prm = rec["params"]
    show = resolve_progress(progress_bar)
    with progress(total=adata.n_vars, enabled=show, desc="GLM LR refit") as bar:
        red = fit_glm_counts(
            counts,
            [designs[p] for p in fam.params],
            fam,
            offset=off,
            dtype=str(prm["dtype"]),
            max_iter=int(prm["max_iter"]),
            tol=float(prm["tol"]),
            progress=bar.update,
        )
    full = np.asarray(adata.varm[glm_stats_key(key)]["loglik"], dtype=np.float64)
    return np.maximum(2.0 * (full - red.loglik), 0.0)
