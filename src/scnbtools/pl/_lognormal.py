"""Plots of log-normal (PLN / NBLN) fits: posterior-predictive checks at three conditioning
levels, the compositional corner plot, the loadings spectrum and the correlation heat map.

Everything here is numpy on what the fit stored (see :mod:`scnbtools.get._lognormal`); the
only model code reached is :func:`scnbtools.get.posterior_samples` of a cascade source, whose
full posterior supplies the parameters a cascade froze (``r``, ``η``, ``μ``).

Model, per cell ``c`` and gene ``g``: ``x_c ~ MVN(μ, Σ)``, ``Σ = W Wᵀ + diag(d)``, rate
``λ_gc = exp(x_gc - η_c)``; PLN ``u_gc ~ Poisson(λ_gc)``, NBLN ``u_gc ~ NB(mean λ_gc, r_g)``,
i.e. ``Poisson(λ_gc γ_gc)`` with burst noise ``γ_gc ~ Gamma(r_g, rate r_g)`` (mean 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .. import get
from .._validate import check_bool, check_positive_int, get_matrix, resolve_rng
from ..get._lognormal import LogNormalFit, gene_indices, lognormal_fit, lognormal_result
from ._nb import (
    _BAND_LEVELS,
    _MIN_PER_CELL_DRAWS,
    _CellPanel,
    _draw_cell_panel,
    _draw_ppc_panel,
    _observed,
    _pick_cells,
    _pick_genes,
    _PPCPanel,
)
from ._utils import check_show, finish, make_axes

__all__ = [
    "LN_PPC_LEVELS",
    "compositional_corner",
    "correlation_heatmap",
    "loadings_spectrum",
    "param_draws",
    "ppc_lognormal",
    "simulate_library_anchored",
    "simulate_marginal",
    "simulate_per_cell",
]

#: predictive-check levels of a log-normal fit; the first is the default
LN_PPC_LEVELS = ("library_anchored", "marginal", "per_cell")
#: genes shown when ``genes=None``, per check
_N_GENES = {"library_anchored": 6, "marginal": 6, "per_cell": 24}
#: entries (draws × cells × genes) simulated at once
_BLOCK = 1 << 22
#: library-anchored check: most (draws × cells × genes) entries simulated with their own noise;
#: beyond it the genes with the smallest expected shares enter the denominator as one
#: moment-matched sum given the factors (see :func:`simulate_library_anchored`)
_EXACT_BUDGET = 1 << 23
#: largest rate handed to numpy's Poisson sampler
_MAX_RATE = 1e12
_DRAW_COLOR = "tab:blue"
_CELL_COLOR = "0.15"
_BULK_COLOR = "tab:red"


# ----------------------------------------------------------------------------- parameter draws
@dataclass(frozen=True)
class ParamDraws:
    """Per-draw parameters behind a predictive check (broadcast views where not drawn)."""

    mu: np.ndarray  # [S, G]
    r: np.ndarray | None  # [S, G] (nbln)
    eta: np.ndarray  # [S, C]
    drawn: frozenset[str]  # parameters drawn from the cascade source's posterior


def _source_draws(adata: AnnData, fit: LogNormalFit, n_samples: int, seed: int) -> dict:
    src = fit.source
    rec = adata.uns.get(src)
    if not isinstance(rec, Mapping) or "variational_params" not in rec:
        raise KeyError(
            f"the fit {fit.key!r} froze {', '.join(sorted(fit.freeze))} at its cascade source "
            f"{src!r}, which is not an NB-family fit in `adata.uns`; the predictive check draws "
            "the frozen parameters from the source's posterior, so keep the source fit in the "
            "same AnnData."
        )
    return get.posterior_samples(adata, key=src, n_samples=n_samples, rng=seed)


def param_draws(
    adata: AnnData, fit: LogNormalFit, n_samples: int, seed: int, *, eta_noise: bool = False
) -> ParamDraws:
    """``n_samples`` draws of ``μ``, ``r`` and ``η``.

    Parameters a cascade froze are drawn from the source fit's full posterior
    (:func:`scnbtools.get.posterior_samples`, no moment matching): ``r`` as drawn,
    ``η_c = -log ν_c``, and ``μ`` as ``μ_stored + log m_g - mean(log m_g)`` with ``m`` the
    source's mean-expression draws (the source's uncertainty, centred on the stored ``μ``).
    The others are the stored point estimates; with ``eta_noise`` each cell's ``η_c`` is drawn
    from its Laplace posterior ``N(η̂_c, sd_c²)`` (sd 0 where ``η`` is fixed).
    """
    S, G, C = int(n_samples), fit.mu.size, fit.eta.size
    drawn = fit.freeze if fit.source else frozenset()
    src = _source_draws(adata, fit, S, seed) if drawn else {}

    def from_source(name: str, n: int, what: str) -> np.ndarray:
        if name not in src:
            raise KeyError(
                f"the cascade source {fit.source!r} of fit {fit.key!r} has no posterior draws "
                f"of {name!r}; it cannot supply the frozen {what}."
            )
        v = np.asarray(src[name], dtype=np.float64)
        if v.shape != (S, n):
            raise ValueError(
                f"the cascade source {fit.source!r} gives {name!r} draws of shape {v.shape}, not "
                f"{(S, n)}; its genes / cells must be those of fit {fit.key!r} (a "
                "one-component fit of the same AnnData)."
            )
        return v

    if "mu" in drawn:
        logm = np.log(from_source("mu", G, "mean expression `mu`"))
        mu = fit.mu + logm - logm.mean(axis=0, keepdims=True)
    else:
        mu = np.broadcast_to(fit.mu, (S, G))
    r = None
    if fit.r is not None:
        r = (
            from_source("r", G, "dispersion `r`")
            if "r" in drawn
            else np.broadcast_to(fit.r, (S, G))
        )
    if "eta" in drawn:
        eta = -np.log(from_source("nu", C, "capture offset `eta`"))
    elif eta_noise and np.any(fit.eta_sd > 0):
        gen = np.random.default_rng([seed, 1])
        eta = fit.eta + fit.eta_sd * gen.standard_normal((S, C))
    else:
        eta = np.broadcast_to(fit.eta, (S, C))
    return ParamDraws(mu=mu, r=r, eta=eta, drawn=frozenset(drawn))


# ----------------------------------------------------------------------------- simulation
def _observation_noise(rate: np.ndarray, r: np.ndarray | None, gen) -> np.ndarray:
    """Counts given rates: Poisson (``r=None``) or NB with mean ``rate`` and dispersion ``r``
    (``Poisson(rate γ)``, ``γ ~ Gamma(r, rate r)``)."""
    if r is not None:
        r = np.broadcast_to(r, rate.shape)
        rate = rate * gen.standard_gamma(r) / r
    return gen.poisson(np.minimum(rate, _MAX_RATE))


def simulate_marginal(
    fit: LogNormalFit, draws: ParamDraws, gene_idx: np.ndarray, gen
) -> np.ndarray:
    """Counts ``[S, C, n]`` of the genes ``gene_idx`` in ``S`` fresh data sets over the cells.

    Fresh log-rates ``x_gc ~ N(μ_g, Σ_gg)`` (a gene's marginal: only the shown genes are
    simulated), the cell's ``η_c`` of the draw, and observation noise; the totals are what
    the model gives.
    """
    S, C = draws.eta.shape
    n = gene_idx.size
    sd = np.sqrt(fit.sigma2[gene_idx])
    out = np.empty((S, C, n), dtype=np.int64)
    step = max(1, _BLOCK // max(1, C * n))
    for a in range(0, S, step):
        b = min(S, a + step)
        x = draws.mu[a:b, None, gene_idx] + sd * gen.standard_normal((b - a, C, n))
        rate = np.exp(x - draws.eta[a:b, :, None])
        r = None if draws.r is None else draws.r[a:b, None, gene_idx]
        out[a:b] = _observation_noise(rate, r, gen)
    return out


def _logsumexp(v: np.ndarray) -> np.ndarray:
    top = np.max(v, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.sum(np.exp(v - top), axis=-1)) + top[..., 0]


def simulate_library_anchored(
    fit: LogNormalFit,
    draws: ParamDraws,
    gene_idx: np.ndarray,
    library: np.ndarray,
    gen,
    *,
    budget: int = _EXACT_BUDGET,
) -> np.ndarray:
    """Counts ``[S, C, n]`` of the genes ``gene_idx``: fresh compositions, observed totals.

    For each draw and cell, a fresh ``x ~ MVN(μ, Σ)`` over all genes, burst noise (NBLN)
    ``w_g = exp(x_g) γ_g`` (PLN: ``γ = 1``), the composition ``w / Σ_g w_g`` and counts
    ``Multinomial(L_c, composition)`` with ``L_c`` the cell's observed library size — the
    exact distribution of the counts given their total. Only the shown genes' marginals are
    tabulated, so each is drawn as ``Binomial(L_c, share_g)``. ``η_c`` cancels.

    The all-ones component of ``W`` cancels in the composition, so ``W_perp`` is used. When
    ``S × C × G`` exceeds ``budget`` the shown genes and those with the largest expected
    shares (as many as fit) get their own noise, and the sum of the rest given the factors
    ``z`` is drawn from a log-normal with its exact conditional mean and variance
    (Fenton–Wilkinson; the rest are the genes with the smallest shares, whose independent
    noise largely averages out).
    """
    S, C = draws.eta.shape
    G, n = fit.mu.size, gene_idx.size
    lib = np.rint(np.asarray(library, dtype=np.float64)).astype(np.int64)
    n_exact = int(np.clip(budget // max(1, S * C), n, G))
    others = np.setdiff1d(np.arange(G), gene_idx)
    score = fit.mu + 0.5 * (np.einsum("gk,gk->g", fit.W_perp, fit.W_perp) + fit.d)
    others = others[np.argsort(-score[others], kind="stable")]
    exact = np.concatenate([gene_idx, others[: n_exact - n]])
    rest = others[n_exact - n :]
    W_e, W_r = fit.W_perp[exact], fit.W_perp[rest]
    sd_e = np.sqrt(fit.d[exact])
    k = fit.W_perp.shape[1]
    out = np.empty((S, C, n), dtype=np.int64)
    step = max(1, _BLOCK // max(1, C * G))
    with np.errstate(divide="ignore", under="ignore"):
        for a in range(0, S, step):
            b = min(S, a + step)
            z = gen.standard_normal((b - a, C, k))
            logw = draws.mu[a:b, None, exact] + z @ W_e.T
            logw += sd_e * gen.standard_normal(logw.shape)
            if draws.r is not None:
                r = np.broadcast_to(draws.r[a:b, None, exact], logw.shape)
                logw += np.log(gen.standard_gamma(r) / r)
            den = _logsumexp(logw)
            if rest.size:
                den = np.logaddexp(den, _log_rest(draws, fit.d[rest], rest, z, W_r, a, b, gen))
            share = np.exp(logw[..., :n] - den[..., None])
            share = np.clip(np.nan_to_num(share, nan=0.0), 0.0, 1.0)
            out[a:b] = gen.binomial(np.broadcast_to(lib[None, :, None], share.shape), share)
    return out


def _log_rest(draws: ParamDraws, d, rest, z, W_r, a: int, b: int, gen) -> np.ndarray:
    """``log Σ_g exp(x_g) γ_g`` over the genes ``rest`` given the factors ``z``
    (``[b - a, C, k]``): a log-normal draw with the sum's exact conditional mean and variance
    (Fenton–Wilkinson), from ``E[e^{√d ε} γ] = e^{d/2}`` and
    ``E[(e^{√d ε} γ)²] = e^{2d} (1 + 1/r)``.

    Both moments are ``Σ_g c_g e^{m W_g z}`` (``m = 1, 2``): one float32 exponential of
    ``z W_restᵀ`` and two batched matrix–vector products, stabilised by the block maximum.
    """
    zw = np.matmul(z.astype(np.float32), W_r.T.astype(np.float32))  # [b, C, R]
    top = float(zw.max())
    np.subtract(zw, top, out=zw)
    np.exp(zw, out=zw)
    mu = draws.mu[a:b][:, rest]  # [b, R]
    inv_r = 0.0 if draws.r is None else 1.0 / draws.r[a:b][:, rest]
    log_c1 = mu + 0.5 * d
    log_c2 = 2.0 * mu + np.log(np.expm1(d) + np.exp(d) * inv_r) + d  # e^{2d}(1 + 1/r) - e^d
    m1, m2 = log_c1.max(axis=1, keepdims=True), log_c2.max(axis=1, keepdims=True)
    c1 = np.exp(log_c1 - m1).astype(np.float32)[:, :, None]
    c2 = np.exp(log_c2 - m2).astype(np.float32)[:, :, None]
    s1 = np.matmul(zw, c1)[..., 0].astype(np.float64)
    np.square(zw, out=zw)
    s2 = np.matmul(zw, c2)[..., 0].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_m1 = np.log(s1) + m1 + top
        log_var = np.log(s2) + m2 + 2.0 * top
        rel = np.nan_to_num(np.log1p(np.exp(log_var - 2.0 * log_m1)), nan=0.0, posinf=0.0)
    return log_m1 - 0.5 * rel + np.sqrt(rel) * gen.standard_normal(log_m1.shape)


def simulate_per_cell(
    fit: LogNormalFit,
    draws: ParamDraws,
    x_hat: np.ndarray,
    cell_idx: np.ndarray,
    gene_idx: np.ndarray,
    reps: int,
    gen,
) -> np.ndarray:
    """Counts ``[S * reps, n_cells, n_genes]``: the cells' MAP log-rates ``x_hat``
    (``[n_cells, n_genes]``), each draw's ``η_c`` (and ``r``), and observation noise."""
    S = draws.eta.shape[0]
    rate = np.exp(x_hat[None, None] - draws.eta[:, None, cell_idx, None])
    rate = np.broadcast_to(rate, (S, reps, *x_hat.shape))
    r = None if draws.r is None else draws.r[:, None, None, gene_idx]
    x = _observation_noise(rate, r, gen)
    return x.reshape(S * reps, *x_hat.shape)


