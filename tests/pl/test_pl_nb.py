"""Plots of NB-family fits: return types, ``ax``, figures, no mutation, and the PPC maths."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

import scnbtools as snb
from scnbtools.pl._nb import _ppc_panels, _running_mean, predictive_frequencies


def _n_figs() -> int:
    return len(plt.get_fignums())


def _dashed_vlines(ax: Axes) -> list[float]:
    """x positions of the dashed vertical lines (learning-rate reductions)."""
    out = []
    for line in ax.get_lines():
        x = np.asarray(line.get_xdata(), dtype=float)
        if line.get_linestyle() == "--" and x.size == 2 and x[0] == x[1]:
            out.append(float(x[0]))
    return out


# ----------------------------------------------------------------------------- return types
@pytest.mark.parametrize("plot", [snb.pl.loss, snb.pl.ppc], ids=["loss", "ppc"])
def test_return_types(fitted, plot):
    out = plot(fitted, key="zinb", show=False)
    expected_axes = 1 if plot is snb.pl.loss else 6
    axes = [out] if isinstance(out, Axes) else out
    assert len(axes) == expected_axes and all(isinstance(a, Axes) for a in axes)
    assert _n_figs() == 1
    fig = plot(fitted, key="zinb", return_fig=True)
    assert isinstance(fig, Figure) and _n_figs() == 2
    assert len(fig.axes) == expected_axes


@pytest.mark.parametrize("plot", [snb.pl.loss, snb.pl.ppc], ids=["loss", "ppc"])
def test_show_none_follows_scanpy_autoshow(fitted, plot):
    saved = sc.settings.autoshow
    try:
        sc.settings.autoshow = False
        assert plot(fitted, key="zinb") is not None
        sc.settings.autoshow = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-interactive.*")  # Agg cannot show
            assert plot(fitted, key="zinb") is None
            assert plot(fitted, key="zinb", show=True) is None
    finally:
        sc.settings.autoshow = saved


def test_loss_honours_ax(fitted):
    fig, ax = plt.subplots()
    out = snb.pl.loss(fitted, key="zinb", ax=ax, show=False)
    assert out is ax and _n_figs() == 1
    assert len(ax.get_lines()) >= 2  # raw and smoothed traces
    assert snb.pl.loss(fitted, key="zinb", ax=ax, return_fig=True) is fig


def test_ppc_honours_axes(fitted):
    _, axs = plt.subplots(1, 2)
    out = snb.pl.ppc(fitted, key="zinb", genes=["gene3", "gene7"], ax=axs, show=False)
    assert out == list(axs) and _n_figs() == 1
    assert [a.get_title().split()[0] for a in axs] == ["gene3", "gene7"]
    # one gene on one Axes returns that Axes
    _, ax = plt.subplots()
    assert snb.pl.ppc(fitted, key="zinb", genes="gene5", ax=ax, show=False) is ax
    assert _n_figs() == 2


def test_ppc_wrong_number_of_axes_creates_nothing(fitted):
    _, axs = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="`ax` holds 2 Axes but this plot has 3"):
        snb.pl.ppc(fitted, key="zinb", genes=["gene1", "gene2", "gene3"], ax=axs, show=False)
    with pytest.raises(TypeError, match="`ax`"):
        snb.pl.ppc(fitted, key="zinb", genes="gene1", ax="left", show=False)
    assert _n_figs() == 1


# ----------------------------------------------------------------------------- loss content
def test_loss_draws_the_stored_trace(fitted):
    trace = np.asarray(fitted.uns["zinb"]["loss"])
    ax = snb.pl.loss(fitted, key="zinb", log=False, show=False)
    raw, smooth = ax.get_lines()[:2]
    np.testing.assert_allclose(raw.get_ydata(), trace)
    np.testing.assert_allclose(raw.get_xdata(), np.arange(1, trace.size + 1))
    window = min(100, max(1, trace.size // 10))
    np.testing.assert_allclose(smooth.get_ydata(), _running_mean(trace, window))
    assert ax.get_yscale() == "linear"

    ax = snb.pl.loss(fitted, key="zinb", log=True, show=False)
    assert ax.get_yscale() == "log"
    y = np.asarray(ax.get_lines()[0].get_ydata(), dtype=float)
    excess = trace - trace.min()
    np.testing.assert_allclose(y[excess > 0], excess[excess > 0])
    assert np.all(np.isnan(y[excess == 0]))  # the minimum cannot sit on a log axis


def test_running_mean_matches_numpy():
    x = np.random.default_rng(0).normal(size=57)
    np.testing.assert_allclose(_running_mean(x, 5), np.convolve(x, np.ones(5) / 5, mode="valid"))


def test_loss_marks_learning_rate_reductions(fitted):
    a = fitted.copy()
    n = a.uns["zinb"]["loss"].size
    lr = np.full(n, 0.05)
    lr[80:] = 0.0125
    lr[150:] = 0.003125
    a.uns["zinb"]["learning_rate"] = lr
    a.uns["zinb"]["converged"] = True
    ax = snb.pl.loss(a, key="zinb", show=False)
    assert _dashed_vlines(ax) == [80.5, 150.5]  # between step 80 and 81, 150 and 151
    assert "converged after" in ax.get_title()

    a.uns["zinb"]["learning_rate"] = np.full(n, 0.05)
    a.uns["zinb"]["converged"] = False
    ax = snb.pl.loss(a, key="zinb", show=False)
    assert _dashed_vlines(ax) == []
    assert "not converged" in ax.get_title()


# ----------------------------------------------------------------------------- ppc content
def test_ppc_default_genes_span_expression_strata(fitted):
    axes = snb.pl.ppc(fitted, key="zinb", n_genes=4, show=False)
    names = [a.get_title().split()[0] for a in axes]
    means = np.asarray(fitted.X.mean(axis=0)).ravel()
    picked = means[fitted.var_names.get_indexer(names)]
    assert np.all(np.diff(picked) >= 0)  # from lowly to highly expressed
    ranks = np.argsort(np.argsort(means))[fitted.var_names.get_indexer(names)]
    assert ranks[0] < 0.35 * fitted.n_vars and ranks[-1] >= 0.9 * fitted.n_vars
    # asking for more genes than exist plots every gene once
    assert len(snb.pl.ppc(fitted, key="zinb", n_genes=1000, ncols=8, show=False)) == fitted.n_vars


def test_ppc_unknown_genes_keyerror_names_them(fitted):
    with pytest.raises(KeyError, match=r"'nope'.*'gone'"):
        snb.pl.ppc(fitted, key="zinb", genes=["gene1", "nope", "gone"], show=False)
    assert _n_figs() == 0


def test_ppc_observed_frequencies(fitted):
    genes = ["gene0", "gene9"]
    idx = fitted.var_names.get_indexer(genes)
    X = fitted.X.toarray().astype(np.int64)
    panels = _ppc_panels(
        fitted, "zinb", idx, X[:, idx], X.mean(axis=0), n_samples=200, seed=0, max_count=5
    )
    for panel, g in zip(panels, idx, strict=True):
        expected = np.array([(X[:, g] == k).mean() for k in range(6)])
        np.testing.assert_allclose(panel.observed, expected)
        np.testing.assert_array_equal(panel.k, np.arange(6))
        lo, mid, hi = panel.bands[0.05], panel.bands[0.5], panel.bands[0.95]
        assert np.all(lo <= mid) and np.all(mid <= hi) and np.all(hi <= 1)


def test_ppc_same_rng_same_bands_and_log_axis(fitted):
    kw = dict(key="zinb", genes=["gene2"], show=False)
    a1 = snb.pl.ppc(fitted, rng=1, **kw)
    a2 = snb.pl.ppc(fitted, rng=1, log=True, max_count=7, **kw)
    a3 = snb.pl.ppc(fitted, rng=2, **kw)
    assert a2.get_yscale() == "log" and a1.get_yscale() == "linear"
    assert a2.get_xlim() == (-0.5, 7.5)
    band = lambda ax: ax.collections[0].get_paths()[0].vertices  # noqa: E731
    np.testing.assert_array_equal(
        band(a1), snb.pl.ppc(fitted, rng=1, **kw).collections[0].get_paths()[0].vertices
    )
    assert not np.array_equal(band(a1), band(a3))


@pytest.mark.parametrize(("name", "key"), [("fitted_nbdm", "nbdm"), ("fitted_map", "zinb_map")])
def test_ppc_other_fits(request, name, key):
    a = request.getfixturevalue(name)
    axes = snb.pl.ppc(a, key=key, n_genes=2, show=False)
    assert len(axes) == 2
    assert isinstance(snb.pl.loss(a, key=key, show=False), Axes)


def test_ppc_uses_the_fitted_layer(fitted):
    a = fitted.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X * 0.5  # not counts any more
    a.uns["zinb"]["params"]["layer"] = "counts"
    assert len(snb.pl.ppc(a, key="zinb", n_genes=2, show=False)) == 2
    with pytest.raises(ValueError, match="raw counts"):
        snb.pl.ppc(a, key="zinb", n_genes=2, layer="X", show=False)
    with pytest.raises(KeyError, match="'missing'"):
        snb.pl.ppc(a, key="zinb", layer="missing", show=False)
    assert _n_figs() == 1


def test_ppc_refuses_genes_subset_after_fit(fitted):
    with pytest.raises(ValueError, match="has 40 genes but `adata` has 10"):
        snb.pl.ppc(fitted[:, :10].copy(), key="zinb", show=False)
    assert _n_figs() == 0


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"key": "absent"}, KeyError, "absent"),
        ({"n_samples": 1}, ValueError, "n_samples"),
        ({"n_genes": 0}, ValueError, "n_genes"),
        ({"max_count": 0}, ValueError, "max_count"),
        ({"log": "yes"}, TypeError, "`log`"),
        ({"show": 1}, TypeError, "`show`"),
        ({"genes": 3}, TypeError, "`genes`"),
        ({"rng": "seed"}, TypeError, "`rng`"),
    ],
)
def test_ppc_bad_arguments(fitted, kwargs, err, match):
    kw = {"key": "zinb", "show": False, **kwargs}
    with pytest.raises(err, match=match):
        snb.pl.ppc(fitted, **kw)
    assert _n_figs() == 0


def test_loss_bad_arguments(fitted):
    with pytest.raises(KeyError, match="absent"):
        snb.pl.loss(fitted, key="absent")
    with pytest.raises(TypeError, match="`return_fig`"):
        snb.pl.loss(fitted, key="zinb", return_fig="yes")
    with pytest.raises(TypeError, match="`adata`"):
        snb.pl.loss(fitted.X, key="zinb")
    assert _n_figs() == 0


def test_plots_never_mutate(fitted, fitted_map, assert_adata_identical):
    for a, key in ((fitted, "zinb"), (fitted_map, "zinb_map")):
        before = a.copy()
        snb.pl.loss(a, key=key, show=False)
        snb.pl.ppc(a, key=key, show=False)
        snb.pl.ppc(a, key=key, genes="gene4", log=True, show=False)
        assert_adata_identical(before, a)


def test_plots_work_after_h5ad_round_trip(fitted, tmp_path):
    import anndata as ad

    fitted.write_h5ad(tmp_path / "f.h5ad")
    back = ad.read_h5ad(tmp_path / "f.h5ad")
    assert isinstance(snb.pl.loss(back, key="zinb", show=False), Axes)
    assert len(snb.pl.ppc(back, key="zinb", n_genes=3, show=False)) == 3


# ----------------------------------------------------------------------------- ppc maths
def _zinb_pmf(k, r, p, gate):
    pmf = (1 - gate) * stats.nbinom.pmf(k, r, 1 - p)
    return pmf + gate * (k == 0)


@pytest.mark.parametrize(
    ("model", "r", "p", "gate"),
    [("zinb", 0.7, 0.6, 0.3), ("zinb", 4.0, 0.3, 0.0), ("nbdm", 2.0, 0.8, 0.0)],
)
def test_predictive_frequencies_match_multinomial_of_the_pmf(model, r, p, gate):
    """Mean and spread of the simulated frequencies against scipy's pmf and the binomial sd."""
    S, n, K = 4000, 500, 8
    values = {"p": np.full(S, p), "r": np.full(S, r)}
    if model == "zinb":
        values["gate"] = np.full(S, gate)
    freq = predictive_frequencies(model, values, n, K, np.random.default_rng(0))
    assert freq.shape == (S, K + 1)
    pmf = _zinb_pmf(np.arange(K + 1), r, p, gate)
    sd = np.sqrt(pmf * (1 - pmf) / n)
    # the mean of S draws is within 5 standard errors of the pmf
    np.testing.assert_array_less(np.abs(freq.mean(axis=0) - pmf), 5 * sd / np.sqrt(S) + 1e-12)
    # the sd across data sets is the binomial one (sd of an sd estimate ≈ 1/sqrt(2S) ≈ 1.1 %)
    np.testing.assert_allclose(freq.std(axis=0), sd, rtol=0.06)
    assert np.all(freq.sum(axis=1) <= 1 + 1e-12)


