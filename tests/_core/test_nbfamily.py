"""The NB-family likelihood paths against scipy, and against each other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scnbtools._core.data import CountData
from scnbtools._core.engine import (
    _model_data,
    big_entry_rows,
    cell_rows,
    fit_gene_model,
)
from scnbtools._core.likelihoods import log_rising_factorial_ratio
from scnbtools._core.models import resolve_spec
from scnbtools._core.models._spec import hist_loglik, parse_priors
from scnbtools._core.models.nbfamily import canonical, component_loglik, rise_table
from scnbtools._core.pointwise import gene_loglik_draws

N, G, K = 40, 15, 2


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.3, (N, G)).astype(np.float32)
    X[:, 0] *= 30  # some counts far above the lookup table
    X[rng.random((N, G)) < 0.3] = 0
    X[:, -1] = 0
    X[0, -1] = 1  # a gene that is almost never seen
    return X


def _values(base, k, rng):
    v = {"p": np.float32(0.3), "r": np.exp(rng.normal(0, 1, (k, G))).astype(np.float32)}
    if k > 1:
        v["mixing_weights"] = np.array([0.3, 0.7], np.float32)
    else:
        v["r"] = v["r"][0]
    if "zi" in base:
        v["gate"] = rng.uniform(0.05, 0.5, (k, G) if k > 1 else G).astype(np.float32)
    if "vcp" in base:
        v["nu"] = rng.uniform(0.2, 0.9, N).astype(np.float32)
    return v


def _scipy_cell_component(X, v, k_comp):
    """log p(x_c, z_c = k) by scipy, per cell and component."""
    out = np.zeros((N, k_comp))
    nu = v.get("nu", np.ones(N))
    ph = 0.3 * nu / (1 - 0.3 * (1 - nu))
    for k in range(k_comp):
        r = v["r"][k] if k_comp > 1 else v["r"]
        lp = stats.nbinom.logpmf(X, r[None], 1 - ph[:, None])
        if "gate" in v:
            g = (v["gate"][k] if k_comp > 1 else v["gate"])[None]
            lp = np.where(X == 0, np.log(g + (1 - g) * np.exp(lp)), np.log1p(-g) + lp)
        w = v["mixing_weights"][k] if k_comp > 1 else 1.0
        out[:, k] = lp.sum(1) + np.log(w)
    return out


@pytest.mark.parametrize("base", ["nbdm", "zinb", "nbvcp", "zinbvcp"])
@pytest.mark.parametrize("table", [False, True])
def test_component_loglik_matches_scipy(base, table):
    X = _data()
    rng = np.random.default_rng(1)
    spec = resolve_spec(base, n_components=K)
    v = _values(base, K, rng)
    rows = cell_rows(CountData(X))
    big = None
    if table:
        bc, bv = big_entry_rows(rows["cols"], rows["vals"], G, J=4)
        big = {"big_cols": jnp.asarray(bc), "big_vals": jnp.asarray(bv), "J": 4}
    ll = component_loglik(
        {k: jnp.asarray(x) for k, x in v.items()},
        spec.config,
        jnp.asarray(rows["cols"]),
        jnp.asarray(rows["vals"]),
        jnp.asarray(rows["lib"]),
        big=big,
    )
    ref = _scipy_cell_component(X, v, K)
    # float32 sums of ~15 terms of size ~10-100: a few 1e-5 absolute
    np.testing.assert_allclose(np.asarray(ll), ref, rtol=1e-5, atol=2e-4)


def test_rise_table_equals_rising_factorial():
    r = jnp.asarray(np.exp(np.random.default_rng(0).normal(0, 2, (3, 7))).astype(np.float32))
    T = rise_table(r, 40)
    j = jnp.arange(41, dtype=jnp.float32)
    ref = log_rising_factorial_ratio(j[None, None, :], r[..., None])
    np.testing.assert_allclose(np.asarray(T), np.asarray(ref), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("base", ["nbdm", "zinb", "nbvcp", "zinbvcp"])
def test_full_data_paths_agree_with_scipy(base):
    """The histogram / capture closed form / rows(+grid) paths give the exact total."""
    X = _data(2)
    counts = CountData(X)
    spec = resolve_spec(base, parameterization="mean_odds" if base == "nbdm" else "canonical")
    rng = np.random.default_rng(3)
    v = _values(base, 1, rng)
    if spec.config["parameterization"] == "mean_odds":
        v = {"phi": np.float32(0.7 / 0.3), "mu": (v["r"] * 0.3 / 0.7).astype(np.float32)}
        ref_v = {"r": v["mu"] * v["phi"]}
    else:
        ref_v = v
    data, _, _, layout = _model_data(spec, counts, None, {})
    jv = {k: jnp.asarray(x) for k, x in v.items()}
    # canonical NBDM / ZINB are the original gene-level specs (histogram likelihood)
    ll = spec.loglik(jv, data, None) if spec.loglik is not None else hist_loglik(spec, jv, data)
    ref = _scipy_cell_component(X, {**v, **ref_v}, 1).sum()
    assert (
        layout == {"nbdm": "hist", "zinb": "hist", "nbvcp": "capture_hist", "zinbvcp": "rows"}[base]
    )
    np.testing.assert_allclose(float(ll), ref, rtol=2e-6)


def test_minibatch_estimate_is_unbiased():
    """Scaled minibatch log-likelihoods average to the full-data value (ZINBVCP, grid-exact
    rising part plus a cell-sampled rest)."""
    X = _data(4)
    counts = CountData(X)
    spec = resolve_spec("zinbvcp")
    v = {k: jnp.asarray(x) for k, x in _values("zinbvcp", 1, np.random.default_rng(5)).items()}
    full_data, _, _, _ = _model_data(spec, counts, None, {})
    full = float(spec.loglik(v, full_data, None))
    data, batch_fn, src, layout = _model_data(spec, counts, 8, {})
    assert layout == "rows_minibatch"

    def one(key):
        batch = batch_fn(key, src)
        vb = dict(v, nu=v["nu"][batch["idx"]])
        return spec.loglik(vb, data, batch)

    est = jax.vmap(jax.jit(one))(jax.random.split(jax.random.PRNGKey(0), 4000))
    est = np.asarray(est, dtype=np.float64)
    se = est.std() / np.sqrt(est.size)
    assert abs(est.mean() - full) < 4 * se, (est.mean(), full, se)


@pytest.mark.parametrize("base", ["nbdm", "zinb", "nbvcp", "zinbvcp"])
def test_gene_pointwise_loglik_matches_scipy(base):
    X = _data(6)
    spec = resolve_spec(base)
    rng = np.random.default_rng(7)
    draws = [_values(base, 1, rng) for _ in range(3)]
    stacked = {k: np.stack([d[k] for d in draws]) for k in draws[0]}
    got = gene_loglik_draws(spec, stacked, CountData(X))
    for s, v in enumerate(draws):
        nu = v.get("nu", np.ones(N))
        ph = 0.3 * nu / (1 - 0.3 * (1 - nu))
        lp = stats.nbinom.logpmf(X, v["r"][None], 1 - ph[:, None])
        if "gate" in v:
            g = v["gate"][None]
            lp = np.where(X == 0, np.log(g + (1 - g) * np.exp(lp)), np.log1p(-g) + lp)
        np.testing.assert_allclose(got[s], lp.sum(0), rtol=1e-5, atol=1e-3)


def test_canonical_parameterizations_are_the_same_distribution():
    rng = np.random.default_rng(8)
    mu = np.exp(rng.normal(0, 1, G)).astype(np.float32)
    p = np.float32(0.35)
    r_expected = mu * (1 - p) / p
    for par, vals in (
        ("mean_prob", {"p": p, "mu": mu}),
        ("mean_odds", {"phi": np.float32((1 - p) / p), "mu": mu}),
        ("canonical", {"p": p, "r": r_expected}),
    ):
        spec = resolve_spec("nbdm", parameterization=par)
        cfg = spec.config or {"parameterization": "canonical", "n_components": 1}
        c = canonical({k: jnp.asarray(x) for k, x in vals.items()}, cfg)
        np.testing.assert_allclose(np.asarray(c["r"][0]), r_expected, rtol=1e-5)
        np.testing.assert_allclose(float(jax.nn.sigmoid(c["logit_p"][0])), p, rtol=1e-6)


def test_capture_fit_compiles_once():
    X = _data(9)
    X[:, :] += 1  # no empty cells
    spec = resolve_spec("nbvcp")
    res = fit_gene_model(
        spec,
        CountData(X),
        priors=parse_priors(spec, None),
        n_steps=350,
        chunk_size=100,
        rng=0,
        n_posterior_samples=10,
    )
    # 4 chunks (the last one partial) and one trace of the compiled runner
    assert res.n_steps == 350
    assert res.n_compilations == 1
    assert set(res.cell_summaries) == {"nu"}
    assert res.cell_summaries["nu"]["mean"].shape == (N,)
