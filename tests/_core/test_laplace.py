"""Laplace-EM engine (``_core/infer/laplace.py``) against dense references and quadrature.

Everything here runs in float64 (``jax.enable_x64``) so that the comparisons are tight;
the reference is always an independent dense computation (``jax.hessian``,
``numpy.linalg``) or numerical integration (``scipy.integrate``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from scnbtools._core.infer import laplace as L
from scnbtools._core.models.lognormal import nb_mean_obs, poisson_obs

OBS = {"poisson": (poisson_obs, False), "nb": (nb_mean_obs, True)}
MODES = {
    "fixed": L.EtaMode(False),
    "latent": L.EtaMode(True, None),
    "latent_truncated": L.EtaMode(True, 0.0),
}


def _problem(G=7, k=2, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(1.0, 0.5, G)
    W = rng.normal(0.0, 0.5, (G, k))
    log_d = np.log(rng.uniform(0.1, 0.5, G))
    u = rng.poisson(np.exp(mu)).astype(float)
    log_r = np.log(rng.uniform(0.5, 5.0, G))
    return mu, W, log_d, u, log_r


def _sigma(W, log_d):
    return W @ W.T + np.diag(np.exp(log_d) + L.D_FLOOR)


@pytest.mark.parametrize("obs_name", list(OBS))
@pytest.mark.parametrize("mode_name", list(MODES))
def test_newton_direction_and_logdet_match_dense(obs_name, mode_name):
    """The Woodbury / Schur step and log-determinant equal the dense Hessian's."""
    obs, has_r = OBS[obs_name]
    mode = MODES[mode_name]
    with jax.enable_x64(True):
        mu, W, log_d, u, log_r = _problem()
        G = mu.size
        op = {"log_r": jnp.asarray(log_r)} if has_r else {}
        pf = L.prior_factor(jnp.asarray(mu), jnp.asarray(W), jnp.asarray(log_d))
        cell = L._Cell(jnp.asarray(u), jnp.asarray(0.3), jnp.asarray(0.5))
        x = jnp.asarray(mu + 0.2)
        eta = jnp.asarray(0.5)

        def f(z):
            e = z[G] if mode.latent else eta
            return L.cell_objective(z[:G], e, cell, op, pf, obs, mode)

        z = jnp.concatenate([x, eta[None]]) if mode.latent else x
        H = np.asarray(jax.hessian(f)(z))
        g = np.asarray(jax.grad(f)(z))
        ref = np.linalg.solve(-H, g)
        dr = L.newton_direction(x, eta, cell, op, pf, obs, mode)
        got = np.concatenate([dr.dx, [dr.deta]]) if mode.latent else np.asarray(dr.dx)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
        # logdet returned = log det(-H) + log det Σ
        ld = np.linalg.slogdet(-H)[1] + np.linalg.slogdet(_sigma(W, log_d))[1]
        np.testing.assert_allclose(float(dr.logdet), ld, rtol=1e-10)
        np.testing.assert_allclose(float(dr.decrement), g @ ref, rtol=1e-9)


def test_sigma_inverse_and_factor_scores_match_dense():
    with jax.enable_x64(True):
        mu, W, log_d, _u, _ = _problem(G=9, k=3, seed=1)
        pf = L.prior_factor(jnp.asarray(mu), jnp.asarray(W), jnp.asarray(log_d))
        S = _sigma(W, log_d)
        v = np.random.default_rng(2).normal(size=mu.size)
        np.testing.assert_allclose(
            np.asarray(L.sigma_inv(pf, jnp.asarray(v))), np.linalg.solve(S, v), rtol=1e-10
        )
        # E[z | x] of x = mu + W z + e, z ~ N(0, I): Wᵀ Σ⁻¹ (x - mu)
        x = mu + v
        np.testing.assert_allclose(
            np.asarray(L.factor_scores(pf, jnp.asarray(x))),
            W.T @ np.linalg.solve(S, x - mu),
            rtol=1e-9,
        )