def _frequencies(counts: np.ndarray, max_count: int) -> np.ndarray:
    """``[S, C, n]`` counts -> ``[S, n, max_count + 1]`` fractions of cells per count."""
    S, C, n = counts.shape
    M = int(max_count) + 1
    x = np.minimum(counts, M)  # M is the tail bin
    flat = (np.arange(S)[:, None, None] * n + np.arange(n)[None, None, :]) * (M + 1) + x
    hist = np.bincount(flat.ravel(), minlength=S * n * (M + 1)).reshape(S, n, M + 1)
    return hist[..., :M] / float(C)


# ----------------------------------------------------------------------------- ppc
def _library(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def _x_hat(adata: AnnData, key: str, cell_idx: np.ndarray, gene_idx: np.ndarray) -> np.ndarray:
    name = f"{key}_x"
    if name not in adata.obsm:
        raise KeyError(
            f"`adata.obsm[{name!r}]` (the per-cell MAP log-rates) is missing; refit with "
            f"`key_added={key!r}`."
        )
    stored = adata.obsm[name]
    stored = stored.to_numpy() if isinstance(stored, pd.DataFrame) else stored
    if stored.shape != (adata.n_obs, adata.n_vars):
        raise ValueError(
            f"`adata.obsm[{name!r}]` has shape {stored.shape}, not (cells, genes) = "
            f"{(adata.n_obs, adata.n_vars)}; refit with `key_added={key!r}`."
        )
    return np.asarray(stored[cell_idx][:, gene_idx], dtype=np.float64)


def ppc_lognormal(
    adata: AnnData,
    *,
    key: str,
    ppc_level: str | None = None,
    genes=None,
    n_genes: int | None = None,
    cells=None,
    n_cells: int = 4,
    n_samples: int = 200,
    layer: str | None = None,
    rng: int | np.random.Generator = 0,
    max_count: int | None = None,
    log: bool | None = None,
    ncols: int | None = None,
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Posterior-predictive check of a log-normal fit; called by :func:`scnbtools.pl.ppc`
    (see there for the arguments). ``ppc_level=None`` is ``"library_anchored"``."""
    fit = lognormal_fit(adata, key)
    level = LN_PPC_LEVELS[0] if ppc_level is None else ppc_level
    if level not in LN_PPC_LEVELS:
        raise ValueError(
            f"`ppc_level`={ppc_level!r} is not one of {', '.join(map(repr, LN_PPC_LEVELS))} "
            f"(the levels of a log-normal fit such as {key!r})."
        )
    per_cell = level == "per_cell"
    if not per_cell and cells is not None:
        raise ValueError("`cells` applies to `ppc_level='per_cell'` only.")
    n_samples = check_positive_int(n_samples, "n_samples", 2)
    ncols = (2 if per_cell else 3) if ncols is None else ncols
    ncols = check_positive_int(ncols, "ncols")
    n_genes = _N_GENES[level] if n_genes is None else n_genes
    seed = resolve_rng(rng)
    log = check_bool(log, "log", allow_none=True)
    show, return_fig = check_show(show, return_fig)
    if max_count is not None:
        max_count = check_positive_int(max_count, "max_count")
    X, layer_name = get_matrix(adata, fit.layer if layer is None else layer)
    means = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    idx = _pick_genes(adata, means, genes, n_genes)
    lib = _library(X)
    gen = np.random.default_rng(seed)

    if per_cell:
        cidx = _pick_cells(adata, lib, cells, n_cells)
        obs = _observed(X[cidx], idx, layer_name)
        x_hat = _x_hat(adata, key, cidx, idx)
        draws = param_draws(adata, fit, n_samples if fit.freeze else 1, seed)
        S = draws.eta.shape[0]
        reps = max(1, math.ceil(_MIN_PER_CELL_DRAWS / S))
        sim = simulate_per_cell(fit, draws, x_hat, cidx, idx, reps, gen)
        q = np.quantile(sim, _BAND_LEVELS, axis=0, method="inverted_cdf")
        pred_mean = sim.mean(axis=0)
        cpanels = []
        for i, c in enumerate(cidx):
            order = np.argsort(pred_mean[i], kind="stable")
            cpanels.append(
                _CellPanel(
                    cell=str(adata.obs_names[c]),
                    library=float(lib[c]),
                    nu=None,
                    component=None,
                    component_prob=None,
                    genes=[str(adata.var_names[idx[j]]) for j in order],
                    observed=obs[i, order].astype(np.float64),
                    mean=pred_mean[i, order],
                    bands={
                        lv: q[li, i, order].astype(np.float64) for li, lv in enumerate(_BAND_LEVELS)
                    },
                )
            )
        fig, axes = make_axes(
            ax, cidx.size, ncols=ncols, panel_size=(max(3.6, 0.22 * idx.size + 1.2), 3.4)
        )
        if log is None:
            top = max(max(p.bands[0.95].max(), p.observed.max()) for p in cpanels)
            log = bool(top > 30)
        for panel, a in zip(cpanels, axes, strict=True):
            _draw_cell_panel(a, panel, log=log)
    else:
        obs = _observed(X, idx, layer_name)
        panels = lognormal_ppc_panels(
            adata,
            fit,
            level,
            idx,
            obs,
            means,
            lib,
            n_samples=n_samples,
            seed=seed,
            max_count=max_count,
        )
        fig, axes = make_axes(ax, idx.size, ncols=ncols, panel_size=(3.6, 2.9))
        for panel, a in zip(panels, axes, strict=True):
            _draw_ppc_panel(a, panel, log=bool(log))
    handles, labels = axes[0].get_legend_handles_labels()
    lead = labels.index("observed")
    order = [lead, *(i for i in range(len(labels)) if i != lead)]
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if ax is None:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
        fig.suptitle(f"{key} ({fit.model}): {level.replace('_', ' ')} check", fontsize="medium")
    else:
        axes[0].legend(handles, labels, loc="best", fontsize="x-small", frameon=False)
    return finish(fig, axes, show=show, return_fig=return_fig, single=len(axes) == 1)


def lognormal_ppc_panels(
    adata: AnnData,
    fit: LogNormalFit,
    level: str,
    idx: np.ndarray,
    obs: np.ndarray,
    means: np.ndarray,
    library: np.ndarray,
    *,
    n_samples: int,
    seed: int,
    max_count: int | None,
) -> list[_PPCPanel]:
    """Observed and predicted count frequencies of the genes ``idx`` (``marginal`` or
    ``library_anchored``): one simulated data set over the cells per draw."""
    gen = np.random.default_rng(seed)
    if level == "marginal":
        draws = param_draws(adata, fit, n_samples, seed, eta_noise=True)
        sim = simulate_marginal(fit, draws, idx, gen)
    else:
        draws = param_draws(adata, fit, n_samples, seed)
        sim = simulate_library_anchored(fit, draws, idx, library, gen)
    if max_count is None:
        tops = [max(3, int(np.ceil(np.quantile(obs[:, j], 0.99)))) for j in range(idx.size)]
    else:
        tops = [max_count] * idx.size
    freqs = _frequencies(sim, max(tops))
    panels = []
    for j, (g, top) in enumerate(zip(idx, tops, strict=True)):
        x = obs[:, j]
        f = freqs[:, j, : top + 1]
        bands = dict(zip(_BAND_LEVELS, np.quantile(f, _BAND_LEVELS, axis=0), strict=True))
        observed = np.bincount(np.minimum(x, top + 1), minlength=top + 2)[: top + 1] / x.size
        panels.append(
            _PPCPanel(str(adata.var_names[g]), float(means[g]), np.arange(top + 1), observed, bands)
        )
    return panels


# ----------------------------------------------------------------------------- compositional corner
def composition_draws(fit: LogNormalFit, gene_idx: np.ndarray, n_draws: int, gen) -> np.ndarray:
    """``[n_draws, n]`` shares of the genes ``gene_idx`` in ``softmax(x)``, ``x ~ MVN(μ, Σ)``
    over all genes (pre-observation-noise compositions; the gauge cancels, ``W_perp`` is used)."""
    G, k = fit.W_perp.shape
    out = np.empty((n_draws, gene_idx.size))
    sd = np.sqrt(fit.d)
    step = max(1, _BLOCK // max(1, G))
    with np.errstate(under="ignore"):
        for a in range(0, n_draws, step):
            b = min(n_draws, a + step)
            x = fit.mu + gen.standard_normal((b - a, k)) @ fit.W_perp.T
            x += sd * gen.standard_normal(x.shape)
            out[a:b] = np.exp(x[:, gene_idx] - _logsumexp(x)[:, None])
    return out


def _check_key_arg(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string (a fit's `key_added`), got {key!r}.")
    return key


def compositional_corner(
    adata: AnnData,
    *,
    key: str = "nbln",
    genes: Sequence[str],
    n_draws: int = 2000,
    layer: str | None = None,
    log: bool = True,
    rng: int | np.random.Generator = 0,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Corner plot of compositions: the model's simplex against the cells' and the pseudobulk.

    The compositional check of a log-normal fit, invariant under its gauge. For every pair of
    the given genes (below the diagonal: column gene on x, row gene on y) the blue points are
    draws of the two genes' shares of ``softmax(x)``, ``x ~ MVN(μ, Σ)`` over *all* genes — the
    fitted compositions before observation noise. The black points are the cells' observed
    shares ``u_gc / L_c`` (``L_c`` the library size), which also carry counting noise and so
    scatter more widely, and the red star is the pseudobulk composition
    ``Σ_c u_gc / Σ_c L_c``, which a good fit puts inside the blue cloud. Spurious structure
    (e.g. diagonal ridges across genes that are not correlated in the cells) points to
    overfitted loadings. The diagonal shows each gene's share as histograms (model draws,
    cells) with the pseudobulk marked; the upper triangle is left empty.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_pln` or :func:`scnbtools.tl.fit_nbln`.
    key
        The fit's ``key_added``.
    genes
        2 to 6 distinct gene names (``var_names``).
    n_draws
        Compositions drawn from the fitted model.
    layer
        Layer with the raw counts; ``None`` uses the one the fit used.
    log
        Log-scaled shares (default; compositions span decades). Cells with a zero count of
        a gene have no place on a log axis and are left out of that gene's panels (the
        diagonal gives how many).
    rng
        Seed (int) or ``numpy.random.Generator`` of the draws.
    ax
        ``len(genes)²`` Axes in row-major order (the upper triangle is switched off), or
        ``None`` to create a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The list of ``len(genes)²`` Axes, row-major (``show=False``), the Figure
    (``return_fig=True``) or ``None`` (shown).
    """
    fit = lognormal_fit(adata, _check_key_arg(key))
    if genes is None or isinstance(genes, str):
        raise TypeError(f"`genes` must be a list of 2 to 6 gene names, got {genes!r}.")
    idx = gene_indices(adata, genes)
    if not 2 <= idx.size <= 6:
        raise ValueError(f"`genes` must name 2 to 6 genes, got {idx.size}.")
    n_draws = check_positive_int(n_draws, "n_draws", 10)
    log = check_bool(log, "log")
    seed = resolve_rng(rng)
    show, return_fig = check_show(show, return_fig)
    X, layer_name = get_matrix(adata, fit.layer if layer is None else layer)
    counts = _observed(X, idx, layer_name).astype(np.float64)
    lib = _library(X)
    if np.all(lib <= 0):
        raise ValueError(f"{layer_name} has no counts; nothing to plot.")
    n = idx.size
    fig, axes = make_axes(ax, n * n, ncols=n, panel_size=(2.5, 2.3))

    model = composition_draws(fit, idx, n_draws, np.random.default_rng(seed))
    keep = lib > 0
    cells = counts[keep] / lib[keep, None]
    bulk = counts[keep].sum(axis=0) / lib[keep].sum()
    names = [str(g) for g in adata.var_names[idx]]
    lims = []
    for j in range(n):
        vals = np.concatenate([model[:, j], cells[:, j]])
        vals = vals[vals > 0] if log else vals
        lo, hi = np.quantile(vals, [0.001, 0.999]) if vals.size else (1e-6, 1.0)
        lo, hi = min(lo, bulk[j] if bulk[j] > 0 else lo), max(hi, bulk[j])
        lims.append((lo / 1.5, hi * 1.5) if log else (0.0, hi * 1.05 or 1.0))

    for i in range(n):
        for j in range(n):
            a = axes[i * n + j]
            if j > i:
                a.set_axis_off()
                continue
            if i == j:
                _corner_diagonal(a, model[:, j], cells[:, j], bulk[j], lims[j], log=log)
            else:
                _corner_pair(
                    a, model[:, [j, i]], cells[:, [j, i]], bulk[[j, i]], lims[j], lims[i], log=log
                )
            if i == n - 1:
                a.set_xlabel(f"{names[j]} share")
            if j == 0 and i > 0:
                a.set_ylabel(f"{names[i]} share")
            elif i == j:
                a.set_ylabel("density" if i == 0 else "")
    if ax is None:
        handles, labels = axes[n].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=len(labels),
            frameon=False,
            markerscale=2.0,
        )
        fig.suptitle(
            f"{key} ({fit.model}): compositions, model simplex vs cells ({int(keep.sum()):,})",
            fontsize="medium",
        )
    return finish(fig, axes, show=show, return_fig=return_fig, single=False)


def _log_bins(lo: float, hi: float, log: bool) -> np.ndarray:
    return np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi, 31)


