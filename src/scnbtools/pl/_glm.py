"""Plots of GLM fits (``tl.fit_glm``) and of simulations (``tl.simulate``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes

from .._design import (
    coef_table,
    designs_for,
    fit_family,
    fit_record,
    layer_arg,
    natural_params,
    resolve_offset,
)
from .._validate import get_matrix
from ._utils import check_show, finish, make_axes

__all__ = ["glm_coef", "mean_variance", "simulation_check"]

_REAL, _SIM, _MODEL = "0.45", "tab:orange", "tab:blue"


# ----------------------------------------------------------------------------- coefficients
def _truth_table(truth, est: pd.DataFrame) -> pd.DataFrame:
    """``truth`` as a genes × design-columns table aligned with ``est``."""
    cols, genes = list(est.columns), list(est.index)
    if isinstance(truth, pd.DataFrame):
        if set(map(str, truth.index)) >= set(cols) and truth.shape[1] == len(genes):
            t = truth.loc[cols].T
        elif set(map(str, truth.columns)) >= set(cols) and truth.shape[0] == len(genes):
            t = truth[cols]
        else:
            raise ValueError(
                "`truth` DataFrame must have the design columns "
                f"({', '.join(map(repr, cols))}) as its index (columns = genes) or as its columns "
                "(rows = genes)."
            )
        return pd.DataFrame(np.asarray(t, dtype=np.float64), index=genes, columns=cols)
    arr = np.asarray(truth, dtype=np.float64)
    p, G = len(cols), len(genes)
    if arr.shape == (p, G):
        arr = arr.T
    elif arr.shape != (G, p):
        raise ValueError(
            f"`truth` must have shape (design columns, genes) = ({p}, {G}) or ({G}, {p}), got "
            f"{arr.shape}."
        )
    return pd.DataFrame(arr, index=genes, columns=cols)


def glm_coef(
    adata: AnnData,
    *,
    key: str = "glm",
    param: str = "mean",
    truth: pd.DataFrame | np.ndarray | None = None,
    columns: list[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Fitted coefficients across genes, or against a known truth.

    Without ``truth``: one box (with the genes as points) per design column. With
    ``truth``: estimates against true values with ±1.96 SE bars and the identity line;
    the title gives the mean absolute error.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`scnbtools.tl.fit_glm`.
    key
        ``key_added`` of the fit.
    param
        ``"mean"``, ``"dispersion"`` or ``"zero_inflation"``.
    truth
        True coefficients: a DataFrame with design columns as index (genes as columns,
        the layout of :func:`scnbtools.get.glm_coef`) or as columns, or an array of shape
        (design columns, genes) or (genes, design columns).
    columns
        Design columns to show (default all).
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
    fit_family(fit_record(adata, key), param)
    show, return_fig = check_show(show, return_fig)
    est = coef_table(adata, key, param, "coef")
    se = coef_table(adata, key, param, "se")
    tru = None if truth is None else _truth_table(truth, est)
    if columns is not None:
        missing = [c for c in columns if c not in est.columns]
        if missing:
            raise KeyError(
                f"`columns` {missing} are not design columns of {param!r} "
                f"({', '.join(map(repr, est.columns))})."
            )
        est, se = est[list(columns)], se[list(columns)]
        tru = None if tru is None else tru[list(columns)]
    fig, (a,) = make_axes(ax, 1, panel_size=(5.0, 4.0))
    if tru is None:
        vals = [est[c].to_numpy() for c in est.columns]
        a.boxplot(vals, showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)
        for i, v in enumerate(vals, start=1):
            a.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=8, color=_MODEL, alpha=0.6, lw=0)
        a.set_xticks(range(1, len(vals) + 1), list(est.columns), rotation=30, ha="right")
        a.axhline(0.0, color="0.6", lw=0.8, ls=":")
        a.set_ylabel(f"{param} coefficient")
        a.set_title(f"{key}: {param} coefficients across {est.shape[0]} genes", fontsize="medium")
    else:
        lo = min(float(tru.to_numpy().min()), float(est.to_numpy().min()))
        hi = max(float(tru.to_numpy().max()), float(est.to_numpy().max()))
        a.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--", label="identity")
        for c in est.columns:
            a.errorbar(
                tru[c],
                est[c],
                yerr=1.96 * se[c],
                fmt="o",
                ms=3.5,
                lw=0.7,
                alpha=0.8,
                label=str(c),
            )
        mae = float(np.mean(np.abs(est.to_numpy() - tru.to_numpy())))
        a.set_xlabel("true coefficient")
        a.set_ylabel("estimate (±1.96 SE)")
        a.set_title(f"{key}: {param} coefficients, mean |error| = {mae:.4f}", fontsize="medium")
        a.legend(fontsize="small", frameon=False)
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)


# ----------------------------------------------------------------------------- mean-variance
def _gene_stats(X) -> dict[str, np.ndarray]:
    """Per-gene mean, variance and zero fraction, and per-cell totals (never densified)."""
    n = X.shape[0]
    if sp.issparse(X):
        X = X.tocsr()
        mean = np.asarray(X.sum(axis=0), dtype=np.float64).ravel() / n
        ex2 = np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel() / n
        nz = np.asarray((X != 0).sum(axis=0)).ravel()
        lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    else:
        A = np.asarray(X, dtype=np.float64)
        mean, ex2 = A.mean(axis=0), (A * A).mean(axis=0)
        nz = (A != 0).sum(axis=0)
        lib = A.sum(axis=1)
    return {
        "mean": mean,
        "var": np.maximum(ex2 - mean * mean, 0.0),
        "zero": 1.0 - nz / n,
        "lib": lib,
    }


def _model_moments(
    adata: AnnData, rec, key: str, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance of the fitted model over the fitted cells."""
    fam = fit_family(rec)
    off = resolve_offset(rec, adata.obs, adata, None)
    designs = designs_for(rec, adata.obs)
    coefs = {p: coef_table(adata, key, p).to_numpy(dtype=np.float64) for p in fam.params}
    G, n = adata.n_vars, adata.n_obs
    s_m, s_m2, s_v = np.zeros(G), np.zeros(G), np.zeros(G)
    for a in range(0, n, block):
        b = min(a + block, n)
        etas = {p: designs[p][a:b] @ coefs[p].T for p in fam.params}
        etas["mean"] = etas["mean"] + off[a:b, None]
        prm = natural_params(fam, etas)
        mu = prm["mean"]
        var = mu + (mu * mu / prm["dispersion"] if "dispersion" in prm else 0.0)
        pi = prm.get("zero_inflation", np.zeros_like(mu))
        m = (1.0 - pi) * mu
        v = (1.0 - pi) * var + pi * (1.0 - pi) * mu * mu
        s_m += m.sum(axis=0)
        s_m2 += (m * m).sum(axis=0)
        s_v += v.sum(axis=0)
    mean = s_m / n
    return mean, s_v / n + np.maximum(s_m2 / n - mean * mean, 0.0)


