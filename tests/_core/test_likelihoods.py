"""Every log-pmf of ``_core.likelihoods`` against ``scipy.stats`` over a table of cases.

The table spans the extremes the engine meets: zero counts and counts of 1e5, ``r -> 0``
(1e-6) and ``r -> inf`` (1e8), ``p`` and ``gate`` within 1e-6 of 0 and 1, a Poisson rate of 0.

Tolerance
---------
Parameters are rounded to the working precision *before* the reference is computed in
float64, so the test measures the evaluation error and not the input rounding (in float32
``1 - 1e-6`` is ``0.99999899``). A log-pmf is a sum of terms that can cancel (at
``x = mu = 1e5``, ``r = 1e8`` the terms are ~1e6 and the result ~-7), and no float32
formula does better than ``eps * (size of those terms)``. The allowed error is therefore

    |got - ref| <= RTOL * (1 + |ref|) + EPS * S

with ``S`` the float64 sum of the absolute values of the terms (``lgamma`` ratio,
``x log p``, ``r log(1 - p)``, the gate terms). ``S`` contains the *combined* ``lgamma``
ratio, not ``lgamma(r)`` itself, so a naive ``lgamma(x + r) - lgamma(r)`` (error
``eps * 1.7e9`` at ``r = 1e8``) fails (checked by swapping it in: 14-42 cases fail per
function). Measured worst error / allowed error over all cases: 0.34 in float32 (e.g.
0.039 absolute on -6.7 at ``x = mu = 1e5``, ``r = 1e8``; 0.075 on the Poisson at
``x = rate = 1e5``, whose terms are ~1e6), 0.12 in float64 (0.49 for the Poisson limit).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from scnbtools._core import likelihoods as L
from scnbtools._core.models import get_model

# float64: jax.scipy.special.betaln is accurate to ~1.4e-9 relative only (betaln(30, 7) is
# off by 2.4e-8 on 17.9), so in float64 the working "eps" of the lgamma-ratio term is taken
# as 5e-9 (measured 1.4e-9, times ~3) and RTOL as 1e-8 -- still 1000x tighter than float32.
RTOL = {np.float32: 1e-5, np.float64: 1e-8}
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: 5e-9}

X_GRID = (0.0, 1.0, 2.0, 7.0, 100.0, 1e5)
R_GRID = (1e-6, 0.05, 1.0, 30.0, 1e8)
P_GRID = (1e-6, 0.01, 0.5, 0.99, 1.0 - 1e-6)
MU_GRID = (1e-3, 5.0, 1e5)
GATE_GRID = (1e-6, 0.3, 1.0 - 1e-6)
RATE_GRID = (0.0, 1e-6, 3.0, 1e5)


def _enable_x64():
    """Context manager turning on float64 in JAX (the API moved between JAX versions)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - older JAX

    return enable_x64()  # pragma: no cover


def _grid(*axes):
    """Cartesian product of the axes as flat float64 arrays."""
    return [np.asarray(a, dtype=np.float64) for a in zip(*itertools.product(*axes), strict=True)]


def _at(dtype, *arrays):
    """Round to ``dtype`` (the inputs the function sees) and back to float64."""
    return [np.asarray(a, dtype=dtype).astype(np.float64) for a in arrays]


def _ev(fn, dtype, *args):
    """Evaluate ``fn`` jitted (one compilation instead of one per primitive) at ``dtype``."""
    return jax.jit(fn)(*(np.asarray(a, dtype=dtype) for a in args))


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _log_rf(x, r):
    """float64 reference of lgamma(x + r) - lgamma(r) - lgamma(x + 1)."""
    return np.where(
        x > 0, -np.log(np.where(x > 0, x, 1.0)) - special.betaln(r, np.where(x > 0, x, 1.0)), 0.0
    )


