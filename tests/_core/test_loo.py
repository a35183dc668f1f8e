"""WAIC, PSIS-LOO and model comparison (``scnbtools._core.loo``).

Tolerances were calibrated in scratch runs over many seeds (numbers in the comments);
the ArviZ reference values were produced once with arviz 0.23.4 (arviz is not a
dependency; the matrices below are deterministic functions of quantile grids, so the
reference does not depend on numpy's random streams).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from scnbtools._core.loo import _gpdfit, compare, preferred_per_unit, psis_loo, waic


# ----------------------------------------------------------------------------- helpers
def _normal_mean_model(n: int, S: int, seed: int, y_outlier: float | None = None):
    """Normal mean with known sigma=1 and prior N(0, 10^2); exact posterior draws.

    Returns ``(ll, exact_loo_i)`` where ``exact_loo_i`` are the closed-form leave-one-out
    predictive log densities ``log N(y_i | m_{-i}, 1 + t_{-i}^2)``.
    """
    rng = np.random.default_rng(seed)
    y = rng.normal(1.0, 1.0, n)
    if y_outlier is not None:
        y[0] = y_outlier
    prec_n = 1.0 / 100.0 + n
    m_n = y.sum() / prec_n
    mu = rng.normal(m_n, 1.0 / np.sqrt(prec_n), S)
    ll = stats.norm.logpdf(y[None, :], mu[:, None], 1.0)
    prec_loo = prec_n - 1.0
    m_loo = (m_n * prec_n - y) / prec_loo
    exact_i = stats.norm.logpdf(y, m_loo, np.sqrt(1.0 + 1.0 / prec_loo))
    return ll, exact_i


def _reference_ll(S: int) -> np.ndarray:
    """Deterministic (S, 6) log-likelihoods from quantile grids; draw order scrambled."""
    u = (np.arange(S) + 0.5) / S
    z = stats.norm.ppf(u)
    perm = (np.arange(S) * 7919) % S  # a permutation for S = 200 and 1000
    cols = [
        0.3 * z - 1.0,
        1.5 * z - 2.0,
        stats.t.ppf(u, 3) - 0.5,
        -np.exp(0.8 * z),
        -0.5 * z**2,
        stats.gumbel_r.ppf(u) - 3.0,
    ]
    return np.stack(cols, axis=1)[perm]


# ----------------------------------------------------------------------------- GPD fit
@pytest.mark.parametrize("k", [-0.3, 0.2, 0.8])
@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_gpdfit_recovers_genpareto(k, sigma):
    # 50 replicate samples of 1000 exceedances each, fitted in one vectorised call.
    # Calibration (20,000 replicates = 400 groups of 50, n = 1000): the bias of k-hat is
    # <= 0.01 in absolute value (sd 0.024 / 0.038 / 0.056 for k = -0.3 / 0.2 / 0.8); the
    # largest |mean error over 50| was 0.026 for k and 0.024 for log sigma, the largest
    # single-replicate error 0.23 for k and 0.25 for log sigma. Tolerances: 0.035 for the
    # means, 0.3 for every replicate.
    x = stats.genpareto.rvs(k, scale=sigma, size=(1000, 50), random_state=np.random.default_rng(7))
    k_hat, s_hat = _gpdfit(np.sort(x, axis=0))
    assert k_hat.shape == s_hat.shape == (50,)
    assert abs(np.mean(k_hat) - k) < 0.035
    assert abs(np.mean(np.log(s_hat / sigma))) < 0.035
    assert np.max(np.abs(k_hat - k)) < 0.3
    assert np.max(np.abs(np.log(s_hat / sigma))) < 0.3


def test_gpdfit_single_column_matches_vectorised():
    x = np.sort(stats.genpareto.rvs(0.4, size=(60, 3), random_state=np.random.default_rng(1)), 0)
    k_all, s_all = _gpdfit(x)
    for j in range(3):
        k1, s1 = _gpdfit(x[:, j])
        assert np.isclose(k1, k_all[j], rtol=1e-12) and np.isclose(s1, s_all[j], rtol=1e-12)


# ----------------------------------------------------------------------------- exact LOO
def test_psis_loo_matches_exact_loo_of_conjugate_normal():
    # Calibration (1000 seeds of posterior draws, n = 30, S = 4000): psis elpd - exact has
    # mean -0.001 and sd 0.020 (max |error| 0.066); WAIC mean 0.0007, sd 0.020 (max 0.064);
    # the largest pointwise |error| was 0.029 and the largest k 0.38 (99% below 0.29).
    # Tolerance 0.1 = 5 Monte-Carlo sds for the totals, 0.05 pointwise.
    ll, exact_i = _normal_mean_model(30, 4000, seed=3)
    res = psis_loo(ll)
    assert res["n_units"] == 30 and res["n_draws"] == 4000
    assert abs(res["elpd"] - exact_i.sum()) < 0.1
    assert np.max(np.abs(res["elpd_i"] - exact_i)) < 0.05
    assert np.all(res["pareto_k"] < 0.5) and res["n_bad_k"] == 0
    # the in-sample lppd is far from the exact LOO elpd, so the tolerance discriminates
    lppd = (logsumexp(ll, axis=0) - np.log(ll.shape[0])).sum()
    assert lppd - exact_i.sum() > 1.0
    assert np.isclose(res["p_eff"], lppd - res["elpd"])
    w = waic(ll)
    assert abs(w["elpd"] - exact_i.sum()) < 0.1
    assert np.isclose(w["p_eff"], np.var(ll, axis=0, ddof=1).sum())
    assert np.isclose(res["se"], np.sqrt(30 * np.var(res["elpd_i"])))
    assert np.isclose(w["se"], np.sqrt(30 * np.var(w["elpd_i"])))


def test_waic_formula():
    ll = _reference_ll(200)
    w = waic(ll)
    lppd_i = np.log(np.mean(np.exp(ll), axis=0))
    p_i = np.var(ll, axis=0, ddof=1)
    np.testing.assert_allclose(w["lppd_i"], lppd_i, rtol=1e-12)
    np.testing.assert_allclose(w["elpd_i"], lppd_i - p_i, rtol=1e-12)
    assert np.isclose(w["elpd"], (lppd_i - p_i).sum()) and np.isclose(w["p_eff"], p_i.sum())
    assert w["n_high_var"] == int((p_i > 0.4).sum()) > 0


def test_waic_and_loo_are_stable_for_huge_log_likelihoods():
    ll, _ = _normal_mean_model(10, 500, seed=0)
    for shift in (-1e4, 1e4):
        np.testing.assert_allclose(waic(ll + shift)["elpd_i"], waic(ll)["elpd_i"] + shift)
        np.testing.assert_allclose(psis_loo(ll + shift)["elpd_i"], psis_loo(ll)["elpd_i"] + shift)


def test_outlier_gets_large_k():
    # Calibration (200 seeds, n = 20, S = 4000, outlier at y = 20): outlier k >= 1.05
    # (median 1.49); the largest k of the other units was 0.41.
    ll, _ = _normal_mean_model(20, 4000, seed=11, y_outlier=20.0)
    res = psis_loo(ll)
    assert res["pareto_k"][0] > 0.7
    assert np.all(res["pareto_k"][1:] < 0.5)
    assert res["n_bad_k"] == 1


def test_psis_loo_does_not_depend_on_draw_order_or_unit_chunking(monkeypatch):
    ll = _reference_ll(200)
    ref = psis_loo(ll)
    perm = np.random.default_rng(0).permutation(200)
    res = psis_loo(ll[perm])
    np.testing.assert_allclose(res["elpd_i"], ref["elpd_i"], rtol=1e-12)
    np.testing.assert_allclose(res["pareto_k"], ref["pareto_k"], rtol=1e-12)
    import scnbtools._core.loo as loo_mod

    monkeypatch.setattr(loo_mod, "_CHUNK_ELEMS", 1)  # one unit per chunk
    res = psis_loo(ll)
    np.testing.assert_allclose(res["elpd_i"], ref["elpd_i"], rtol=1e-12)


def test_too_few_draws_give_k_inf_and_plain_importance_sampling():
    # S = 20: tail length ceil(min(4, 3 sqrt(20))) = 4 <= 4, no GPD fit is possible
    ll = _reference_ll(200)[::10]
    res = psis_loo(ll)
    assert np.all(np.isinf(res["pareto_k"])) and res["n_bad_k"] == 6
    # raw IS: elpd_i = -log(mean_s exp(-ll))
    expected = -(logsumexp(-ll, axis=0) - np.log(20))
    np.testing.assert_allclose(res["elpd_i"], expected, rtol=1e-12)


# ----------------------------------------------------------------------------- vs ArviZ
# arviz 0.23.4: az.loo(az.from_dict(log_likelihood={"y": ll[None]}, ...), pointwise=True,
# reff=reff) on ll = _reference_ll(S); values copied from its loo_i, pareto_k, p_loo, se.
ARVIZ_0_23_4 = {
    (200, 1.0): {
        "elpd_i": [
            -1.046148054343977,
            -3.0841436360374352,
            -1.9322265873039957,
            -3.0385980714159757,
            -0.8790346118180361,
            -3.0073331500791527,
        ],
        "k": [
            0.08181073429274663,
            0.5191803579732737,
            1.114221649495142,
            1.3199757798306093,
            0.7469801968383065,
            0.12849329278893,
        ],
        "elpd": -12.987484110998572,
        "p": 10.674513646838214,
        "se": 2.297225024324113,
    },
    (1000, 0.7): {
        "elpd_i": [
            -1.0453706032252361,
            -3.1125913243463703,
            -3.1182266343967306,
            -4.719716618521741,
            -1.0166285511266713,
            -3.002458724545545,
        ],
        "k": [
            0.021811989000402127,
            0.4859167356427945,
            1.4621534032203398,
            1.645225980303982,
            0.8360316490033389,
            0.05339940617402485,
        ],
        "elpd": -16.014992456162293,
        "p": 17.513030877379652,
        "se": 3.175171627094346,
    },
}


@pytest.mark.parametrize(("S", "reff"), list(ARVIZ_0_23_4))
def test_psis_loo_matches_arviz(S, reff):
    ref = ARVIZ_0_23_4[(S, reff)]
    res = psis_loo(_reference_ll(S), reff=reff)
    np.testing.assert_allclose(res["elpd_i"], ref["elpd_i"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(res["pareto_k"], ref["k"], rtol=1e-10, atol=1e-10)
    assert np.isclose(res["elpd"], ref["elpd"], rtol=1e-10)
    assert np.isclose(res["p_eff"], ref["p"], rtol=1e-10)
    assert np.isclose(res["se"], ref["se"], rtol=1e-10)
    assert res["n_bad_k"] == sum(k > 0.7 for k in ref["k"])


def test_psis_loo_matches_arviz_on_ties_and_underflowing_tails():
    # a constant unit (no tail: k = inf), a unit with tied ratios at the cutoff, and a unit
    # whose cutoff lies below log(smallest double) after shifting (variable tail length);
    # arviz 0.23.4 gives the values below.
    ll = np.zeros((100, 3))
    ll[:, 1] = np.repeat(np.arange(10.0), 10)
    ll[:, 2] = np.linspace(0.0, 900.0, 100)
    res = psis_loo(ll)
    np.testing.assert_allclose(
        res["elpd_i"], [0.0, 1.760031048674533, 36.728185665224565], rtol=1e-10, atol=1e-12
    )
    assert np.isinf(res["pareto_k"][0])
    np.testing.assert_allclose(
        res["pareto_k"][1:], [-1.4977657874672243, 36.98659907053675], rtol=1e-10
    )
    assert np.isclose(res["p_eff"], 864.0627704434755, rtol=1e-10)


# ----------------------------------------------------------------------------- compare
def _three_models():
    """Truth N(1, 1): 'good' is the right model, 'wide' has sd 2, 'shifted' mean 2."""
    rng = np.random.default_rng(5)
    y = rng.normal(1.0, 1.0, 200)
    mu = rng.normal(1.0, 0.05, (400, 1))
    lls = {
        "wide": stats.norm.logpdf(y[None], mu, 2.0),
        "good": stats.norm.logpdf(y[None], mu, 1.0),
        "shifted": stats.norm.logpdf(y[None], mu + 1.0, 1.0),
    }
    return lls


@pytest.mark.parametrize(("criterion", "fn"), [("loo", psis_loo), ("waic", waic)])
def test_compare_ranks_the_clearly_better_model_first(criterion, fn):
    res = {name: fn(ll) for name, ll in _three_models().items()}
    tab = compare(res, criterion=criterion)
    assert list(tab) == [
        "model",
        "rank",
        "elpd",
        "se",
        "p_eff",
        "elpd_diff",
        "se_diff",
        "n_bad_k",
        "weight",
    ]
    assert list(tab["model"]) == ["good", "wide", "shifted"]
    np.testing.assert_array_equal(tab["rank"], [0, 1, 2])
    assert np.all(np.diff(tab["elpd"]) < 0)
    assert tab["elpd_diff"][0] == 0.0 and tab["se_diff"][0] == 0.0
    assert np.all(tab["elpd_diff"][1:] > 5 * tab["se_diff"][1:])  # clearly worse
    np.testing.assert_allclose(tab["elpd_diff"], tab["elpd"][0] - tab["elpd"])
    np.testing.assert_allclose(tab["p_eff"], [res[m]["p_eff"] for m in tab["model"]])
    np.testing.assert_allclose(tab["se"], [res[m]["se"] for m in tab["model"]])
    np.testing.assert_array_equal(tab["n_bad_k"], [0, 0, 0])
    assert np.isclose(tab["weight"].sum(), 1.0) and tab["weight"][0] > 0.99
    w = np.exp(tab["elpd"] - tab["elpd"].max())
    np.testing.assert_allclose(tab["weight"], w / w.sum())


def test_compare_se_diff_of_a_model_with_itself_is_zero_and_bare_vectors_work():
    ll = _three_models()["wide"]
    e = psis_loo(ll)["elpd_i"]
    tab = compare({"a": e, "b": e.copy()}, criterion="loo")
    assert list(tab["model"]) == ["a", "b"]  # ties keep the input order
    np.testing.assert_array_equal(tab["elpd_diff"], [0.0, 0.0])
    np.testing.assert_array_equal(tab["se_diff"], [0.0, 0.0])
    assert np.all(np.isnan(tab["p_eff"]))  # not supplied with bare vectors
    np.testing.assert_allclose(tab["weight"], [0.5, 0.5])
    # se_diff is the paired standard error
    e2 = e + np.random.default_rng(0).normal(0.0, 0.1, e.size)
    tab = compare({"a": e, "b": e2})
    d = e - e2 if tab["model"][0] == "a" else e2 - e
    assert np.isclose(tab["se_diff"][1], np.sqrt(e.size * np.var(d)))


def test_compare_counts_bad_k():
    ll, _ = _normal_mean_model(20, 4000, seed=11, y_outlier=20.0)
    ll_ok, _ = _normal_mean_model(20, 4000, seed=11)
    tab = compare({"outlier": psis_loo(ll), "clean": psis_loo(ll_ok)})
    bad = dict(zip(tab["model"], tab["n_bad_k"], strict=True))
    assert bad == {"outlier": 1, "clean": 0}
    tab = compare({"outlier": waic(ll), "clean": waic(ll_ok)}, criterion="waic")
    assert list(tab["n_bad_k"]) == [0, 0]


def test_compare_bad_input():
    e = np.zeros(10)
    with pytest.raises(ValueError, match=r"same units.*'a': 10, 'b': 9"):
        compare({"a": e, "b": np.zeros(9)})
    with pytest.raises(ValueError, match=r"model 'b'.*non-finite.*units 3"):
        compare({"a": e, "b": np.where(np.arange(10) == 3, np.nan, 0.0)})
    with pytest.raises(ValueError, match=r"model 'a'.*1-D"):
        compare({"a": np.zeros((2, 5))})
    with pytest.raises(ValueError, match="`criterion` must be 'loo' or 'waic'"):
        compare({"a": e}, criterion="aic")
    ll = _three_models()["good"]
    with pytest.raises(ValueError, match=r"model 'w' holds a 'waic' result.*'loo'"):
        compare({"w": waic(ll), "l": psis_loo(ll)}, criterion="loo")
    with pytest.raises(ValueError, match="no 'elpd_i'"):
        compare({"a": {"elpd": 1.0}})
    with pytest.raises(ValueError, match="at least 1"):
        compare({})
    with pytest.raises(TypeError, match="must be a dict"):
        compare([e, e])
    with pytest.raises(TypeError, match="must be strings"):
        compare({1: e})


def test_preferred_per_unit():
    a = np.array([0.0, -1.0, -5.0, 2.0])
    b = np.array([-1.0, 0.0, -2.0, 2.0])
    c = np.array([-3.0, -0.5, -9.0, 1.0])
    best, margin = preferred_per_unit({"a": a, "b": b, "c": {"elpd_i": c}})
    assert list(best) == ["a", "b", "b", "a"]  # ties go to the first model
    np.testing.assert_allclose(margin, [1.0, 0.5, 3.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        preferred_per_unit({"a": a})
    with pytest.raises(ValueError, match="same units"):
        preferred_per_unit({"a": a, "b": b[:3]})


# ----------------------------------------------------------------------------- bad ll
@pytest.mark.parametrize("fn", [waic, psis_loo], ids=["waic", "psis_loo"])
def test_bad_log_likelihood(fn):
    with pytest.raises(ValueError, match=r"at least 2 draws"):
        fn(np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"2-D.*\(2, 3, 4\).*reshape"):
        fn(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"2-D"):
        fn(np.zeros(5))
    bad = np.zeros((10, 6))
    bad[2, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN in 1 unit.*4"):
        fn(bad)
    bad[2, 4] = -np.inf
    with pytest.raises(ValueError, match=r"infinite"):
        fn(bad)
    with pytest.raises(TypeError, match="numeric array"):
        fn([["a", "b"], ["c", "d"]])


@pytest.mark.parametrize("reff", [0.0, -1.0, np.inf, np.nan])
def test_bad_reff(reff):
    with pytest.raises(ValueError, match="`reff` must be a finite number > 0"):
        psis_loo(np.zeros((50, 2)), reff=reff)
    with pytest.raises(TypeError, match="`reff`"):
        psis_loo(np.zeros((50, 2)), reff="1")
