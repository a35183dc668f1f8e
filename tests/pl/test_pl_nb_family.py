"""Plots of every NB-family fit (capture, mixtures, zero inflation): ``pl.ppc`` at both
levels, ``pl.capture``, ``pl.mixture_composition`` and ``pl.mean_variance`` — return types,
``ax``, no mutation, clear errors, and the predictive / moment maths behind them."""

from __future__ import annotations

import copy
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

import scnbtools as snb
from scnbtools.pl._nb import (
    _cell_panels,
    _fit_values,
    _ppc_panels,
    predictive_cell_frequencies,
    predictive_zero_fraction,
)
from scnbtools.pl._nb_moments import implied_moments, nb_moments, point_params

CAP, MIX = "nbvcp", "mix"


def _n_figs() -> int:
    return len(plt.get_fignums())


# ----------------------------------------------------------------------------- fits (once)
@pytest.fixture(scope="module")
def cap():
    """MAP NBVCP fit of seeded NBVCP data (300 cells × 30 genes)."""
    a = snb.datasets.synthetic_nbvcp(300, 30, rng=0)
    snb.tl.fit(a, model="nbvcp", inference="map", n_steps=1500, key_added=CAP, progress_bar=False)
    return a


@pytest.fixture(scope="module")
def mix():
    """Short SVI fit of a 2-component ZINBVCP mixture (capture, gate and components at once).
    Too short to converge; only its plots are tested."""
    a = snb.datasets.synthetic_mixture(
        200, 24, n_components=2, model="zinbvcp", rng=0, separation=1.5, marker_fraction=0.4
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"the .* fit did not converge")
        snb.tl.fit(
            a,
            model="zinbvcp",
            n_components=2,
            key_added=MIX,
            n_steps=300,
            n_posterior_samples=100,
            progress_bar=False,
        )
    return a


def _state(a):
    """Deep copies of the slots a plot could touch."""
    return {
        "uns": copy.deepcopy(dict(a.uns)),
        "obsm": {k: copy.deepcopy(v) for k, v in a.obsm.items()},
        "varm": {k: copy.deepcopy(v) for k, v in a.varm.items()},
        "obs": a.obs.copy(),
    }


def _assert_same_state(before, a):
    after = _state(a)
    assert set(before["uns"]) == set(after["uns"])
    assert set(before["obsm"]) == set(after["obsm"]) and set(before["varm"]) == set(after["varm"])
    for slot in ("obsm", "varm"):
        for k in before[slot]:
            np.testing.assert_array_equal(np.asarray(before[slot][k]), np.asarray(after[slot][k]))
    assert before["obs"].equals(after["obs"])


# ----------------------------------------------------------------------------- return types
_CASES = [
    ("ppc", CAP, {}, 6),
    ("ppc", MIX, {"n_genes": 3}, 3),
    ("ppc", CAP, {"ppc_level": "per_cell", "n_cells": 3}, 3),
    ("ppc", MIX, {"ppc_level": "per_cell", "cells": "cell_007"}, 1),
    ("capture", CAP, {}, 1),
    ("capture", MIX, {"log_nu": True}, 1),
    ("mixture_composition", MIX, {}, 1),
    ("mixture_composition", MIX, {"groupby": "true_component"}, 2),
    ("mean_variance", CAP, {}, 1),
    ("mean_variance", MIX, {}, 1),
]


@pytest.mark.parametrize(
    ("plot", "key", "kw", "n_axes"),
    _CASES,
    ids=[f"{p}-{k}-{i}" for i, (p, k, _, _) in enumerate(_CASES)],
)
def test_return_types_and_no_mutation(request, assert_adata_identical, plot, key, kw, n_axes):
    a = request.getfixturevalue("cap" if key == CAP else "mix")
    fn = getattr(snb.pl, plot)
    before, full = _state(a), a.copy()
    out = fn(a, key=key, show=False, **kw)
    axes = [out] if isinstance(out, Axes) else out
    assert isinstance(axes, list) and len(axes) == n_axes
    assert all(isinstance(x, Axes) for x in axes)
    assert (n_axes == 1) == isinstance(out, Axes)
    assert _n_figs() == 1
    fig = fn(a, key=key, return_fig=True, **kw)
    assert isinstance(fig, Figure) and _n_figs() == 2
    _assert_same_state(before, a)
    assert_adata_identical(full, a)