def _nb_ref(x, r, p):
    """(log-pmf, term scale S) of NB(r, p), NumPyro convention = scipy nbinom(r, 1 - p).

    For r > 1e6 scipy's own float64 formula cancels ``lgamma(r) ~ 1.7e9`` (error ~4e-7 at
    r = 1e8), so there the reference uses scipy's ``betaln`` form of the same expression
    (the two forms are checked equal below where both are accurate).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        exact_big_r = _log_rf(x, r) + x * np.log(p) + r * np.log1p(-p)
    ref = np.where(r > 1e6, exact_big_r, stats.nbinom.logpmf(x, r, 1.0 - p))
    scale = np.abs(_log_rf(x, r)) + np.abs(x * np.log(p)) + np.abs(r * np.log1p(-p))
    return ref, scale


def _zi_ref(x, lp, scale, gate):
    """Zero inflation mixed by hand in float64."""
    log_g, log_k = np.log(gate), np.log1p(-gate)
    ref = np.where(x == 0, np.logaddexp(log_g, log_k + lp), log_k + lp)
    return ref, scale + np.abs(log_g) + np.abs(log_k)


def _check(got, ref, scale, dtype, what, cases):
    got = np.asarray(got, dtype=np.float64)
    allowed = RTOL[dtype] * (1.0 + np.abs(ref)) + EPS[dtype] * scale
    both_inf = np.isneginf(ref) & np.isneginf(got)
    with np.errstate(invalid="ignore"):
        err = np.where(both_inf, 0.0, np.abs(got - ref))
    bad = ~(err <= allowed)  # NaN counts as bad
    if bad.any():
        rows = "\n".join(
            f"  {', '.join(f'{k}={v[i]:.6g}' for k, v in cases.items())}: "
            f"got {got[i]:.10g}, scipy {ref[i]:.10g}, allowed {allowed[i]:.3g}"
            for i in np.flatnonzero(bad)[:10]
        )
        pytest.fail(
            f"{what} ({np.dtype(dtype).name}) disagrees with scipy in {bad.sum()} cases:\n{rows}"
        )


# ----------------------------------------------------------------------------- cases
# Each case: name -> function(dtype) returning (got, ref, scale, {input name: values}).
def _case_nb_probs(dtype):
    x, r, p = _at(dtype, *_grid(X_GRID, R_GRID, P_GRID))
    got = _ev(L.nb_logpmf, dtype, x, r, p)
    return (got, *_nb_ref(x, r, p), {"x": x, "r": r, "p": p})


def _case_nb_logits(dtype):
    x, r, p = _at(dtype, *_grid(X_GRID, R_GRID, P_GRID))
    got = _ev(lambda x, r, lg: L.nb_logpmf(x, r, logits=lg), dtype, x, r, _logit(p))
    return (got, *_nb_ref(x, r, p), {"x": x, "r": r, "p": p})


def _case_nb_mean(dtype):
    x, mu, r = _at(dtype, *_grid(X_GRID, MU_GRID, R_GRID))
    got = _ev(L.nb_mean_logpmf, dtype, x, mu, r)
    return (got, *_nb_ref(x, r, mu / (mu + r)), {"x": x, "mu": mu, "r": r})


def _case_nb_mean_poisson_limit(dtype):
    """r = 1e8: the NB mean form is the Poisson(mu) up to ~(x² + mu²) / (2r) <= 1e-4."""
    x, mu = _at(dtype, *_grid((0.0, 1.0, 7.0, 100.0), (1e-3, 5.0, 100.0)))
    r = np.full_like(x, 1e8)
    got = _ev(L.nb_mean_logpmf, dtype, x, mu, r)
    _, scale = _nb_ref(x, r, mu / (mu + r))
    # the NB-vs-Poisson gap (leading order ((x - mu)² - x) / (2r), at most (x² + mu²) / (2r))
    # is part of the allowed error, twice over, not hidden in RTOL
    scale = scale + (x**2 + mu**2) / r / EPS[dtype]
    return got, stats.poisson.logpmf(x, mu), scale, {"x": x, "mu": mu}


def _case_zinb_probs(dtype):
    x, r, p, g = _at(dtype, *_grid(X_GRID, R_GRID, P_GRID, GATE_GRID))
    got = _ev(L.zinb_logpmf, dtype, x, r, p, g)
    return (got, *_zi_ref(x, *_nb_ref(x, r, p), g), {"x": x, "r": r, "p": p, "gate": g})


def _case_zinb_logits(dtype):
    x, r, p, g = _at(dtype, *_grid(X_GRID, R_GRID, P_GRID, GATE_GRID))
    got = _ev(
        lambda x, r, lg, lgg: L.zinb_logpmf(x, r, logits=lg, gate_logits=lgg),
        dtype,
        x,
        r,
        _logit(p),
        _logit(g),
    )
    return (got, *_zi_ref(x, *_nb_ref(x, r, p), g), {"x": x, "r": r, "p": p, "gate": g})


def _case_zinb_mean(dtype):
    x, mu, r, g = _at(dtype, *_grid(X_GRID, MU_GRID, R_GRID, GATE_GRID))
    got = _ev(L.zinb_mean_logpmf, dtype, x, mu, r, g)
    ref, scale = _zi_ref(x, *_nb_ref(x, r, mu / (mu + r)), g)
    return got, ref, scale, {"x": x, "mu": mu, "r": r, "gate": g}


def _poisson_ref(x, rate):
    ref = stats.poisson.logpmf(x, rate)
    with np.errstate(divide="ignore", invalid="ignore"):
        xlog = np.where(x > 0, x * np.log(rate), 0.0)
    scale = np.abs(np.where(np.isfinite(xlog), xlog, 0.0)) + rate + special.gammaln(x + 1)
    return ref, scale


def _case_poisson(dtype):
    x, rate = _at(dtype, *_grid(X_GRID, RATE_GRID))
    got = _ev(L.poisson_logpmf, dtype, x, rate)
    return (got, *_poisson_ref(x, rate), {"x": x, "rate": rate})


def _case_poisson_log_rate(dtype):
    x, rate = _at(dtype, *_grid(X_GRID, RATE_GRID))
    with np.errstate(divide="ignore"):
        log_rate = np.log(rate).astype(dtype)
    got = _ev(lambda x, lr: L.poisson_logpmf(x, log_rate=lr), dtype, x, log_rate)
    rate = np.exp(log_rate.astype(np.float64))
    return (got, *_poisson_ref(x, rate), {"x": x, "rate": rate})


def _case_zip(dtype):
    x, rate, g = _at(dtype, *_grid(X_GRID, RATE_GRID, GATE_GRID))
    got = _ev(L.zip_logpmf, dtype, x, rate, g)
    return (got, *_zi_ref(x, *_poisson_ref(x, rate), g), {"x": x, "rate": rate, "gate": g})


def _case_log_rf(dtype):
    x, r = _at(dtype, *_grid(X_GRID, R_GRID))
    got = _ev(L.log_rising_factorial_ratio, dtype, x, r)
    ref = special.gammaln(x + r) - special.gammaln(r) - special.gammaln(x + 1)
    # the float64 reference itself cancels lgamma(r) ~ 1.7e9 at r = 1e8; use the
    # betaln form there (checked equal where both are accurate, below)
    ref = np.where(r > 1e6, _log_rf(x, r), ref)
    return got, ref, np.abs(ref), {"x": x, "r": r}


CASES = {
    "nb_logpmf[probs]": _case_nb_probs,
    "nb_logpmf[logits]": _case_nb_logits,
    "nb_mean_logpmf": _case_nb_mean,
    "nb_mean_logpmf[r=1e8 vs Poisson]": _case_nb_mean_poisson_limit,
    "zinb_logpmf[probs]": _case_zinb_probs,
    "zinb_logpmf[logits]": _case_zinb_logits,
    "zinb_mean_logpmf": _case_zinb_mean,
    "poisson_logpmf[rate]": _case_poisson,
    "poisson_logpmf[log_rate]": _case_poisson_log_rate,
    "zip_logpmf": _case_zip,
    "log_rising_factorial_ratio": _case_log_rf,
}


@pytest.mark.parametrize("name", list(CASES))
def test_logpmf_matches_scipy_float32(name):
    got, ref, scale, cases = CASES[name](np.float32)
    assert np.asarray(got).dtype == np.float32, "float32 inputs must give float32 output"
    _check(got, ref, scale, np.float32, name, cases)


@pytest.mark.parametrize("name", list(CASES))
def test_logpmf_matches_scipy_float64(name):
    with _enable_x64():
        got, ref, scale, cases = CASES[name](np.float64)
        assert np.asarray(got).dtype == np.float64, "x64 mode must evaluate in float64"
    _check(got, ref, scale, np.float64, name, cases)


def test_log_rf_reference_forms_agree():
    """The betaln form of the float64 reference equals the lgamma form where both are exact."""
    x, r = _grid(X_GRID, (1e-6, 0.05, 1.0, 30.0, 1e4))
    lg = special.gammaln(x + r) - special.gammaln(r) - special.gammaln(x + 1)
    np.testing.assert_allclose(_log_rf(x, r), lg, rtol=1e-9, atol=1e-9)


def test_special_values():
    """Exact values the engine relies on (one jitted call: eager scalar ops compile one by one)."""

    @jax.jit
    def values():
        return jnp.stack(
            [
                L.log_rising_factorial_ratio(0.0, 1e-6),
                L.nb_logpmf(0.0, 2.0, logits=-jnp.inf),  # p = 0: all mass at 0
                L.nb_logpmf(0.0, 2.0, 0.0),
                L.poisson_logpmf(0.0, 0.0),
                L.zip_logpmf(0.0, 0.0, 0.3),
                L.poisson_logpmf(3.0, 0.0),
                L.poisson_logpmf(0.0, -1.0),
            ]
        )

    lrf0, nb_p0_logits, nb_p0, pois0, zip0, pois_x3_rate0, pois_neg = np.asarray(values())
    assert lrf0 == 0.0
    assert nb_p0_logits == 0.0
    assert nb_p0 == 0.0
    assert pois0 == pytest.approx(0.0, abs=1e-6)  # lgamma(1) is -4.8e-7 in float32
    assert zip0 == pytest.approx(0.0, abs=1e-6)
    assert np.isneginf(pois_x3_rate0)
    assert np.isnan(pois_neg), "a negative rate must not give a number"
    # integer inputs are promoted to float
    np.testing.assert_allclose(
        np.asarray(jax.jit(L.nb_logpmf)(jnp.array([0, 3]), 2, 0.5)),
        stats.nbinom.logpmf([0, 3], 2, 0.5),
        rtol=1e-6,
    )


# ----------------------------------------------------------------------------- gradients
def _grad_cases():
    x, r, p, g = _grid(X_GRID, R_GRID, P_GRID, GATE_GRID)
    x2, mu, r2, g2 = _grid(X_GRID, MU_GRID, R_GRID, GATE_GRID)
    x3, rate, g3 = _grid(X_GRID, RATE_GRID, GATE_GRID)
    lg, lgg = _logit(p), _logit(g)
    f = jnp.float32
    return {
        "nb_logpmf[probs]": (lambda r, p: L.nb_logpmf(x, r, p), (f(r), f(p))),
        "nb_logpmf[logits]": (lambda r, lg: L.nb_logpmf(x, r, logits=lg), (f(r), f(lg))),
        "nb_mean_logpmf": (lambda mu, r: L.nb_mean_logpmf(x2, mu, r), (f(mu), f(r2))),
        "zinb_logpmf[probs]": (lambda r, p, g: L.zinb_logpmf(x, r, p, g), (f(r), f(p), f(g))),
        "zinb_logpmf[logits]": (
            lambda r, lg, lgg: L.zinb_logpmf(x, r, logits=lg, gate_logits=lgg),
            (f(r), f(lg), f(lgg)),
        ),
        "zinb_mean_logpmf": (
            lambda mu, r, g: L.zinb_mean_logpmf(x2, mu, r, g),
            (f(mu), f(r2), f(g2)),
        ),
        # rate = 0 only where x = 0 (elsewhere the log-pmf is -inf and has no gradient)
        "poisson_logpmf": (
            lambda rate: L.poisson_logpmf(x3, rate),
            (f(np.where((rate == 0) & (x3 > 0), 1e-6, rate)),),
        ),
        "zip_logpmf": (
            lambda rate, g: L.zip_logpmf(x3, rate, g),
            (f(np.where((rate == 0) & (x3 > 0), 1e-6, rate)), f(g3)),
        ),
    }


GRAD_CASES = _grad_cases()


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_finite_at_extremes(name):
    fn, args = GRAD_CASES[name]
    grad_fn = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
    grads = jax.jit(grad_fn)(*args)
    for i, g in enumerate(grads):
        g = np.asarray(g)
        assert g.shape == args[i].shape
        assert np.all(np.isfinite(g)), (
            f"{name}: non-finite gradient wrt argument {i} at {np.flatnonzero(~np.isfinite(g))[:5]}"
        )


def test_poisson_gradient_at_zero_rate():
    """d/d rate log Poisson(0 | rate) = -1, also at rate = 0."""
    assert float(jax.grad(lambda lam: L.poisson_logpmf(0.0, lam))(0.0)) == pytest.approx(-1.0)


def test_nb_gradients_match_analytic_float64():
    """Gradients are not just finite but right: d/dr = ψ(x+r) − ψ(r) + log(1−p),
    d/dp = x/p − r/(1−p), d/dlogit = x − (x+r) p."""
    x, r, p = _grid(X_GRID, (1e-6, 0.05, 1.0, 30.0, 1e4), (1e-6, 0.01, 0.5, 0.99, 1 - 1e-6))
    with _enable_x64():
        gr, gp = jax.jit(jax.grad(lambda r, p: jnp.sum(L.nb_logpmf(x, r, p)), argnums=(0, 1)))(r, p)
        gl = jax.jit(jax.grad(lambda lg: jnp.sum(L.nb_logpmf(x, r, logits=lg))))(_logit(p))
    # digamma(x + r) - digamma(r) cancels ~1/r at small r: allow 1e-7 of the terms' size
    checks = {
        "d/dr": (
            gr,
            special.digamma(x + r) - special.digamma(r) + np.log1p(-p),
            np.abs(special.digamma(r)) + np.abs(special.digamma(x + r)) + np.abs(np.log1p(-p)),
        ),
        "d/dp": (gp, x / p - r / (1 - p), x / p + r / (1 - p)),
        "d/dlogit": (gl, x - (x + r) * p, x + (x + r) * p),
    }
    for what, (got, want, size) in checks.items():
        err = np.abs(np.asarray(got) - want)
        assert np.all(err <= 1e-7 * size + 1e-12), f"{what}: max error {err.max():.3g}"


# ----------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: L.nb_logpmf(1.0, 2.0), "`p` or `logits`"),
        (lambda: L.nb_logpmf(1.0, 2.0, 0.5, logits=0.0), "`p` or `logits`"),
        (lambda: L.zinb_logpmf(1.0, 2.0, gate=0.1), "`p` or `logits`"),
        (lambda: L.zinb_logpmf(1.0, 2.0, 0.5, logits=0.0, gate=0.1), "`p` or `logits`"),
        (lambda: L.zinb_logpmf(1.0, 2.0, 0.5), "`gate` or `gate_logits`"),
        (lambda: L.zinb_logpmf(1.0, 2.0, 0.5, 0.1, gate_logits=0.0), "`gate` or `gate_logits`"),
        (lambda: L.zinb_mean_logpmf(1.0, 2.0, 3.0), "`gate` or `gate_logits`"),
        (lambda: L.poisson_logpmf(1.0), "`rate` or `log_rate`"),
        (lambda: L.poisson_logpmf(1.0, 2.0, log_rate=0.0), "`rate` or `log_rate`"),
        (lambda: L.zip_logpmf(1.0, 2.0), "`gate` or `gate_logits`"),
        (lambda: L.zip_logpmf(1.0, gate=0.2), "`rate` or `log_rate`"),
    ],
)
def test_both_or_neither_parameterization_raises(call, names):
    with pytest.raises(TypeError, match=f"exactly one of {names}"):
        call()


# ----------------------------------------------------------------------------- model specs
@pytest.mark.parametrize("model", ["nbdm", "zinb"])
def test_spec_obs_dist_agrees_with_logpmf(model):
    """The NumPyro distribution used for predictive sampling is the likelihood that is fitted."""
    spec = get_model(model)
    rng = np.random.default_rng(0)
    n_genes = 40
    x = np.concatenate(
        [
            np.zeros((3, n_genes)),
            rng.negative_binomial(2, 0.3, (20, n_genes)),
            rng.integers(0, 300, (10, n_genes)),
        ]
    ).astype(np.float32)
    obs_logp = jax.jit(lambda v, x: spec.obs_dist(v).log_prob(x))
    spec_logp = jax.jit(spec.logpmf)
    for p in (0.05, 0.3, 0.95):
        values = {
            "p": jnp.float32(p),
            "r": jnp.asarray(np.exp(rng.normal(0, 1.5, n_genes)), dtype=jnp.float32),
            "gate": jnp.asarray(rng.uniform(0.01, 0.9, n_genes), dtype=jnp.float32),
        }
        values = {k: v for k, v in values.items() if k in spec.site_names}
        want = np.asarray(obs_logp(values, x))
        got = np.asarray(spec_logp(x, values))
        assert got.shape == want.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"p={p}")
