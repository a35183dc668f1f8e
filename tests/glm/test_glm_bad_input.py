"""Every kind of bad input to the GLM functions fails early with a clear message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnbtools as snb
from conftest import make_glm_adata


@pytest.fixture
def fresh(small):
    Y, obs, _, _ = small
    return make_glm_adata(Y, obs)


FIT_ERRORS = [
    # (kwargs, error type, message fragment)
    ({"mean": "~ x + nope"}, KeyError, "'nope'"),
    ({"mean": "~ x +"}, ValueError, "not a valid formula"),
    ({"mean": "y ~ x"}, ValueError, "one-sided"),
    ({"mean": 3}, TypeError, "formula string"),
    ({"mean": "   "}, ValueError, "empty formula"),
    ({"mean": "~ 0"}, ValueError, "no columns"),
    ({"family": "gamma"}, ValueError, "'nb', 'zinb', 'poisson', 'zip'"),
    ({"family": 1}, TypeError, "`family`"),
    ({"zero_inflation": "~ 1"}, ValueError, "family 'zinb' or 'zip'"),
    ({"family": "poisson", "dispersion": "~ x"}, ValueError, "family 'nb' or 'zinb'"),
    ({"offset": "nope"}, KeyError, "'nope'"),
    ({"offset": np.ones(3)}, ValueError, "3 values but there are 400 cells"),
    ({"offset": "g"}, TypeError, "numeric"),
    ({"dtype": "float16"}, ValueError, "`dtype`='float16'"),
    ({"ridge": -1.0}, ValueError, "`ridge`"),
    ({"ridge": {"zero_inflation": 1.0}}, ValueError, "not parameters"),
    ({"max_iter": 0}, ValueError, "`max_iter`"),
    ({"tol": -1.0}, ValueError, "`tol`"),
    ({"copy": "yes"}, TypeError, "`copy`"),
    ({"key_added": "a/b"}, ValueError, "`key_added`"),
    ({"layer": "counts"}, KeyError, "'counts'"),
    ({"rng": "seed"}, TypeError, "`rng`"),
]


@pytest.mark.parametrize(("kwargs", "err", "msg"), FIT_ERRORS)
def test_fit_rejects(fresh, kwargs, err, msg):
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        snb.tl.fit_glm(fresh, progress_bar=False, **kwargs)
    assert "glm" not in fresh.uns  # nothing written


def test_rank_deficient_design_names_the_columns(fresh):
    fresh.obs["x2"] = 2.0 * fresh.obs["x"]
    with pytest.raises(ValueError, match=r"rank deficient: column\(s\) 'x2'"):
        snb.tl.fit_glm(fresh, mean="~ x + x2", progress_bar=False)
    fresh.obs["g_copy"] = fresh.obs["g"].astype(str)
    with pytest.raises(ValueError, match=r"'g_copy\[T.b\]', 'g_copy\[T.c\]'"):
        snb.tl.fit_glm(fresh, dispersion="~ g + g_copy", progress_bar=False)


def test_missing_values_in_a_covariate(fresh):
    fresh.obs.loc[fresh.obs_names[3], "x"] = np.nan
    with pytest.raises(ValueError, match="missing"):
        snb.tl.fit_glm(fresh, mean="~ x", progress_bar=False)


@pytest.mark.parametrize(
    ("values", "msg"),
    [(0.5, "non-integer"), (-1.0, "negative"), (np.nan, "NaN")],
)
def test_non_count_data(small, values, msg):
    Y, obs, _, _ = small
    Y = Y.astype(float)
    Y[2, 3] = values
    a = make_glm_adata(Y, obs)
    with pytest.raises(ValueError, match=msg):
        snb.tl.fit_glm(a, progress_bar=False)


def test_not_an_anndata_and_views(fresh):
    with pytest.raises(TypeError, match="AnnData"):
        snb.tl.fit_glm(fresh.X, progress_bar=False)
    with pytest.raises(ValueError, match="view"):
        snb.tl.fit_glm(fresh[:10], progress_bar=False)


def test_log_library_with_an_empty_cell(small):
    Y, obs, _, _ = small
    Y = Y.copy()
    Y[5] = 0
    a = make_glm_adata(Y, obs)
    with pytest.raises(ValueError, match="zero total counts"):
        snb.tl.fit_glm(a, offset="log_library", progress_bar=False)


def test_offset_with_non_finite_values(fresh):
    fresh.obs["off"] = 0.0
    fresh.obs.loc[fresh.obs_names[0], "off"] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        snb.tl.fit_glm(fresh, offset="off", progress_bar=False)


def test_all_zero_gene_is_flagged_not_nan(small):
    Y, obs, _, _ = small
    Y = Y.copy()
    Y[:, 4] = 0
    a = make_glm_adata(Y, obs)
    snb.tl.fit_glm(a, mean="~ x + g", progress_bar=False)
    stats = snb.get.glm_stats(a)
    assert stats.loc["gene4", "status"] == "all_zero" and not stats.loc["gene4", "converged"]
    assert stats.drop("gene4")["converged"].all()
    for k in ("glm_mean_coef", "glm_mean_se", "glm_dispersion_coef", "glm_dispersion_se"):
        assert np.all(np.isfinite(a.varm[k].to_numpy())), k
    assert np.all(np.isfinite(a.varm["glm_vcov"])) and np.all(np.isfinite(stats["loglik"]))
    mean = snb.tl.predict(a)["mean"]["gene4"]
    assert np.all(np.isfinite(mean)) and mean.max() < 1e-3
    test = snb.tl.glm_test(a, contrast="x")
    assert not test.loc[test.gene == "gene4", "converged"].item()
    assert np.isfinite(test["pvalue"]).all()


# ----------------------------------------------------------------------------- after the fit
def test_predict_new_category_and_missing_column(small_fit):
    new = pd.DataFrame({"x": [0.0, 1.0], "g": ["a", "zzz"]})
    with pytest.raises(ValueError, match="zzz"):
        snb.tl.predict(small_fit, obs=new)
    with pytest.raises(KeyError, match="'g'"):
        snb.tl.predict(small_fit, obs=pd.DataFrame({"x": [0.0]}))
    with pytest.raises(TypeError, match="`obs`"):
        snb.tl.predict(small_fit, obs=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no rows"):
        snb.tl.predict(small_fit, obs=new.iloc[:0])


def test_unknown_key(small_fit):
    for fn in (
        snb.tl.predict,
        snb.tl.simulate,
        snb.get.glm_coef,
        snb.get.glm_stats,
        snb.pl.glm_coef,
    ):
        with pytest.raises(KeyError, match="no GLM fit under key 'nope'"):
            fn(small_fit, key="nope")
    with pytest.raises(KeyError, match="no GLM fit"):
        snb.tl.glm_test(small_fit, key="nope", contrast="x")


@pytest.mark.parametrize(
    ("kwargs", "err", "msg"),
    [
        ({"contrast": "nope"}, KeyError, "not a column of the mean design"),
        ({"contrast": {"nope": 1}}, KeyError, "not columns of the mean design"),
        ({"contrast": [1.0, 2.0]}, ValueError, "needs 4 entries"),
        ({"contrast": [[1, 0, 0, 0], [2, 0, 0, 0]]}, ValueError, "linearly dependent"),
        ({"contrast": object()}, TypeError, "`contrast`"),
        ({"contrast": "x", "method": "score"}, ValueError, "`method`='score'"),
        ({"contrast": "x", "param": "zero_inflation"}, ValueError, "not a parameter"),
    ],
)
def test_glm_test_rejects(small_fit, kwargs, err, msg):
    with pytest.raises(err, match=msg):
        snb.tl.glm_test(small_fit, **kwargs)


def test_simulate_and_getters_reject(small_fit):
    with pytest.raises(ValueError, match="`copula`='t'"):
        snb.tl.simulate(small_fit, copula="t")
    with pytest.raises(ValueError, match="needs `copula='gaussian'`"):
        snb.tl.simulate(small_fit, copula_groups="g")
    with pytest.raises(KeyError, match="'nope'"):
        snb.tl.simulate(small_fit, copula="gaussian", copula_groups="nope")
    new = small_fit.obs.iloc[:5].copy()
    new["batch"] = "unseen"
    with pytest.raises(ValueError, match="unseen"):
        snb.tl.simulate(small_fit, obs=new, copula="gaussian", copula_groups="batch")
    with pytest.raises(ValueError, match="`param`='zero_inflation'"):
        snb.get.glm_coef(small_fit, param="zero_inflation")
    with pytest.raises(ValueError, match="`stat`='sd'"):
        snb.get.glm_coef(small_fit, stat="sd")


def test_predict_needs_an_offset_it_cannot_derive(small):
    Y, obs, _, _ = small
    a = make_glm_adata(Y, obs)
    snb.tl.fit_glm(a, mean="~ x + g", offset="log_library", progress_bar=False)
    new = pd.DataFrame({"x": [0.0], "g": ["a"]})
    with pytest.raises(ValueError, match="pass `offset=`"):
        snb.tl.predict(a, obs=new)
    out = snb.tl.predict(a, obs=new, offset=0.0)["mean"]
    coef = snb.get.glm_coef(a)
    np.testing.assert_allclose(out.to_numpy()[0], np.exp(coef.loc["Intercept"].to_numpy()))
    # the fitted cells: offsets from their library sizes, as in the fit
    lib = np.log(np.asarray(sp.csr_matrix(a.X, dtype=np.float64).sum(axis=1)).ravel())
    np.testing.assert_allclose(a.uns["glm"]["offset"]["values"], lib - lib.mean())