def _corner_diagonal(a, model, cells, bulk, lim, *, log: bool) -> None:
    bins = _log_bins(*lim, log)
    shown = cells[cells > 0] if log else cells
    a.hist(model, bins=bins, density=True, color=_DRAW_COLOR, alpha=0.45, label="model draws")
    if shown.size:
        a.hist(shown, bins=bins, density=True, histtype="step", color=_CELL_COLOR, label="cells")
    a.axvline(bulk, color=_BULK_COLOR, lw=1.2, label="pseudobulk")
    if log:
        a.set_xscale("log")
        zero = 1.0 - shown.size / max(1, cells.size)
        a.text(
            0.03,
            0.95,
            f"{zero:.0%} cells zero",
            transform=a.transAxes,
            va="top",
            fontsize="x-small",
        )
    a.set_xlim(*lim)
    a.set_yticks([])


def _corner_pair(a, model, cells, bulk, xlim, ylim, *, log: bool) -> None:
    a.scatter(
        model[:, 0],
        model[:, 1],
        s=3,
        lw=0,
        alpha=0.25,
        color=_DRAW_COLOR,
        label="model draws softmax(x)",
        rasterized=True,
    )
    shown = np.all(cells > 0, axis=1) if log else np.ones(cells.shape[0], bool)
    a.scatter(
        cells[shown, 0],
        cells[shown, 1],
        s=4,
        lw=0,
        alpha=0.5,
        color=_CELL_COLOR,
        label="cells u / L",
        rasterized=True,
    )
    a.scatter(
        bulk[0],
        bulk[1],
        marker="*",
        s=120,
        color=_BULK_COLOR,
        edgecolor="white",
        lw=0.6,
        zorder=4,
        label="pseudobulk",
    )
    if log:
        a.set_xscale("log")
        a.set_yscale("log")
    a.set_xlim(*xlim)
    a.set_ylim(*ylim)