def _log_integral(logdens, outer, inner, n=1501):
    """log of the 2-D integral of exp(logdens(inner, outer)) by the midpoint rule on a fine
    grid (the integrands are smooth and negligible at the box edges: error ≪ 1e-4)."""
    a = np.linspace(*outer, n)
    b = np.linspace(*inner, n)
    A, Bg = np.meshgrid(a, b, indexing="ij")
    return float(logsumexp(logdens(Bg, A)) + np.log((a[1] - a[0]) * (b[1] - b[0])))


@pytest.mark.parametrize("u", [(10.0, 3.0), (30.0, 8.0), (0.0, 1.0)])
def test_laplace_log_marginal_against_quadrature(u):
    """Two genes, Poisson: the Laplace value is within 0.01 nats of the integral.

    The tolerance is the Laplace approximation's own error, not numerical noise: with
    these log-normal priors it is 0.0002–0.004 nats (largest for the low counts).
    """
    with jax.enable_x64(True):
        mu = np.array([2.0, 1.0])
        W = np.array([[0.4], [0.3]])
        log_d = np.log([0.1, 0.2])
        S = _sigma(W, log_d)
        pf = L.prior_factor(jnp.asarray(mu), jnp.asarray(W), jnp.asarray(log_d))
        cells = L._Cell(jnp.asarray([u]), jnp.zeros(1), jnp.ones(1))
        out = L.solve_cells(
            jnp.asarray(mu)[None], jnp.zeros(1), cells, {}, pf, poisson_obs, L.EtaMode(False)
        )
        lap = float(out[5][0])
        assert int(out[2][0]) >= 1 and float(out[4][0]) <= 1e-5

        def dens(b, a):  # log density on a grid
            ll = stats.poisson.logpmf(u[0], np.exp(a)) + stats.poisson.logpmf(u[1], np.exp(b))
            pts = np.stack([a, b], -1)
            return ll + stats.multivariate_normal.logpdf(pts, mu, S)

        assert abs(lap - _log_integral(dens, (-3, 7), (-3, 7))) < 0.01


def test_laplace_log_marginal_latent_eta_against_quadrature():
    """One gene with a latent offset: 2-D integral over (x, eta)."""
    with jax.enable_x64(True):
        mu, w, d, m, s, u = 1.5, 0.5, 0.2, 0.3, 0.4, 6.0
        log_d = np.log([d - L.D_FLOOR])
        pf = L.prior_factor(jnp.asarray([mu]), jnp.asarray([[w]]), jnp.asarray(log_d))
        mode = L.EtaMode(True, None)
        cells = L._Cell(jnp.asarray([[u]]), jnp.asarray([m]), jnp.asarray([s]))
        out = L.solve_cells(jnp.asarray([[mu]]), jnp.asarray([m]), cells, {}, pf, poisson_obs, mode)
        lap = float(out[5][0])
        var = w * w + d

        def dens(e, x):  # log density on a grid
            return (
                stats.poisson.logpmf(u, np.exp(x - e))
                + stats.norm.logpdf(x, mu, np.sqrt(var))
                + stats.norm.logpdf(e, m, s)
            )

        assert abs(lap - _log_integral(dens, (-4, 7), (-3, 4))) < 0.01
        # the Laplace sd of eta equals the dense Hessian's marginal
        assert 0 < float(out[6][0]) < s


