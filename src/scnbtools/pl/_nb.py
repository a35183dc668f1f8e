"""Plots of NB-family fits: the loss trace, posterior-predictive checks (count histograms
pooled over cells, or one cell's counts against its predictive intervals), capture
probabilities against library size, and mixture composition."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .. import _keys, get
from .._core.models import get_model
from .._validate import check_bool, check_positive_int, get_matrix, resolve_rng
from ..get._lognormal import is_lognormal_fit
from ..get._posterior import component_names
from ._nb_moments import FitKind, canonical_draws, fit_kind, point_params
from ._utils import check_show, finish, make_axes

__all__ = [
    "capture",
    "loss",
    "mixture_composition",
    "ppc",
    "predictive_cell_frequencies",
    "predictive_frequencies",
    "predictive_pmf",
    "predictive_zero_fraction",
    "sample_frequencies",
]

#: quantile levels of the predictive bands: 90 % and 50 % central intervals and the median
_BAND_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
#: genes are picked at evenly spaced quantiles of the observed mean count in this range
_STRATA = (0.25, 0.995)
_OBS_COLOR = "0.78"
_BAND_COLOR = "tab:blue"
_LR_COLOR = "tab:red"
_OUT_COLOR = "tab:red"
_PPC_LEVELS = ("marginal", "per_cell")
#: genes shown when ``genes=None``, per check
_N_GENES = {"marginal": 6, "per_cell": 24}
#: cells are picked at evenly spaced quantiles of the library size in this range
_CELL_STRATA = (0.05, 0.95)
#: predictive counts per (cell, gene) behind the intervals of the per-cell check
_MIN_PER_CELL_DRAWS = 2000
#: entries (draws × cells × genes) simulated at once by the cell-level predictive
_BLOCK = 1 << 22


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
    """Loss trace of a fit (negative ELBO; for a log-normal fit the negative Laplace log
    marginal per cell), with the learning-rate reductions marked.

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
    what = "negative Laplace log marginal per cell" if "laplace" in res else "negative ELBO"
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
            f"min loss ({what}) = {lowest:,.{0 if abs(lowest) >= 1e4 else 2}f}",
            transform=a.transAxes,
            ha="right",
            va="top",
            fontsize="small",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5},
        )
    else:
        a.set_ylabel(f"loss ({what})")
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


def _pick(
    names: pd.Index, score: np.ndarray, chosen, n: int, strata, what: str, arg: str
) -> np.ndarray:
    """Indices of ``chosen`` names, or of ``n`` items at evenly spaced quantiles of
    ``score`` within ``strata`` (genes by mean count, cells by library size)."""
    if chosen is None:
        n = check_positive_int(n, f"n_{what}s")
        order = np.argsort(score, kind="stable")
        if n >= len(names):
            return order
        levels = np.linspace(*strata, n) if n > 1 else np.array([0.5])
        pos = np.unique(np.round(levels * (len(names) - 1)).astype(int))
        return order[pos]
    given = [chosen] if isinstance(chosen, str) else chosen
    if not isinstance(given, Sequence | np.ndarray | pd.Index) or len(given) == 0:
        raise TypeError(
            f"`{arg}` must be a {what} name or a non-empty list of names, got {chosen!r}."
        )
    given = [str(g) for g in given]
    missing = [g for g in given if g not in names]
    if missing:
        where = "var_names" if what == "gene" else "obs_names"
        raise KeyError(
            f"`{arg}` not found in `adata.{where}`: {', '.join(map(repr, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}."
        )
    return names.get_indexer(given)


def _pick_genes(adata: AnnData, means: np.ndarray, genes, n_genes: int) -> np.ndarray:
    return _pick(adata.var_names, means, genes, n_genes, _STRATA, "gene", "genes")