# ----------------------------------------------------------------------------- loadings spectrum
def loadings_spectrum(
    adata: AnnData,
    *,
    key: str = "nbln",
    log: bool | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Column norms of the gauge-invariant loadings ``W_perp``, largest first (the elbow).

    Each bar is the norm of one factor of ``W_perp`` (see :func:`scnbtools.get.W_compositional`),
    sorted in decreasing order; with a shrinkage prior on the loadings the unused factors
    collapse and the bars drop sharply after the effective rank. The dashed horizontal line is
    the relative cut-off stored in ``adata.uns[key]['w_prior_diagnostics']['threshold']``
    (a fraction of the largest norm) and the dotted vertical line separates the
    ``effective_rank`` factors the fit counts as used.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_pln` or :func:`scnbtools.tl.fit_nbln`.
    key
        The fit's ``key_added``.
    log
        Log-scaled norm axis; ``None`` turns it on when the norms span more than two decades.
    ax
        Matplotlib Axes to draw on; ``None`` creates a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None`` (shown).
    """
    res = lognormal_result(adata, _check_key_arg(key))
    fit = lognormal_fit(adata, key)
    log = check_bool(log, "log", allow_none=True)
    show, return_fig = check_show(show, return_fig)
    norms = np.sqrt(np.einsum("gk,gk->k", fit.W_perp, fit.W_perp))
    order = np.argsort(-norms, kind="stable")
    sorted_norms = norms[order]
    diag = res.get("w_prior_diagnostics")
    diag = diag if isinstance(diag, dict) else {}
    threshold = diag.get("threshold")
    eff = diag.get("effective_rank")
    kind = str(diag.get("type", "unknown"))
    k = norms.size
    top = float(sorted_norms[0]) if k else 0.0
    above = sorted_norms > (float(threshold) * top if threshold is not None else -np.inf)
    if log is None:
        pos = sorted_norms[sorted_norms > 0]
        log = bool(pos.size > 1 and pos.max() / pos.min() > 100)
    fig, (a,) = make_axes(ax, 1, panel_size=(max(5.2, 0.3 * k + 2.5), 3.6))
    x = np.arange(1, k + 1)
    colors = [_DRAW_COLOR if u else "0.7" for u in above]
    a.bar(x, sorted_norms, width=0.7, color=colors, label="‖W_perp column‖")
    a.plot(x, sorted_norms, color="0.3", lw=0.8, marker="o", ms=3)
    if threshold is not None:
        a.axhline(
            float(threshold) * top,
            color=_BULK_COLOR,
            ls="--",
            lw=1.0,
            label=f"threshold ({float(threshold):g} × largest)",
        )
    if eff is not None:
        a.axvline(
            int(eff) + 0.5, color="0.25", ls=":", lw=1.2, label=f"effective rank = {int(eff)}"
        )
    if log:
        a.set_yscale("log")
    else:
        a.set_ylim(0.0, 1.45 * top if top > 0 else 1.0)  # room for the legend above the bars
    if k <= 40:
        a.set_xticks(x, [str(int(j)) for j in order])
    else:
        a.set_xticks([])
    a.set_xlabel("factor (sorted by norm; tick = factor index)")
    a.set_ylabel("column norm of W_perp")
    prior = "no shrinkage prior" if kind == "none" else f"{kind} prior"
    title = f"{key} ({fit.model}): loadings spectrum, {prior}"
    if eff is not None:
        title += f"\neffective rank {int(eff)} of {k}"
    a.set_title(title, fontsize="medium")
    a.legend(fontsize="small", frameon=False, loc="upper right")
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)


# ----------------------------------------------------------------------------- correlation
def _cluster_order(corr: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if corr.shape[0] < 3:
        return np.arange(corr.shape[0])
    dist = np.clip(1.0 - corr, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def correlation_heatmap(
    adata: AnnData,
    *,
    key: str = "nbln",
    genes: Sequence[str] | None = None,
    n_genes: int = 30,
    compositional: bool = True,
    cluster: bool = True,
    cmap: str = "RdBu_r",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Heat map of the gene–gene correlations implied by a log-normal fit.

    The matrix of :func:`scnbtools.get.correlation`: by default from the gauge-invariant
    ``W_perp W_perpᵀ + diag(d)``. Without ``genes`` the ``n_genes`` genes with the largest
    loadings (row norms of ``W_perp``, or of ``W`` with ``compositional=False``) are shown —
    those the low-rank structure is about. Rows and columns are ordered by hierarchical
    clustering (average linkage on ``1 - correlation``) so that blocks of co-varying genes
    show as squares on the diagonal.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_pln` or :func:`scnbtools.tl.fit_nbln`.
    key
        The fit's ``key_added``.
    genes
        Gene names to show; ``None`` picks them by loading norm.
    n_genes
        Number of genes picked when ``genes=None``.
    compositional
        Use ``W_perp`` (gauge-invariant, default) instead of the raw ``W``.
    cluster
        Order the genes by hierarchical clustering; ``False`` keeps the given (or picked)
        order.
    cmap
        Matplotlib colormap (a diverging one; the scale is fixed to ``[-1, 1]``).
    ax
        Matplotlib Axes to draw on; ``None`` creates a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None`` (shown).
    """
    import seaborn as sns

    fit = lognormal_fit(adata, _check_key_arg(key))
    compositional = check_bool(compositional, "compositional")
    cluster = check_bool(cluster, "cluster")
    if not isinstance(cmap, str):
        raise TypeError(f"`cmap` must be the name of a matplotlib colormap, got {cmap!r}.")
    show, return_fig = check_show(show, return_fig)
    if genes is None:
        n_genes = check_positive_int(n_genes, "n_genes", 2)
        L = fit.W_perp if compositional else fit.W
        norm = np.sqrt(np.einsum("gk,gk->g", L, L))
        pick = np.sort(np.argsort(-norm, kind="stable")[: min(n_genes, adata.n_vars)])
        names = list(adata.var_names[pick])
    else:
        names = list(adata.var_names[gene_indices(adata, genes)])
    corr = get.correlation(adata, key=key, compositional=compositional, genes=names)
    if cluster:
        order = _cluster_order(corr.to_numpy())
        corr = corr.iloc[order, order]
    m = corr.shape[0]
    fig, (a,) = make_axes(ax, 1, panel_size=(min(12.0, 0.22 * m + 3.5), min(11.0, 0.22 * m + 2.5)))
    labels = m <= 60
    with warnings.catch_warnings():  # seaborn's own use of a deprecated colormap method
        warnings.filterwarnings(
            "ignore", message="The set_bad function", category=PendingDeprecationWarning
        )
        sns.heatmap(
            corr,
            ax=a,
            cmap=cmap,
            vmin=-1.0,
            vmax=1.0,
            center=0.0,
            square=True,
            xticklabels=labels,
            yticklabels=labels,
            cbar_kws={"label": "correlation", "shrink": 0.8},
        )
    if labels:
        a.tick_params(labelsize="x-small")
    which = "W_perp W_perpᵀ + diag(d)" if compositional else "W Wᵀ + diag(d)"
    a.set_title(f"{key} ({fit.model}): correlation of {which}\n{m} genes", fontsize="medium")
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)
