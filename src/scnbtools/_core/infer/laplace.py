"""Laplace-EM for latent Gaussian count models with a low-rank-plus-diagonal prior.

Generic (no model names). Per cell c a latent vector ``x_c ∈ R^G`` has the prior
``MVN(mu, Σ)``, ``Σ = W Wᵀ + diag(d)`` (``W``: G × k), and optionally a scalar offset
``eta_c`` is a latent too, with a Gaussian prior ``N(m_c, s_c²)`` (truncated to
``eta_c ≥ lower`` when ``lower`` is given). The counts see only ``t_gc = x_gc − eta_c``
through an elementwise observation model (``obs.loglik(t, u, params)`` and its first and
negative second derivatives ``obs.grad_hess``), which must be concave in ``t``.

Inner solve (per cell, vmapped). Damped Newton on the log-concave conditional posterior.
The negative Hessian in ``x`` is ``Q = diag(h) + Σ⁻¹``; with ``ω = 1 / (1 + d h)``,

    Q⁻¹ = diag(d ω) + (ω W) K⁻¹ (ω W)ᵀ,   K = I_k + Wᵀ diag(h ω) W,
    log det Q + log det Σ = Σ_g log(1 + d_g h_g) + log det K,

so a step costs O(G k² + k³) and no G × G matrix is ever formed. ``Σ⁻¹ v`` uses Woodbury
with ``M = I_k + Wᵀ diag(1/d) W`` (shared by all cells). A latent ``eta`` borders the
system with the row ``−hᵀ`` and is eliminated by its Schur complement
``σ = Σ h + 1/s² − hᵀ Q⁻¹ h`` (so ``1/σ`` is the Laplace posterior variance of ``eta``).
Each step is followed by a vectorised backtracking search over a few step lengths. Where
the predicted gain (half the squared Newton decrement) is below the round-off of the summed
log density (float32 near the mode, where no comparison of ``f`` can judge a step), the full
Newton step is taken: the quadratic model is then accurate.

Outer loop. The globals (``mu``, ``W``, ``log d`` and the observation parameters, minus any
frozen ones) are updated by optax on the Laplace approximation of the log marginal

    log p(u_c) ≈ Σ_g ℓ_gc(x̂) − ½ (x̂ − mu)ᵀ Σ⁻¹ (x̂ − mu) − ½ [log det Q + log det Σ]
                 (+ the eta prior and −½ log σ when eta is latent)

plus the caller's log prior on the globals. Its exact gradient, the dependence of the mode
on the globals included, is obtained by differentiating one Newton step taken from the
(stop-gradient) mode: ``x̃ = x̂ + P⁻¹ ∇f(x̂)`` has ``∂x̃/∂θ = ∂x̂/∂θ`` at the mode (implicit
function theorem), and the gradient of the first terms in ``x`` vanishes there. Every
outer step warm-starts the cells of its batch from their stored modes; that Newton step is
also their next mode (where it does not lower ``f``; ``inner_steps − 1`` damped iterations
may come first), so one Newton iteration per step serves both the mode and the gradient.
Cell minibatches scale the likelihood by ``N / B``. After the
outer loop, every cell is solved to convergence (Newton decrement ≤ ``tol``), and the
iterations and final gradient norm per cell are returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import cho_solve
from jax.scipy.special import log_ndtr

from ._adam import adam, initial_state
from ._plateau import Plateau, drive_chunks

__all__ = [
    "LaplaceResult",
    "Observation",
    "PriorFactor",
    "cell_objective",
    "factor_scores",
    "gene_cavity_elpd",
    "laplace_log_marginal",
    "newton_direction",
    "prior_factor",
    "run_laplace",
    "sample_latent",
    "sigma_inv",
    "solve_cells",
]

D_FLOOR = 1e-4
_STEPS = (1.0, 0.5, 0.2, 0.05)  # the line search's step lengths (the first is the full step)
#: round-off allowance of the line search, in units of eps × ||terms||₂ (as in ``newton``)
_SLACK = 64.0


class Observation(NamedTuple):
    """Elementwise observation model in ``t = x − eta``.

    ``loglik(t, u, params) -> [G]`` log-pmf; ``grad_hess(t, u, params) -> (g, h)`` with
    ``g = ∂ℓ/∂t`` and ``h = −∂²ℓ/∂t² ≥ 0``; ``loglik_t(t, u, params)``: the log-pmf up to
    terms that do not depend on ``t`` (e.g. ``log u!``), which is all the Newton line
    search needs (the special functions of the constant terms dominate the cost).
    ``params`` is a dict of per-gene arrays.
    """

    loglik: Callable
    grad_hess: Callable
    loglik_t: Callable


class PriorFactor(NamedTuple):
    mu: jax.Array  # [G]
    W: jax.Array  # [G, k]
    d: jax.Array  # [G]
    Wd: jax.Array  # W / d
    Minv: jax.Array  # M⁻¹, M = I + Wᵀ diag(1/d) W (k × k, shared by all cells)


def prior_factor(mu, W, log_d) -> PriorFactor:
    d = jnp.exp(log_d) + D_FLOOR
    Wd = W / d[:, None]
    k = W.shape[1]
    M = jnp.eye(k, dtype=W.dtype) + W.T @ Wd
    # an explicit k × k inverse: under vmap a shared factor's triangular solve is slow
    Minv = cho_solve((jnp.linalg.cholesky(M), True), jnp.eye(k, dtype=W.dtype))
    return PriorFactor(mu, W, d, Wd, Minv)


def sigma_inv(pf: PriorFactor, v):
    """``Σ⁻¹ v`` for one vector ``v`` [G] (Woodbury)."""
    return v / pf.d - pf.Wd @ (pf.Minv @ (pf.Wd.T @ v))


def factor_scores(pf: PriorFactor, x):
    """``E[z | x] = M⁻¹ Wᵀ diag(1/d) (x − mu)`` of the factor model ``x = mu + W z + ε``."""
    return pf.Minv @ (pf.Wd.T @ (x - pf.mu))


def _k_matrix(pf: PriorFactor, a):
    """``K = I + Wᵀ diag(a) W`` for a per-cell vector ``a``, as ``a @ [W_gi W_gj]`` (one
    GEMM over the cells under ``vmap``; a per-cell ``Wᵀ diag(a) W`` is far slower)."""
    k = pf.W.shape[1]
    WW = (pf.W[:, :, None] * pf.W[:, None, :]).reshape(pf.W.shape[0], k * k)
    return jnp.eye(k, dtype=a.dtype) + (a @ WW).reshape(k, k)


def _q_diag(pf: PriorFactor, h):
    """``ω``, ``K⁻¹`` and ``diag(Q⁻¹) = d ω + ω² diag(W K⁻¹ Wᵀ)`` of one cell (``h`` ≥ 0),
    the last as ``K⁻¹ @ [W_gi W_gj]`` (a GEMM over the cells under ``vmap``)."""
    k = pf.W.shape[1]
    omega = 1.0 / (1.0 + pf.d * h)
    Kinv = jnp.linalg.inv(_k_matrix(pf, h * omega))
    WW = (pf.W[:, :, None] * pf.W[:, None, :]).reshape(pf.W.shape[0], k * k)
    return omega, Kinv, pf.d * omega + omega * omega * (WW @ Kinv.reshape(-1))


class _Cell(NamedTuple):
    u: jax.Array  # [G] counts
    eta_loc: jax.Array  # scalar: the fixed eta, or its prior location
    eta_scale: jax.Array  # scalar prior sd (unused when eta is fixed)


@dataclass(frozen=True)
class EtaMode:
    """How the per-cell offset enters: fixed (``latent=False``) or a latent with a prior."""

    latent: bool = False
    lower: float | None = None  # truncation of the latent eta (e.g. 0.0)


def cell_objective(
    x, eta, cell: _Cell, obs_params, pf: PriorFactor, obs: Observation, mode, *, exact=True
):
    """Unnormalised log posterior ``f(x, eta)`` of one cell (``exact=False``: up to terms
    constant in ``x`` and ``eta``)."""
    r = x - pf.mu
    ll = obs.loglik if exact else obs.loglik_t
    f = ll(x - eta, cell.u, obs_params).sum() - 0.5 * r @ sigma_inv(pf, r)
    if mode.latent:
        f = f - 0.5 * jnp.square((eta - cell.eta_loc) / cell.eta_scale)
    return f


class _Dir(NamedTuple):
    dx: jax.Array
    deta: jax.Array
    grad_inf: jax.Array  # max |gradient|
    decrement: jax.Array  # Newton decrement gᵀ P⁻¹ g
    logdet: jax.Array  # log det P + log det Σ (+ the eta block's log σ)
    h: jax.Array
    sigma: jax.Array  # Schur complement of eta (1.0 when eta is fixed)
    sinv_r: jax.Array  # Σ⁻¹ (x − mu)


def newton_direction(x, eta, cell: _Cell, obs_params, pf: PriorFactor, obs: Observation, mode):
    """Newton step ``P⁻¹ ∇f`` at ``(x, eta)`` and the log-determinant of ``P``."""
    t = x - eta
    g_t, h = obs.grad_hess(t, cell.u, obs_params)
    h = jnp.maximum(h, 0.0)
    sinv_r = sigma_inv(pf, x - pf.mu)
    gx = g_t - sinv_r
    omega = 1.0 / (1.0 + pf.d * h)
    LK = jnp.linalg.cholesky(_k_matrix(pf, h * omega))
    logdet = jnp.sum(jnp.log1p(pf.d * h)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(LK)))

    def q_solve(v):  # Q⁻¹ v = d ω v + ω W K⁻¹ Wᵀ (ω v); only vectors are per cell
        return pf.d * omega * v + omega * (pf.W @ cho_solve((LK, True), pf.W.T @ (omega * v)))

    qg = q_solve(gx)
    if mode.latent:
        geta = -g_t.sum() - (eta - cell.eta_loc) / jnp.square(cell.eta_scale)
        qh = q_solve(h)
        sigma = h.sum() + 1.0 / jnp.square(cell.eta_scale) - h @ qh
        sigma = jnp.maximum(sigma, 1e-12)
        deta = (geta + h @ qg) / sigma
        if mode.lower is not None:  # at the bound, a step out of the support is dropped
            at_bound = (eta <= mode.lower) & (deta < 0)
            deta = jnp.where(at_bound, 0.0, deta)
            geta = jnp.where(at_bound, 0.0, geta)
        dx = qg + qh * deta
        grad_inf = jnp.maximum(jnp.max(jnp.abs(gx)), jnp.abs(geta))
        decrement = gx @ dx + geta * deta
        logdet = logdet + jnp.log(sigma)
    else:
        dx, deta, sigma = qg, jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
        grad_inf = jnp.max(jnp.abs(gx))
        decrement = gx @ dx
    return _Dir(dx, deta, grad_inf, decrement, logdet, h, sigma, sinv_r)


def _clip_eta(eta, mode):
    return eta if mode.lower is None else jnp.maximum(eta, mode.lower)


def _newton_iter(x, eta, cell, obs_params, pf, obs, mode):
    """One damped Newton iteration: the best of a few step lengths (never worse than 0)."""
    dr = newton_direction(x, eta, cell, obs_params, pf, obs, mode)
    steps = jnp.asarray(_STEPS, dtype=x.dtype)
    # f along the step, up to constants: the prior's quadratic form is a quadratic in the
    # step length (one Σ⁻¹ product), only the observation term is evaluated per length
    r0 = x - pf.mu
    q0, q1, q2 = r0 @ dr.sinv_r, dr.dx @ dr.sinv_r, dr.dx @ sigma_inv(pf, dr.dx)

    def terms(a):
        e = _clip_eta(eta + a * dr.deta, mode)
        lt = obs.loglik_t(x + a * dr.dx - e, cell.u, obs_params)
        f = -0.5 * (q0 + 2.0 * a * q1 + a * a * q2)
        if mode.latent:
            f = f - 0.5 * jnp.square((e - cell.eta_loc) / cell.eta_scale)
        return lt, f

    def value(a):
        lt, f = terms(a)
        return lt.sum() + f

    lt0, rest0 = terms(jnp.zeros((), x.dtype))
    f0 = lt0.sum() + rest0
    fs = jax.vmap(value)(steps)
    fs = jnp.where(jnp.isfinite(fs), fs, -jnp.inf)
    best = jnp.argmax(fs)
    a = jnp.where(fs[best] >= f0, steps[best], 0.0)
    # Where the predicted gain (half the squared decrement) is below the round-off of the
    # summed f, the comparison cannot judge a step (float32 near the mode); the quadratic
    # model is then accurate, and the full Newton step is taken.
    noise = _roundoff(lt0, rest0)
    trust = (0.5 * dr.decrement <= noise) & jnp.isfinite(fs[0])
    a = jnp.where(trust, steps[0], a)
    return x + a * dr.dx, _clip_eta(eta + a * dr.deta, mode), dr


def laplace_log_marginal(x, eta, cell: _Cell, obs_params, pf, obs, mode, *, exact=True):
    """Laplace approximation of ``log p(u_c)`` at a mode ``(x, eta)`` (``exact=False``: up
    to the observation model's terms that do not depend on ``t``, see :class:`Observation`)."""
    dr = newton_direction(x, eta, cell, obs_params, pf, obs, mode)
    return _laplace_value(x, eta, cell, obs_params, pf, obs, mode, dr, exact=exact)


def _laplace_value(x, eta, cell, obs_params, pf, obs, mode, dr: _Dir, *, exact=True):
    r = x - pf.mu
    ll = obs.loglik if exact else obs.loglik_t
    val = ll(x - eta, cell.u, obs_params).sum() - 0.5 * r @ sigma_inv(pf, r)
    val = val - 0.5 * dr.logdet
    if mode.latent:
        z = (eta - cell.eta_loc) / cell.eta_scale
        val = val - 0.5 * z * z - jnp.log(cell.eta_scale)
        if mode.lower is not None:  # normaliser of the truncated prior
            val = val - log_ndtr((cell.eta_loc - mode.lower) / cell.eta_scale)
    return val


def _roundoff(lt, rest):
    """Round-off of a summed log density ``lt.sum() + rest`` (its per-gene terms ``lt``):
    below it, no comparison of two values can judge a step."""
    return _SLACK * jnp.finfo(lt.dtype).eps * jnp.sqrt(jnp.sum(lt * lt) + rest * rest)


def _laplace_step(x0, eta0, cell, obs_params, pf, obs, mode, *, exact=True):
    """The Laplace value after one differentiable Newton step from the (stop-gradient) mode,
    and the cell's next mode: ``(value, x, eta)``.

    The full Newton step that the value is taken after also moves the stored mode (so an
    outer step needs no Newton iteration of its own), where it does not lower the cell's
    log posterior ``f`` beyond float round-off (else the mode stays: a cell whose full step
    overshoots, far from its mode, waits for the final solve's line search)."""
    x0, eta0 = jax.lax.stop_gradient(x0), jax.lax.stop_gradient(eta0)
    d0 = newton_direction(x0, eta0, cell, obs_params, pf, obs, mode)
    x1, eta1 = x0 + d0.dx, _clip_eta(eta0 + d0.deta, mode)
    d1 = newton_direction(x1, eta1, cell, obs_params, pf, obs, mode)
    value = _laplace_value(x1, eta1, cell, obs_params, pf, obs, mode, d1, exact=exact)
    lt0, rest0 = _objective_terms(x0, eta0, cell, obs_params, pf, obs, mode, d0)
    lt1, rest1 = _objective_terms(x1, eta1, cell, obs_params, pf, obs, mode, d1)
    f0, f1 = jax.lax.stop_gradient((lt0.sum() + rest0, lt1.sum() + rest1))
    ok = jnp.isfinite(f1) & (f1 >= f0 - jax.lax.stop_gradient(_roundoff(lt0, rest0)))
    x1, eta1 = jax.lax.stop_gradient((x1, eta1))
    return value, jnp.where(ok, x1, x0), jnp.where(ok, eta1, eta0)


def _objective_terms(x, eta, cell, obs_params, pf, obs, mode, dr: _Dir):
    """:func:`cell_objective` (``exact=False``) as its per-gene observation terms and the
    rest, with ``Σ⁻¹ (x − mu)`` taken from ``dr`` (a direction at ``(x, eta)``)."""
    lt = obs.loglik_t(x - eta, cell.u, obs_params)
    rest = -0.5 * (x - pf.mu) @ dr.sinv_r
    if mode.latent:
        rest = rest - 0.5 * jnp.square((eta - cell.eta_loc) / cell.eta_scale)
    return lt, rest


def _cell_constants(U, obs: Observation, obs_params) -> jax.Array:
    """Per cell ``Σ_g [loglik − loglik_t]``: the observation terms that do not depend on
    ``t`` (e.g. ``−log u!``; with the NB, ``log Γ(u + r) − log Γ(r) + r log r`` too). Once
    the observation parameters are fixed they are constants, computed once instead of on
    every step (special functions over every entry are a large part of a step's cost)."""
    zero = np.zeros((), U.dtype)
    return jax.jit(
        jax.vmap(
            lambda u: (obs.loglik(zero, u, obs_params) - obs.loglik_t(zero, u, obs_params)).sum()
        )
    )(U)


# ------------------------------------------------------------------------------------------
# whole-data solves


def solve_cells(
    X,
    eta,
    cells: _Cell,
    obs_params,
    pf: PriorFactor,
    obs: Observation,
    mode: EtaMode,
    *,
    max_iter: int = 50,
    tol: float = 1e-5,
):
    """Newton to convergence for a batch of cells (vmapped ``while_loop``).

    Returns ``x``, ``eta``, iterations, max |gradient|, Newton decrement, the Laplace value
    per cell and the Laplace posterior sd of eta (0 when eta is fixed).
    """

    def one(x, e, cell):
        def cond(state):
            _, _, it, dec = state
            return (it < max_iter) & (dec > tol)

        def body(state):
            x, e, it, _ = state
            x, e, dr = _newton_iter(x, e, cell, obs_params, pf, obs, mode)
            return x, e, it + 1, dr.decrement

        x, e, it, _ = jax.lax.while_loop(cond, body, (x, e, 0, jnp.asarray(jnp.inf, x.dtype)))
        dr = newton_direction(x, e, cell, obs_params, pf, obs, mode)
        lap = _laplace_value(x, e, cell, obs_params, pf, obs, mode, dr)
        sd = jnp.where(mode.latent, 1.0 / jnp.sqrt(dr.sigma), 0.0)
        return x, e, it, dr.grad_inf, dr.decrement, lap, sd

    return jax.vmap(one)(X, eta, cells)


def sample_latent(key, x, eta, cell: _Cell, obs_params, pf, obs, mode, n: int):
    """``n`` draws of ``x`` from the Laplace posterior ``N(x̂, Q⁻¹)`` of one cell (eta at its mode).

    ``Q⁻¹ = diag(d ω) + (ω W) K⁻¹ (ω W)ᵀ``: a diagonal draw plus a k-dimensional one.
    """
    t = x - eta
    _, h = obs.grad_hess(t, cell.u, obs_params)
    h = jnp.maximum(h, 0.0)
    omega = 1.0 / (1.0 + pf.d * h)
    LK = jnp.linalg.cholesky(_k_matrix(pf, h * omega))
    k1, k2 = jax.random.split(key)
    e1 = jax.random.normal(k1, (n, x.shape[0]), x.dtype)
    e2 = jax.random.normal(k2, (n, pf.W.shape[1]), x.dtype)
    # K⁻¹ = L⁻ᵀ L⁻¹: the draw L⁻ᵀ e has covariance K⁻¹
    low = jax.scipy.linalg.solve_triangular(LK, e2.T, lower=True, trans="T").T
    return x + jnp.sqrt(pf.d * omega) * e1 + (low @ pf.W.T) * omega


def em_step(
    X,
    E,
    cells: _Cell,
    obs_params,
    mu,
    W,
    log_d,
    obs: Observation,
    mode,
    *,
    update_mu: bool,
    newton_iters: int,
):
    """One Laplace-EM iteration: Newton on every cell, then the closed-form factor-analysis
    M-step for ``mu``, ``W``, ``d`` under the Gaussian ``q_c = N(x̂_c, Q_c⁻¹)``.

    With ``β = M⁻¹ Wᵀ D⁻¹``, ``A = Σ_c E_q[(x_c − mu)(x_c − mu)ᵀ] βᵀ`` and
    ``B = C M⁻¹ + β A``: ``W ← A B⁻¹`` and ``d ← diag(Σ_c E_q[(x − mu)(x − mu)ᵀ] − W Aᵀ) / C``.
    Every per-cell term is a GEMM over cells: ``Q_c⁻¹ βᵀ`` and ``diag Q_c⁻¹`` only need the
    per-cell ``k × k`` matrix ``K_c⁻¹`` (no G × G matrix is formed). Returns the new modes
    and globals. Used as a warm start: its fixed point maximises the expected complete-data
    log-likelihood, close to (not exactly) the Laplace marginal's optimum that Adam polishes.
    """
    C, G = X.shape
    k = W.shape[1]
    pf = prior_factor(mu, W, log_d)

    def newton(xe, _):
        x, e = xe
        x, e, _ = jax.vmap(lambda a, b, c: _newton_iter(a, b, c, obs_params, pf, obs, mode))(
            x, e, cells
        )
        return (x, e), None

    (X, E), _ = jax.lax.scan(newton, (X, E), None, length=newton_iters)
    g_h = jax.vmap(lambda x, e, u: obs.grad_hess(x - e, u, obs_params))
    _, H = g_h(X, E, cells.u)
    omega, Kinv, v = jax.vmap(lambda h: _q_diag(pf, h))(jnp.maximum(H, 0.0))
    mu_new = X.mean(0) if update_mu else mu
    R = X - mu_new
    beta = pf.Minv @ pf.Wd.T  # [k, G]
    # Σ_c Q_c⁻¹ βᵀ = (Σ_c d ω_c) βᵀ + Σ_c ω_c ∘ (W K_c⁻¹ Wᵀ diag(ω_c) βᵀ)
    Wb = (W[:, :, None] * beta.T[:, None, :]).reshape(G, k * k)  # W_gi β_jg
    P = (omega @ Wb).reshape(C, k, k)  # Wᵀ diag(ω_c) βᵀ
    T = jnp.einsum("cij,cjl->cil", Kinv, P).reshape(C, k * k)
    OT = (omega.T @ T).reshape(G, k, k)  # Σ_c ω_cg T_c
    A = (pf.d * omega.sum(0))[:, None] * beta.T + jnp.einsum("gi,gij->gj", W, OT)
    A = A + R.T @ (R @ beta.T)
    Bm = C * pf.Minv + beta @ A
    W_new = jnp.linalg.solve(Bm.T, A.T).T
    diag_s = v.sum(0) + jnp.sum(R * R, 0)
    d_new = jnp.maximum((diag_s - jnp.sum(W_new * A, 1)) / C, 2 * D_FLOOR)
    return X, E, mu_new, W_new, jnp.log(d_new - D_FLOOR)


# ------------------------------------------------------------------------------------------
# outer loop


@dataclass
class LaplaceResult:
    params: dict[str, np.ndarray]  # optimised globals (frozen ones included, unchanged)
    X: np.ndarray  # [C, G] modes
    eta: np.ndarray  # [C]
    eta_sd: np.ndarray  # [C]
    log_marginal: np.ndarray  # [C] Laplace log marginal per cell at the final globals
    iterations: np.ndarray  # [C]
    grad_inf: np.ndarray  # [C]
    decrement: np.ndarray  # [C]
    newton_tol: float
    losses: np.ndarray  # per outer step: −(log marginal per cell + log prior / C)
    lr_trace: np.ndarray
    converged: bool
    diverged: bool
    n_steps: int
    n_compilations: int
    runtime_s: float


def _split(params: dict, names) -> tuple[dict, dict]:
    a = {k: v for k, v in params.items() if k in names}
    b = {k: v for k, v in params.items() if k not in names}
    return a, b


def run_laplace(
    U,
    *,
    obs: Observation,
    init: dict[str, Any],
    X0,
    eta0,
    eta_loc,
    eta_scale,
    mode: EtaMode,
    obs_param_names: tuple[str, ...] = (),
    frozen: tuple[str, ...] = (),
    log_prior: Callable[[dict], jax.Array] | None = None,
    derive: Callable[[dict], dict] | None = None,
    batch_size: int | None = None,
    n_steps: int = 2000,
    learning_rate: float = 0.02,
    inner_steps: int = 1,
    chunk_size: int = 50,
    tol: float = 1e-5,
    patience: int | None = None,
    lr_factor: float = 0.3,
    max_lr_reductions: int = 3,
    min_steps: int | None = None,
    stop_if_futile: bool = True,
    newton_max_iter: int = 50,
    newton_tol: float = 1e-4,
    em_steps: int = 0,
    rng_key=None,
    progress_bar: bool = False,
    desc: str = "Laplace",
) -> LaplaceResult:
    """Fit the globals of a latent Gaussian count model by Laplace-EM.

    ``U`` [C, G] counts (dense, float); ``init``: initial globals, keys ``mu``, ``W``,
    ``log_d``, the observation parameters named in ``obs_param_names`` and any extra
    parameters ``log_prior`` uses (e.g. shrinkage scales). ``frozen``: names kept fixed.
    ``X0`` / ``eta0``: initial per-cell modes; ``eta_loc`` / ``eta_scale``: per-cell fixed
    offsets (``mode.latent=False``) or prior of the latent offsets. ``derive(params)``
    maps the optimised and frozen parameters to the model's (``mu``, ``W``, ``log_d`` and
    the observation parameters), e.g. ``mu`` from a frozen log mean; ``log_prior`` sees the
    derived dict.
    """
    t0 = time.perf_counter()
    U = jnp.asarray(U)
    C = U.shape[0]
    dtype = U.dtype
    B = C if batch_size is None or batch_size >= C else int(batch_size)
    scale = C / B
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    params = {k: jnp.asarray(v, dtype) for k, v in init.items()}
    cells_all = _Cell(U, jnp.asarray(eta_loc, dtype), jnp.asarray(eta_scale, dtype))
    X = jnp.asarray(X0, dtype)
    E = jnp.asarray(eta0, dtype)

    derive_fn = (lambda p: p) if derive is None else derive
    if em_steps > 0:  # closed-form Laplace-EM warm start of mu (if free), W and d
        p0 = derive_fn(params)
        op0 = {k: p0[k] for k in obs_param_names}
        update_mu = "mu" in params and "mu" not in frozen

        # the data are arguments, never closed over: a closed-over array is embedded in the
        # compiled program as a constant (a copy of the counts, and XLA constant-folds it)
        @jax.jit
        def em_run(X, E, mu, W, log_d, cells_all):
            def body(carry, _):
                X, E, mu, W, log_d = carry
                return em_step(
                    X,
                    E,
                    cells_all,
                    op0,
                    mu,
                    W,
                    log_d,
                    obs,
                    mode,
                    update_mu=update_mu,
                    newton_iters=inner_steps,
                ), None

            return jax.lax.scan(body, (X, E, mu, W, log_d), None, length=em_steps)[0]

        X, E, mu_em, W_em, log_d_em = em_run(X, E, p0["mu"], p0["W"], p0["log_d"], cells_all)
        params = {**params, "W": W_em, "log_d": log_d_em}
        if update_mu:
            params["mu"] = mu_em

    def globals_of(p):
        p = derive_fn(p)
        pf = prior_factor(p["mu"], p["W"], p["log_d"])
        return pf, {k: p[k] for k in obs_param_names}

    # with the observation parameters fixed, the t-free terms of the log-pmf are per-cell
    # constants: added from a table instead of evaluated (special functions) on every step
    obs_fixed = all(n in frozen or n not in params for n in obs_param_names)
    if obs_fixed:
        p0 = derive_fn(params)
        const_all = _cell_constants(U, obs, {k: p0[k] for k in obs_param_names})
    else:
        const_all = jnp.zeros(C, dtype)

    def loss_fn(p_opt, p_fixed, xb, eb, cb, const_b):
        p = {**p_fixed, **p_opt}
        pf, op = globals_of(p)
        lap, xn, en = jax.vmap(
            lambda x, e, c: _laplace_step(x, e, c, op, pf, obs, mode, exact=not obs_fixed)
        )(xb, eb, cb)
        lp = 0.0 if log_prior is None else log_prior(derive_fn(p))
        return -(scale * (lap.sum() + const_b.sum()) + lp) / C, (xn, en)

    opt_p, fixed_p = _split(params, [k for k in params if k not in frozen])
    opt = adam(learning_rate)
    opt_state = initial_state(opt_p, learning_rate)
    chunk = int(min(chunk_size, n_steps))
    traces = [0]

    def _chunk(p_opt, s, X, E, key, n_active, p_fixed, cells_all, const_all):
        traces[0] += 1

        def body(carry, i):
            p_opt, s, X, E, k = carry
            k, kb = jax.random.split(k)
            idx = jnp.arange(C) if B == C else jax.random.choice(kb, C, (B,), replace=False)
            cb = jax.tree_util.tree_map(lambda a: a[idx], cells_all)
            pf, op = globals_of({**p_fixed, **p_opt})
            pf, op = jax.lax.stop_gradient((pf, op))

            def inner(xe, _):
                x, e = xe
                x, e, _ = jax.vmap(lambda xx, ee, cc: _newton_iter(xx, ee, cc, op, pf, obs, mode))(
                    x, e, cb
                )
                return (x, e), None

            # inner_steps − 1 damped iterations; the loss's Newton step is the last one
            (xb, eb), _ = jax.lax.scan(inner, (X[idx], E[idx]), None, length=inner_steps - 1)
            (loss, (xb, eb)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                p_opt, p_fixed, xb, eb, cb, const_all[idx]
            )
            upd, s_new = opt.update(grads, s, p_opt)
            p_new = optax.apply_updates(p_opt, upd)
            active = i < n_active
            keep = lambda a, b: jnp.where(active, a, b)  # noqa: E731
            X = X.at[idx].set(jnp.where(active, xb, X[idx]))
            E = E.at[idx].set(jnp.where(active, eb, E[idx]))
            return (
                jax.tree_util.tree_map(keep, p_new, p_opt),
                jax.tree_util.tree_map(keep, s_new, s),
                X,
                E,
                k,
            ), loss

        (p_opt, s, X, E, key), losses = jax.lax.scan(body, (p_opt, s, X, E, key), jnp.arange(chunk))
        return p_opt, s, X, E, key, losses

    run_chunk = jax.jit(_chunk, donate_argnums=(2, 3))
    plateau = Plateau(
        learning_rate,
        tol=tol,
        # full-batch chunk means are exact: one chunk without a relative gain of ``tol`` on
        # the best one is a plateau (and, after a reduction, shows it futile); minibatch
        # means are noisy and get 3 chunks, and at least 200 steps before a first reduction
        patience=(1 if B == C else 3) if patience is None else patience,
        lr_factor=lr_factor,
        max_lr_reductions=max_lr_reductions,
        min_steps=(100 if B == C else 200) if min_steps is None else min_steps,
        stop_if_futile=stop_if_futile,
        noise_aware=B < C,
    )

    def step(state, n_active):
        opt_p, opt_state, X, E, key = state
        opt_p, opt_state, X, E, key, cl = run_chunk(
            opt_p, opt_state, X, E, key, n_active, fixed_p, cells_all, const_all
        )
        return (opt_p, opt_state, X, E, key), cl

    run = drive_chunks(
        step,
        (opt_p, opt_state, X, E, rng_key),
        n_steps=n_steps,
        chunk=chunk,
        plateau=plateau,
        opt_state_of=lambda state: state[1],
        progress_bar=progress_bar,
        desc=desc,
    )
    opt_p, opt_state, X, E, _ = run.state
    diverged = run.diverged
    # one small program, not an eager kernel per operation
    pf, op, params = jax.jit(lambda p: (*globals_of(p), {**p, **derive_fn(p)}))(
        {**fixed_p, **opt_p}
    )
    out = _final_solve(X, E, cells_all, op, pf, obs, mode, newton_max_iter, newton_tol, B)
    np_params = {k: np.asarray(v) for k, v in params.items()}
    finite = all(np.all(np.isfinite(v)) for v in np_params.values())
    finite = finite and np.all(np.isfinite(out[0])) and np.all(np.isfinite(out[5]))
    diverged = diverged or not finite
    return LaplaceResult(
        params=np_params,
        X=out[0],
        eta=out[1],
        iterations=out[2],
        grad_inf=out[3],
        decrement=out[4],
        log_marginal=out[5],
        eta_sd=out[6],
        newton_tol=newton_tol,
        losses=run.losses,
        lr_trace=run.lr_trace,
        converged=run.converged and not diverged,
        diverged=diverged,
        n_steps=run.n_steps,
        n_compilations=traces[0],
        runtime_s=time.perf_counter() - t0,
    )


def _final_solve(X, E, cells, op, pf, obs, mode, max_iter, tol, batch):
    """Solve every cell to convergence, ``batch`` cells at a time (one compilation)."""
    C = X.shape[0]
    fn = jax.jit(
        lambda x, e, c, op, pf: solve_cells(x, e, c, op, pf, obs, mode, max_iter=max_iter, tol=tol)
    )
    # batches are gathered on the host (eager indexing compiles a kernel per shape)
    X, E, cells = jax.tree_util.tree_map(np.asarray, (X, E, cells))
    outs = []
    for s in range(0, C, batch):
        idx = np.arange(s, min(s + batch, C))
        pad = batch - len(idx)
        idx_p = np.concatenate([idx, np.full(pad, idx[-1])]) if pad else idx
        cb = jax.tree_util.tree_map(lambda a, i=idx_p: a[i], cells)
        res = fn(X[idx_p], E[idx_p], cb, op, pf)
        outs.append([np.asarray(r)[: len(idx)] for r in res])
    return [np.concatenate([o[i] for o in outs]) for i in range(7)]


def gene_cavity_elpd(U, X, eta, params: dict, obs: Observation, *, n_nodes: int = 20):
    """Per-gene expected log predictive density of each count given the cell's other genes.

    For every cell and gene, the Laplace posterior ``N(x̂_c, Q_c⁻¹)`` is divided by the
    gene's own likelihood site (its second-order expansion at the mode) to give the
    cavity ``N(m_gc, 1/τ_gc)``, the distribution of ``x_gc`` given the cell's other genes;
    ``log p(u_gc | u_c,−g) = log ∫ p(u_gc | x) N(x; m, 1/τ) dx`` by Gauss–Hermite on the
    posterior marginal (the integrand divided by it is smooth). Returns
    ``(elpd_i, lppd_i)`` per gene, summed over cells; ``lppd_i`` is the in-sample
    ``Σ_c log p(u_gc | x̂_gc)``. Globals are at their estimates, offsets at their modes.
    """
    U = jnp.asarray(U)
    C, G = U.shape
    dtype = U.dtype
    pf = prior_factor(*(jnp.asarray(params[k], dtype) for k in ("mu", "W", "log_d")))
    op = {k: jnp.asarray(v, dtype) for k, v in params.items() if k == "log_r"}
    z, w = np.polynomial.hermite.hermgauss(n_nodes)
    z = jnp.asarray(z, dtype)
    logw = jnp.asarray(np.log(w) - 0.5 * np.log(np.pi), dtype)

    def one(u, x, e):
        g_t, h = obs.grad_hess(x - e, u, op)
        h = jnp.maximum(h, 0.0)
        _, _, v = _q_diag(pf, h)  # diag of Q⁻¹
        tau = jnp.maximum(1.0 / v - h, 1e-8)
        m = x - g_t / tau
        nodes = x[:, None] + jnp.sqrt(2.0 * v)[:, None] * z[None, :]  # [G, n]
        ll = obs.loglik(nodes - e, u[:, None], {n_: a[:, None] for n_, a in op.items()})
        log_cav = -0.5 * tau[:, None] * jnp.square(nodes - m[:, None]) + 0.5 * jnp.log(tau)[:, None]
        log_post = -0.5 * jnp.square(nodes - x[:, None]) / v[:, None] - 0.5 * jnp.log(v)[:, None]
        elpd = jax.scipy.special.logsumexp(logw + ll + log_cav - log_post, axis=1)
        return elpd, obs.loglik(x - e, u, op)

    b = int(max(1, min(C, 2**22 // max(1, G * n_nodes))))
    n_chunks = -(-C // b)
    pad = n_chunks * b - C
    X = jnp.asarray(X, dtype)
    eta = jnp.asarray(eta, dtype)

    def padded(a):
        return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a

    Up, Xp, Ep = (padded(a).reshape(n_chunks, b, *a.shape[1:]) for a in (U, X, eta))
    valid = (jnp.arange(n_chunks * b) < C).reshape(n_chunks, b).astype(dtype)

    def body(acc, chunk):
        u, x, e, val = chunk
        el, lp = jax.vmap(one)(u, x, e)
        return (acc[0] + val @ el, acc[1] + val @ lp), None

    run = jax.jit(lambda xs: jax.lax.scan(body, (jnp.zeros(G, dtype),) * 2, xs)[0])
    elpd, lppd = run((Up, Xp, Ep, valid))
    return np.asarray(elpd, np.float64), np.asarray(lppd, np.float64)
