"""Plots of NB-family fits: the loss trace and posterior-predictive count histograms."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes

from .. import get
from .._core.models import get_model
from .._validate import check_bool, check_positive_int, get_matrix, resolve_rng
from ._utils import check_show, finish, make_axes

__all__ = ["loss", "ppc", "predictive_frequencies", "predictive_pmf", "sample_frequencies"]

#: quantile levels of the predictive bands: 90 % and 50 % central intervals and the median
_BAND_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
#: genes are picked at evenly spaced quantiles of the observed mean count in this range
_STRATA = (0.25, 0.995)
_OBS_COLOR = "0.78"
_BAND_COLOR = "tab:blue"
_LR_COLOR = "tab:red"


# ----------------------------------------------------------------------------- loss
def _running_mean(x: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([[0.0], x]))
    return (c[window:] - c[:-window]) / window


def loss(
    adata: AnnData,
    *,
    key: str = "zinb",
    log: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Loss (negative ELBO) trace of a fit, with the learning-rate reductions marked.

    The raw per-step loss is drawn thin and its running mean over 100 steps (the span over
    which the optimiser judges progress) thick; dashed vertical lines mark the steps where
    the learning rate was reduced on a plateau. A trace that has flattened after the last
    reductions has converged; the title says whether the fit stopped because it
    converged or because it ran out of ``n_steps``.

    Parameters
    ----------
    adata
        AnnData fitted by e.g. :func:`scnbtools.tl.fit_zinb`.
    key
        The fit's ``key_added``.
    log
        Plot ``loss - min(loss)`` on a log axis (default). The ELBO of a large data set has
        a large constant offset, so on a linear axis everything after the first steps looks
        flat; the log excess shows how much each phase still gained. ``False`` plots the
        loss itself on a linear axis.
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
    res = get.fit_result(adata, key=key)
    log = check_bool(log, "log")
    show, return_fig = check_show(show, return_fig)
    trace = np.asarray(res.get("loss", []), dtype=np.float64).ravel()
    if trace.size == 0 or not np.all(np.isfinite(trace)):
        raise ValueError(
            f"`adata.uns[{key!r}]['loss']` is empty or not finite; refit with `key_added={key!r}`."
        )
    lr = np.asarray(res.get("learning_rate", np.zeros(trace.size)), dtype=np.float64).ravel()
    fig, (a,) = make_axes(ax, 1, panel_size=(5.5, 3.5))

    steps = np.arange(1, trace.size + 1)
    lowest = float(trace.min())
    y = trace - lowest if log else trace
    window = int(min(100, max(1, trace.size // 10)))
    smooth = _running_mean(y, window)
    smooth_steps = steps[window - 1 :] - (window - 1) / 2.0
    if log:
        y = np.where(y > 0, y, np.nan)  # the minimum itself has no place on a log axis
    a.plot(steps, y, color=_BAND_COLOR, lw=0.5, alpha=0.35, label="per step")
    a.plot(smooth_steps, smooth, color=_BAND_COLOR, lw=1.8, label=f"mean of {window} steps")
    if log:
        a.set_yscale("log")
        a.set_ylabel("loss − min loss")
        a.text(
            0.98,
            0.97,
            f"min loss (negative ELBO) = {lowest:,.0f}",
            transform=a.transAxes,
            ha="right",
            va="top",
            fontsize="small",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5},
        )
    else:
        a.set_ylabel("loss (negative ELBO)")
    cuts = np.flatnonzero(np.diff(lr) != 0) + 1 if lr.size == trace.size else np.array([], int)
    for i, c in enumerate(cuts):
        a.axvline(
            steps[c] - 0.5,
            color=_LR_COLOR,
            ls="--",
            lw=0.9,
            label="learning rate reduced" if i == 0 else None,
        )
    a.set_xlabel("optimisation step")
    a.set_xlim(0, trace.size + 1)
    model = str(res["params"].get("model", key))
    name = key if model == key else f"{key} ({model})"
    status = (
        f"converged after {trace.size:,} steps"
        if bool(res.get("converged", False))
        else f"not converged: stopped at n_steps = {trace.size:,}"
    )
    a.set_title(f"{name} fit: {status}", fontsize="medium")
    a.legend(loc="lower left" if log else "upper right", fontsize="small", frameon=False)
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)


# ----------------------------------------------------------------------------- ppc
@functools.cache
def _log_pmf_fn(model: str):
    """Jitted ``(params, k) -> log pmf`` of ``model``'s observation distribution (one
    compilation per model and shape, reused across calls)."""
    spec = get_model(model)
    return jax.jit(lambda params, k: spec.obs_dist(params).log_prob(k))


def predictive_pmf(model: str, values: dict[str, np.ndarray], max_count: int) -> np.ndarray:
    """Probabilities of the counts ``0..max_count`` under each posterior draw.

    ``values`` maps every site of ``model`` to its draws: ``[S]`` for a global site,
    ``[S, G]`` for a per-gene site (``G`` genes). Returns ``[S, G, max_count + 1]``.
    """
    spec = get_model(model)
    n_genes = next(np.shape(values[s.name])[1] for s in spec.sites if s.plate == "gene")
    # pad genes and counts to power-of-two sizes so later calls reuse the compiled program
    g_pad, k_pad = _bucket(n_genes), _bucket(max_count + 1)
    params = {}
    for site in spec.sites:
        v = np.asarray(values[site.name], dtype=np.float32)
        if site.plate == "global":
            params[site.name] = v[:, None]
        else:
            params[site.name] = np.pad(v, ((0, 0), (0, g_pad - n_genes)), mode="edge")
    k = np.arange(k_pad, dtype=np.float32)[:, None, None]
    logp = np.asarray(_log_pmf_fn(spec.name)(params, k), dtype=np.float64)
    return np.moveaxis(np.exp(logp[: max_count + 1, :, :n_genes]), 0, -1)


def _bucket(n: int) -> int:
    """Smallest power of two >= ``n`` (at least 8)."""
    return 1 << max(3, (int(n) - 1).bit_length())


def sample_frequencies(pmf: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Count frequencies of simulated data sets of ``n_cells`` cells, one per row of ``pmf``.

    ``pmf`` is ``[S, K + 1]``: the probabilities of counts ``0..K`` (the rest of the mass is
    the tail ``> K``). Cells are independent given the parameters, so a data set's histogram
    is ``Multinomial(n_cells, (pmf, tail))``: drawn exactly, at a cost that does not depend on
    ``n_cells``. Returns ``[S, K + 1]`` fractions of cells (the tail bin dropped).
    """
    tail = np.clip(1.0 - pmf.sum(axis=1, keepdims=True), 0.0, None)
    probs = np.concatenate([pmf, tail], axis=1)
    probs /= probs.sum(axis=1, keepdims=True)
    return rng.multinomial(int(n_cells), probs)[:, :-1] / float(n_cells)