def test_predictive_frequencies_follow_each_draw():
    """Draw s uses the s-th value of every site (no mixing across draws)."""
    S = 2000
    r = np.where(np.arange(S) < S // 2, 0.3, 6.0)
    gate = np.where(np.arange(S) < S // 2, 0.5, 0.05)
    values = {"p": np.full(S, 0.5), "r": r, "gate": gate}
    freq = predictive_frequencies("zinb", values, 1000, 4, np.random.default_rng(1))
    for half, (rr, gg) in enumerate([(0.3, 0.5), (6.0, 0.05)]):
        sel = slice(0, S // 2) if half == 0 else slice(S // 2, S)
        np.testing.assert_allclose(
            freq[sel].mean(axis=0), _zinb_pmf(np.arange(5), rr, 0.5, gg), atol=2e-3
        )


def test_predictive_band_covers_observed_zeros_at_nominal_rate():
    """With the true parameters, the 90 % band of the zero fraction holds the observed zero
    fraction for about 90 % of genes (200 genes: 180 ± 4.2; we accept 165–195)."""
    a = snb.datasets.synthetic_zinb(800, 200, rng=3)
    p = float(a.uns["synthetic"]["p"])
    zeros = 1.0 - np.asarray((a.X > 0).mean(axis=0)).ravel()
    gen = np.random.default_rng(0)
    inside = 0
    for g in range(a.n_vars):
        values = {
            "p": np.full(300, p),
            "r": np.full(300, a.var["true_r"].iloc[g]),
            "gate": np.full(300, a.var["true_gate"].iloc[g]),
        }
        f0 = predictive_frequencies("zinb", values, a.n_obs, 1, gen)[:, 0]
        lo, hi = np.quantile(f0, [0.05, 0.95])
        inside += lo <= zeros[g] <= hi
    assert 165 <= inside <= 195


def test_ppc_map_fit_bands_hold_observed_zeros(fitted_map):
    """End to end through the fitted posterior: observed zero fractions sit in the 90 % band
    for most genes (a fit adapts to its data, so coverage is at or above nominal)."""
    X = fitted_map.X.toarray().astype(np.int64)
    idx = np.arange(fitted_map.n_vars)
    panels = _ppc_panels(
        fitted_map, "zinb_map", idx, X, X.mean(axis=0), n_samples=200, seed=0, max_count=None
    )
    inside = [pp.bands[0.05][0] <= pp.observed[0] <= pp.bands[0.95][0] for pp in panels]
    assert np.mean(inside) >= 0.8


def test_ppc_sparse_and_dense_give_the_same_panels(fitted):
    a = fitted.copy()
    a.X = a.X.toarray() if sp.issparse(a.X) else sp.csr_matrix(a.X)
    kw = dict(key="zinb", genes=["gene1", "gene30"], show=False, rng=4)
    for ax1, ax2 in zip(snb.pl.ppc(fitted, **kw), snb.pl.ppc(a, **kw), strict=True):
        np.testing.assert_array_equal(
            [p.get_height() for p in ax1.patches], [p.get_height() for p in ax2.patches]
        )
        np.testing.assert_array_equal(
            ax1.collections[0].get_paths()[0].vertices, ax2.collections[0].get_paths()[0].vertices
        )
