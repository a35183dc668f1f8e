"""Wald / LR tests: interval coverage, size under the null, contrasts and BH adjustment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import scnbtools as snb
from conftest import make_glm_adata

N, G, SEEDS = 400, 30, 10  # the shapes of the `small` data: solvers are shared
NULL = np.arange(G) < G // 2  # genes whose x effect is exactly 0


@pytest.fixture(scope="module")
def replicates():
    """``SEEDS`` data sets of NB counts with ``log mu = b0 + b1 x`` (b1 = 0 for half the genes),
    each fitted, Wald- and LR-tested."""
    out = {"cover_mean": [], "cover_disp": [], "p_wald": [], "p_lr": [], "p_wald_alt": []}
    for seed in range(SEEDS):
        rng = np.random.default_rng(100 + seed)
        x = rng.normal(size=N)
        b0 = rng.normal(1.0, 0.5, G)
        b1 = np.where(NULL, 0.0, rng.normal(0.0, 0.4, G))
        log_r = rng.normal(1.0, 0.5, G)
        mu, r = np.exp(b0[None] + x[:, None] * b1[None]), np.exp(log_r)[None]
        Y = rng.negative_binomial(r, r / (r + mu))
        a = make_glm_adata(Y, pd.DataFrame({"x": x}, index=[f"c{i}" for i in range(N)]))
        snb.tl.fit_glm(a, mean="~ x", progress_bar=False)
        est, se = snb.get.glm_coef(a).to_numpy(), snb.get.glm_coef(a, stat="se").to_numpy()
        out["cover_mean"].append(np.abs(est - np.vstack([b0, b1])) <= 1.96 * se)
        d, dse = (
            snb.get.glm_coef(a, param="dispersion", stat=s).to_numpy()[0] for s in ("coef", "se")
        )
        out["cover_disp"].append(np.abs(d - log_r) <= 1.96 * dse)
        wald = snb.tl.glm_test(a, contrast="x")
        lr = snb.tl.glm_test(a, contrast="x", method="lr", progress_bar=False)
        out["p_wald"].append(wald["pvalue"].to_numpy()[NULL])
        out["p_wald_alt"].append(wald["pvalue"].to_numpy()[~NULL & (np.abs(b1) > 0.3)])
        out["p_lr"].append(lr["pvalue"].to_numpy()[NULL])
    return {k: np.concatenate([np.ravel(v) for v in vs]) for k, vs in out.items()}


def test_wald_intervals_cover_at_the_nominal_rate(replicates):
    # 600 mean-coefficient intervals: binomial sd of the coverage is 0.009 at 95 %
    assert 0.925 <= replicates["cover_mean"].mean() <= 0.975
    # 300 dispersion intervals (sd 0.013); observed information at n = 400
    assert 0.91 <= replicates["cover_disp"].mean() <= 0.985


@pytest.mark.parametrize("kind", ["p_wald", "p_lr"])
def test_tests_hold_their_size_under_the_null(replicates, kind):
    p = replicates[kind]  # 150 null genes
    assert 0.015 <= np.mean(p < 0.05) <= 0.10
    # and the null p-values look uniform
    assert st.kstest(p, "uniform").pvalue > 0.01


def test_tests_have_power(replicates):
    assert np.mean(replicates["p_wald_alt"] < 0.05) > 0.9


def test_wald_and_lr_agree_and_contrasts(small_fit):
    w = snb.tl.glm_test(small_fit, contrast="g[T.b]")
    assert list(w.columns) == [
        "gene",
        "param",
        "contrast",
        "method",
        "estimate",
        "se",
        "statistic",
        "df",
        "pvalue",
        "padj",
        "converged",
    ]
    coef = snb.get.glm_coef(small_fit)
    se = snb.get.glm_coef(small_fit, stat="se")
    np.testing.assert_allclose(w["estimate"], coef.loc["g[T.b]"])
    np.testing.assert_allclose(w["se"], se.loc["g[T.b]"])
    np.testing.assert_allclose(
        w["pvalue"], 2 * st.norm.sf(np.abs(coef.loc["g[T.b]"] / se.loc["g[T.b]"]))
    )
    # a difference of two levels, by dict and by vector, from the full covariance
    d = snb.tl.glm_test(small_fit, contrast={"g[T.b]": 1.0, "g[T.c]": -1.0})
    v = snb.tl.glm_test(small_fit, contrast=[0.0, 0.0, 1.0, -1.0])
    np.testing.assert_allclose(d["statistic"], v["statistic"])
    V = small_fit.varm["glm_vcov"].reshape(-1, 5, 5)[:, 2:4, 2:4]
    var = V[:, 0, 0] + V[:, 1, 1] - 2 * V[:, 0, 1]
    np.testing.assert_allclose(d["se"], np.sqrt(var))
    # a factor as a whole: both level columns jointly, 2 df
    f = snb.tl.glm_test(small_fit, contrast="g")
    assert (f["df"] == 2).all() and "estimate" not in f.columns
    lr = snb.tl.glm_test(small_fit, contrast="g", method="lr", progress_bar=False)
    # Wald and LR statistics agree closely on 400 cells
    assert np.corrcoef(np.log1p(f["statistic"]), np.log1p(lr["statistic"]))[0, 1] > 0.98
    # dispersion coefficients are testable too
    disp = snb.tl.glm_test(small_fit, contrast="Intercept", param="dispersion")
    assert (disp["param"] == "dispersion").all()


def test_benjamini_hochberg(small_fit):
    t = snb.tl.glm_test(small_fit, contrast="x")
    p, q = t["pvalue"].to_numpy(), t["padj"].to_numpy()
    order = np.argsort(p)
    m = p.size
    expected = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    np.testing.assert_allclose(q[order], np.minimum(expected, 1.0))
    assert np.all(q >= p)
