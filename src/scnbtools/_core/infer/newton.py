"""Batched damped Newton minimisation of many small, independent, smooth problems.

The driver knows nothing about models: it minimises ``f(theta_b; data_b, shared)`` for
every problem ``b`` (e.g. every gene) at once, given a per-problem function
``fgh(theta, data, shared) -> (f, grad, hess)``. ``fgh`` is :func:`jax.vmap`-ed over
the leading axis of ``theta`` and ``data``; ``shared`` (design matrices, ...) is the
same for all problems.

Each iteration, for every still-running problem:

1. Jacobi-scale the Hessian (``D H D`` with ``D = diag(H)^-1/2``), take its eigen
   decomposition and replace every eigenvalue by ``max(|e|, floor)`` — a modified
   Newton direction that is a descent direction even where ``H`` is indefinite or
   singular (saddle-free Newton). The squared Newton decrement
   ``g' H_mod^-1 g`` is the predicted improvement; a problem has **converged** when
   half of it is below ``tol`` (in objective units: for a log-likelihood this puts the
   iterate within ``sqrt(2 tol)`` standard errors of the optimum).
2. Take the step, capped elementwise at ``max_step``, times the problem's current step
   length ``alpha``, evaluate ``fgh`` there and accept it when it is finite and
   satisfies the Armijo condition (with a slack of a few ulps of ``|f|``, so float32
   round-off cannot stall a converged problem); otherwise halve ``alpha`` and retry in
   the next iteration (backtracking spread over iterations, so one iteration is always
   exactly one batched evaluation).

A problem stops when it converges, when the line search fails (``alpha`` below
``min_alpha``) or after ``max_iter`` evaluations; rejected trials never change the
iterate, so every returned value is finite whenever the start was. Everything runs in
one jitted ``lax.while_loop`` (one compilation per function and shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["STATUS", "NewtonResult", "newton_minimize"]

#: Meaning of the integer status codes returned per problem.
STATUS: tuple[str, ...] = ("converged", "max_iter", "line_search_failed", "non_finite_start")
_RUNNING = -1
_CONVERGED, _MAX_ITER, _LS_FAILED, _NONFINITE = range(4)


@dataclass
class NewtonResult:
    """Per-problem results of :func:`newton_minimize` (NumPy arrays, leading axis = problem)."""

    theta: np.ndarray
    value: np.ndarray
    grad: np.ndarray
    hess: np.ndarray
    n_iter: np.ndarray  # accepted steps
    n_eval: int  # batched evaluations (loop iterations)
    status: np.ndarray  # int codes, see STATUS

    @property
    def converged(self) -> np.ndarray:
        return self.status == _CONVERGED


def _direction(g, H, max_step, rel_floor):
    """Modified Newton step and squared decrement for one problem."""
    d = jax.lax.rsqrt(jnp.maximum(jnp.abs(jnp.diagonal(H)), jnp.finfo(H.dtype).tiny))
    Hs = H * d[:, None] * d[None, :]
    gs = g * d
    e, V = jnp.linalg.eigh(Hs)
    ae = jnp.abs(e)
    floor = rel_floor * jnp.max(ae) + jnp.finfo(H.dtype).tiny
    e_mod = jnp.maximum(ae, floor)
    gv = V.T @ gs
    step = -d * (V @ (gv / e_mod))
    dec = jnp.sum(gv * gv / e_mod)
    scale = jnp.max(jnp.abs(step) / max_step)
    step = step / jnp.maximum(scale, 1.0)
    return step, dec


def _all_finite(*xs):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


@partial(
    jax.jit,
    static_argnames=("fgh", "max_iter", "tol", "armijo", "min_alpha", "rel_floor", "slack_ulps"),
)
def _solve(fgh, theta0, data, shared, max_step, *, max_iter, tol, armijo, min_alpha, rel_floor, slack_ulps):
    vfgh = jax.vmap(fgh, in_axes=(0, 0, None))
    vdir = jax.vmap(_direction, in_axes=(0, 0, None, None))
    eps = jnp.finfo(theta0.dtype).eps

    f0, g0, H0 = vfgh(theta0, data, shared)
    ok0 = jax.vmap(_all_finite)(f0, g0, H0)
    status0 = jnp.where(ok0, _RUNNING, _NONFINITE).astype(jnp.int32)
    B = theta0.shape[0]
    state0 = (
        jnp.int32(0),
        theta0,
        f0,
        g0,
        H0,
        jnp.ones(B, theta0.dtype),
        jnp.zeros(B, jnp.int32),
        status0,
    )

    def cond(state):
        it, *_, status = state
        return (it < max_iter) & jnp.any(status == _RUNNING)

    def body(state):
        it, theta, f, g, H, alpha, n_acc, status = state
        step, dec = vdir(g, H, max_step, rel_floor)
        status = jnp.where((status == _RUNNING) & (0.5 * dec <= tol), _CONVERGED, status)
        running = status == _RUNNING
        trial = theta + alpha[:, None] * step
        f1, g1, H1 = vfgh(trial, data, shared)
        finite = jax.vmap(_all_finite)(f1, g1, H1)
        slope = jnp.sum(g * step, axis=1)  # = -decrement-like, negative
        slack = slack_ulps * eps * jnp.abs(f)
        ok = finite & (f1 <= f + armijo * alpha * slope + slack)
        accept = running & ok
        theta = jnp.where(accept[:, None], trial, theta)
        f = jnp.where(accept, f1, f)
        g = jnp.where(accept[:, None], g1, g)
        H = jnp.where(accept[:, None, None], H1, H)
        n_acc = n_acc + accept.astype(jnp.int32)
        new_alpha = jnp.where(accept, 1.0, alpha * 0.5)
        failed = running & ~ok & (new_alpha < min_alpha)
        status = jnp.where(failed, _LS_FAILED, status)
        alpha = jnp.where(running, new_alpha, alpha)
        return (it + 1, theta, f, g, H, alpha, n_acc, status)

    it, theta, f, g, H, _, n_acc, status = jax.lax.while_loop(cond, body, state0)
    # problems that converged on their last accepted step
    _, dec = vdir(g, H, max_step, rel_floor)
    status = jnp.where((status == _RUNNING) & (0.5 * dec <= tol), _CONVERGED, status)
    status = jnp.where(status == _RUNNING, _MAX_ITER, status)
    return theta, f, g, H, n_acc, it, status


def newton_minimize(
    fgh: Callable[[jax.Array, Any, Any], tuple[jax.Array, jax.Array, jax.Array]],
    theta0,
    data: Any,
    shared: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-8,
    max_step=10.0,
    armijo: float = 1e-4,
    min_alpha: float = 1e-10,
    rel_floor: float | None = None,
    slack_ulps: float = 16.0,
) -> NewtonResult:
    """Minimise ``B`` independent problems at once by damped (modified) Newton steps.

    Parameters
    ----------
    fgh
        ``fgh(theta, data, shared) -> (value, grad, hess)`` for **one** problem
        (``theta`` of shape ``[P]``); it is vmapped over problems. Must be a stable
        (hashable, module-level or cached) function: it is a static argument of the
        jitted solver, so a new closure per call recompiles.
    theta0
        Starting values ``[B, P]`` (must be finite; the dtype sets the precision).
    data
        Pytree of per-problem arrays, leading axis ``B``.
    shared
        Pytree of arrays common to all problems (not batched).
    max_iter
        Maximum number of batched evaluations (iterations, counting rejected trials).
    tol
        Convergence threshold on half the squared Newton decrement (objective units).
    max_step
        Cap on each coordinate's step (scalar or ``[P]`` array), guarding against
        overflow in the first steps from a poor start.
    armijo
        Sufficient-decrease constant of the backtracking line search.
    min_alpha
        Smallest step length tried before the line search is declared failed.
    rel_floor
        Eigenvalue floor of the Jacobi-scaled Hessian relative to its largest
        eigenvalue (default ``eps ** 0.75`` of the dtype).
    slack_ulps
        Accept trial values up to this many ulps of ``|f|`` above the Armijo bound.

    Returns
    -------
    :class:`NewtonResult` with per-problem ``status`` codes (see :data:`STATUS`).
    """
    theta0 = jnp.asarray(theta0)
    if theta0.ndim != 2:
        raise ValueError(f"`theta0` must have shape [problems, parameters], got {theta0.shape}.")
    if rel_floor is None:
        rel_floor = float(np.finfo(theta0.dtype).eps ** 0.75)
    max_step = jnp.broadcast_to(jnp.asarray(max_step, theta0.dtype), theta0.shape[1:])
    theta, f, g, H, n_acc, it, status = _solve(
        fgh,
        theta0,
        data,
        shared,
        max_step,
        max_iter=int(max_iter),
        tol=float(tol),
        armijo=float(armijo),
        min_alpha=float(min_alpha),
        rel_floor=float(rel_floor),
        slack_ulps=float(slack_ulps),
    )
    return NewtonResult(
        theta=np.asarray(theta),
        value=np.asarray(f),
        grad=np.asarray(g),
        hess=np.asarray(H),
        n_iter=np.asarray(n_acc),
        n_eval=int(it),
        status=np.asarray(status),
    )
