"""The generic batched Newton driver (``_core/infer/newton.py``) on toy problems."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from scnbtools._core.infer.newton import STATUS, newton_minimize

_TRACES = {"n": 0}


def rosenbrock(theta, data, shared):
    """Scaled Rosenbrock valley with its minimum at ``(a, a^2)``: non-convex, curved."""
    _TRACES["n"] += 1  # runs only while tracing
    a, c = data["a"], data["c"]
    x, y = theta[0], theta[1]
    t1, t2 = c * (a - x) ** 2, c * shared * (y - x * x) ** 2
    g = jnp.stack(
        [-2 * c * (a - x) - 4 * c * shared * x * (y - x * x), 2 * c * shared * (y - x * x)]
    )
    H = jnp.stack(
        [
            jnp.stack([2 * c + c * shared * (12 * x * x - 4 * y), -4 * c * shared * x]),
            jnp.stack([-4 * c * shared * x, 2 * c * shared]),
        ]
    )
    return jnp.stack([t1, t2]), g, H


def unbounded(theta, data, shared):
    """``f = -theta_0 + theta_1^2``: no minimum in theta_0."""
    return (
        jnp.stack([-theta[0], theta[1] ** 2]),
        jnp.stack([-1.0, 2 * theta[1]]),
        jnp.diag(jnp.stack([0.0, 2.0])),
    )


def _problems(B=6):
    rng = np.random.default_rng(0)
    data = {"a": jnp.asarray(rng.uniform(-2, 2, B)), "c": jnp.asarray(rng.uniform(0.5, 50, B))}
    theta0 = jnp.tile(jnp.asarray([-1.2, 1.0]), (B, 1))
    return theta0, data


def test_converges_on_a_batch_of_curved_valleys():
    theta0, data = _problems()
    res = newton_minimize(rosenbrock, theta0, data, 100.0, max_iter=300, tol=1e-12)
    assert list(STATUS) == ["converged", "max_iter", "line_search_failed", "non_finite_start"]
    assert np.all(res.converged), res.status
    a = np.asarray(data["a"])
    np.testing.assert_allclose(res.theta, np.c_[a, a * a], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.value, 0.0, atol=1e-8)
    assert res.hess.shape == (6, 2, 2) and res.grad.shape == (6, 2)


def test_same_shapes_do_not_retrace():
    theta0, data = _problems()
    newton_minimize(rosenbrock, theta0, data, 100.0, max_iter=300)
    before = _TRACES["n"]
    newton_minimize(rosenbrock, theta0 + 0.1, data, 100.0, max_iter=300)
    assert _TRACES["n"] == before


def test_iteration_cap_is_reported_not_hidden():
    theta0, data = _problems()
    res = newton_minimize(rosenbrock, theta0, data, 100.0, max_iter=3)
    assert set(res.status.tolist()) <= {1} and np.all(res.status == 1)
    assert np.all(np.isfinite(res.theta)) and res.n_eval == 3


def test_non_finite_start_is_flagged_and_isolated():
    theta0, data = _problems()
    theta0 = theta0.at[2, 0].set(jnp.nan)
    res = newton_minimize(rosenbrock, theta0, data, 100.0, max_iter=300)
    assert res.status[2] == 3
    others = np.delete(np.arange(6), 2)
    assert np.all(res.status[others] == 0)


def test_unbounded_problem_stays_finite():
    theta0 = jnp.zeros((3, 2))
    data = {"dummy": jnp.zeros(3)}
    res = newton_minimize(unbounded, theta0, data, None, max_iter=25, max_step=2.0)
    assert np.all(np.isfinite(res.theta)) and np.all(np.isfinite(res.value))
    assert not np.any(res.converged)
    # capped steps of 2 along the flat direction, none wasted
    np.testing.assert_allclose(res.theta[:, 0], 2.0 * res.n_iter)


def test_rejects_bad_theta_shape():
    with pytest.raises(ValueError, match="theta0"):
        newton_minimize(rosenbrock, jnp.zeros(2), {"a": 0.0, "c": 1.0}, 1.0)


@pytest.mark.parametrize("effort", ["quick", "optimized"])
def test_asynchronous_and_every_build_give_the_same_result(effort):
    theta0, data = _problems()
    ref = newton_minimize(rosenbrock, theta0, data, 100.0, max_iter=300, tol=1e-12)
    pending = newton_minimize(
        rosenbrock,
        theta0,
        data,
        100.0,
        max_iter=300,
        tol=1e-12,
        asynchronous=True,
        effort=effort,
    )
    assert callable(pending)
    res = pending()
    assert res.n_eval == ref.n_eval
    np.testing.assert_array_equal(res.status, ref.status)
    # the unoptimised build may round differently; both reach the minimum
    np.testing.assert_allclose(res.theta, ref.theta, rtol=1e-6, atol=1e-9)


def test_compile_effort_grows_with_the_job_and_bad_efforts_are_refused():
    from scnbtools._core.infer.newton import QUICK_COMPILE_ELEMENTS, compile_effort

    assert compile_effort(QUICK_COMPILE_ELEMENTS - 1) == "quick"
    assert compile_effort(QUICK_COMPILE_ELEMENTS) == "optimized"
    assert compile_effort(1 << 40) == "optimized"
    theta0, data = _problems()
    with pytest.raises(ValueError, match="effort"):
        newton_minimize(rosenbrock, theta0, data, 100.0, effort="fast")


def _nearly_singular(theta, data, shared):
    """``f = s^2 / 2`` with ``s = x + 1e-4 y - t``: a Hessian of condition ~1e8, whose small
    eigenvalue is floored differently in float32 and float64 precision."""
    s = theta[0] + 1e-4 * theta[1] - data["t"]
    H = jnp.array([[1.0, 1e-4], [1e-4, 1e-8]]) + 0.0 * theta[0]
    return jnp.stack([0.5 * s * s, 0.0 * theta[1]]), jnp.stack([s, 1e-4 * s]), H


def test_host_start_is_solved_like_a_device_start():
    """A NumPy float64 start (float64 off) is solved in float32 with float32's eigenvalue
    floor and options, exactly as the same start passed as a JAX array."""
    data = {"t": jnp.asarray(np.linspace(1, 2, 4), jnp.float32)}
    host = np.zeros((4, 2))  # float64
    a = newton_minimize(_nearly_singular, jnp.asarray(host), data, None, max_iter=20)
    b = newton_minimize(_nearly_singular, host, data, None, max_iter=20)
    assert b.theta.dtype == a.theta.dtype == np.float32
    np.testing.assert_array_equal(b.status, a.status)
    np.testing.assert_array_equal(b.theta, a.theta)