def test_one_step_gradient_is_the_implicit_gradient():
    """d/dθ of the Laplace value (mode re-solved) equals the one-Newton-step gradient."""
    with jax.enable_x64(True):
        mu0, W, log_d, u, log_r = _problem(G=5, k=2, seed=3)
        op = {"log_r": jnp.asarray(log_r)}
        mode = L.EtaMode(True, None)
        cells = L._Cell(jnp.asarray(u)[None], jnp.asarray([0.2]), jnp.asarray([0.5]))

        @jax.jit
        def solved(theta):
            pf = L.prior_factor(theta[:5], jnp.asarray(W), theta[5:])
            out = L.solve_cells(
                theta[None, :5],
                jnp.asarray([0.2]),
                cells,
                op,
                pf,
                nb_mean_obs,
                mode,
                tol=1e-20,
                max_iter=100,
            )
            return out

        theta = jnp.concatenate([jnp.asarray(mu0), jnp.asarray(log_d)])
        x_hat, e_hat = solved(theta)[0][0], solved(theta)[1][0]
        cell = jax.tree_util.tree_map(lambda a: a[0], cells)

        def one_step(theta):
            pf = L.prior_factor(theta[:5], jnp.asarray(W), theta[5:])
            return L._laplace_step(x_hat, e_hat, cell, op, pf, nb_mean_obs, mode)[0]

        grad = np.asarray(jax.grad(one_step)(theta))
        eps = 1e-4
        fd = [
            (float(solved(theta.at[i].add(eps))[5][0]) - float(solved(theta.at[i].add(-eps))[5][0]))
            / (2 * eps)
            for i in range(theta.size)
        ]
        np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6)

        # and it differs from the gradient that ignores the mode's dependence on θ
        def frozen_mode(theta):
            pf = L.prior_factor(theta[:5], jnp.asarray(W), theta[5:])
            return L.laplace_log_marginal(x_hat, e_hat, cell, op, pf, nb_mean_obs, mode)

        naive = np.asarray(jax.grad(frozen_mode)(theta))
        assert np.max(np.abs(naive - np.asarray(fd))) > 1e-3


def test_sample_latent_has_the_laplace_covariance():
    with jax.enable_x64(True):
        mu, W, log_d, u, _ = _problem(G=6, k=2, seed=4)
        pf = L.prior_factor(jnp.asarray(mu), jnp.asarray(W), jnp.asarray(log_d))
        mode = L.EtaMode(False)
        cell = L._Cell(jnp.asarray(u), jnp.asarray(0.0), jnp.asarray(1.0))
        x = jnp.asarray(mu)
        draws = np.asarray(
            L.sample_latent(
                jax.random.PRNGKey(0), x, jnp.asarray(0.0), cell, {}, pf, poisson_obs, mode, 40000
            )
        )
        H = np.asarray(
            jax.hessian(lambda z: L.cell_objective(z, 0.0, cell, {}, pf, poisson_obs, mode))(x)
        )
        cov = np.linalg.inv(-H)
        np.testing.assert_allclose(
            draws.mean(0), mu, atol=4 * np.sqrt(np.diag(cov).max() / 40000) + 1e-3
        )
        np.testing.assert_allclose(np.cov(draws, rowvar=False), cov, atol=0.05 * np.abs(cov).max())