def test_axes_are_honoured(cap, mix):
    fig, ax = plt.subplots()
    assert snb.pl.capture(cap, key=CAP, ax=ax, show=False) is ax
    assert snb.pl.capture(cap, key=CAP, ax=ax, return_fig=True) is fig
    _, axs = plt.subplots(1, 2)
    assert snb.pl.mixture_composition(
        mix, key=MIX, groupby="true_component", ax=axs, show=False
    ) == list(axs)
    _, axs = plt.subplots(1, 2)
    out = snb.pl.ppc(
        cap, key=CAP, ppc_level="per_cell", cells=["cell_000", "cell_001"], ax=axs, show=False
    )
    assert out == list(axs)
    assert [x.get_title().split(":")[0] for x in axs] == ["cell_000", "cell_001"]
    _, ax = plt.subplots()
    assert snb.pl.mean_variance(mix, key=MIX, ax=ax, show=False) is ax
    assert _n_figs() == 4
    _, axs = plt.subplots(1, 3)
    with pytest.raises(ValueError, match="`ax` holds 3 Axes but this plot has 2"):
        snb.pl.mixture_composition(mix, key=MIX, groupby="true_component", ax=axs, show=False)
    assert _n_figs() == 5


def test_model_comparison_is_exported():
    from scnbtools.pl._compare import model_comparison

    assert snb.pl.model_comparison is model_comparison
    assert {"capture", "mixture_composition", "model_comparison"} <= set(snb.pl.__all__)


# ----------------------------------------------------------------------------- errors
def test_wrong_fit_type_errors(fitted, cap):
    with pytest.raises(ValueError, match=r"`key`='zinb' holds a zinb fit.*nbvcp"):
        snb.pl.capture(fitted, key="zinb", show=False)
    with pytest.raises(ValueError, match=r"`key`='nbvcp' holds a nbvcp fit with one component"):
        snb.pl.mixture_composition(cap, key=CAP, show=False)
    assert _n_figs() == 0


@pytest.mark.parametrize(
    ("plot", "kw", "err", "match"),
    [
        ("capture", {"key": "absent"}, KeyError, "absent"),
        ("mixture_composition", {"key": "absent"}, KeyError, "absent"),
        ("mean_variance", {"key": "absent"}, KeyError, "no NB-family or GLM fit"),
        ("ppc", {"key": "absent"}, KeyError, "absent"),
        ("ppc", {"key": MIX, "ppc_level": "cell"}, ValueError, "`ppc_level`='cell'"),
        ("ppc", {"key": MIX, "cells": "cell_001"}, ValueError, "per_cell"),
        ("ppc", {"key": MIX, "ppc_level": "per_cell", "cells": ["nope"]}, KeyError, "'nope'"),
        ("ppc", {"key": MIX, "ppc_level": "per_cell", "cells": 3}, TypeError, "`cells`"),
        ("ppc", {"key": MIX, "ppc_level": "per_cell", "n_cells": 0}, ValueError, "n_cells"),
        ("ppc", {"key": MIX, "log": "yes"}, TypeError, "`log`"),
        ("mixture_composition", {"key": MIX, "groupby": "nope"}, KeyError, "`groupby`='nope'"),
        ("mixture_composition", {"key": MIX, "groupby": 3}, TypeError, "`groupby`"),
        ("capture", {"key": MIX, "log_nu": "yes"}, TypeError, "`log_nu`"),
        ("capture", {"key": MIX, "return_fig": "yes"}, TypeError, "`return_fig`"),
    ],
)
def test_bad_arguments(mix, plot, kw, err, match):
    with pytest.raises(err, match=match):
        getattr(snb.pl, plot)(mix, show=False, **kw)
    assert _n_figs() == 0


def test_missing_stored_results_say_refit(mix):
    a = mix.copy()
    del a.obsm[f"{MIX}_assignment"]
    for plot in (snb.pl.mixture_composition, snb.pl.capture, snb.pl.ppc):
        with pytest.raises(KeyError, match=rf"{MIX}_assignment.*refit"):
            plot(a, key=MIX, show=False)
    b = mix.copy()
    del b.obsm[f"{MIX}_q95"]
    with pytest.raises(KeyError, match=rf"{MIX}_q95.*refit"):
        snb.pl.capture(b, key=MIX, show=False)
    assert _n_figs() == 0


def test_ppc_refuses_cells_subset_after_capture_fit(cap):
    with pytest.raises(ValueError, match="has 300 cells but `adata` has 100"):
        snb.pl.ppc(cap[:100].copy(), key=CAP, show=False)
    assert _n_figs() == 0