# ----------------------------------------------------------------------------- cell-level predictive
def predictive_cell_frequencies(
    values: Mapping[str, np.ndarray],
    n_cells: int,
    max_count: int,
    rng: np.random.Generator,
    *,
    assignment: np.ndarray | None = None,
) -> np.ndarray:
    """Per-count frequencies of posterior-predictive data sets whose cells differ.

    For every posterior draw ``s`` one data set of ``n_cells`` cells is simulated: each cell
    ``c`` gets a component ``z_c ~ Categorical(assignment[c])`` (mixtures), its own capture
    probability ``nu[s, c]`` (capture models), and counts
    ``x_cg ~ π δ_0 + (1 - π) NB(r_{z_c g}, p̂_{c})`` with ``p̂_c = p ν_c / (1 - p (1 - ν_c))``
    (NumPyro convention, mean ``r p̂ / (1 - p̂)``). Each data set is summarised per gene as
    the fraction of cells with count ``0, 1, ..., max_count``.

    Parameters
    ----------
    values
        Draws: ``r`` ``[S, G]`` or ``[S, K, G]``; ``p`` ``[S]`` or ``[S, K]``; optional
        ``gate`` shaped like ``r``; optional ``nu`` ``[S, n_cells]``
        (see :func:`scnbtools.pl._nb_moments.canonical_draws`).
    n_cells
        Cells per simulated data set.
    max_count
        Largest count tabulated (larger counts fall in an unreported tail bin).
    rng
        The random generator.
    assignment
        ``[n_cells, K]`` component probabilities of the cells; required when ``K > 1``.

    Returns
    -------
    ``[S, G, max_count + 1]`` fractions of cells.
    """
    r = np.asarray(values["r"], dtype=np.float64)
    if r.ndim == 2:
        r = r[:, None, :]
    S, K, G = r.shape
    p = np.broadcast_to(np.asarray(values["p"], dtype=np.float64).reshape(S, -1), (S, K))
    gate = values.get("gate")
    if gate is not None:
        gate = np.broadcast_to(np.asarray(gate, dtype=np.float64).reshape(S, -1, G), (S, K, G))
    nu = values.get("nu")
    if nu is not None:
        nu = np.asarray(nu, dtype=np.float64)
        if nu.shape != (S, n_cells):
            raise ValueError(f"`nu` must have shape {(S, n_cells)}, got {nu.shape}.")
    cum = _component_cdf(assignment, n_cells, K)
    M = int(max_count) + 1
    out = np.empty((S, G, M))
    step = max(1, _BLOCK // max(1, n_cells * G))
    for a in range(0, S, step):
        b = min(S, a + step)
        z = _draw_components(cum, (b - a, n_cells), rng)  # [s, N]
        x = _simulate(
            r[a:b],
            p[a:b],
            None if gate is None else gate[a:b],
            None if nu is None else nu[a:b],
            z,
            rng,
        )  # [s, N, G]
        x = np.minimum(x, M)  # M is the tail bin
        s = b - a
        flat = (np.arange(s)[:, None, None] * G + np.arange(G)[None, None, :]) * (M + 1) + x
        hist = np.bincount(flat.ravel(), minlength=s * G * (M + 1)).reshape(s, G, M + 1)
        out[a:b] = hist[..., :M] / float(n_cells)
    return out


def _component_cdf(assignment, n_cells: int, K: int) -> np.ndarray | None:
    """Row-wise cumulative component probabilities ``[n_cells, K]`` (``None`` for one)."""
    if K == 1:
        return None
    if assignment is None:
        raise ValueError("a mixture's predictive needs `assignment` (cells × components).")
    a = np.asarray(assignment, dtype=np.float64)
    if a.shape != (n_cells, K):
        raise ValueError(f"`assignment` must have shape {(n_cells, K)}, got {a.shape}.")
    return np.cumsum(a, axis=1)


def _draw_components(cum: np.ndarray | None, shape: tuple[int, ...], rng) -> np.ndarray:
    """Components ``[*shape]`` (the last axis runs over the cells of ``cum``)."""
    if cum is None:
        return np.zeros(shape, dtype=np.int64)
    u = rng.random(shape)[..., None] * cum[:, -1:]  # rows need not sum to exactly 1
    return np.minimum((u >= cum[:, :-1]).sum(axis=-1), cum.shape[1] - 1)


def _simulate(r, p, gate, nu, z, rng) -> np.ndarray:
    """Counts ``[*z.shape, G]``: draw ``s`` (first axis of ``r``, ``p``, ``gate``, ``nu`` and
    ``z``), cells ``c`` (the last axis of ``z`` and ``nu``), component ``z``.

    ``r`` ``[S, K, G]``, ``p`` ``[S, K]``, ``gate`` ``[S, K, G]`` or ``None``, ``nu`` ``[S, C]``
    or ``None``; ``z`` ``[S, ..., C]``.
    """
    S = r.shape[0]
    s_idx = np.arange(S).reshape((S,) + (1,) * (z.ndim - 1))
    rr = r[s_idx, z]  # [*z.shape, G]
    pp = p[s_idx, z]  # [*z.shape]
    if nu is None:
        q = 1.0 - pp
    else:  # numpy's success probability: 1 - p̂ = (1 - p) / (1 - p (1 - ν))
        nu_b = nu.reshape((S,) + (1,) * (z.ndim - 2) + (nu.shape[-1],))
        q = (1.0 - pp) / (1.0 - pp * (1.0 - nu_b))
    tiny = np.finfo(np.float64).tiny
    x = rng.negative_binomial(np.maximum(rr, tiny), np.clip(q, tiny, 1.0)[..., None])
    if gate is not None:
        x[rng.random(x.shape) < gate[s_idx, z]] = 0
    return x


def _fit_values(adata: AnnData, key: str, n_samples: int, seed: int):
    """``(fit kind, canonical draws, assignment or None)``, checked against ``adata``."""
    res = get.fit_result(adata, key=key)
    kind = fit_kind(res)
    draws = get.posterior_samples(adata, key=key, n_samples=n_samples, rng=seed)
    values = canonical_draws(draws, kind.n_components)
    n_genes = values["r"].shape[-1]
    if n_genes != adata.n_vars:
        raise ValueError(
            f"the fit under key {key!r} has {n_genes} genes but `adata` has "
            f"{adata.n_vars}; plot on the AnnData that was fitted (subsetting genes after the "
            "fit is not supported)."
        )
    if "nu" in values and values["nu"].shape[-1] != adata.n_obs:
        raise ValueError(
            f"the fit under key {key!r} has {values['nu'].shape[-1]} cells but `adata` has "
            f"{adata.n_obs}; plot on the AnnData that was fitted (subsetting cells after a "
            "capture fit is not supported)."
        )
    assignment = _assignment(adata, key, res, kind) if kind.n_components > 1 else None
    return kind, values, assignment


def _assignment(adata: AnnData, key: str, res: Mapping, kind: FitKind) -> np.ndarray:
    """The stored ``[cells, K]`` component probabilities, in component order."""
    ak = _keys.assignment_key(key)
    if ak not in adata.obsm:
        raise KeyError(
            f"`adata.obsm[{ak!r}]` (the mixture's component probabilities per cell) is "
            f"missing; refit with `key_added={key!r}`."
        )
    stored = adata.obsm[ak]
    comps = component_names(res)
    if isinstance(stored, pd.DataFrame) and comps and all(c in stored.columns for c in comps):
        a = stored[comps].to_numpy(dtype=np.float64)
    else:
        a = np.asarray(stored, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != kind.n_components:
        raise ValueError(
            f"`adata.obsm[{ak!r}]` has shape {a.shape}, not (cells, {kind.n_components}); "
            f"refit with `key_added={key!r}`."
        )
    a = np.where(np.isfinite(a), np.clip(a, 0.0, None), 0.0)
    total = a.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(
            f"`adata.obsm[{ak!r}]` has cells without component probabilities; refit with "
            f"`key_added={key!r}`."
        )
    return a / total


def predictive_zero_fraction(
    adata: AnnData,
    *,
    key: str,
    n_samples: int = 200,
    rng: int | np.random.Generator = 0,
    layer: str | None = None,
) -> pd.DataFrame:
    """Observed and posterior-predictive fraction of zero counts of every gene.

    The predictive data sets are those of :func:`ppc` (``ppc_level="marginal"``): one per
    posterior draw, over the same cells as the data, each cell with its own capture
    probability draw and a component drawn from its assignment probabilities.

    Returns
    -------
    DataFrame indexed like ``var`` with columns ``observed``, ``mean``, ``sd``, ``q05``,
    ``q95`` (the last four over the predictive data sets).
    """
    res = get.fit_result(adata, key=key)
    n_samples = check_positive_int(n_samples, "n_samples", 2)
    seed = resolve_rng(rng)
    if layer is None:
        layer = str(res["params"].get("layer", "X"))
    X, _ = get_matrix(adata, None if layer == "X" else layer)
    nz = np.asarray((X != 0).sum(axis=0)).ravel()
    observed = 1.0 - nz / adata.n_obs
    kind, values, assignment = _fit_values(adata, key, n_samples, seed)
    gen = np.random.default_rng(seed)
    if kind.n_components == 1 and not kind.capture:
        pmf = predictive_pmf(
            "zinb" if kind.zero_inflated else "nbdm", _exchangeable(values), 0
        )  # [S, G, 1]
        f0 = np.stack(
            [sample_frequencies(pmf[:, j], adata.n_obs, gen)[:, 0] for j in range(adata.n_vars)],
            axis=1,
        )
    else:
        f0 = predictive_cell_frequencies(values, adata.n_obs, 0, gen, assignment=assignment)[..., 0]
    q05, q95 = np.quantile(f0, [0.05, 0.95], axis=0)
    return pd.DataFrame(
        {
            "observed": observed,
            "mean": f0.mean(axis=0),
            "sd": f0.std(axis=0),
            "q05": q05,
            "q95": q95,
        },
        index=adata.var_names.copy(),
    )


def _exchangeable(values: Mapping[str, np.ndarray], idx=None) -> dict[str, np.ndarray]:
    """Draws of a one-component fit without capture, as :func:`predictive_pmf` wants them."""
    sel = slice(None) if idx is None else idx
    out = {"p": values["p"][:, 0], "r": values["r"][:, 0, sel]}
    if "gate" in values:
        out["gate"] = values["gate"][:, 0, sel]
    return out


# ----------------------------------------------------------------------------- marginal panels
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
    kind, values, assignment = _fit_values(adata, key, n_samples, seed)
    if max_count is None:
        tops = [max(3, int(np.ceil(np.quantile(obs[:, j], 0.99)))) for j in range(idx.size)]
    else:
        tops = [max_count] * idx.size
    gen = np.random.default_rng(seed)
    if kind.n_components == 1 and not kind.capture:
        # exchangeable cells: a data set's histogram is multinomial, drawn exactly at a cost
        # that does not depend on the number of cells (one pmf evaluation for these genes)
        model = "zinb" if kind.zero_inflated else "nbdm"
        pmf = predictive_pmf(model, _exchangeable(values, idx), max(tops))
        freqs = [
            sample_frequencies(pmf[:, j, : top + 1], adata.n_obs, gen) for j, top in enumerate(tops)
        ]
    else:
        sub = {k: v[..., idx] if k in ("r", "gate") else v for k, v in values.items()}
        f = predictive_cell_frequencies(sub, adata.n_obs, max(tops), gen, assignment=assignment)
        freqs = [f[:, j, : top + 1] for j, top in enumerate(tops)]
    panels = []
    for j, (g, top) in enumerate(zip(idx, tops, strict=True)):
        x = obs[:, j]
        bands = dict(zip(_BAND_LEVELS, np.quantile(freqs[j], _BAND_LEVELS, axis=0), strict=True))
        observed = np.bincount(np.minimum(x, top + 1), minlength=top + 2)[: top + 1] / x.size
        panels.append(
            _PPCPanel(str(adata.var_names[g]), float(means[g]), np.arange(top + 1), observed, bands)
        )
    return panels


# ----------------------------------------------------------------------------- per-cell panels
@dataclass(frozen=True)
class _CellPanel:
    """What one panel of the per-cell check shows; genes sorted by predicted mean."""

    cell: str
    library: float
    nu: float | None  # posterior mean capture probability
    component: str | None  # most probable component
    component_prob: float | None
    genes: list[str]
    observed: np.ndarray  # [G] counts
    mean: np.ndarray  # [G] predictive mean
    bands: dict[float, np.ndarray]  # quantile level -> [G] predictive quantile (a count)

    @property
    def inside(self) -> np.ndarray:
        """Whether each observed count lies in the central 90 % predictive interval."""
        return (self.observed >= self.bands[0.05]) & (self.observed <= self.bands[0.95])


def _pick_cells(adata: AnnData, lib: np.ndarray, cells, n_cells: int) -> np.ndarray:
    return _pick(adata.obs_names, lib, cells, n_cells, _CELL_STRATA, "cell", "cells")


def _cell_panels(
    adata: AnnData,
    key: str,
    cell_idx: np.ndarray,
    gene_idx: np.ndarray,
    obs: np.ndarray,
    lib: np.ndarray,
    *,
    n_samples: int,
    seed: int,
) -> list[_CellPanel]:
    """Observed counts ``obs`` (``[cells, genes]``) of the cells ``cell_idx`` and genes
    ``gene_idx`` against each cell's posterior predictive (its ``ν_c`` draws and component
    probabilities; at least 2000 predictive counts per entry)."""
    kind, values, assignment = _fit_values(adata, key, n_samples, seed)
    S = values["r"].shape[0]
    reps = max(1, math.ceil(_MIN_PER_CELL_DRAWS / S))
    gen = np.random.default_rng(seed)
    cum = _component_cdf(
        None if assignment is None else assignment[cell_idx], cell_idx.size, kind.n_components
    )
    z = _draw_components(cum, (S, reps, cell_idx.size), gen)
    x = _simulate(
        values["r"][..., gene_idx],
        values["p"],
        None if "gate" not in values else values["gate"][..., gene_idx],
        None if "nu" not in values else values["nu"][:, cell_idx],
        z,
        gen,
    ).reshape(S * reps, cell_idx.size, gene_idx.size)
    q = np.quantile(x, _BAND_LEVELS, axis=0, method="inverted_cdf")  # [levels, C, G]
    pred_mean = x.mean(axis=0)
    nu_mean = None
    if kind.capture:
        nu_mean = values["nu"][:, cell_idx].mean(axis=0)
    comps = component_names(get.fit_result(adata, key=key))
    panels = []
    for i, c in enumerate(cell_idx):
        order = np.argsort(pred_mean[i], kind="stable")
        comp = prob = None
        if assignment is not None:
            k = int(np.argmax(assignment[c]))
            comp, prob = comps[k], float(assignment[c, k])
        panels.append(
            _CellPanel(
                cell=str(adata.obs_names[c]),
                library=float(lib[c]),
                nu=None if nu_mean is None else float(nu_mean[i]),
                component=comp,
                component_prob=prob,
                genes=[str(adata.var_names[gene_idx[j]]) for j in order],
                observed=obs[i, order].astype(np.float64),
                mean=pred_mean[i, order],
                bands={
                    lv: q[li, i, order].astype(np.float64) for li, lv in enumerate(_BAND_LEVELS)
                },
            )
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
    ppc_level: str | None = None,
    genes: str | Sequence[str] | None = None,
    n_genes: int | None = None,
    cells: str | Sequence[str] | None = None,
    n_cells: int = 4,
    n_samples: int = 200,
    layer: str | None = None,
    rng: int | np.random.Generator = 0,
    max_count: int | None = None,
    log: bool | None = None,
    ncols: int | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Posterior-predictive check of an NB-family fit (any model, capture, mixture).

    ``ppc_level="marginal"`` (default), one panel per gene: the grey bars are the observed
    fraction of cells with count ``0, 1, 2, ...``. The blue bands show the same fractions
    in data sets simulated from the fitted model, one per posterior draw, over the same
    cells as the data: in a capture model each cell uses its own draw of ``ν_c``, in a
    mixture each cell's component is drawn from its stored assignment probabilities. The
    darker band holds the central 50 % of the simulated data sets, the lighter one 90 %, and
    the blue line is their median. Where the bars leave the bands the model does not
    describe that gene (e.g. more zeros than it predicts, or a long tail from one cell type
    expressing it highly). The inset compares the observed fraction of zeros with the
    predicted 90 % interval.

    ``ppc_level="per_cell"``, one panel per cell: the shown genes on the x axis, sorted by
    the cell's predicted mean; for each gene the cell's posterior-predictive interval of
    its count (light: 90 %, dark: 50 %, tick: median) — given the cell's own ``ν_c``
    draws and component probabilities — and the observed count as a dot, red when it lies
    outside the 90 % interval. The title gives the library size (and ``ν_c``, the most
    probable component) and how many genes fall outside; about 10 % is expected.

    Log-normal fits (``tl.fit_pln`` / ``tl.fit_nbln``) draw the same panels at three levels:
    ``"library_anchored"`` (default) — fresh compositions ``softmax`` of ``x ~ MVN(μ, Σ)``
    (with NBLN burst noise) and each cell's observed library size as its total, which tests
    the compositional fit; ``"marginal"`` — fresh ``x`` and each cell's ``η_c`` (from its
    Laplace posterior), totals from the model, the full generative test; ``"per_cell"`` —
    the cells' MAP log-rates ``obsm[f"{key}_x"]`` plus observation noise. Parameters a
    cascade froze (``r``, ``η``) are drawn from the source fit's posterior. The
    library-anchored check simulates every gene of every cell per draw (cost
    ``n_samples × cells × genes``); lower ``n_samples`` on large data.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit` (not fitted again here).
    key
        The fit's ``key_added``.
    ppc_level
        ``"marginal"`` (count histograms pooled over cells) or ``"per_cell"``; for a
        log-normal fit (PLN / NBLN) also ``"library_anchored"``. ``None`` means the fit's
        default: ``"marginal"``, or ``"library_anchored"`` for a log-normal fit (see below).
    genes
        Gene name(s) to plot. ``None`` picks ``n_genes`` genes at evenly spaced quantiles
        (25 % to 99.5 %) of the observed mean count, from lowly to highly expressed.
    n_genes
        Number of genes picked when ``genes=None``; ``None`` means 6 for the marginal check
        and 24 for the per-cell one.
    cells
        ``ppc_level="per_cell"`` only: cell name(s) to plot. ``None`` picks ``n_cells``
        cells at evenly spaced quantiles (5 % to 95 %) of the library size.
    n_cells
        Number of cells picked when ``cells=None`` (per-cell check).
    n_samples
        Posterior draws, i.e. simulated data sets (marginal) or draws behind each cell's
        intervals (per cell, each reused for at least 2000 predictive counts in all).
    layer
        Layer with the raw counts; ``None`` uses the one the fit used
        (``adata.uns[key]['params']['layer']``; ``"X"`` means ``adata.X``).
    rng
        Seed (int) or ``numpy.random.Generator`` of the draws.
    max_count
        Marginal check: largest count shown. ``None`` chooses per gene the 99th percentile
        of its observed counts (at least 3).
    log
        Marginal check: log-scaled y axis, to see the tail of highly expressed genes.
        Per-cell check: symmetric-log count axis (linear below 1). ``None``: off for the
        marginal check; for the per-cell one, on when a shown count or interval exceeds 30.
    ncols
        Panels per row when a figure is created; ``None`` means 3 (marginal) or 2 (per
        cell).
    ax
        Axes to draw on: one per panel (gene or cell; a sequence), or a single Axes for
        one panel.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    With ``show=False`` the list of Axes, one per gene (marginal) or cell (per cell), a
    single Axes when there is one panel; the Figure with ``return_fig=True``; ``None`` when
    shown.
    """
    if is_lognormal_fit(adata, key):
        from ._lognormal import ppc_lognormal

        return ppc_lognormal(
            adata,
            key=key,
            ppc_level=ppc_level,
            genes=genes,
            n_genes=n_genes,
            cells=cells,
            n_cells=n_cells,
            n_samples=n_samples,
            layer=layer,
            rng=rng,
            max_count=max_count,
            log=log,
            ncols=ncols,
            ax=ax,
            show=show,
            return_fig=return_fig,
        )
    ppc_level = "marginal" if ppc_level is None else ppc_level
    res = get.fit_result(adata, key=key)
    if ppc_level not in _PPC_LEVELS:
        raise ValueError(
            f"`ppc_level`={ppc_level!r} is not one of {', '.join(map(repr, _PPC_LEVELS))}."
        )
    per_cell = ppc_level == "per_cell"
    if not per_cell and cells is not None:
        raise ValueError("`cells` applies to `ppc_level='per_cell'` only.")
    n_samples = check_positive_int(n_samples, "n_samples", 2)
    ncols = (3 if ppc_level == "marginal" else 2) if ncols is None else ncols
    ncols = check_positive_int(ncols, "ncols")
    n_genes = _N_GENES[ppc_level] if n_genes is None else n_genes
    seed = resolve_rng(rng)
    log = check_bool(log, "log", allow_none=True)
    show, return_fig = check_show(show, return_fig)
    if max_count is not None:
        max_count = check_positive_int(max_count, "max_count")
    if layer is None:
        layer = str(res["params"].get("layer", "X"))
    X, layer_name = get_matrix(adata, None if layer == "X" else layer)
    means = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    idx = _pick_genes(adata, means, genes, n_genes)

    if per_cell:
        lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        cidx = _pick_cells(adata, lib, cells, n_cells)
        obs = _observed(X[cidx], idx, layer_name)
        cpanels = _cell_panels(adata, key, cidx, idx, obs, lib, n_samples=n_samples, seed=seed)
        fig, axes = make_axes(
            ax, cidx.size, ncols=ncols, panel_size=(max(3.6, 0.22 * idx.size + 1.2), 3.4)
        )
        if log is None:
            top = max(max(p.bands[0.95].max(), p.observed.max()) for p in cpanels)
            log = bool(top > 30)
        for panel, a in zip(cpanels, axes, strict=True):
            _draw_cell_panel(a, panel, log=log)
        first = "observed"
    else:
        obs = _observed(X, idx, layer_name)
        panels = _ppc_panels(
            adata, key, idx, obs, means, n_samples=n_samples, seed=seed, max_count=max_count
        )
        fig, axes = make_axes(ax, idx.size, ncols=ncols, panel_size=(3.6, 2.9))
        for panel, a in zip(panels, axes, strict=True):
            _draw_ppc_panel(a, panel, log=bool(log))
        first = "observed"
    handles, labels = axes[0].get_legend_handles_labels()
    lead = labels.index(first)  # observed first, then the bands from wide to narrow
    order = [lead, *(i for i in range(len(labels)) if i != lead)]
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if ax is None:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    else:
        axes[0].legend(handles, labels, loc="best", fontsize="x-small", frameon=False)
    return finish(fig, axes, show=show, return_fig=return_fig, single=len(axes) == 1)


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


def _draw_cell_panel(a, panel: _CellPanel, *, log: bool) -> None:
    x = np.arange(len(panel.genes))
    b, obs, inside = panel.bands, panel.observed, panel.inside
    a.vlines(x, b[0.05], b[0.95], color=_BAND_COLOR, alpha=0.3, lw=6, label="90% predicted")
    a.vlines(x, b[0.25], b[0.75], color=_BAND_COLOR, alpha=0.6, lw=6, label="50% predicted")
    a.scatter(x, b[0.5], marker="_", s=70, color=_BAND_COLOR, lw=1.4, label="median predicted")
    a.scatter(x[inside], obs[inside], s=16, color="black", zorder=3, label="observed")
    a.scatter(
        x[~inside],
        obs[~inside],
        s=22,
        marker="D",
        color=_OUT_COLOR,
        zorder=3,
        label="observed, outside 90%",
    )
    if log:
        a.set_yscale("symlog", linthresh=1.0)
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_ylim(bottom=-0.4 if log else -0.04 * max(1.0, float(np.max([b[0.95].max(), obs.max()]))))
    a.set_xlim(-0.7, x.size - 0.3)
    if x.size <= 40:
        a.set_xticks(x, panel.genes, rotation=90, fontsize="x-small")
    else:
        a.set_xticks([])
    a.set_xlabel("gene (by predicted mean in this cell)")
    a.set_ylabel("count")
    parts = [f"library {panel.library:,.0f}"]
    if panel.nu is not None:
        parts.append(f"ν = {panel.nu:.2g}")
    if panel.component is not None:
        parts.append(f"{panel.component} ({panel.component_prob:.0%})")
    n_out = int((~inside).sum())
    a.set_title(
        f"{panel.cell}: {n_out}/{x.size} outside 90%\n{', '.join(parts)}", fontsize="medium"
    )


# ----------------------------------------------------------------------------- capture
def _cell_stat(adata: AnnData, key: str, stat: str, column: str) -> np.ndarray:
    ck = _keys.cell_key(key, stat)
    frame = adata.obsm.get(ck)
    if not isinstance(frame, pd.DataFrame) or column not in frame.columns:
        raise KeyError(
            f"`adata.obsm[{ck!r}]` with column {column!r} is missing (removed or subset "
            f"away?); refit with `key_added={key!r}`."
        )
    return np.asarray(frame[column], dtype=np.float64)


def capture(
    adata: AnnData,
    *,
    key: str = "nbvcp",
    layer: str | None = None,
    log_nu: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Capture probabilities of a capture model (NBVCP, ZINBVCP) against library size.

    One point per cell: the posterior mean of its capture probability ``ν_c`` with its 90 %
    credible interval (vertical line) against the cell's library size (total counts, log
    axis). The title gives the Spearman correlation between the two; a capture model
    should explain most of the library-size variation by ``ν_c``, so it is usually high.
    For one-component fits the dashed line is ``ν = L / E[L | ν = 1]``, the library size
    relative to the expected library of a fully captured cell (``Σ_g (1 - π_g) μ_g``, at
    the posterior means); mixtures colour the cells by their most probable component.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit` with ``model="nbvcp"`` or
        ``"zinbvcp"``.
    key
        The fit's ``key_added``.
    layer
        Layer with the raw counts; ``None`` uses the one the fit used.
    log_nu
        Log-scaled ``ν`` axis (useful with the biology-informed capture prior, whose ``ν``
        can span decades).
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
    from scipy.stats import spearmanr

    res = get.fit_result(adata, key=key)
    kind = fit_kind(res)
    if not kind.capture:
        raise ValueError(
            f"`key`={key!r} holds a {kind.name} fit, which has no per-cell capture probability "
            "ν_c; `pl.capture` needs an `nbvcp` or `zinbvcp` fit, e.g. "
            "`snb.tl.fit(adata, model='nbvcp')`."
        )
    log_nu = check_bool(log_nu, "log_nu")
    show, return_fig = check_show(show, return_fig)
    mean, lo, hi = (_cell_stat(adata, key, s, "nu") for s in ("mean", "q05", "q95"))
    if layer is None:
        layer = str(res["params"].get("layer", "X"))
    X, _ = get_matrix(adata, None if layer == "X" else layer)
    lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    pos = lib > 0
    if pos.sum() < 2:
        raise ValueError("`adata` has fewer than two cells with counts; nothing to plot.")
    rho = float(spearmanr(lib[pos], mean[pos]).statistic)
    labels = None
    if kind.n_components > 1:
        comps = component_names(res)
        labels = np.argmax(_assignment(adata, key, res, kind), axis=1)
    else:
        pt = point_params(adata, key)
        keep = 1.0 if pt.gate is None else 1.0 - pt.gate[0]
        full = float(np.sum(keep * pt.r[0] * pt.p[0] / (1.0 - pt.p[0])))
    fig, (a,) = make_axes(ax, 1, panel_size=(5.2, 4.0))
    n = int(pos.sum())
    alpha = float(np.clip(60.0 / np.sqrt(n), 0.08, 0.5))
    a.vlines(
        lib[pos],
        lo[pos],
        hi[pos],
        color=_BAND_COLOR,
        alpha=alpha,
        lw=0.8,
        label="90% credible interval",
    )
    if labels is None:
        a.scatter(lib[pos], mean[pos], s=9, color=_BAND_COLOR, lw=0, label="posterior mean")
        grid = np.geomspace(lib[pos].min(), lib[pos].max(), 100)
        a.plot(
            grid,
            np.minimum(grid / full, 1.0),
            color="0.35",
            lw=1.0,
            ls="--",
            label="ν = L / E[L | ν = 1]",
        )
    else:
        for k, name in enumerate(comps):
            sel = pos & (labels == k)
            if sel.any():
                a.scatter(
                    lib[sel],
                    mean[sel],
                    s=9,
                    lw=0,
                    color=f"C{k % 10}",
                    label=f"posterior mean, {name}",
                )
    a.set_xscale("log")
    a.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.xaxis.set_minor_formatter(NullFormatter())
    if log_nu:
        a.set_yscale("log")
    a.set_xlabel("library size (total counts per cell)")
    a.set_ylabel("capture probability ν (posterior)")
    a.set_title(
        f"{key}: capture vs library size\nSpearman ρ = {rho:.2f} ({n:,} cells)",
        fontsize="medium",
    )
    a.legend(fontsize="small", frameon=False)
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)


# ----------------------------------------------------------------------------- mixtures
def mixture_composition(
    adata: AnnData,
    *,
    key: str = "zinb",
    groupby: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Composition of a mixture fit: component weights, and components per cell group.

    Left panel: each component's mixing weight (posterior mean, bar; 90 % credible
    interval, error bar) and the mean of the cells' assignment probabilities (diamond;
    the share of cells the fit gives that component). With ``groupby``, a heat map of
    groups (rows, with their numbers of cells) × components: the mean assignment
    probability of the group's cells, so each row sums to 1 — a soft crosstab of labels
    and components (a clean one-to-one match shows as one dark cell per row).

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit` with ``n_components >= 2`` (or an
        ``annotation_key``).
    key
        The fit's ``key_added``.
    groupby
        Column of ``adata.obs`` with cell labels (e.g. cell types or clusters); cells with
        a missing label are left out of the heat map.
    ax
        Axes to draw on: one (no ``groupby``) or two (with ``groupby``); ``None`` creates a
        figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (one panel) or the list of two Axes (``show=False``), the Figure
    (``return_fig=True``) or ``None`` (shown).
    """
    res = get.fit_result(adata, key=key)
    kind = fit_kind(res)
    if kind.n_components < 2:
        raise ValueError(
            f"`key`={key!r} holds a {kind.name} fit with one component; "
            "`pl.mixture_composition` needs a mixture, e.g. "
            "`snb.tl.fit(adata, model='nbdm', n_components=3)`."
        )
    show, return_fig = check_show(show, return_fig)
    K = kind.n_components
    comps = [str(c) for c in component_names(res, K)]
    glob = res.get("global", {})
    names = [f"mixing_weights_{k}" for k in range(K)]
    if not all(n in glob for n in names):
        raise KeyError(
            f"`adata.uns[{key!r}]['global']` has no mixing weights; refit with `key_added={key!r}`."
        )
    w = {s: np.array([float(glob[n][s]) for n in names]) for s in ("mean", "q05", "q95")}
    assign = _assignment(adata, key, res, kind)
    table = None
    if groupby is not None:
        if not isinstance(groupby, str):
            raise TypeError(
                f"`groupby` must be the name of an `adata.obs` column, got {groupby!r}."
            )
        if groupby not in adata.obs.columns:
            cols = list(map(str, adata.obs.columns))
            raise KeyError(
                f"`groupby`={groupby!r} is not a column of `adata.obs` (columns: "
                f"{', '.join(map(repr, cols[:20])) or 'none'}{' ...' if len(cols) > 20 else ''})."
            )
        labels = pd.Categorical(adata.obs[groupby])  # a new object: obs is untouched
        if len(labels.categories) > 100:
            raise ValueError(
                f"`groupby`={groupby!r} has {len(labels.categories)} distinct values; pass a "
                "categorical column (e.g. cell types or clusters)."
            )
        known = labels.codes >= 0
        if not known.any():
            raise ValueError(f"`adata.obs[{groupby!r}]` has no labelled cells.")
        frame = pd.DataFrame(assign[known], columns=comps)
        grouped = frame.groupby(pd.Categorical(labels[known]), observed=True)
        table, sizes = grouped.mean(), grouped.size()
    fig, axes = make_axes(ax, 1 if table is None else 2, ncols=2, panel_size=(4.6, 3.8))

    a = axes[0]
    x = np.arange(K)
    colors = [f"C{k % 10}" for k in range(K)]
    err = np.stack([w["mean"] - w["q05"], w["q95"] - w["mean"]]).clip(min=0.0)
    a.bar(x, w["mean"], width=0.65, color=colors, alpha=0.8, label="mixing weight")
    a.errorbar(
        x,
        w["mean"],
        yerr=err,
        fmt="none",
        ecolor="0.2",
        elinewidth=1.0,
        capsize=3,
        label="90% credible interval",
    )
    a.scatter(
        x, assign.mean(axis=0), marker="D", s=28, color="black", zorder=3, label="mean assignment"
    )
    a.set_xticks(
        x,
        comps,
        rotation=30 if max(map(len, comps)) > 6 else 0,
        ha="right" if max(map(len, comps)) > 6 else "center",
    )
    a.set_ylim(0, min(1.0, 1.2 * float(max(w["q95"].max(), assign.mean(axis=0).max()))) or 1.0)
    a.set_ylabel("weight")
    a.set_title(f"{key}: {K} components", fontsize="medium")
    a.legend(fontsize="small", frameon=False)

    if table is not None:
        h = axes[1]
        vals = table.to_numpy(dtype=np.float64)
        im = h.imshow(vals, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
        if vals.size <= 400:
            for (i, j), v in np.ndenumerate(vals):
                h.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if v > 0.6 else "black",
                )
        h.set_xticks(
            np.arange(K),
            comps,
            rotation=30 if max(map(len, comps)) > 6 else 0,
            ha="right" if max(map(len, comps)) > 6 else "center",
        )
        h.set_yticks(np.arange(len(table)), [f"{g} (n={sizes[g]:,})" for g in table.index])
        h.set_xlabel("component")
        h.set_ylabel(groupby)
        h.set_title(f"mean assignment probability by {groupby}", fontsize="medium")
        fig.colorbar(im, ax=h, label="mean assignment probability", shrink=0.85)
    return finish(fig, axes, show=show, return_fig=return_fig, single=table is None)
