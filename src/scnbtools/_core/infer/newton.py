"""Batched damped Newton minimisation of many small, independent, smooth problems.

The driver knows nothing about models: it minimises ``f(theta_b; data_b, shared)`` for
every problem ``b`` (e.g. every gene) at once, given a per-problem function
``fgh(theta, data, shared) -> (terms, grad, hess)`` with ``f = terms.sum()``. ``fgh``
is :func:`jax.vmap`-ed over the leading axis of ``theta`` and ``data``; ``shared``
(design matrices, ...) is the same for all problems.

Each iteration, for every still-running problem:

1. Jacobi-scale the Hessian (``D H D`` with ``D = diag(H)^-1/2``), take its eigen
   decomposition and replace every eigenvalue by ``max(|e|, floor)`` — a modified
   Newton direction that is a descent direction even where ``H`` is indefinite or
   singular (saddle-free Newton). The squared Newton decrement
   ``g' H_mod^-1 g`` is the predicted improvement; a problem has **converged** when
   half of it is below ``tol`` (in objective units: for a log-likelihood this puts the
   iterate within ``sqrt(2 tol)`` standard errors of the optimum), or below the round-off
   floor ``100 eps^2 N`` of a gradient summed over ``N`` terms (only matters in float32).
2. Take the step, capped coordinate-wise at ``max_step``, times the problem's current
   step length ``alpha``, evaluate ``fgh`` there and accept it when it is finite and
   satisfies the Armijo condition; otherwise halve ``alpha`` and retry in the next
   iteration (backtracking spread over iterations, so one iteration is always exactly
   one batched evaluation). The change of ``f`` is summed term by term
   (``sum(terms_new - terms_old)``), so it stays accurate in float32 even when ``|f|``
   is ~1e5 and the change ~1e-3, and the Armijo test allows for its random round-off.
   Where even the predicted gain (half the decrement) is below that round-off, ``f``
   cannot judge the step and the (then very accurate) quadratic model is trusted.
3. Round-off floor: a problem whose long trial steps (step length >= 1/8) keep changing
   ``f`` by less than that round-off (``stall_steps`` times, accepted or not) has
   converged as far as the dtype allows.

A problem stops when it converges, when the line search fails (``alpha`` below
``min_alpha``) or after ``max_iter`` evaluations; rejected trials never change the
iterate, so every returned value is finite whenever the start was. Everything runs in
one jitted ``lax.while_loop`` (one compilation per function and shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["STATUS", "NewtonResult", "compile_effort", "newton_minimize"]

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
    # Cap each coordinate separately (a flat, noisy direction must not shrink the steps
    # of well-determined ones); fall back to uniform scaling if that is not a descent.
    clipped = jnp.clip(step, -max_step, max_step)
    uniform = step / jnp.maximum(jnp.max(jnp.abs(step) / max_step), 1.0)
    step = jnp.where(jnp.dot(clipped, g) < 0, clipped, uniform)
    return step, dec


def _all_finite(*xs):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def _solve(fgh, init, n_terms, theta0, data, shared, max_step, opts):
    # numeric options are traced (changing them never recompiles); ``fgh``, ``init`` and
    # ``n_terms`` are static
    max_iter, tol, armijo = opts["max_iter"], opts["tol"], opts["armijo"]
    min_alpha, rel_floor, slack = opts["min_alpha"], opts["rel_floor"], opts["slack"]
    stall_steps = opts["stall_steps"]
    vfgh = jax.vmap(fgh, in_axes=(0, 0, None))
    vdir = jax.vmap(_direction, in_axes=(0, 0, None, None))
    dt = theta0.dtype
    eps = jnp.finfo(dt).eps
    if init is not None:  # starting values computed here: no separate kernel to build
        start = init(data, shared).astype(dt)
        theta0 = jnp.where(opts["use_init"], jnp.where(jnp.isfinite(start), start, 0.0), theta0)
    B, P = theta0.shape
    if n_terms is None:
        n_terms = jax.eval_shape(vfgh, theta0, data, shared)[0].shape[1]
    # Round-off floor of the squared decrement: gradients summed over N terms carry an error
    # ~ eps * N * |term| against curvature ~ N, so dec cannot be resolved below ~eps^2 N
    # (x100 for the cancellation between partial sums). Negligible in float64; in float32
    # it is 1.4e-8 at 10^4 terms (the iterate is then within 2e-4 SE of the optimum).
    tol = jnp.maximum(tol, 100.0 * eps * eps * n_terms)
    # The first iteration evaluates the start (``fresh``), and each iteration computes the
    # next direction at its trial point, so ``fgh`` and the eigendecomposition each appear
    # once in the compiled graph.
    state0 = (
        jnp.int32(0),
        theta0,
        jnp.zeros((B, n_terms), dt),
        jnp.zeros((B, P), dt),
        jnp.broadcast_to(jnp.eye(P, dtype=dt), (B, P, P)),
        jnp.zeros((B, P), dt),
        jnp.full(B, jnp.inf, dt),
        jnp.ones(B, dt),
        jnp.zeros(B, jnp.int32),
        jnp.full(B, _RUNNING, jnp.int32),
        jnp.ones(B, bool),
        jnp.zeros(B, jnp.int32),
    )

    def cond(state):
        it, status = state[0], state[9]
        return (it < max_iter) & jnp.any(status == _RUNNING)

    def body(state):
        it, theta, terms, g, H, step, dec, alpha, n_acc, status, fresh, stall = state
        running = status == _RUNNING
        trial = theta + alpha[:, None] * step
        terms1, g1, H1 = vfgh(trial, data, shared)
        finite = jax.vmap(_all_finite)(terms1, g1, H1)
        # f(trial) - f(theta) summed term by term: accurate even when |f| is huge
        change = jnp.sum(terms1 - terms, axis=1)
        noise = slack * eps * jnp.sqrt(jnp.sum(terms * terms, axis=1))
        slope = jnp.sum(g * step, axis=1)  # <= 0: a descent direction
        # Where the predicted gain is below the round-off of f, f cannot judge the step;
        # the quadratic model is then accurate (within ~0.1 SE of the optimum): take it.
        trust = fresh | (0.5 * dec <= noise)
        ok = finite & (trust | (change <= armijo * alpha * slope + noise))
        accept = running & ok
        # Long trial steps (accepted or not) that change f by no more than its round-off:
        # the noise floor is reached. An accepted step with a real gain resets the count.
        flat = running & ~fresh & finite & (alpha >= 0.125) & (jnp.abs(change) <= noise)
        stall = jnp.where(flat, stall + 1, jnp.where(accept & (-change > noise), 0, stall))
        theta = jnp.where(accept[:, None], trial, theta)
        terms = jnp.where(accept[:, None], terms1, terms)
        g = jnp.where(accept[:, None], g1, g)
        H = jnp.where(accept[:, None, None], H1, H)
        step1, dec1 = vdir(g1, H1, max_step, rel_floor)
        step = jnp.where(accept[:, None], step1, step)
        dec = jnp.where(accept, dec1, dec)
        n_acc = n_acc + (accept & ~fresh).astype(jnp.int32)
        new_alpha = jnp.where(accept, 1.0, alpha * 0.5)
        status = jnp.where(running & fresh & ~finite, _NONFINITE, status)
        failed = running & ~fresh & ~ok & (new_alpha < min_alpha)
        status = jnp.where(failed, _LS_FAILED, status)
        alpha = jnp.where(running, new_alpha, alpha)
        # converged at the new point: decided now, so no evaluation is spent to notice it
        done = (0.5 * dec <= tol) | (stall >= stall_steps)
        status = jnp.where((status == _RUNNING) & done, _CONVERGED, status)
        fresh = jnp.zeros_like(fresh)
        return (it + 1, theta, terms, g, H, step, dec, alpha, n_acc, status, fresh, stall)

    state = jax.lax.while_loop(cond, body, state0)
    it, theta, terms, g, H, _, dec, _, n_acc, status, _, stall = state
    # problems that converged on their last accepted step
    done = (0.5 * dec <= tol) | (stall >= stall_steps)
    status = jnp.where((status == _RUNNING) & done, _CONVERGED, status)
    status = jnp.where(status == _RUNNING, _MAX_ITER, status)
    # the objective itself in the widest float available (float64 under jax.enable_x64)
    wide = jax.dtypes.canonicalize_dtype(jnp.float64)
    return theta, jnp.sum(terms.astype(wide), axis=1), g, H, n_acc, it, status


_STATIC = ("fgh", "init", "n_terms")


# Compiler options per effort. LLVM's optimisation passes dominate the compile time of
# this loop: without them ("quick") it builds in a fraction of the time and runs several
# times slower, the faster choice for small jobs. On the CPU both builds use XLA's loop
# emitters instead of its fusion emitters, and "optimized" is LLVM -O1: on the NB GLM
# (8-26 genes x 10,000-50,000 cells per block) this compiled in about a third less CPU
# time than XLA's default build and ran as fast (whole fits of 10,000 and 50,000 cells x
# 2,000 genes). Elsewhere "optimized" is the default build (not measured).
def _compiler_options(effort: str, cpu: bool) -> dict | None:
    level = 0 if effort == "quick" else 1
    if cpu:
        return {"xla_backend_optimization_level": level, "xla_cpu_use_fusion_emitters": False}
    return {"xla_backend_optimization_level": 0} if effort == "quick" else None


_EFFORTS = ("quick", "optimized")
_SOLVERS = {
    (effort, cpu): jax.jit(
        _solve, static_argnames=_STATIC, compiler_options=_compiler_options(effort, cpu)
    )
    for effort in _EFFORTS
    for cpu in (True, False)
}
#: problems x per-problem data elements below which the quickly compiled solver is used
QUICK_COMPILE_ELEMENTS = 1 << 18


def compile_effort(n_elements: int) -> str:
    """How much compiler effort a job of ``n_elements`` data elements is worth."""
    return "quick" if n_elements < QUICK_COMPILE_ELEMENTS else "optimized"


def _default_platform() -> str:
    """Platform of the device that host arguments of a jitted call go to."""
    dev = jax.config.jax_default_device  # set by ``jax.default_device(...)``
    if dev is None:
        return jax.default_backend()
    return dev if isinstance(dev, str) else dev.platform


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
    slack: float = 64.0,
    stall_steps: int = 3,
    asynchronous: bool = False,
    effort: str | None = None,
    init: Callable[[Any, Any], jax.Array] | None = None,
    use_init: bool = True,
    n_terms: int | None = None,
) -> NewtonResult | Callable[[], NewtonResult]:
    """Minimise ``B`` independent problems at once by damped (modified) Newton steps.

    Parameters
    ----------
    fgh
        ``fgh(theta, data, shared) -> (terms, grad, hess)`` for **one** problem
        (``theta`` of shape ``[P]``): the objective is ``terms.sum()`` (e.g. one term per
        cell), returned term by term so that the line search can compare two iterates
        term by term. It is vmapped over problems. Must be a stable
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
    slack
        Round-off allowance of the line search: a trial may exceed the Armijo bound by
        ``slack * eps * ||terms||_2`` (the random round-off of the term-wise change).
    stall_steps
        A problem has also converged after this many trial steps of length >= 1/8
        whose change of ``f`` was within that allowance (the round-off floor: this stops
        float32 fits whose gradient noise exceeds ``tol``, and estimates running off to
        a boundary such as an infinite NB size).
    asynchronous
        Return at once, with a function that waits for the solve and returns its
        result: the caller can prepare the next batch of problems on the host meanwhile.
    effort
        ``"quick"`` (no LLVM optimisation: fastest to build, slowest to run, for small
        jobs) or ``"optimized"``. Default: :func:`compile_effort` of the number of
        elements in ``data``; a caller that solves many batches with one compiled solver
        should decide from the size of the whole job.
    init
        ``init(data, shared) -> [B, P]`` starting values, computed inside the compiled
        solver (a stable function, like ``fgh``); used instead of ``theta0`` (which then
        only gives the shape and dtype) when ``use_init`` is true. Non-finite starts
        become 0.
    use_init
        Whether to use ``init`` (a traced flag: both settings share one compiled solver).
    n_terms
        Number of terms ``fgh`` returns per problem, if the caller knows it (saves
        tracing ``fgh`` once more to find out).

    Returns
    -------
    :class:`NewtonResult` with per-problem ``status`` codes (see :data:`STATUS`), or
    with ``asynchronous=True`` a function returning it.
    """
    if isinstance(theta0, jax.Array):
        platform = next(iter(theta0.devices())).platform
    else:
        # host arrays go to the jitted solver as they are (it copies them to the device), in
        # the dtype JAX gives them there (float64 only under ``jax.enable_x64``)
        theta0 = np.asarray(theta0)
        theta0 = theta0.astype(jax.dtypes.canonicalize_dtype(theta0.dtype), copy=False)
        platform = _default_platform()
    if theta0.ndim != 2:
        raise ValueError(f"`theta0` must have shape [problems, parameters], got {theta0.shape}.")
    if rel_floor is None:
        rel_floor = float(np.finfo(theta0.dtype).eps ** 0.75)
    dt = np.dtype(theta0.dtype)
    # host-side casts (a device-side cast compiles one small kernel per dtype and shape)
    max_step = np.broadcast_to(np.asarray(max_step, dt), theta0.shape[1:])
    opts = {
        "max_iter": np.asarray(int(max_iter), np.int32),
        "tol": np.asarray(tol, dt),
        "armijo": np.asarray(armijo, dt),
        "min_alpha": np.asarray(min_alpha, dt),
        "rel_floor": np.asarray(rel_floor, dt),
        "slack": np.asarray(slack, dt),
        "stall_steps": np.asarray(int(stall_steps), np.int32),
        "use_init": np.asarray(bool(use_init)),
    }
    if effort is None:
        effort = compile_effort(
            sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(data))
        )
    if effort not in _EFFORTS:
        raise ValueError(f"`effort` must be one of {list(_EFFORTS)}, got {effort!r}.")
    solve = _SOLVERS[effort, platform == "cpu"]
    out = solve(fgh, init, n_terms, theta0, data, shared, max_step, opts)  # not waited for

    def collect() -> NewtonResult:
        theta, f, g, H, n_acc, it, status = out
        return NewtonResult(
            theta=np.asarray(theta),
            value=np.asarray(f),
            grad=np.asarray(g),
            hess=np.asarray(H),
            n_iter=np.asarray(n_acc),
            n_eval=int(it),
            status=np.asarray(status),
        )

    return collect if asynchronous else collect()