def _pln_data(C=300, G=12, k=2, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(1.0, 0.5, G)
    W = rng.normal(0, 0.5, (G, k))
    d = rng.uniform(0.05, 0.2, G)
    x = mu + rng.normal(size=(C, k)) @ W.T + rng.normal(size=(C, G)) * np.sqrt(d)
    U = rng.poisson(np.exp(x)).astype(np.float32)
    return U, mu, W, d


def test_run_laplace_compiles_once_and_improves_the_objective():
    U, _mu, _W, _d = _pln_data()
    C, G = U.shape
    init = {
        "mu": np.log(U + 0.5).mean(0).astype(np.float32),
        "W": np.full((G, 2), 0.1, np.float32),
        "log_d": np.zeros(G, np.float32),
    }
    res = L.run_laplace(
        U, obs=poisson_obs, init=init, X0=np.log(U + 0.5), eta0=np.zeros(C, np.float32),
        eta_loc=np.zeros(C, np.float32), eta_scale=np.ones(C, np.float32), mode=L.EtaMode(False),
        n_steps=230, chunk_size=50, batch_size=100, min_steps=10**6,
    )  # fmt: skip
    assert res.n_steps == 230 and res.n_compilations == 1  # the partial last chunk reuses it
    assert res.losses[-20:].mean() < res.losses[:20].mean() - 1.0
    assert np.all(np.isfinite(res.log_marginal)) and res.X.shape == (C, G)
    assert np.all(res.decrement <= res.newton_tol)


def _init_at(mu, W, d):
    """``run_laplace`` globals (float32) at the given ``mu``, ``W``, ``d``."""
    return {
        "mu": mu.astype(np.float32),
        "W": W.astype(np.float32),
        "log_d": np.log(d).astype(np.float32),
    }


def test_run_laplace_frozen_parameters_do_not_move():
    U, mu, W, d = _pln_data(seed=1)
    C, _G = U.shape
    init = _init_at(mu, W, d)
    res = L.run_laplace(
        U, obs=poisson_obs, init=init, X0=np.log(U + 0.5), eta0=np.zeros(C, np.float32),
        eta_loc=np.zeros(C, np.float32), eta_scale=np.ones(C, np.float32), mode=L.EtaMode(False),
        frozen=("mu",), n_steps=100, chunk_size=50,
    )  # fmt: skip
    np.testing.assert_array_equal(res.params["mu"], init["mu"])
    assert not np.allclose(res.params["W"], init["W"])


@pytest.mark.parametrize("frozen_r", [True, False])
def test_run_laplace_constant_terms_from_a_table_give_the_exact_loss(frozen_r):
    """With the observation parameters fixed, the loss adds each cell's t-free log-pmf terms
    from a table computed once; the losses and the fit equal those of an observation model
    whose ``loglik_t`` is the full log-pmf (so nothing is left to a table). With a free
    ``r`` the table is not used and the two runs are identical too."""
    U, mu, W, d = _pln_data(seed=2)
    C, G = U.shape
    init = {**_init_at(mu, W, d), "log_r": np.full(G, np.log(5.0), np.float32)}
    kw = dict(
        init=init, X0=np.log(U + 0.5), eta0=np.zeros(C, np.float32),
        eta_loc=np.zeros(C, np.float32), eta_scale=np.ones(C, np.float32),
        mode=L.EtaMode(False), obs_param_names=("log_r",),
        frozen=("log_r",) if frozen_r else (), n_steps=60, chunk_size=30, batch_size=100,
        min_steps=10**6,
    )  # fmt: skip
    full = nb_mean_obs._replace(loglik_t=nb_mean_obs.loglik)
    a = L.run_laplace(U, obs=nb_mean_obs, **kw)
    b = L.run_laplace(U, obs=full, **kw)
    np.testing.assert_allclose(a.losses, b.losses, rtol=2e-5)
    np.testing.assert_allclose(a.params["W"], b.params["W"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(a.params["log_r"], b.params["log_r"], rtol=1e-3, atol=1e-4)
    assert frozen_r == np.array_equal(a.params["log_r"], init["log_r"])
    np.testing.assert_allclose(a.log_marginal, b.log_marginal, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("obs_name", list(OBS))
def test_observation_models_against_scipy(obs_name):
    """log-pmf against scipy (incl. zeros, large counts, r → 0 and r → ∞), derivatives
    against autodiff, and ``loglik_t`` equal to ``loglik`` up to a constant in ``t``."""
    obs, has_r = OBS[obs_name]
    with jax.enable_x64(True):
        u = np.array([0.0, 1.0, 3.0, 10.0, 250.0, 1e5, 0.0, 7.0])
        t = np.array([-2.0, 0.0, 1.2, 2.0, 5.5, 11.0, 3.0, -4.0])
        log_r = np.log([0.01, 0.5, 2.0, 10.0, 1e3, 1e6, 0.1, 30.0])
        p = {"log_r": jnp.asarray(log_r)} if has_r else {}
        got = np.asarray(obs.loglik(jnp.asarray(t), jnp.asarray(u), p))
        if has_r:
            r = np.exp(log_r)
            ref = stats.nbinom.logpmf(u, r, r / (r + np.exp(t)))
        else:
            ref = stats.poisson.logpmf(u, np.exp(t))
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)

        def one(tt, uu, lr):
            q = {"log_r": lr} if has_r else {}
            return obs.loglik(tt, uu, q)

        g_ad = jax.vmap(jax.grad(one))(jnp.asarray(t), jnp.asarray(u), jnp.asarray(log_r))
        h_ad = jax.vmap(jax.grad(jax.grad(one)))(jnp.asarray(t), jnp.asarray(u), jnp.asarray(log_r))
        g, h = obs.grad_hess(jnp.asarray(t), jnp.asarray(u), p)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ad), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(h), -np.asarray(h_ad), rtol=1e-7, atol=1e-8)
        diff = got - np.asarray(obs.loglik_t(jnp.asarray(t), jnp.asarray(u), p))
        diff2 = np.asarray(obs.loglik(jnp.asarray(t + 0.9), jnp.asarray(u), p)) - np.asarray(
            obs.loglik_t(jnp.asarray(t + 0.9), jnp.asarray(u), p)
        )
        np.testing.assert_allclose(diff, diff2, rtol=1e-9, atol=1e-6)


def test_em_step_is_the_dense_factor_analysis_m_step():
    """The GEMM-form M-step equals the dense update with S_c = Q_c⁻¹ formed explicitly."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        C, G, k = 40, 6, 2
        mu = rng.normal(1, 0.3, G)
        W = rng.normal(0, 0.4, (G, k))
        log_d = np.log(rng.uniform(0.1, 0.3, G))
        U = rng.poisson(np.exp(mu), (C, G)).astype(float)
        cells = L._Cell(jnp.asarray(U), jnp.zeros(C), jnp.ones(C))
        out = L.em_step(
            jnp.log(jnp.asarray(U) + 0.5), jnp.zeros(C), cells, {}, jnp.asarray(mu),
            jnp.asarray(W), jnp.asarray(log_d), poisson_obs, L.EtaMode(False),
            update_mu=True, newton_iters=30,
        )  # fmt: skip
        X = np.asarray(out[0])
        d = np.exp(log_d) + L.D_FLOOR
        Sig = W @ W.T + np.diag(d)
        S_sum = sum(np.linalg.inv(np.diag(np.exp(x)) + np.linalg.inv(Sig)) for x in X)
        m = X.mean(0)
        Sbar = (S_sum + (X - m).T @ (X - m)) / C
        beta = W.T @ np.linalg.inv(Sig)
        Minv = np.linalg.inv(np.eye(k) + W.T @ np.diag(1 / d) @ W)
        W_ref = Sbar @ beta.T @ np.linalg.inv(Minv + beta @ Sbar @ beta.T)
        d_ref = np.diag(Sbar - W_ref @ beta @ Sbar)
        np.testing.assert_allclose(np.asarray(out[2]), m, atol=1e-12)
        np.testing.assert_allclose(np.asarray(out[3]), W_ref, atol=1e-10)
        np.testing.assert_allclose(np.exp(np.asarray(out[4])) + L.D_FLOOR, d_ref, atol=1e-10)


def test_float32_newton_converges_where_the_line_search_cannot_judge(monkeypatch):
    """Float32, 500 genes: near the mode a step's gain (≲ 1e-4 nats) can fall below the
    round-off of the summed log density, so the line search cannot see it. The full
    Newton step is then taken (the quadratic model is exact there), and every cell reaches
    the decrement tolerance; comparing f alone leaves some cells stuck above it."""
    mode = MODES["fixed"]
    rng = np.random.default_rng(5)
    G, k, C = 500, 5, 256
    mu = rng.normal(1.0, 1.0, G)
    W = rng.normal(0.0, 0.3, (G, k))
    d = np.full(G, 0.05)
    x = mu + rng.normal(size=(C, k)) @ W.T + rng.normal(size=(C, G)) * np.sqrt(d)
    U = jnp.asarray(rng.poisson(np.exp(x)), jnp.float32)
    pf = L.prior_factor(*(jnp.asarray(a, jnp.float32) for a in (mu, W, np.log(d))))
    cells = L._Cell(U, jnp.zeros(C, jnp.float32), jnp.full(C, 0.3, jnp.float32))
    X0 = jnp.log(U + 1.0)

    def solve():
        out = L.solve_cells(X0, jnp.zeros(C, jnp.float32), cells, {}, pf, poisson_obs, mode,
                            max_iter=30, tol=1e-4)  # fmt: skip
        return np.asarray(out[2]), np.asarray(out[4])  # iterations, decrement

    it, dec = solve()
    assert np.all(dec <= 1e-4) and it.max() < 30
    monkeypatch.setattr(L, "_SLACK", 0.0)  # f comparisons only
    it_f, dec_f = solve()
    assert np.sum(it_f == 30) > 0 and np.sum(dec_f > 1e-4) > 0


@pytest.mark.parametrize("mode_name", ["fixed", "latent"])
def test_outer_step_moves_the_mode_by_its_newton_step_unless_it_overshoots(mode_name):
    """The outer step's differentiable Newton step is the cell's next mode: near the mode it
    is the full Newton step (closer to the converged mode), the value is the one-step
    Laplace value; a full step that lowers the log posterior (here to -inf: exp overflows)
    leaves the mode where it was."""
    mode = MODES[mode_name]
    with jax.enable_x64(True):
        mu, W, log_d, u, _ = _problem(seed=5)
        pf = L.prior_factor(jnp.asarray(mu), jnp.asarray(W), jnp.asarray(log_d))
        cell = L._Cell(jnp.asarray(u), jnp.asarray(0.2), jnp.asarray(0.5))
        cells = jax.tree_util.tree_map(lambda a: a[None], cell)
        solved = L.solve_cells(
            jnp.asarray(mu)[None], jnp.asarray([0.2]), cells, {}, pf, poisson_obs, mode, tol=1e-20
        )
        x_hat, e_hat = solved[0][0], solved[1][0]
        # (a fixed eta stays where it is: the mode is that of this eta)
        x0, e0 = x_hat + 0.05, e_hat - (0.03 if mode.latent else 0.0)
        value, x1, e1 = L._laplace_step(x0, e0, cell, {}, pf, poisson_obs, mode)
        d0 = L.newton_direction(x0, e0, cell, {}, pf, poisson_obs, mode)
        np.testing.assert_allclose(np.asarray(x1), np.asarray(x0 + d0.dx), rtol=1e-12)
        np.testing.assert_allclose(float(e1), float(e0 + d0.deta), rtol=1e-12)
        assert np.max(np.abs(np.asarray(x1 - x_hat))) < 0.1 * np.max(np.abs(np.asarray(x0 - x_hat)))
        # the value is the Laplace log marginal at the full step (not at x0)
        at_step = L.laplace_log_marginal(x0 + d0.dx, e0 + d0.deta, cell, {}, pf, poisson_obs, mode)
        np.testing.assert_allclose(float(value), float(at_step), rtol=1e-12)
        at_x0 = L.laplace_log_marginal(x0, e0, cell, {}, pf, poisson_obs, mode)
        assert abs(float(at_x0) - float(at_step)) > 1e-6
        # far from the mode: a large count seen at a tiny rate; the full step overshoots
        big = L._Cell(cell.u.at[0].set(5000.0), cell.eta_loc, cell.eta_scale)
        xf = x_hat.at[0].set(-8.0)
        d = L.newton_direction(xf, e_hat, big, {}, pf, poisson_obs, mode)
        f0 = L.cell_objective(xf, e_hat, big, {}, pf, poisson_obs, mode)
        f1 = L.cell_objective(
            xf + d.dx, L._clip_eta(e_hat + d.deta, mode), big, {}, pf, poisson_obs, mode
        )
        assert not f1 >= f0  # the premise: the full step does not improve
        _, x_kept, e_kept = L._laplace_step(xf, e_hat, big, {}, pf, poisson_obs, mode)
        np.testing.assert_array_equal(np.asarray(x_kept), np.asarray(xf))
        assert float(e_kept) == float(e_hat)