def test_plots_after_h5ad_round_trip(mix, tmp_path):
    import anndata as ad

    mix.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad")
    assert len(snb.pl.mixture_composition(back, key=MIX, groupby="true_component", show=False)) == 2
    assert isinstance(snb.pl.capture(back, key=MIX, show=False), Axes)
    assert len(snb.pl.ppc(back, key=MIX, ppc_level="per_cell", n_cells=2, show=False)) == 2
    assert isinstance(snb.pl.mean_variance(back, key=MIX, show=False), Axes)


# ----------------------------------------------------------------------------- ppc: marginal
def test_capture_fit_predicts_the_observed_zero_fractions(cap):
    """Observed against predictive-mean zero fraction of every gene.

    Calibrated over 12 seeds of this setting (300 cells × 30 genes, MAP NBVCP): the mean
    absolute difference was 0.006–0.012 and the largest |z| (difference over the
    predictive sd) 0.6–2.2. Predicting without the cells' capture (ν = 1, the draws
    otherwise unchanged) gave mean differences of 0.14–0.18, so the check can fail.
    """
    z = predictive_zero_fraction(cap, key=CAP, n_samples=200, rng=0)
    assert list(z.columns) == ["observed", "mean", "sd", "q05", "q95"]
    X = cap.X.toarray()
    np.testing.assert_allclose(z["observed"], (X == 0).mean(axis=0))
    diff = np.abs(z["observed"] - z["mean"])
    assert diff.mean() < 0.02
    assert np.max(diff / z["sd"]) < 3.5
    # the same draws without capture fail the same tolerance
    _, values, _ = _fit_values(cap, CAP, 200, 0)
    no_capture = {**values, "nu": np.ones_like(values["nu"])}
    f0 = predictive_cell_frequencies(no_capture, cap.n_obs, 0, np.random.default_rng(0))[..., 0]
    assert np.abs(z["observed"] - f0.mean(axis=0)).mean() > 0.1


def test_marginal_panels_of_a_mixture(mix):
    X = mix.X.toarray().astype(np.int64)
    idx = np.array([0, 5, 11])
    panels = _ppc_panels(
        mix, MIX, idx, X[:, idx], X.mean(axis=0), n_samples=200, seed=0, max_count=6
    )
    for panel, g in zip(panels, idx, strict=True):
        np.testing.assert_allclose(panel.observed, [(X[:, g] == k).mean() for k in range(7)])
        lo, mid, hi = panel.bands[0.05], panel.bands[0.5], panel.bands[0.95]
        assert np.all(lo <= mid) and np.all(mid <= hi) and np.all(hi <= 1)


def _pmf(k, r, p_hat, gate=0.0):
    return (1 - gate) * stats.nbinom.pmf(k, r, 1 - p_hat) + gate * (k == 0)


def _p_hat(p, nu):
    return p * nu / (1 - p * (1 - nu))


@pytest.mark.parametrize("case", ["capture", "mixture", "zi_mixture_capture"])
def test_predictive_cell_frequencies_match_the_exact_pmf(case):
    """The mean of the simulated frequencies is the cells' average pmf (5 standard errors),
    with every cell's own ν and component probabilities."""
    S, N, K_max = 3000, 40, 6
    gen = np.random.default_rng(1)
    nu = gen.uniform(0.1, 1.0, N)
    assign = gen.dirichlet([1.0, 1.0], N)
    r = np.array([[0.8, 3.0], [5.0, 0.5]])  # [K, G]
    p = np.array([0.6, 0.3])
    gate = np.array([[0.2, 0.0], [0.05, 0.4]])
    k = np.arange(K_max + 1)
    if case == "capture":
        values = {"r": np.tile(r[0], (S, 1)), "p": np.full(S, p[0]), "nu": np.tile(nu, (S, 1))}
        exact = np.mean([[_pmf(k, r[0, g], _p_hat(p[0], n)) for g in range(2)] for n in nu], axis=0)
        assignment = None
    else:
        values = {"r": np.tile(r, (S, 1, 1)), "p": np.tile(p, (S, 1))}
        zi = case == "zi_mixture_capture"
        cell_nu = nu if zi else np.ones(N)
        if zi:
            values["gate"] = np.tile(gate, (S, 1, 1))
            values["nu"] = np.tile(nu, (S, 1))
        g_ = gate if zi else np.zeros_like(gate)
        exact = np.mean(
            [
                [
                    sum(
                        assign[c, j] * _pmf(k, r[j, g], _p_hat(p[j], cell_nu[c]), g_[j, g])
                        for j in range(2)
                    )
                    for g in range(2)
                ]
                for c in range(N)
            ],
            axis=0,
        )
        assignment = assign
    freq = predictive_cell_frequencies(
        values, N, K_max, np.random.default_rng(0), assignment=assignment
    )
    assert freq.shape == (S, 2, K_max + 1)
    se = freq.std(axis=0) / np.sqrt(S)
    np.testing.assert_array_less(np.abs(freq.mean(axis=0) - exact), 5 * se + 1e-4)
    assert np.all(freq.sum(axis=-1) <= 1 + 1e-12)


