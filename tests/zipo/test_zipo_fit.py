"""ZiPo on seeded synthetic ZINB data with a low-rank structure and known rates.

Tolerances were calibrated over seeds 0–7 of ``make_adata`` (800 cells × 200 genes, the
``SMALL`` network, up to 100 epochs; script in the PR notes):

* held-out NLL per entry: ZiPo 1.89–2.16, per-gene NB baseline with library offset 2.16–2.38
  (gap 0.22–0.31) -> assert a gap of at least 0.1;
* rate MSE / PCA (rank 8) reconstruction MSE: 0.24–0.51 -> assert < 0.75;
* mean zero-inflation / true mean gate with alpha_z = 0.1: 0.91–1.02 -> assert within ±15 %;
  with alpha_z = 0: 1.15–1.35, and 0.026–0.044 above the alpha_z = 0.1 fit -> assert
  ratio > 1.08 and a difference > 0.015.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from zipo_helpers import SMALL, make_adata, nb_baseline_nll, pca_rates

import scnbtools as snb

EPOCHS = 100


@pytest.fixture(scope="module")
def fitted(sim_adata):
    a = sim_adata.copy()
    snb.tl.fit_zipo(a, likelihood="zinb", max_epochs=EPOCHS, progress_bar=False, **SMALL)
    return a


def test_outputs_written(fitted):
    a = fitted
    assert a.obsm["zipo"].shape == (a.n_obs, SMALL["n_latent"])
    assert np.all(np.isfinite(a.obsm["zipo"]))
    lib = a.obs["zipo_library"].to_numpy()
    assert np.all(lib > 0)
    assert a.obs["zipo_validation"].sum() == 80
    for stat in ("mean", "sd"):
        df = a.varm[f"zipo_{stat}"]
        assert list(df.columns) == ["r", "gate", "mu", "rho"]
        assert df.index.equals(a.var_names)
        assert np.all(np.isfinite(df.to_numpy()))
    res = a.uns["zipo"]
    assert res["params"]["model"] == "zipo" and res["params"]["likelihood"] == "zinb"
    n = res["n_epochs_run"]
    assert res["loss"].shape == res["val_loss"].shape == res["learning_rate"].shape == (n,)
    assert 0 <= res["best_epoch"] < n
    # the library in use (matched, the default) tracks the true one better than the
    # observed total does
    truth = a.layers["rates"].sum(1)
    obs_total = np.asarray(a.X.sum(1)).ravel()
    err_pred = np.std(np.log(lib) - np.log(truth))
    err_obs = np.std(np.log(obs_total) - np.log(truth))
    assert err_pred < err_obs


def test_default_matched_library_reproduces_each_cells_total(fitted):
    """With the default ``library="matched"`` the denoised counts (dropout included) of
    every cell sum to its observed total, and the library lies above that total by the
    dropout the model expects."""
    a = fitted.copy()
    assert a.uns["zipo"]["params"]["library"] == "matched"
    snb.tl.denoise(a, kind="counts")
    total = np.asarray(a.X.sum(1)).ravel()
    np.testing.assert_allclose(a.layers["zipo_counts"].sum(1), total, rtol=1e-4)
    assert np.all(a.obs["zipo_library"].to_numpy() > total)


def test_heldout_nll_beats_nb_baseline(fitted):
    a = fitted
    val = a.obs["zipo_validation"].to_numpy()
    X = a.X.toarray()
    nll = snb.tl.zipo_heldout_nll(a, key="zipo")
    assert nll == pytest.approx(a.uns["zipo"]["heldout_nll"], rel=1e-5)
    assert nll < nb_baseline_nll(X[~val], X[val]) - 0.1


def test_heldout_nll_equals_scipy_on_the_networks_outputs(fitted):
    """The stored held-out NLL (dense part on the device, count part on the host over
    distinct (gene, count) pairs) equals scipy's ZINB log-pmf of the network's rates,
    zero-inflation and dispersions for the validation cells, averaged over their entries."""
    from scipy import stats

    from scnbtools.tl import _zipo as tl_zipo

    a = fitted
    res = a.uns["zipo"]
    val = a.obs["zipo_validation"].to_numpy()
    held = a[val]
    o = tl_zipo._outputs(res, tl_zipo._cell_arrays(held, res, None), tl_zipo._dense_fn)
    m = np.exp(o["log_mu"].astype(np.float64) + o["log_l"][:, None])
    pi = 1.0 - o["keep"].astype(np.float64)
    r = np.exp(np.asarray(res["weights"]["disp"]["log_r"], np.float64))
    x = held.X.toarray()
    nb = stats.nbinom.logpmf(x, r, r / (r + m))
    ll = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)
    assert res["heldout_nll"] == pytest.approx(-ll.mean(), rel=2e-5)


def test_rate_mse_below_pca(fitted):
    a = fitted
    val = a.obs["zipo_validation"].to_numpy()
    pca_mse = np.mean((pca_rates(a.X.toarray(), 8)[val] - a.layers["rates"][val]) ** 2)
    assert snb.tl.zipo_rate_mse(a, true_rates="rates", key="zipo") < 0.75 * pca_mse
    # the same through an array argument
    assert snb.tl.zipo_rate_mse(a, true_rates=a.layers["rates"]) == pytest.approx(
        snb.tl.zipo_rate_mse(a, true_rates="rates"), rel=1e-9
    )


def test_zero_inflation_calibrated_and_overshoots_without_penalty(fitted):
    a = fitted.copy()
    truth = float(a.uns["truth"]["gate"].mean())
    on = float(a.varm["zipo_mean"]["gate"].mean())
    snb.tl.fit_zipo(
        a,
        likelihood="zinb",
        alpha_z=0.0,
        key_added="z0",
        max_epochs=EPOCHS,
        progress_bar=False,
        **SMALL,
    )
    off = float(a.varm["z0_mean"]["gate"].mean())
    assert abs(on / truth - 1) < 0.15
    assert off / truth > 1.08
    assert off - on > 0.015


def test_pruning_small_delta_keeps_nll(fitted):
    a = fitted.copy()
    before = snb.tl.zipo_heldout_nll(a)
    latent_before = a.obsm["zipo"].copy()
    snb.tl.zipo_prune(a, delta=1e-3)
    pr = a.uns["zipo"]["pruning"]
    assert pr["heldout_nll_before"] == pytest.approx(before, rel=1e-6)
    assert 0 < pr["fraction_pruned"] < 1
    W = a.uns["zipo"]["weights"]["enc_0"]["W"]
    assert np.mean(W == 0) == pytest.approx(pr["fraction_pruned"])
    # small delta: NLL per entry unchanged to 1e-3 relative (observed: < 1e-5)
    assert abs(pr["heldout_nll_after"] - before) < 1e-3 * before
    assert snb.tl.zipo_heldout_nll(a) == pytest.approx(pr["heldout_nll_after"], rel=1e-6)
    assert not np.array_equal(a.obsm["zipo"], latent_before)  # outputs rewritten
    # the check can fail: pruning most of each neuron does change the NLL
    b = fitted.copy()
    snb.tl.zipo_prune(b, delta=0.9)
    pr = b.uns["zipo"]["pruning"]
    assert pr["fraction_pruned"] > 0.9
    assert pr["heldout_nll_after"] > pr["heldout_nll_before"] + 1e-3


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_reload_and_transform_new_cells(fitted, tmp_path, fmt):
    a = fitted
    path = tmp_path / f"fit.{fmt}"
    if fmt == "h5ad":
        a.write_h5ad(path)
        b = ad.read_h5ad(path)
    else:
        a.write_zarr(path)
        b = ad.read_zarr(path)
    cells = [3, 10, 500, 799, 42]
    new = ad.AnnData(sp.csr_matrix(a.X[cells]))
    new.var_names = a.var_names.copy()
    snb.tl.zipo_transform(new, key="zipo", reference=b)
    np.testing.assert_allclose(new.obsm["zipo"], a.obsm["zipo"][cells], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        new.obs["zipo_library"].to_numpy(), a.obs["zipo_library"].to_numpy()[cells], rtol=1e-5
    )
    # the reloaded object itself: diagnostics and denoising work, genes may come reordered
    assert snb.tl.zipo_heldout_nll(b) == pytest.approx(a.uns["zipo"]["heldout_nll"], rel=1e-5)
    shuffled = new[:, new.var_names[::-1]].copy()
    snb.tl.zipo_transform(shuffled, key="zipo")
    np.testing.assert_allclose(shuffled.obsm["zipo"], new.obsm["zipo"], rtol=1e-5, atol=1e-5)
    snb.tl.denoise(shuffled, kind="counts")
    snb.tl.denoise(new, kind="counts")
    np.testing.assert_allclose(
        shuffled.layers["zipo_counts"], new.layers["zipo_counts"][:, ::-1], rtol=1e-5
    )


def test_denoise_kinds(fitted):
    a = fitted.copy()
    for kind in ("fractions", "counts", "counts_without_dropout"):
        snb.tl.denoise(a, kind=kind)
    frac = a.layers["zipo_fractions"]
    rate = a.layers["zipo_counts_without_dropout"]
    counts = a.layers["zipo_counts"]
    lib = a.obs["zipo_library"].to_numpy()
    np.testing.assert_allclose(frac.sum(1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(rate.sum(1), lib, rtol=1e-4)
    keep = counts / rate
    assert np.all((keep > 0) & (keep < 1))
    np.testing.assert_allclose(a.varm["zipo_mean"]["gate"], 1 - keep.mean(0), rtol=1e-4, atol=1e-6)
    snb.tl.denoise(a, kind="counts_without_dropout", target_library=1e4, layer_added="cp10k")
    np.testing.assert_allclose(a.layers["cp10k"].sum(1), 1e4, rtol=1e-4)
    np.testing.assert_allclose(a.layers["cp10k"], frac * 1e4, rtol=1e-4)
    out = snb.tl.denoise(a, kind="fractions", layer_added="f2", copy=True)
    assert "f2" in out.layers and "f2" not in a.layers


def test_latent_usable_by_scanpy(fitted):
    sc = pytest.importorskip("scanpy")
    a = fitted.copy()
    # gauss kernel + sklearn kNN: the same contract, without numba's compile time
    sc.pp.neighbors(a, use_rep="zipo", method="gauss", transformer="sklearn")
    assert a.obsp["connectivities"].shape == (a.n_obs, a.n_obs)


def test_contract_dense_sparse_layer_copy_rng():
    """Dense, CSR, CSC and a layer give identical fits; copy=True leaves the input alone;
    the same rng reproduces, another one does not. (Few epochs: only identity matters.)"""
    base = make_adata(seed=3)
    kw = {"likelihood": "zinb", "max_epochs": 3, "progress_bar": False, **SMALL}
    fits = {}
    for name in ("csr", "dense", "csc", "layer"):
        a = base.copy()
        if name == "dense":
            a.X = a.X.toarray()
        elif name == "csc":
            a.X = sp.csc_matrix(a.X)
        elif name == "layer":
            a.layers["counts"] = a.X.copy()
            a.X = a.X.multiply(1.0 / 7.0).tocsr()  # not counts: must not be read
        before = a.copy()
        out = snb.tl.fit_zipo(a, copy=True, layer="counts" if name == "layer" else None, **kw)
        assert (
            "zipo" not in a.uns
            and "zipo" not in a.obsm
            and a.obs.columns.equals(before.obs.columns)
        )
        fits[name] = out
    ref = fits["csr"].obsm["zipo"]
    for name in ("dense", "csc", "layer"):
        np.testing.assert_array_equal(fits[name].obsm["zipo"], ref)
    assert fits["layer"].uns["zipo"]["params"]["layer"] == "counts"
    again = snb.tl.fit_zipo(base.copy(), copy=True, rng=0, **kw)
    np.testing.assert_array_equal(again.obsm["zipo"], ref)
    other = snb.tl.fit_zipo(base.copy(), copy=True, rng=1, **kw)
    assert not np.allclose(other.obsm["zipo"], ref)
    # two keys do not clobber each other
    a = base.copy()
    snb.tl.fit_zipo(a, key_added="one", **kw)
    snb.tl.fit_zipo(a, key_added="two", rng=1, **kw)
    assert {"one", "two"} <= set(a.obsm) and {"one", "two"} <= set(a.uns)
    assert not np.allclose(a.obsm["one"], a.obsm["two"])


def test_covariates_observed_library_and_transform():
    """Numeric and categorical covariates are encoded at fit time and re-encoded the same
    way for new cells (default ZIP likelihood, observed library)."""
    a = make_adata(n_cells=300, seed=4)
    rs = np.random.default_rng(0)
    a.obs["age"] = rs.normal(50, 10, a.n_obs)
    a.obs["batch"] = pd.Categorical(rs.choice(["b1", "b2", "b3"], a.n_obs))
    snb.tl.fit_zipo(
        a,
        covariate_keys=["age", "batch"],
        library="observed",
        max_epochs=3,
        progress_bar=False,
        **SMALL,
    )
    res = a.uns["zipo"]
    assert res["n_covariate_columns"] == 4 and res["params"]["likelihood"] == "zip"
    # observed library: the rates of a cell sum to its total count
    snb.tl.denoise(a, kind="counts_without_dropout")
    np.testing.assert_allclose(
        a.layers["zipo_counts_without_dropout"].sum(1), np.asarray(a.X.sum(1)).ravel(), rtol=1e-4
    )
    sub = a[[5, 7, 100]].copy()
    snb.tl.zipo_transform(sub)
    np.testing.assert_allclose(sub.obsm["zipo"], a.obsm["zipo"][[5, 7, 100]], rtol=1e-5, atol=1e-5)
    # covariates matter: shifting one changes the library-independent outputs
    shifted = sub.copy()
    shifted.obs["age"] += 30
    snb.tl.zipo_transform(shifted)
    snb.tl.denoise(shifted, kind="fractions")
    snb.tl.denoise(sub, kind="fractions")
    assert not np.allclose(shifted.layers["zipo_fractions"], sub.layers["zipo_fractions"])
    bad = sub.copy()
    bad.obs["batch"] = pd.Categorical(["b1", "b9", "b2"])
    with pytest.raises(ValueError, match="b9"):
        snb.tl.zipo_transform(bad)
