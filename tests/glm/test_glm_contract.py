"""The AnnData contract of ``tl.fit_glm``: keys, copy, layer, sparse formats, round trips."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scnbtools as snb
from conftest import make_glm_adata

VARM = {
    "glm_mean_coef",
    "glm_mean_se",
    "glm_dispersion_coef",
    "glm_dispersion_se",
    "glm_stats",
    "glm_vcov",
}


def _no_nan(a: ad.AnnData, key: str = "glm") -> None:
    for k, v in a.varm.items():
        if k.startswith(key):
            arr = v.select_dtypes("number").to_numpy() if isinstance(v, pd.DataFrame) else v
            assert np.all(np.isfinite(np.asarray(arr, dtype=float))), k


def test_keys_tables_and_record(small_fit):
    a = small_fit
    assert VARM <= set(a.varm.keys())
    coef = a.varm["glm_mean_coef"]
    assert isinstance(coef, pd.DataFrame) and list(coef.columns) == [
        "Intercept",
        "x",
        "g[T.b]",
        "g[T.c]",
    ]
    assert coef.index.equals(a.var_names)
    assert list(a.varm["glm_dispersion_coef"].columns) == ["Intercept"]
    stats = a.varm["glm_stats"]
    assert list(stats.columns) == ["loglik", "aic", "bic", "n_iter", "converged", "status"]
    assert stats["converged"].all()
    np.testing.assert_allclose(stats["aic"], 2 * 5 - 2 * stats["loglik"])
    np.testing.assert_allclose(stats["bic"], 5 * np.log(a.n_obs) - 2 * stats["loglik"])
    assert a.varm["glm_vcov"].shape == (a.n_vars, 25)
    _no_nan(a)
    rec = a.uns["glm"]
    assert rec["family"] == "nb" and list(rec["param_names"]) == ["mean", "dispersion"]
    prm = rec["params"]
    assert prm["mean"] == "~ x + g" and prm["dispersion"] == "~ 1" and prm["dtype"] == "float32"
    assert prm["layer"] == "X" and prm["offset"] == "none" and "versions" in prm
    design = rec["design"]["mean"]
    assert list(design["columns"]) == ["Intercept", "x", "g[T.b]", "g[T.c]"]
    assert list(design["categories"]["g"]) == ["a", "b", "c"] and design["reference"]["g"] == "a"
    assert rec["offset"]["kind"] == "none" and rec["n_converged"] == a.n_vars
    # standard errors agree with the covariance diagonal
    V = a.varm["glm_vcov"].reshape(a.n_vars, 5, 5)
    np.testing.assert_allclose(
        a.varm["glm_mean_se"].to_numpy(), np.sqrt(np.diagonal(V, axis1=1, axis2=2))[:, :4]
    )


def test_recovers_the_truth(small_fit, small):
    _, _, truth, log_r = small
    est = snb.get.glm_coef(small_fit)
    se = snb.get.glm_coef(small_fit, stat="se")
    for col in ("Intercept", "x", "g[T.b]", "g[T.c]"):
        z = (est.loc[col].to_numpy() - truth[col]) / se.loc[col].to_numpy()
        assert np.mean(np.abs(z) < 2.5) > 0.85, col  # calibrated Wald intervals (see inference)
    disp = snb.get.glm_coef(small_fit, param="dispersion").loc["Intercept"].to_numpy()
    assert np.mean(np.abs(disp - log_r)) < 0.3


@pytest.mark.parametrize("fmt", ["dense", "csc"])
def test_dense_csr_csc_agree(small, small_fit, fmt):
    Y, obs, _, _ = small
    a = make_glm_adata(Y, obs, fmt)
    snb.tl.fit_glm(a, mean="~ x + g", progress_bar=False)
    for k in ("glm_mean_coef", "glm_dispersion_coef", "glm_mean_se"):
        np.testing.assert_array_equal(a.varm[k].to_numpy(), small_fit.varm[k].to_numpy())


def test_copy_layer_and_two_keys(small, small_fit):
    Y, obs, _, _ = small
    a = make_glm_adata(Y, obs)
    a.layers["counts"] = a.X.copy()
    a.X = a.X.multiply(0.5).tocsr()  # not counts: must be ignored with layer=
    before = (set(a.varm.keys()), set(a.uns.keys()))
    b = snb.tl.fit_glm(a, mean="~ x + g", layer="counts", copy=True, progress_bar=False)
    assert isinstance(b, ad.AnnData) and (set(a.varm.keys()), set(a.uns.keys())) == before
    np.testing.assert_array_equal(
        b.varm["glm_mean_coef"].to_numpy(), small_fit.varm["glm_mean_coef"].to_numpy()
    )
    assert b.uns["glm"]["params"]["layer"] == "counts"
    out = snb.tl.fit_glm(b, mean="~ x", layer="counts", key_added="glm2", progress_bar=False)
    assert out is None
    assert list(b.varm["glm2_mean_coef"].columns) == ["Intercept", "x"]
    assert list(b.varm["glm_mean_coef"].columns) == ["Intercept", "x", "g[T.b]", "g[T.c]"]


def test_fit_does_not_retrace_across_gene_blocks(small):
    Y, obs, _, _ = small
    a = make_glm_adata(Y, obs)
    b = a.copy()
    snb.tl.fit_glm(a, mean="~ x + g", block_size=7, key_added="b7", progress_bar=False)
    # 5 blocks of 7 genes (the last one padded) share one compiled solver: the objective is
    # traced twice per compilation (shape inference, loop body), not once per block
    assert a.uns["b7"]["n_traces"] <= 2
    snb.tl.fit_glm(b, mean="~ x + g", block_size=7, key_added="b7", progress_bar=False)
    assert b.uns["b7"]["n_traces"] == 0  # a second fit of the same shapes compiles nothing
    np.testing.assert_array_equal(
        a.varm["b7_mean_coef"].to_numpy(), b.varm["b7_mean_coef"].to_numpy()
    )
    assert a.varm["b7_stats"]["converged"].all()


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_write_read_round_trip_then_everything_works(small_fit, tmp_path, fmt):
    a = small_fit.copy()
    path = tmp_path / f"a.{fmt}"
    getattr(a, f"write_{fmt}")(path)
    b = getattr(ad, f"read_{fmt}")(path)
    pd.testing.assert_frame_equal(snb.get.glm_coef(b), snb.get.glm_coef(a))
    pd.testing.assert_frame_equal(
        snb.tl.predict(b)["mean"], snb.tl.predict(a)["mean"], check_exact=False, rtol=1e-12
    )
    assert snb.get.glm_stats(b)["converged"].all()
    t_a = snb.tl.glm_test(a, contrast="x")
    t_b = snb.tl.glm_test(b, contrast="x")
    pd.testing.assert_frame_equal(t_a, t_b)
    new = pd.DataFrame({"x": [0.0, 1.0], "g": ["c", "a"]}, index=["u", "v"])
    np.testing.assert_allclose(
        snb.tl.predict(b, obs=new)["mean"].to_numpy(), snb.tl.predict(a, obs=new)["mean"].to_numpy()
    )
    s_a = snb.tl.simulate(a, rng=3)
    s_b = snb.tl.simulate(b, rng=3)
    np.testing.assert_array_equal(s_a.X.toarray(), s_b.X.toarray())
    assert snb.pl.glm_coef(b, show=False) is not None
    assert snb.pl.mean_variance(b, show=False) is not None