# ----------------------------------------------------------------------------- ppc: per cell
def test_per_cell_picks_cells_across_library_sizes(cap):
    axes = snb.pl.ppc(cap, key=CAP, ppc_level="per_cell", n_cells=3, show=False)
    names = [x.get_title().split(":")[0] for x in axes]
    lib = np.asarray(cap.X.sum(axis=1)).ravel()
    picked = lib[cap.obs_names.get_indexer(names)]
    assert np.all(np.diff(picked) >= 0)
    ranks = np.argsort(np.argsort(lib, kind="stable"), kind="stable")[
        cap.obs_names.get_indexer(names)
    ]
    assert ranks[0] <= 0.06 * cap.n_obs and ranks[-1] >= 0.94 * (cap.n_obs - 1)
    assert all("ν = " in x.get_title() for x in axes)
    mix_axes = snb.pl.ppc(cap, key=CAP, ppc_level="per_cell", n_cells=2, log=True, show=False)
    assert mix_axes[0].get_yscale() == "symlog"


def test_per_cell_intervals_are_the_cells_nb_quantiles(cap):
    """A MAP fit has one parameter value, so cell c's predictive of gene g is exactly
    NB(r_g, p̂_c) with p̂_c = p ν_c / (1 - p (1 - ν_c)); the intervals (from ≥ 2000 draws)
    match scipy's quantiles to within one count."""
    X = cap.X.toarray().astype(np.int64)
    lib = X.sum(axis=1)
    cidx, gidx = np.array([3, 150, 299]), np.arange(0, 30, 3)
    panels = _cell_panels(cap, CAP, cidx, gidx, X[np.ix_(cidx, gidx)], lib, n_samples=200, seed=0)
    pt = point_params(cap, CAP)
    for panel, c in zip(panels, cidx, strict=True):
        assert panel.cell == cap.obs_names[c] and panel.library == lib[c]
        order = cap.var_names.get_indexer(panel.genes)
        assert sorted(order) == sorted(gidx)
        assert np.all(np.diff(panel.mean) >= 0)  # sorted by predicted mean
        np.testing.assert_array_equal(panel.observed, X[c, order])
        p_hat = _p_hat(pt.p[0], pt.nu[c])
        for level in (0.05, 0.5, 0.95):
            exact = stats.nbinom.ppf(level, pt.r[0, order], 1 - p_hat)
            assert np.max(np.abs(panel.bands[level] - exact)) <= 1


def test_per_cell_coverage_is_calibrated(cap):
    """Observed counts in the 90 % per-cell interval: calibrated over 8 seeds of this
    setting at 0.966–0.971 (above 0.9: discrete counts, inclusive intervals)."""
    X = cap.X.toarray().astype(np.int64)
    cidx, gidx = np.arange(0, cap.n_obs, 5), np.arange(cap.n_vars)
    panels = _cell_panels(cap, CAP, cidx, gidx, X[cidx], X.sum(axis=1), n_samples=200, seed=0)
    inside = np.concatenate([panel.inside for panel in panels])
    assert 0.93 <= inside.mean() <= 0.995


def test_per_cell_title_names_the_component(mix):
    ax = snb.pl.ppc(mix, key=MIX, ppc_level="per_cell", cells="cell_010", show=False)
    comp = mix.obsm[f"{MIX}_assignment"].loc["cell_010"].idxmax()
    assert comp in ax.get_title() and "outside 90%" in ax.get_title()


# ----------------------------------------------------------------------------- capture, mixture
def test_capture_plot_shows_the_stored_nu(cap):
    ax = snb.pl.capture(cap, key=CAP, show=False)
    lib = np.asarray(cap.X.sum(axis=1)).ravel()
    nu = cap.obsm[f"{CAP}_mean"]["nu"].to_numpy()
    pos = lib > 0  # a cell without counts has no place on the log axis
    pts = ax.collections[1].get_offsets()
    np.testing.assert_allclose(pts[:, 0], lib[pos])
    np.testing.assert_allclose(pts[:, 1], nu[pos])
    rho = stats.spearmanr(lib[pos], nu[pos]).statistic
    assert f"Spearman ρ = {rho:.2f}" in ax.get_title()
    assert ax.get_xscale() == "log"


