"""``tl.predict`` and ``tl.simulate``: exact predictions, seeded draws, refit round trip, copula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st

import scnbtools as snb
from conftest import make_glm_adata


def test_predict_is_the_linear_predictor_through_the_link(small_fit):
    pred = snb.tl.predict(small_fit)
    assert set(pred) == {"mean", "dispersion"}
    coef = snb.get.glm_coef(small_fit)
    obs = small_fit.obs
    X = np.c_[
        np.ones(small_fit.n_obs),
        obs["x"],
        (obs["g"] == "b").astype(float),
        (obs["g"] == "c").astype(float),
    ]
    np.testing.assert_allclose(pred["mean"].to_numpy(), np.exp(X @ coef.to_numpy()), rtol=1e-12)
    r = np.exp(snb.get.glm_coef(small_fit, param="dispersion").to_numpy()[0])
    np.testing.assert_allclose(
        pred["dispersion"].to_numpy(), np.broadcast_to(r, (small_fit.n_obs, r.size))
    )
    assert pred["mean"].index.equals(obs.index) and pred["mean"].columns.equals(small_fit.var_names)
    # a new table with only some levels, as strings, is encoded with the fitted levels
    new = pd.DataFrame({"x": [0.5], "g": ["c"]}, index=["new"])
    np.testing.assert_allclose(
        snb.tl.predict(small_fit, obs=new)["mean"].to_numpy()[0],
        np.exp(coef.loc["Intercept"] + 0.5 * coef.loc["x"] + coef.loc["g[T.c]"]),
    )


def test_simulate_is_seeded_and_shaped_like_the_input(small_fit):
    a = snb.tl.simulate(small_fit, rng=5)
    b = snb.tl.simulate(small_fit, rng=5)
    c = snb.tl.simulate(small_fit, rng=6)
    assert sp.issparse(a.X) and a.shape == small_fit.shape
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    assert not np.array_equal(a.X.toarray(), c.X.toarray())
    assert a.obs.equals(small_fit.obs) and a.var_names.equals(small_fit.var_names)
    assert a.uns["simulation"]["key"] == "glm" and a.uns["simulation"]["rng"] == 5
    assert np.all(a.X.data == np.round(a.X.data)) and a.X.data.min() > 0


def test_predict_simulate_refit_round_trip(small_fit):
    """Simulating 30× the cells from the fit and refitting recovers its coefficients."""
    reps = 30
    obs = pd.concat([small_fit.obs] * reps)
    obs.index = [f"s{i}" for i in range(obs.shape[0])]
    sim = snb.tl.simulate(small_fit, obs=obs, rng=11)
    sim.obs["g"] = sim.obs["g"].astype("category")
    snb.tl.fit_glm(sim, mean="~ x + g", progress_bar=False)
    truth = snb.get.glm_coef(small_fit)
    est, se = snb.get.glm_coef(sim), snb.get.glm_coef(sim, stat="se")
    z = ((est - truth) / se).to_numpy()
    assert np.mean(np.abs(z) < 1.96) > 0.88 and np.abs(z).max() < 4.5
    d_true = snb.get.glm_coef(small_fit, param="dispersion").to_numpy()
    d_est = snb.get.glm_coef(sim, param="dispersion").to_numpy()
    d_se = snb.get.glm_coef(sim, param="dispersion", stat="se").to_numpy()
    assert np.abs((d_est - d_true) / d_se).max() < 4.5


def _copula_data(obs, g=30, rho=0.6, seed=0):
    """NB margins coupled by a Gaussian copula: genes 0-5 correlated at ``rho``, the rest
    free; the mean depends on ``x`` and ``g`` (the `small` design, so the solver is shared)."""
    rng = np.random.default_rng(seed)
    n = obs.shape[0]
    R = np.eye(g)
    R[:6, :6] = rho
    np.fill_diagonal(R, 1.0)
    z = rng.multivariate_normal(np.zeros(g), R, size=n)
    eta = 1.5 + 0.3 * obs["x"].to_numpy() + 0.4 * (obs["g"] == "b").to_numpy()
    mu = np.exp(eta)[:, None] * np.ones((1, g))
    r = 3.0
    Y = st.nbinom.ppf(st.norm.cdf(z), r, r / (r + mu))
    return make_glm_adata(Y, obs)


def _block_correlations(X):
    C = np.corrcoef(st.rankdata(np.asarray(X), axis=0), rowvar=False)
    inside = C[:6, :6][~np.eye(6, dtype=bool)]
    outside = C[6:, :][:, :6]
    return inside.mean(), np.abs(outside).mean()


def test_gaussian_copula_carries_gene_gene_correlation(small):
    a = _copula_data(small[1])
    snb.tl.fit_glm(a, mean="~ x + g", progress_bar=False)
    # (the shared covariate x also correlates every pair of genes a little)
    real_in, real_out = _block_correlations(a.X.toarray())
    cop = snb.tl.simulate(a, copula="gaussian", rng=1)
    ind = snb.tl.simulate(a, rng=1)
    sim_in, sim_out = _block_correlations(cop.X.toarray())
    ind_in, ind_out = _block_correlations(ind.X.toarray())
    assert real_in > 0.4 and real_in - real_out > 0.3
    # 400 cells: a correlation estimate has a standard error of about 0.04
    assert abs(sim_in - real_in) < 0.08 and abs(sim_out - real_out) < 0.05
    assert abs(ind_in - ind_out) < 0.05 and abs(ind_out - real_out) < 0.05
    # the marginals are unchanged by the copula (gene means of 400 draws: ~4 % noise each)
    m_cop, m_ind = cop.X.toarray().mean(0), ind.X.toarray().mean(0)
    assert abs(m_cop.mean() / m_ind.mean() - 1) < 0.03 and np.all(np.abs(m_cop / m_ind - 1) < 0.25)
    # one copula per group, reproducible
    g1 = snb.tl.simulate(a, copula="gaussian", copula_groups="batch", rng=2)
    g2 = snb.tl.simulate(a, copula="gaussian", copula_groups="batch", rng=2)
    np.testing.assert_array_equal(g1.X.toarray(), g2.X.toarray())
    assert abs(_block_correlations(g1.X.toarray())[0] - real_in) < 0.1


@pytest.mark.parametrize("family", ["zinb", pytest.param("zip", marks=pytest.mark.slow)])
def test_zero_inflated_simulation_matches_zero_fraction(family):
    rng = np.random.default_rng(4)
    n, g = 500, 5  # the shapes of the float32 reference test: its solver is reused
    x = rng.normal(size=n)
    mu = np.exp(1.0 + 0.5 * x)[:, None] * np.ones((1, g))
    Y = rng.poisson(mu) * (rng.random((n, g)) > 0.3)
    a = make_glm_adata(Y, pd.DataFrame({"x": x}, index=[f"c{i}" for i in range(n)]))
    snb.tl.fit_glm(a, family=family, mean="~ x", progress_bar=False)
    pi = 1 / (1 + np.exp(-snb.get.glm_coef(a, param="zero_inflation").to_numpy()[0]))
    np.testing.assert_allclose(pi, 0.3, atol=0.06)
    sim = snb.tl.simulate(a, rng=0)
    np.testing.assert_allclose((sim.X.toarray() == 0).mean(0), (Y == 0).mean(0), atol=0.05)
