"""Reading and plotting log-normal (PLN / NBLN) fits: accessor maths against numpy, the
predictive checks against the known model, plot return types / ``ax`` / figures, no mutation,
and every kind of bad input."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import scnbtools as snb
from scnbtools.get._lognormal import lognormal_fit
from scnbtools.pl._lognormal import (
    composition_draws,
    lognormal_ppc_panels,
    param_draws,
    simulate_library_anchored,
    simulate_marginal,
    simulate_per_cell,
)

#: keys of the fits in the fixtures (tests/lognormal/conftest.py)
PLN, NBLN, CASCADE, SOURCE = "pln", "nbln", "nbln_cascade", "nbvcp"


def _n_figs() -> int:
    return len(plt.get_fignums())


def _with_loadings(adata: ad.AnnData, key: str, W: np.ndarray) -> ad.AnnData:
    """A copy of ``adata`` whose fit ``key`` has the loadings ``W`` (stored consistently)."""
    a = adata.copy()
    a.varm[f"{key}_W"] = W
    a.varm[f"{key}_W_perp"] = W - W.mean(axis=0, keepdims=True)
    a.uns[key]["laplace"]["W"] = W
    return a


@pytest.fixture(params=[PLN, NBLN])
def fitted(request, pln_data, nbln_data):
    """``(adata, key, truth)`` of each model (session objects: never mutate)."""
    adata, truth = pln_data if request.param == PLN else nbln_data
    return adata, request.param, truth


# ----------------------------------------------------------------------------- get: W_perp
def test_W_compositional_is_W_minus_its_gene_mean(fitted):
    adata, key, _ = fitted
    W = np.asarray(adata.varm[f"{key}_W"])
    df = snb.get.W_compositional(adata, key=key)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == list(adata.var_names)
    assert list(df.columns) == ["factor_0", "factor_1", "factor_2"]
    np.testing.assert_allclose(df.to_numpy(), W - W.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(df.to_numpy().mean(axis=0), 0.0, atol=1e-12)


def test_W_compositional_refuses_an_inconsistent_stored_projection(pln_data):
    a = pln_data[0].copy()
    a.varm[f"{PLN}_W_perp"] = np.asarray(a.varm[f"{PLN}_W"]).copy()  # not centred
    with pytest.raises(ValueError, match=r"pln_W_perp.*column means"):
        snb.get.W_compositional(a, key=PLN)


def test_accessors_refuse_genes_subset_after_the_fit(pln_data):
    sub = pln_data[0][:, :10].copy()
    with pytest.raises(ValueError, match="has 40 genes but `adata` has 10"):
        snb.get.W_compositional(sub, key=PLN)
    with pytest.raises(ValueError, match="has 40 genes but `adata` has 10"):
        snb.get.correlation(sub, key=PLN, genes=["gene_00", "gene_01"])


# ----------------------------------------------------------------------------- get: gauge
def test_gauge_diagnostics_match_numpy(fitted):
    adata, key, _ = fitted
    W = np.asarray(adata.varm[f"{key}_W"])
    G = W.shape[0]
    m = W.mean(axis=0)
    P = W - m
    out = snb.get.gauge_diagnostics(adata, key=key)
    ones = np.outer(np.ones(G), m)
    assert out["fraction_total"] == pytest.approx(np.sum(ones**2) / np.sum(W**2), rel=1e-10)
    cos2 = (W.sum(axis=0) / (np.sqrt(G) * np.linalg.norm(W, axis=0))) ** 2
    np.testing.assert_allclose(out["fraction_per_factor"], cos2, rtol=1e-10)
    np.testing.assert_allclose(out["mean_loading"], m, rtol=1e-12)
    np.testing.assert_allclose(out["norm_raw"], np.linalg.norm(W, axis=0), rtol=1e-12)
    np.testing.assert_allclose(out["norm_perp"], np.linalg.norm(P, axis=0), rtol=1e-12)
    full, perp = W @ W.T, P @ P.T
    expected = np.sum((full - perp) ** 2) / np.sum(full**2)
    assert out["covariance_fraction"] == pytest.approx(expected, rel=1e-8)
    assert (out["n_genes"], out["latent_dim"]) == (G, 3)


def test_gauge_fraction_is_zero_orthogonal_and_one_along_ones(pln_data):
    adata = pln_data[0]
    rng = np.random.default_rng(5)
    W = rng.normal(size=(adata.n_vars, 3))
    W -= W.mean(axis=0)  # every column orthogonal to the all-ones vector
    out = snb.get.gauge_diagnostics(_with_loadings(adata, PLN, W), key=PLN)
    assert out["fraction_total"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(out["fraction_per_factor"], 0.0, atol=1e-12)
    assert out["covariance_fraction"] == pytest.approx(0.0, abs=1e-12)

    W1 = np.outer(np.ones(adata.n_vars), [0.5, -1.0, 2.0])  # pure gauge
    out1 = snb.get.gauge_diagnostics(_with_loadings(adata, PLN, W1), key=PLN)
    assert out1["fraction_total"] == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(out1["fraction_per_factor"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(out1["mean_loading"], [0.5, -1.0, 2.0], rtol=1e-12)
    assert out1["covariance_fraction"] == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(snb.get.W_compositional(_with_loadings(adata, PLN, W1), key=PLN), 0)


# ----------------------------------------------------------------------------- get: correlation
@pytest.mark.parametrize("compositional", [False, True])
def test_correlation_matches_a_dense_computation(fitted, compositional):
    adata, key, truth = fitted
    W = truth["W"] - (truth["W"].mean(axis=0) if compositional else 0.0)
    cov = W @ W.T + np.diag(truth["d"])
    expected = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    corr = snb.get.correlation(adata, key=key, compositional=compositional)
    assert list(corr.index) == list(corr.columns) == list(adata.var_names)
    np.testing.assert_allclose(corr.to_numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.diag(corr.to_numpy()), 1.0)
    np.testing.assert_array_equal(corr.to_numpy(), corr.to_numpy().T)
    genes = ["gene_07", "gene_03", "gene_31"]
    block = snb.get.correlation(adata, key=key, compositional=compositional, genes=genes)
    assert list(block.index) == genes
    pd.testing.assert_frame_equal(block, corr.loc[genes, genes], rtol=1e-12)
    one = snb.get.correlation(adata, key=key, genes="gene_05")
    assert one.shape == (1, 1) and one.iloc[0, 0] == 1.0


def test_correlation_compositional_differs_from_raw(pln_data):
    adata = pln_data[0]
    raw = snb.get.correlation(adata, key=PLN).to_numpy()
    comp = snb.get.correlation(adata, key=PLN, compositional=True).to_numpy()
    assert np.max(np.abs(raw - comp)) > 1e-3


def test_correlation_asks_for_genes_beyond_5000_genes(write_contract):
    G = 5001
    a = ad.AnnData(
        X=sp.csr_matrix((2, G), dtype=np.float32),
        var=pd.DataFrame(index=[f"g{j}" for j in range(G)]),
        obs=pd.DataFrame(index=["c0", "c1"]),
    )
    rng = np.random.default_rng(0)
    W = rng.normal(size=(G, 2))
    write_contract(
        a,
        model="pln",
        key="big",
        mu=np.zeros(G),
        W=W,
        d=np.ones(G),
        eta=np.zeros(2),
        x=np.zeros((2, G)),
    )
    with pytest.raises(ValueError, match=r"5001 × 5001.*`genes=\[\.\.\.\]`"):
        snb.get.correlation(a, key="big")
    block = snb.get.correlation(a, key="big", compositional=True, genes=["g0", "g5000"])
    P = W - W.mean(axis=0)
    c = P[[0, 5000]] @ P[[0, 5000]].T + np.eye(2)
    assert block.iloc[0, 1] == pytest.approx(c[0, 1] / np.sqrt(c[0, 0] * c[1, 1]), rel=1e-10)


# ----------------------------------------------------------------------------- get: bad input
def test_get_bad_input(pln_data):
    adata = pln_data[0]
    with pytest.raises(KeyError, match=r"`key`='absent'.*log-normal fits found: 'pln'"):
        snb.get.W_compositional(adata, key="absent")
    other = adata.copy()
    other.uns["zinb"] = {"params": {"model": "zinb"}, "variational_params": {}}
    for fn in (snb.get.W_compositional, snb.get.gauge_diagnostics, snb.get.correlation):
        with pytest.raises(ValueError, match="holds a zinb fit, not a log-normal one"):
            fn(other, key="zinb")
    with pytest.raises(TypeError, match="`adata` must be an AnnData"):
        snb.get.gauge_diagnostics(adata.X, key=PLN)
    with pytest.raises(TypeError, match="`key` must be a string"):
        snb.get.gauge_diagnostics(adata, key=3)
    with pytest.raises(KeyError, match=r"'nope', 'nada'"):
        snb.get.correlation(adata, key=PLN, genes=["gene_00", "nope", "nada"])
    with pytest.raises(ValueError, match="twice: 'gene_01'"):
        snb.get.correlation(adata, key=PLN, genes=["gene_01", "gene_01"])
    with pytest.raises(TypeError, match="`genes`"):
        snb.get.correlation(adata, key=PLN, genes=3)
    with pytest.raises(TypeError, match="`compositional`"):
        snb.get.correlation(adata, key=PLN, compositional="yes")
    gone = adata.copy()
    del gone.varm[f"{PLN}_W_perp"]
    with pytest.raises(KeyError, match="pln_W_perp"):
        snb.get.W_compositional(gone, key=PLN)


# ----------------------------------------------------------------------------- predictive maths
def test_library_anchored_predicts_the_observed_gene_means(fitted):
    """With the truth as the fit, fresh compositions at the observed totals reproduce every
    gene's mean count (up to sampling and the total–composition dependence the check ignores),
    and the predicted counts add up to the library sizes."""
    adata, key, _ = fitted
    fit = lognormal_fit(adata, key)
    u = adata.X.toarray()
    lib = u.sum(axis=1)
    idx = np.arange(adata.n_vars)
    sim = simulate_library_anchored(
        fit, param_draws(adata, fit, 60, 0), idx, lib, np.random.default_rng(0)
    )
    assert sim.shape == (60, adata.n_obs, adata.n_vars)
    pred, obs = sim.mean(axis=(0, 1)), u.mean(axis=0)
    rel = np.abs(pred - obs) / obs
    assert np.median(rel) < 0.08 and rel.max() < 0.5
    assert np.corrcoef(np.log(pred), np.log(obs))[0, 1] > 0.98
    assert pred.sum() == pytest.approx(lib.mean(), rel=0.01)
    # the offsets cancel: shifting every eta changes nothing
    shifted = param_draws(adata, fit, 60, 0)
    shifted = type(shifted)(mu=shifted.mu, r=shifted.r, eta=shifted.eta + 3.0, drawn=shifted.drawn)
    again = simulate_library_anchored(fit, shifted, idx, lib, np.random.default_rng(0))
    np.testing.assert_array_equal(again, sim)


def test_library_anchored_moment_matched_tail_agrees_with_exact(nbln_data):
    adata = nbln_data[0]
    fit = lognormal_fit(adata, NBLN)
    lib = adata.X.toarray().sum(axis=1)
    idx = np.array([0, 9, 17])
    draws = param_draws(adata, fit, 200, 0)
    exact = simulate_library_anchored(fit, draws, idx, lib, np.random.default_rng(1))
    # only the shown genes get their own noise; the other 37 enter as one moment-matched sum
    cheap = simulate_library_anchored(fit, draws, idx, lib, np.random.default_rng(1), budget=1)
    np.testing.assert_allclose(cheap.mean(axis=(0, 1)), exact.mean(axis=(0, 1)), rtol=0.025)
    np.testing.assert_allclose(cheap.var(axis=(0, 1)), exact.var(axis=(0, 1)), rtol=0.06)


def test_marginal_matches_the_model_moments(fitted):
    """Fresh x and each cell's eta: the pooled mean and second moment of every gene are
    mean_c E[λ] and mean_c (E[λ] + (1 + 1/r) E[λ²]) with λ = exp(x - η_c)."""
    adata, key, truth = fitted
    fit = lognormal_fit(adata, key)
    idx = np.array([2, 11, 25, 39])
    sim = simulate_marginal(
        fit, param_draws(adata, fit, 200, 0, eta_noise=True), idx, np.random.default_rng(0)
    ).astype(np.float64)
    mu, s2 = truth["mu"][idx], fit.sigma2[idx]
    eta = truth["eta"][:, None]
    m1 = np.exp(mu + s2 / 2 - eta)
    m2 = np.exp(2 * (mu - eta) + 2 * s2)
    inv_r = 0.0 if key == PLN else 1.0 / truth["r"][idx]
    np.testing.assert_allclose(sim.mean(axis=(0, 1)), m1.mean(axis=0), rtol=0.03)
    np.testing.assert_allclose(
        (sim**2).mean(axis=(0, 1)), (m1 + (1 + inv_r) * m2).mean(axis=0), rtol=0.12
    )


def test_per_cell_uses_the_map_latents(fitted):
    adata, key, truth = fitted
    fit = lognormal_fit(adata, key)
    cells, genes = np.array([3, 150, 299]), np.array([0, 5, 20])
    x_hat = np.asarray(adata.obsm[f"{key}_x"])[np.ix_(cells, genes)].astype(np.float64)
    sim = simulate_per_cell(
        fit, param_draws(adata, fit, 1, 0), x_hat, cells, genes, 20000, np.random.default_rng(0)
    ).astype(np.float64)
    rate = np.exp(x_hat - truth["eta"][cells, None])
    np.testing.assert_allclose(sim.mean(axis=0), rate, rtol=0.05)
    inv_r = 0.0 if key == PLN else 1.0 / truth["r"][genes]
    np.testing.assert_allclose(sim.var(axis=0), rate + inv_r * rate**2, rtol=0.12)


def test_ppc_panels_hold_the_observed_histograms(pln_data):
    adata = pln_data[0]
    fit = lognormal_fit(adata, PLN)
    u = adata.X.toarray().astype(np.int64)
    idx = np.array([1, 30])
    panels = lognormal_ppc_panels(
        adata,
        fit,
        "library_anchored",
        idx,
        u[:, idx],
        u.mean(axis=0),
        u.sum(axis=1),
        n_samples=100,
        seed=0,
        max_count=None,
    )
    for p, g in zip(panels, idx, strict=True):
        assert p.gene == adata.var_names[g]
        top = p.k[-1]
        np.testing.assert_allclose(p.observed, [np.mean(u[:, g] == k) for k in range(top + 1)])
        assert np.all(p.bands[0.05] <= p.bands[0.5]) and np.all(p.bands[0.5] <= p.bands[0.95])
        # the truth as the fit: the observed zero fraction lies in the 90 % band (wide margin)
        assert p.bands[0.05][0] - 0.05 <= p.observed[0] <= p.bands[0.95][0] + 0.05


# ----------------------------------------------------------------------------- cascade
def test_cascade_frozen_parameters_come_from_the_source_posterior(cascade_data):
    fit = lognormal_fit(cascade_data, CASCADE)
    assert fit.source == SOURCE and fit.freeze == {"r", "eta"}
    draws = param_draws(cascade_data, fit, 20, 7)  # 20 draws everywhere: one compilation
    src = snb.get.posterior_samples(cascade_data, key=SOURCE, n_samples=20, rng=7)
    np.testing.assert_array_equal(draws.r, np.asarray(src["r"], dtype=np.float64))
    np.testing.assert_array_equal(draws.eta, -np.log(np.asarray(src["nu"], dtype=np.float64)))
    np.testing.assert_array_equal(draws.mu, np.broadcast_to(fit.mu, draws.mu.shape))
    assert np.ptp(draws.r, axis=0).max() > 0  # really drawn, not a point estimate
    # without a freeze the stored values are used
    plain = cascade_data.copy()
    plain.uns[CASCADE]["cascade"]["freeze"] = ""
    d0 = param_draws(plain, lognormal_fit(plain, CASCADE), 20, 7)
    np.testing.assert_array_equal(d0.r, np.broadcast_to(fit.r, (20, fit.r.size)))
    np.testing.assert_array_equal(d0.eta, np.broadcast_to(fit.eta, (20, fit.eta.size)))


def test_cascade_ppc_levels_plot(cascade_data):
    for level in ("library_anchored", "marginal", "per_cell"):
        axes = snb.pl.ppc(
            cascade_data,
            key=CASCADE,
            ppc_level=level,
            n_genes=3,
            n_cells=2,
            n_samples=20,
            show=False,
        )
        assert len(axes) == (2 if level == "per_cell" else 3)
        assert all(isinstance(a, Axes) for a in axes)


def test_cascade_without_its_source_says_so(cascade_data):
    a = cascade_data.copy()
    del a.uns[SOURCE]
    with pytest.raises(KeyError, match=r"cascade source 'nbvcp'.*keep the source fit"):
        snb.pl.ppc(a, key=CASCADE, ppc_level="marginal", n_samples=20, show=False)
    assert _n_figs() == 0


# ----------------------------------------------------------------------------- pl.ppc
def test_ppc_default_level_is_library_anchored_for_lognormal(pln_data):
    adata = pln_data[0]
    fig = snb.pl.ppc(adata, key=PLN, n_genes=2, n_samples=20, return_fig=True)
    assert isinstance(fig, Figure)
    assert "library anchored check" in fig._suptitle.get_text()
    fig = snb.pl.ppc(adata, key=PLN, ppc_level="marginal", n_genes=2, n_samples=20, return_fig=True)
    assert "marginal check" in fig._suptitle.get_text()


@pytest.mark.parametrize(
    ("kwargs", "n_panels"),
    [
        ({}, 6),
        ({"ppc_level": "marginal", "genes": ["gene_01", "gene_02"]}, 2),
        ({"ppc_level": "per_cell", "n_cells": 3, "n_genes": 10}, 3),
        ({"ppc_level": "per_cell", "cells": "cell_010"}, 1),
    ],
)
def test_ppc_return_types(fitted, kwargs, n_panels):
    adata, key, _ = fitted
    out = snb.pl.ppc(adata, key=key, n_samples=20, show=False, **kwargs)
    axes = [out] if isinstance(out, Axes) else out
    assert len(axes) == n_panels and all(isinstance(a, Axes) for a in axes)
    assert _n_figs() == 1


def test_ppc_honours_ax(nbln_data):
    adata = nbln_data[0]
    _fig, axs = plt.subplots(1, 2)
    out = snb.pl.ppc(
        adata, key=NBLN, genes=["gene_00", "gene_04"], n_samples=20, ax=axs, show=False
    )
    assert list(out) == list(axs) and _n_figs() == 1
    assert axs[0].get_title().startswith("gene_00")
    _fig, ax = plt.subplots()
    out = snb.pl.ppc(
        adata, key=NBLN, ppc_level="per_cell", cells="cell_005", n_samples=20, ax=ax, show=False
    )
    assert out is ax and ax.get_title().startswith("cell_005")


def test_ppc_same_rng_same_panels(pln_data):
    adata = pln_data[0]
    kw = {"key": PLN, "genes": ["gene_02"], "n_samples": 30, "show": False}
    first = snb.pl.ppc(adata, rng=3, **kw)
    again = snb.pl.ppc(adata, rng=3, **kw)
    other = snb.pl.ppc(adata, rng=4, **kw)

    def heights(a):
        return np.concatenate([p.get_paths()[0].vertices[:, 1] for p in a.collections])

    np.testing.assert_array_equal(heights(first), heights(again))
    assert not np.array_equal(heights(first), heights(other))


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"ppc_level": "bogus"}, ValueError, r"`ppc_level`='bogus'.*'library_anchored'"),
        ({"key": "absent"}, KeyError, "absent"),
        ({"cells": "cell_001"}, ValueError, "`cells` applies"),
        ({"genes": ["nope"]}, KeyError, "'nope'"),
        ({"n_samples": 1}, ValueError, "n_samples"),
        ({"ppc_level": "per_cell", "n_cells": 0}, ValueError, "n_cells"),
        ({"log": "yes"}, TypeError, "`log`"),
        ({"rng": "seed"}, TypeError, "`rng`"),
    ],
)
def test_ppc_bad_arguments(pln_data, kwargs, err, match):
    kw = {"key": PLN, "show": False, **kwargs}
    with pytest.raises(err, match=match):
        snb.pl.ppc(pln_data[0], **kw)
    assert _n_figs() == 0


def test_ppc_missing_latents_for_per_cell(pln_data):
    a = pln_data[0].copy()
    del a.obsm[f"{PLN}_x"]
    with pytest.raises(KeyError, match="pln_x"):
        snb.pl.ppc(a, key=PLN, ppc_level="per_cell", show=False)
    assert _n_figs() == 0


def test_library_anchored_is_for_lognormal_fits_only(pln_data):
    a = pln_data[0].copy()
    a.uns["zinb"] = {"params": {"model": "zinb"}, "variational_params": {}}
    with pytest.raises(ValueError, match=r"`ppc_level`='library_anchored' is not one of"):
        snb.pl.ppc(a, key="zinb", ppc_level="library_anchored", show=False)


# ----------------------------------------------------------------------------- corner
def test_composition_draws_follow_the_fitted_log_ratios(pln_data):
    adata, truth = pln_data
    fit = lognormal_fit(adata, PLN)
    G = adata.n_vars
    full = composition_draws(fit, np.arange(G), 4000, np.random.default_rng(0))
    np.testing.assert_allclose(full.sum(axis=1), 1.0, rtol=1e-10)
    i, j = 4, 27
    lr = np.log(full[:, i] / full[:, j])
    cov = truth["W"] @ truth["W"].T + np.diag(truth["d"])
    assert lr.mean() == pytest.approx(truth["mu"][i] - truth["mu"][j], abs=0.05)
    assert lr.var() == pytest.approx(cov[i, i] + cov[j, j] - 2 * cov[i, j], rel=0.08)
    pair = composition_draws(fit, np.array([i, j]), 4000, np.random.default_rng(0))
    np.testing.assert_allclose(pair, full[:, [i, j]], rtol=1e-10)


def test_compositional_corner_layout_and_pseudobulk(nbln_data):
    adata = nbln_data[0]
    genes = ["gene_03", "gene_10", "gene_22"]
    axes = snb.pl.compositional_corner(adata, key=NBLN, genes=genes, n_draws=300, show=False)
    assert len(axes) == 9 and all(isinstance(a, Axes) for a in axes)
    assert _n_figs() == 1
    upper = [axes[0 * 3 + 1], axes[0 * 3 + 2], axes[1 * 3 + 2]]
    assert all(not a.axison for a in upper)
    u = adata.X.toarray().astype(np.float64)
    bulk = u[:, [3, 10, 22]].sum(axis=0) / u.sum()
    pair = axes[2 * 3 + 0]  # row gene_22 (y) against column gene_03 (x)
    assert pair.get_xscale() == "log" and pair.get_yscale() == "log"
    star = next(c for c in pair.collections if c.get_label() == "pseudobulk")
    np.testing.assert_allclose(star.get_offsets()[0], [bulk[0], bulk[2]], rtol=1e-12)
    cells = next(c for c in pair.collections if c.get_label() == "cells u / L")
    both = (u[:, 3] > 0) & (u[:, 22] > 0)
    assert len(cells.get_offsets()) == both.sum()
    diag = axes[1 * 3 + 1]
    assert [ln.get_xdata()[0] for ln in diag.get_lines()] == pytest.approx([bulk[1]])
    assert pair.get_xlabel() == "gene_03 share" and pair.get_ylabel() == "gene_22 share"
    assert axes[1 * 3 + 0].get_xlabel() == "" and axes[1 * 3 + 0].get_ylabel() == "gene_10 share"
    assert axes[2 * 3 + 2].get_xlabel() == "gene_22 share"


def test_compositional_corner_honours_ax_and_return_fig(pln_data):
    adata = pln_data[0]
    fig, grid = plt.subplots(2, 2)
    out = snb.pl.compositional_corner(
        adata,
        key=PLN,
        genes=["gene_00", "gene_01"],
        n_draws=100,
        log=False,
        ax=grid,
        show=False,
    )
    assert list(out) == list(grid.ravel()) and _n_figs() == 1
    assert out[2].get_xscale() == "linear"
    fig = snb.pl.compositional_corner(
        adata, key=PLN, genes=["gene_00", "gene_01"], n_draws=100, return_fig=True
    )
    assert isinstance(fig, Figure)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"genes": ["gene_00"]}, ValueError, "2 to 6 genes, got 1"),
        ({"genes": [f"gene_{j:02d}" for j in range(7)]}, ValueError, "2 to 6 genes, got 7"),
        ({"genes": ["gene_00", "nope"]}, KeyError, "'nope'"),
        ({"genes": "gene_00"}, TypeError, "`genes` must be a list"),
        ({"genes": ["gene_00", "gene_01"], "n_draws": 5}, ValueError, "n_draws"),
        ({"genes": ["gene_00", "gene_01"], "key": "absent"}, KeyError, "absent"),
        ({"genes": ["gene_00", "gene_01"], "log": None}, TypeError, "`log`"),
        ({"genes": ["gene_00", "gene_01"], "ax": plt}, TypeError, "`ax`"),
    ],
)
def test_compositional_corner_bad_input(pln_data, kwargs, err, match):
    kw = {"key": PLN, "show": False, **kwargs}
    with pytest.raises(err, match=match):
        snb.pl.compositional_corner(pln_data[0], **kw)
    assert _n_figs() == 0


# ----------------------------------------------------------------------------- spectrum
def test_loadings_spectrum_bars_threshold_and_rank(nbln_data):
    adata = nbln_data[0]
    a = adata.copy()
    diag = a.uns[NBLN]["w_prior_diagnostics"]
    diag["threshold"], diag["effective_rank"] = 0.8, 1
    _fig, ax = plt.subplots()
    out = snb.pl.loadings_spectrum(a, key=NBLN, ax=ax, show=False)
    assert out is ax and _n_figs() == 1
    W = np.asarray(a.varm[f"{NBLN}_W"])
    norms = np.sort(np.linalg.norm(W - W.mean(axis=0), axis=0))[::-1]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], norms, rtol=1e-12)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    thr = next(v for k, v in lines.items() if k.startswith("threshold"))
    assert thr.get_ydata()[0] == pytest.approx(0.8 * norms[0])
    rank = lines["effective rank = 1"]
    assert rank.get_xdata()[0] == pytest.approx(1.5)
    assert "effective rank 1 of 3" in ax.get_title()
    assert isinstance(snb.pl.loadings_spectrum(a, key=NBLN, return_fig=True), Figure)


def test_loadings_spectrum_bad_input(pln_data):
    with pytest.raises(KeyError, match="absent"):
        snb.pl.loadings_spectrum(pln_data[0], key="absent", show=False)
    with pytest.raises(TypeError, match="`log`"):
        snb.pl.loadings_spectrum(pln_data[0], key=PLN, log="no", show=False)
    assert _n_figs() == 0


# ----------------------------------------------------------------------------- heat map
def test_correlation_heatmap_default_genes_are_the_largest_loadings(pln_data):
    adata = pln_data[0]
    ax = snb.pl.correlation_heatmap(adata, key=PLN, n_genes=8, show=False)
    assert isinstance(ax, Axes) and _n_figs() == 1
    W = np.asarray(adata.varm[f"{PLN}_W_perp"])
    top = set(adata.var_names[np.argsort(-np.linalg.norm(W, axis=1))[:8]])
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert set(shown) == top
    corr = snb.get.correlation(adata, key=PLN, compositional=True, genes=shown)
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(8, 8), corr.to_numpy())


def test_correlation_heatmap_given_genes_and_ax(nbln_data):
    adata = nbln_data[0]
    genes = ["gene_09", "gene_01", "gene_30"]
    _fig, ax = plt.subplots()
    out = snb.pl.correlation_heatmap(
        adata, key=NBLN, genes=genes, cluster=False, compositional=False, ax=ax, show=False
    )
    assert out is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == genes
    with pytest.raises(KeyError, match="'nope'"):
        snb.pl.correlation_heatmap(adata, key=NBLN, genes=["nope"], show=False)
    with pytest.raises(TypeError, match="`cluster`"):
        snb.pl.correlation_heatmap(adata, key=NBLN, cluster="yes", show=False)


# ----------------------------------------------------------------------------- contract
def test_plots_never_mutate(fitted, assert_adata_identical):
    adata, key, _ = fitted
    before = adata.copy()
    snb.pl.ppc(adata, key=key, n_genes=2, n_samples=10, show=False)
    snb.pl.ppc(adata, key=key, ppc_level="per_cell", n_cells=1, n_samples=10, show=False)
    snb.pl.compositional_corner(
        adata, key=key, genes=["gene_00", "gene_01"], n_draws=50, show=False
    )
    snb.pl.loadings_spectrum(adata, key=key, show=False)
    snb.pl.correlation_heatmap(adata, key=key, n_genes=5, show=False)
    snb.get.gauge_diagnostics(adata, key=key)
    snb.get.correlation(adata, key=key)
    assert_adata_identical(adata, before)


def test_everything_works_after_h5ad_round_trip(nbln_data, tmp_path):
    adata = nbln_data[0]
    path = tmp_path / "ln.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(
        snb.get.W_compositional(back, key=NBLN), snb.get.W_compositional(adata, key=NBLN)
    )
    pd.testing.assert_frame_equal(
        snb.get.correlation(back, key=NBLN, compositional=True),
        snb.get.correlation(adata, key=NBLN, compositional=True),
    )
    assert isinstance(snb.pl.ppc(back, key=NBLN, n_genes=2, n_samples=10, return_fig=True), Figure)
    assert isinstance(snb.pl.loadings_spectrum(back, key=NBLN, return_fig=True), Figure)