def test_mixture_composition_values(mix):
    a1, a2 = snb.pl.mixture_composition(mix, key=MIX, groupby="true_component", show=False)
    glob = mix.uns[MIX]["global"]
    heights = [b.get_height() for b in a1.patches]
    np.testing.assert_allclose(heights, [glob[f"mixing_weights_{k}"]["mean"] for k in range(2)])
    img = a2.get_images()[0].get_array()
    assign = mix.obsm[f"{MIX}_assignment"]
    expected = assign.groupby(mix.obs["true_component"], observed=True).mean().to_numpy()
    np.testing.assert_allclose(np.asarray(img), expected)
    np.testing.assert_allclose(np.asarray(img).sum(axis=1), 1.0)


# ----------------------------------------------------------------------------- mean-variance
def _mc_moments(r, p, gate, nu, weights, n, seed):
    """Monte-Carlo mean and variance of counts from the model, with scipy's nbinom."""
    gen = np.random.default_rng(seed)
    K, G = r.shape
    c = gen.integers(0, nu.size, n)
    z = gen.choice(K, size=n, p=weights)
    out = np.empty((2, G))
    for g in range(G):
        p_hat = _p_hat(p[z], nu[c])
        x = stats.nbinom.rvs(r[z, g], 1 - p_hat, random_state=gen)
        x = np.where(gen.random(n) < gate[z, g], 0, x)
        out[:, g] = x.mean(), x.var()
    return out


@pytest.mark.parametrize("case", ["nb", "zinb", "capture", "zi_mixture_capture"])
def test_implied_moments_match_monte_carlo(case):
    r = np.array([[0.5, 2.0, 10.0], [3.0, 0.7, 1.5]])
    p = np.array([0.7, 0.4])
    gate = np.array([[0.3, 0.1, 0.0], [0.0, 0.5, 0.2]])
    nu = np.random.default_rng(0).uniform(0.05, 1.0, 50)
    w = np.array([0.35, 0.65])
    if case in ("nb", "zinb"):
        g = gate[:1] if case == "zinb" else np.zeros_like(gate[:1])
        mean, var = implied_moments(r[0], p[0], gate=g[0] if case == "zinb" else None)
        mc = _mc_moments(r[:1], p[:1], g, np.ones(1), np.ones(1), 400_000, 1)
    elif case == "capture":
        mean, var = implied_moments(r[0], p[0], nu=nu)
        mc = _mc_moments(r[:1], p[:1], np.zeros_like(gate[:1]), nu, np.ones(1), 400_000, 2)
    else:
        mean, var = implied_moments(r, p, gate=gate, nu=nu, weights=w, block=7)
        mc = _mc_moments(r, p, gate, nu, w, 400_000, 3)
    np.testing.assert_allclose(mean, mc[0], rtol=0.02)
    np.testing.assert_allclose(var, mc[1], rtol=0.05)


def test_nb_moments_closed_forms():
    r, p, pi, nu = 2.5, 0.6, 0.3, 0.4
    m = r * p / (1 - p)
    np.testing.assert_allclose(nb_moments(r, p), (m, m + m * m / r))
    np.testing.assert_allclose(stats.nbinom.stats(r, 1 - p, moments="mv"), nb_moments(r, p))
    mc = m * nu  # odds scale with ν
    np.testing.assert_allclose(
        nb_moments(r, p, gate=pi, nu=nu),
        ((1 - pi) * mc, (1 - pi) * (mc + mc * mc / r) + pi * (1 - pi) * mc * mc),
    )


def test_mean_variance_plots_the_implied_moments(mix):
    ax = snb.pl.mean_variance(mix, key=MIX, show=False)
    obs_pts, model_pts = (c.get_offsets() for c in ax.collections[:2])
    X = mix.X.toarray().astype(np.float64)
    np.testing.assert_allclose(obs_pts[:, 0], X.mean(axis=0)[X.var(axis=0) > 0], rtol=1e-6)
    pt = point_params(mix, MIX)
    assert pt.nu is not None and pt.weights is not None and pt.gate is not None
    mean, var = implied_moments(pt.r, pt.p, gate=pt.gate, nu=pt.nu, weights=pt.weights)
    keep = (X.var(axis=0) > 0) & (mean > 0)
    np.testing.assert_allclose(model_pts[:, 0], mean[keep])
    np.testing.assert_allclose(model_pts[:, 1], var[keep])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
