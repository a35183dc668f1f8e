"""Math of the GLM families: special-function differences, per-cell derivatives, reference."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.special as sps
from glm_reference import nll_and_grad

from scnbtools._core.models import glm

# (count, size) pairs where scipy's float64 differences are themselves accurate
_V = [1.0, 2.0, 7.0, 30.0, 1000.0]
_R = [1e-3, 0.05, 0.7, 6.5, 120.0, 3e3]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_special_differences_match_scipy(x64):
    v, r = (np.asarray(a) for a in zip(*itertools.product(_V, _R), strict=True))
    np.testing.assert_allclose(
        np.asarray(glm.log_rising(v, r)),
        sps.gammaln(v + r) - sps.gammaln(r),
        rtol=1e-11,
        atol=1e-11,
    )
    np.testing.assert_allclose(
        np.asarray(glm.digamma_diff(v, r)), sps.digamma(v + r) - sps.digamma(r), rtol=1e-10
    )
    np.testing.assert_allclose(
        np.asarray(glm.trigamma_diff(v, r)),
        sps.polygamma(1, v + r) - sps.polygamma(1, r),
        rtol=1e-9,
    )


def test_special_differences_in_the_poisson_limit(x64):
    # r -> inf: lgamma(v + r) - lgamma(r) = v log r + v (v - 1) / (2 r) + O(r^-2), where the
    # naive difference of two lgammas of ~1e13 has lost every digit.
    v, r = np.asarray([1.0, 5.0, 300.0]), 1e12
    np.testing.assert_allclose(
        np.asarray(glm.log_rising(v, r)), v * np.log(r) + v * (v - 1) / (2 * r), rtol=1e-14
    )
    np.testing.assert_allclose(
        np.asarray(glm.digamma_diff(v, r)), v / r - v * (v - 1) / (2 * r * r), rtol=1e-9
    )


def test_special_differences_stay_accurate_in_float32():
    v = jnp.asarray([1.0, 40.0, 3.0], jnp.float32)
    r = jnp.asarray([1e6, 2.0, 0.01], jnp.float32)
    ref = sps.digamma(np.float64(v) + np.float64(r)) - sps.digamma(np.float64(r))
    ref[0] = 1e-6 - 0.0  # digamma(1e6 + 1) - digamma(1e6) = 1 / 1e6 exactly
    np.testing.assert_allclose(np.asarray(glm.digamma_diff(v, r)), ref, rtol=2e-6)
    # lgamma(1 + 1e6) - lgamma(1e6) = log(1e6): float32 lgamma differences would be off by ~1
    np.testing.assert_allclose(float(glm.log_rising(v, r)[0]), np.log(1e6), rtol=1e-6)


_Y = np.repeat([0.0, 1.0, 6.0, 250.0], 4)


@pytest.mark.parametrize("family", list(glm.FAMILIES))
def test_per_cell_terms_and_derivatives(x64, family):
    """Hand-derived per-cell value, gradient and Hessian in the linear predictors: value and
    gradient equal the independent float64 reference, the value equals the log-pmf of
    ``_core/likelihoods.py``, the Hessian equals central differences of the gradient.
    Counts 0..250, random predictors, one vmapped evaluation per family."""
    fam = glm.FAMILIES[family]
    K, ci = fam.n_params, fam.count_index
    y = jnp.asarray(_Y)
    eta = jnp.asarray(np.random.default_rng(0).normal(size=(_Y.size, K)) * 2.0)

    def ours(y, e):
        val, d, h = fam.dense(y, *e)
        a, da, d2a = fam.count(jnp.maximum(y, 1.0), e[ci] if ci is not None else None)
        pos = y > 0
        grad = jnp.stack(d)
        hess = jnp.zeros((K, K))
        for (k, j), x in h.items():
            hess = hess.at[k, j].set(x).at[j, k].set(x)
        if ci is not None:
            grad = grad.at[ci].add(jnp.where(pos, da, 0.0))
            hess = hess.at[ci, ci].add(jnp.where(pos, d2a, 0.0))
        # the constant -lgamma(y + 1) is added on the host in float64 (not part of `count`)
        return val + jnp.where(pos, a, 0.0) - jax.lax.lgamma(y + 1.0), grad, hess

    def ref(y, e):
        return fam.logpmf(y, *e)

    ours_j = jax.jit(jax.vmap(ours))
    val, grad, hess = (np.asarray(x) for x in ours_j(y, eta))
    r_val = np.asarray(jax.jit(jax.vmap(ref))(y, eta))
    # Against the independent float64 reference (scipy.stats value, NumPy chain rule) the
    # agreement is to round-off. Against likelihoods.py it is ~1e-7 relative: JAX's
    # float64 `betaln` (used there for lgamma(k + r) - lgamma(r)) is only that accurate
    # (e.g. NB(k=6, r=8.04, mu=2.28): scipy -3.59825070907, betaln form -3.59825136802),
    # and its autodiff gradient only to ~3e-4, so it is no reference for derivatives.
    one = [np.ones((1, 1))] * K
    for i in range(_Y.size):
        nll, g_ref = nll_and_grad(np.asarray(eta[i]), _Y[i : i + 1], one, np.zeros(1), family)
        np.testing.assert_allclose(val[i], -nll, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad[i], -g_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(val, r_val, rtol=1e-6)
    # the Hessian against central differences of our (reference-checked) gradient
    step = 1e-6
    fd = np.stack(
        [
            (
                np.asarray(ours_j(y, eta + step * np.eye(K)[k])[1])
                - np.asarray(ours_j(y, eta - step * np.eye(K)[k])[1])
            )
            / (2 * step)
            for k in range(K)
        ],
        axis=-1,
    )
    np.testing.assert_allclose(hess, fd, rtol=1e-6, atol=1e-6)


def test_dense_terms_are_finite_at_extremes():
    for fam in glm.FAMILIES.values():
        etas = [jnp.asarray([-40.0, 40.0, 0.0, 80.0], jnp.float32)] * fam.n_params
        val, d, h = fam.dense(jnp.asarray([0.0, 1e5, 3.0, 0.0], jnp.float32), *etas)
        arrays = [val, *d, *h.values()]
        assert all(bool(jnp.all(jnp.isfinite(a))) for a in arrays), fam.name


@pytest.mark.parametrize("family", ["nb", "zinb", "poisson", "zip"])
def test_reference_gradient_matches_finite_differences(family):
    rng = np.random.default_rng(1)
    n = 60
    K = len(glm.FAMILIES[family].params)
    designs = [np.c_[np.ones(n), rng.normal(size=n)] for _ in range(K)]
    y = rng.poisson(2.0, n) * (rng.random(n) > 0.3)
    theta = rng.normal(size=2 * K) * 0.3
    off = rng.normal(size=n) * 0.1

    def f(t):
        return nll_and_grad(t, y, designs, off, family)[0]

    def g(t):
        return nll_and_grad(t, y, designs, off, family)[1]

    assert so.check_grad(f, g, theta, epsilon=1e-7) < 1e-4 * max(1.0, np.abs(g(theta)).max())


@pytest.mark.parametrize("max_count", [40, 10**7])  # the bincount path and the sort fallback
@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # the fit's host blocks
def test_count_triplets_are_each_genes_histogram(max_count, dtype):
    rng = np.random.default_rng(3)
    Yt = rng.poisson(rng.gamma(0.5, 4.0, size=(6, 300))).astype(dtype)
    Yt[2] = 0.0  # an all-zero gene has no triplet
    Yt[4, 7] = max_count
    for group, n_groups in ((np.zeros(300, np.int64), 1), (rng.integers(0, 3, 300), 3)):
        gene, grp, val, mult = glm._count_triplets(Yt, group, n_groups)
        expected = {}
        for g, c in zip(*np.nonzero(Yt), strict=True):
            key = (g, group[c], Yt[g, c])
            expected[key] = expected.get(key, 0) + 1
        got = {(a, b, v): m for a, b, v, m in zip(gene, grp, val, mult, strict=True)}
        assert got == expected
        assert np.all(np.diff(gene) >= 0)  # gene-major, as _pad_triplets needs


@pytest.mark.parametrize("p", [3, glm._SUM_COLUMNS + 5])  # column sums, and the product
def test_linear_predictor_equals_the_matrix_product(p):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, p))
    b = rng.normal(size=p)
    np.testing.assert_allclose(
        np.asarray(glm._linear(jnp.asarray(X), jnp.asarray(b))), X @ b, rtol=1e-5, atol=1e-5
    )