def mean_variance(
    adata: AnnData,
    *,
    key: str = "glm",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Per-gene variance against mean: observed counts and the fitted model.

    Works for GLM fits (:func:`scnbtools.tl.fit_glm`) and NB-family fits
    (:func:`scnbtools.tl.fit`: NBDM, ZINB, NBVCP, ZINBVCP, mixtures). The model's per-gene
    mean and variance average the fitted cell-level distributions over the fitted cells
    (law of total variance, zero inflation included), so a good fit puts the model points
    on the observed ones; the dashed line is the Poisson variance (``var = mean``).

    For NB-family fits the moments are those of the posterior means of the parameters
    (NumPyro convention, ``p̂_c = p ν_c / (1 - p (1 - ν_c))``): NB variance
    ``m + m²/r``; with a gate ``π`` the mean ``(1 - π) m`` and variance
    ``(1 - π)(m + m²/r) + π (1 - π) m²``; a capture model averages the cells' moments over
    their fitted ``ν_c`` (``E = mean_c m_c``, ``Var = mean_c v_c + var_c m_c``); a mixture
    uses the mixture moments with the fitted mixing weights.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`scnbtools.tl.fit_glm` or :func:`scnbtools.tl.fit` (its
        counts are read from the fit's layer).
    key
        ``key_added`` of the fit (a GLM or an NB-family fit).
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
    # imported here: _nb_moments reads this module's helpers
    from ._nb_moments import check_any_fit, is_nb_fit, nb_mean_variance

    check_any_fit(adata, key)
    if is_nb_fit(adata, key):
        return nb_mean_variance(adata, key=key, ax=ax, show=show, return_fig=return_fig)
    rec = fit_record(adata, key)
    show, return_fig = check_show(show, return_fig)
    X, _ = get_matrix(adata, layer_arg(rec))
    obs_stats = _gene_stats(X)
    m_mean, m_var = _model_moments(adata, rec, key)
    fig, (a,) = make_axes(ax, 1, panel_size=(5.0, 4.0))
    keep = obs_stats["mean"] > 0
    a.scatter(
        obs_stats["mean"][keep],
        obs_stats["var"][keep],
        s=9,
        color=_REAL,
        alpha=0.6,
        lw=0,
        label="observed",
    )
    a.scatter(
        m_mean[keep], m_var[keep], s=9, color=_MODEL, alpha=0.6, lw=0, label=f"{rec['family']} GLM"
    )
    lo = max(float(min(obs_stats["mean"][keep].min(), m_mean[keep].min())), 1e-4)
    hi = float(max(obs_stats["mean"][keep].max(), m_mean[keep].max()))
    a.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--", label="Poisson (var = mean)")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("gene mean")
    a.set_ylabel("gene variance")
    a.set_title(f"{key}: mean–variance, {int(keep.sum())} genes", fontsize="medium")
    a.legend(fontsize="small", frameon=False)
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)


# ----------------------------------------------------------------------------- simulation check
def simulation_check(
    adata: AnnData,
    *,
    simulated: AnnData,
    layer: str | None = None,
    sim_layer: str | None = None,
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Real against simulated counts: gene means, variances, zero fractions, library sizes.

    Four panels: per-gene mean, variance and fraction of zeros (simulated against real,
    identity line dashed; log axes for means and variances) and the distributions of
    library sizes (total counts per cell).

    Parameters
    ----------
    adata
        The real data.
    simulated
        The simulated data, e.g. from :func:`scnbtools.tl.simulate` (same genes).
    layer
        Layer of ``adata`` with raw counts (``None``: ``X``).
    sim_layer
        Layer of ``simulated`` with the counts (``None``: ``X``).
    ax
        Four Axes to draw on; ``None`` creates a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The list of four Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    if not isinstance(adata, AnnData) or not isinstance(simulated, AnnData):
        raise TypeError("`adata` and `simulated` must both be AnnData objects.")
    if adata.n_vars != simulated.n_vars or not np.array_equal(
        np.asarray(adata.var_names), np.asarray(simulated.var_names)
    ):
        raise ValueError(
            f"`adata` ({adata.n_vars} genes) and `simulated` ({simulated.n_vars} genes) must have "
            "the same genes in the same order."
        )
    show, return_fig = check_show(show, return_fig)
    real = _gene_stats(get_matrix(adata, layer)[0])
    sim = _gene_stats(get_matrix(simulated, sim_layer)[0])
    fig, axes = make_axes(ax, 4, ncols=4, panel_size=(3.6, 3.4))
    for a, stat, label, log in zip(
        axes[:3],
        ("mean", "var", "zero"),
        ("gene mean", "gene variance", "fraction of zeros"),
        (True, True, False),
        strict=True,
    ):
        x, y = real[stat], sim[stat]
        keep = (x > 0) & (y > 0) if log else np.ones(x.shape, bool)
        a.scatter(x[keep], y[keep], s=8, color=_SIM, alpha=0.6, lw=0)
        lo, hi = float(min(x[keep].min(), y[keep].min())), float(max(x[keep].max(), y[keep].max()))
        a.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--")
        if log:
            a.set_xscale("log")
            a.set_yscale("log")
        a.set_xlabel(f"real {label}")
        a.set_ylabel(f"simulated {label}")
        a.set_title(label, fontsize="medium")
    a = axes[3]
    both = np.concatenate([real["lib"], sim["lib"]])
    bins = np.histogram_bin_edges(both, bins=40)
    a.hist(real["lib"], bins=bins, color=_REAL, alpha=0.6, label="real", density=True)
    a.hist(sim["lib"], bins=bins, color=_SIM, alpha=0.6, label="simulated", density=True)
    a.set_xlabel("library size (total counts per cell)")
    a.set_ylabel("density")
    a.set_title("library sizes", fontsize="medium")
    a.legend(fontsize="small", frameon=False)
    return finish(fig, axes, show=show, return_fig=return_fig, single=False)