def predictive_frequencies(
    model: str,
    values: dict[str, np.ndarray],
    n_cells: int,
    max_count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per-count frequencies of posterior-predictive data sets of one gene.

    For each of the ``S`` posterior draws in ``values`` (``{site: array [S]}``: the gene's
    parameters and the global ones) a data set of ``n_cells`` counts is drawn from the
    model's observation distribution and summarised as the fraction of cells with count
    ``0, 1, ..., max_count``; see :func:`sample_frequencies`. Returns ``[S, max_count + 1]``.
    """
    spec = get_model(model)
    per_gene = {s.name for s in spec.sites if s.plate == "gene"}
    columns = {k: np.asarray(v)[:, None] if k in per_gene else v for k, v in values.items()}
    pmf = predictive_pmf(model, columns, max_count)[:, 0, :]
    return sample_frequencies(pmf, n_cells, rng)


def _pick_genes(adata: AnnData, means: np.ndarray, genes, n_genes: int) -> np.ndarray:
    if genes is None:
        n = check_positive_int(n_genes, "n_genes")
        order = np.argsort(means, kind="stable")
        if n >= adata.n_vars:
            return order
        levels = np.linspace(*_STRATA, n) if n > 1 else np.array([0.5])
        pos = np.unique(np.round(levels * (adata.n_vars - 1)).astype(int))
        return order[pos]
    names = [genes] if isinstance(genes, str) else genes
    if not isinstance(names, Sequence | np.ndarray | pd.Index) or len(names) == 0:
        raise TypeError(f"`genes` must be a gene name or a non-empty list of names, got {genes!r}.")
    names = [str(g) for g in names]
    missing = [g for g in names if g not in adata.var_names]
    if missing:
        raise KeyError(
            f"`genes` not found in `adata.var_names`: {', '.join(map(repr, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}."
        )
    return adata.var_names.get_indexer(names)


@dataclass(frozen=True)
class _PPCPanel:
    """What one panel of :func:`ppc` shows (computed separately so it can be tested)."""

    gene: str
    mean: float
    k: np.ndarray  # counts 0..max_count
    observed: np.ndarray  # fraction of cells with each count
    bands: dict[float, np.ndarray]  # quantile level -> predicted fraction per count


def _ppc_panels(
    adata: AnnData,
    key: str,
    idx: np.ndarray,
    obs: np.ndarray,
    means: np.ndarray,
    *,
    n_samples: int,
    seed: int,
    max_count: int | None,
) -> list[_PPCPanel]:
    """Observed and posterior-predictive count frequencies of the genes ``idx``."""
    model = str(get.fit_result(adata, key=key)["params"]["model"])
    spec = get_model(model)
    draws = get.posterior_samples(adata, key=key, n_samples=n_samples, rng=seed)
    gene_site = next(s.name for s in spec.sites if s.plate == "gene")
    if draws[gene_site].shape[-1] != adata.n_vars:
        raise ValueError(
            f"the fit under key {key!r} has {draws[gene_site].shape[-1]} genes but `adata` has "
            f"{adata.n_vars}; plot on the AnnData that was fitted (subsetting genes after the "
            "fit is not supported)."
        )
    if max_count is None:
        tops = [max(3, int(np.ceil(np.quantile(obs[:, j], 0.99)))) for j in range(idx.size)]
    else:
        tops = [max_count] * idx.size
    # one vectorised pmf evaluation for the chosen genes only
    values = {
        s.name: draws[s.name][:, idx] if s.plate == "gene" else draws[s.name] for s in spec.sites
    }
    pmf = predictive_pmf(model, values, max(tops))
    gen = np.random.default_rng(seed)
    panels = []
    for j, (g, top) in enumerate(zip(idx, tops, strict=True)):
        x = obs[:, j]
        freq = sample_frequencies(pmf[:, j, : top + 1], adata.n_obs, gen)
        bands = dict(zip(_BAND_LEVELS, np.quantile(freq, _BAND_LEVELS, axis=0), strict=True))
        observed = np.bincount(np.minimum(x, top + 1), minlength=top + 2)[: top + 1] / x.size
        panels.append(
            _PPCPanel(str(adata.var_names[g]), float(means[g]), np.arange(top + 1), observed, bands)
        )
    return panels


def _observed(X, idx: np.ndarray, layer_name: str) -> np.ndarray:
    """Dense ``[cells, len(idx)]`` counts of the chosen genes only, checked to be counts."""
    sub = X[:, idx]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    sub = np.asarray(sub, dtype=np.float64)
    if not np.all(np.isfinite(sub)) or np.any(sub < 0) or np.any(sub != np.round(sub)):
        raise ValueError(
            f"{layer_name} does not hold raw counts for the plotted genes (negative, "
            "non-integer or non-finite values); pass the layer with the fitted raw counts "
            "via `layer=`."
        )
    return sub.astype(np.int64)


def ppc(
    adata: AnnData,
    *,
    key: str = "zinb",
    genes: str | Sequence[str] | None = None,
    n_genes: int = 6,
    n_samples: int = 200,
    layer: str | None = None,
    rng: int | np.random.Generator = 0,
    max_count: int | None = None,
    log: bool = False,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Posterior-predictive check: observed count histograms against the model's.

    For every plotted gene the grey bars are the observed fraction of cells with count
    ``0, 1, 2, ...``. The blue bands show the same fractions in data sets simulated from
    the fitted model, one per posterior draw, each with as many cells as ``adata``: the
    darker band holds the central 50 % of these simulated data sets, the lighter one 90 %,
    and the blue line is their median. Where the bars leave the bands the model does not
    describe that gene (e.g. more zeros than it predicts, or a long tail from one cell
    type expressing it highly). The inset compares the
    observed fraction of zeros with the predicted 90 % interval.

    Parameters
    ----------
    adata
        AnnData fitted by e.g. :func:`scnbtools.tl.fit_zinb` (not fitted again here).
    key
        The fit's ``key_added``.
    genes
        Gene name(s) to plot. ``None`` picks ``n_genes`` genes at evenly spaced quantiles
        (25 % to 99.5 %) of the observed mean count, from lowly to highly expressed.
    n_genes
        Number of genes picked when ``genes=None``.
    n_samples
        Posterior draws, i.e. simulated data sets per gene.
    layer
        Layer with the raw counts; ``None`` uses the one the fit used
        (``adata.uns[key]['params']['layer']``; ``"X"`` means ``adata.X``).
    rng
        Seed (int) or ``numpy.random.Generator`` of the draws.
    max_count
        Largest count shown. ``None`` chooses per gene the 99th percentile of its observed
        counts (at least 3).
    log
        Log-scaled y axis, to see the tail of highly expressed genes.
    ncols
        Panels per row when a figure is created.
    ax
        Axes to draw on: one per gene (a sequence), or a single Axes for one gene.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    With ``show=False`` the list of Axes, one per gene (a single Axes when one gene is
    plotted); the Figure with ``return_fig=True``; ``None`` when shown.
    """
    res = get.fit_result(adata, key=key)
    n_samples = check_positive_int(n_samples, "n_samples", 2)
    ncols = check_positive_int(ncols, "ncols")
    seed = resolve_rng(rng)
    log = check_bool(log, "log")
    show, return_fig = check_show(show, return_fig)
    if max_count is not None:
        max_count = check_positive_int(max_count, "max_count")
    if layer is None:
        layer = str(res["params"].get("layer", "X"))
    X, layer_name = get_matrix(adata, None if layer == "X" else layer)
    means = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    idx = _pick_genes(adata, means, genes, n_genes)
    obs = _observed(X, idx, layer_name)

    panels = _ppc_panels(
        adata, key, idx, obs, means, n_samples=n_samples, seed=seed, max_count=max_count
    )
    fig, axes = make_axes(ax, idx.size, ncols=ncols, panel_size=(3.6, 2.9))
    for panel, a in zip(panels, axes, strict=True):
        _draw_ppc_panel(a, panel, log=log)
    handles, labels = axes[0].get_legend_handles_labels()
    first = labels.index("observed")  # observed first, then the bands from wide to narrow
    order = [first, *(i for i in range(len(labels)) if i != first)]
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if ax is None:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    else:
        axes[0].legend(handles, labels, loc="best", fontsize="x-small", frameon=False)
    return finish(fig, axes, show=show, return_fig=return_fig, single=idx.size == 1)


def _pct(x: float) -> str:
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _draw_ppc_panel(a, panel: _PPCPanel, *, log: bool) -> None:
    k, observed, b = panel.k, panel.observed, panel.bands
    edge = "0.55" if k.size <= 20 else "none"
    a.bar(k, observed, width=1.0, color=_OBS_COLOR, edgecolor=edge, lw=0.5, label="observed")
    a.fill_between(
        k, b[0.05], b[0.95], step="mid", color=_BAND_COLOR, alpha=0.3, lw=0, label="90% predicted"
    )
    a.fill_between(
        k, b[0.25], b[0.75], step="mid", color=_BAND_COLOR, alpha=0.55, lw=0, label="50% predicted"
    )
    a.step(k, b[0.5], where="mid", color=_BAND_COLOR, lw=0.9, label="median predicted")
    if log:
        a.set_yscale("log")
    a.set_xlim(k[0] - 0.5, k[-1] + 0.5)
    if k[-1] <= 10:
        a.set_xticks(k)
    a.set_xlabel("count per cell")
    a.set_ylabel("fraction of cells")
    a.set_title(f"{panel.gene}  (mean {panel.mean:.2g})", fontsize="medium")
    a.text(
        0.97,
        0.95,
        f"zeros: {_pct(observed[0])} observed\n{_pct(b[0.05][0])}–{_pct(b[0.95][0])} predicted",
        transform=a.transAxes,
        ha="right",
        va="top",
        fontsize="x-small",
    )
