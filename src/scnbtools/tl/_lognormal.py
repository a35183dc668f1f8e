"""AnnData front end of the log-normal family: ``tl.fit_pln`` and ``tl.fit_nbln``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from anndata import AnnData

from .._core.infer.laplace import EtaMode, run_laplace
from .._core.models import get_model
from .._design import _plain
from .._logging import logger
from .._validate import (
    check_adata,
    check_bool,
    check_key,
    check_positive_float,
    check_positive_int,
    counts_from,
    resolve_progress,
    resolve_rng,
)
from .._version import __version__
from ._ln_options import (
    LOG_R_PRIOR,
    Cascade,
    cascade_from,
    check_priors,
    resolve_eta,
    resolve_freeze,
    resolve_loadings,
)
from ._ln_write import write_lognormal

__all__ = ["fit_nbln", "fit_pln"]

#: dense entries per outer step above which ``batch_size="auto"`` uses cell minibatches
_STEP_ENTRIES = 2**22
#: the EM warm start works on all cells at once: skipped above this many count entries
_EM_ENTRIES = 2**25
#: cells used to initialise the covariance
_INIT_CELLS = 2000
_NEG_SHAPE = 0.5


def _batch(batch_size, n_cells: int, n_genes: int) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(f"`batch_size` must be 'auto', None or an int, got {batch_size!r}.")
        if n_cells * n_genes <= _STEP_ENTRIES:
            return None
        return int(max(128, min(n_cells, _STEP_ENTRIES // n_genes)))
    b = check_positive_int(batch_size, "batch_size")
    return None if b >= n_cells else b


def _init_globals(Y: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """``mu``, ``W``, ``log d`` from the covariance of ``log(u + 1) + eta`` (≤ 2,000 cells):
    the top-``k`` eigenvectors, probabilistic-PCA style."""
    rng = np.random.default_rng(seed)
    C, G = Y.shape
    mu = Y.mean(0)
    sub = Y if C <= _INIT_CELLS else Y[rng.choice(C, _INIT_CELLS, replace=False)]
    S = np.cov(sub, rowvar=False).reshape(G, G)
    vals, vecs = np.linalg.eigh(S)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    noise = float(np.mean(vals[k:])) if G > k else 0.0
    W = vecs[:, :k] * np.sqrt(np.maximum(vals[:k] - noise, 1e-3))
    d = np.maximum(np.diag(S) - (W**2).sum(1), 0.05)
    return {"mu": mu, "W": W, "log_d": np.log(d)}


def _loadings_log_prior(kind: str, tau0: float, G: int):
    """Column-wise shrinkage on the gauge-invariant loadings ``W⊥ = W − mean_g W``."""
    if kind == "none":
        return None

    def wperp_sq(p):
        W = p["W"]
        return jnp.sum(jnp.square(W - W.mean(0, keepdims=True)), axis=0)  # [k]

    n = G - 1  # W⊥ columns live in the (G − 1)-dimensional sum-zero subspace
    if kind == "gaussian":
        return lambda p: -0.5 * jnp.sum(wperp_sq(p)) / tau0**2
    if kind == "horseshoe_columnwise":

        def lp(p):  # w_j ~ N(0, (τ λ_j)² I), λ_j ~ C⁺(0, 1), τ ~ C⁺(0, τ0); MAP in log λ, log τ
            log_s = p["log_tau"] + p["log_lam"]
            ll = jnp.sum(-n * log_s - 0.5 * wperp_sq(p) * jnp.exp(-2 * log_s))
            lam = -jnp.sum(jnp.log1p(jnp.exp(2 * p["log_lam"])) - p["log_lam"])
            tau = -jnp.log1p(jnp.exp(2 * p["log_tau"]) / tau0**2) + p["log_tau"]
            return ll + lam + tau

        return lp

    def lp_neg(p):  # w_j ~ N(0, ψ_j I), ψ_j ~ Lomax(shape a, scale τ0²) (the NEG's marginal)
        lpsi = p["log_psi"]
        ll = jnp.sum(-0.5 * n * lpsi - 0.5 * wperp_sq(p) * jnp.exp(-lpsi))
        pr = jnp.sum(-(_NEG_SHAPE + 1) * jnp.log(tau0**2 + jnp.exp(lpsi)) + lpsi)
        return ll + pr

    return lp_neg


def _gauss(x, m, s):
    return -0.5 * jnp.sum(jnp.square((x - m) / s))


def _sigma2(p):
    return jnp.sum(jnp.square(p["W"]), 1) + jnp.exp(p["log_d"])


def _fit(
    adata: AnnData,
    *,
    model: str,
    latent_dim: int,
    informative_priors_from,
    informative_priors_tau,
    informative_priors_freeze,
    cascade_draws: int,
    offset_key,
    priors,
    layer,
    key_added,
    rng,
    batch_size,
    n_steps,
    learning_rate,
    tol,
    inner_steps,
    newton_tol,
    progress_bar,
    copy,
    em_steps: int,
):
    check_adata(adata)
    spec = get_model(model)
    k = check_positive_int(latent_dim, "latent_dim")
    if k >= adata.n_vars:
        raise ValueError(
            f"`latent_dim`={k} must be smaller than the number of genes ({adata.n_vars}); "
            "choose a rank well below it (the covariance is W Wᵀ + diag(d))."
        )
    n_steps = check_positive_int(n_steps, "n_steps")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    tol = check_positive_float(tol, "tol")
    newton_tol = check_positive_float(newton_tol, "newton_tol")
    inner_steps = check_positive_int(inner_steps, "inner_steps")
    em_steps = check_positive_int(em_steps, "em_steps", 0)
    cascade_draws = check_positive_int(cascade_draws, "cascade_draws", 2)
    seed = resolve_rng(rng)
    show = resolve_progress(progress_bar)
    copy = check_bool(copy, "copy")
    key = check_key(model if key_added is None else key_added)
    priors = check_priors(priors, model)
    kind, tau0 = resolve_loadings(priors)
    has_source = informative_priors_from is not None
    freeze = resolve_freeze(informative_priors_freeze, model=model, has_source=has_source)
    counts = counts_from(adata, layer, allow_empty_cells=False)
    C, G = counts.shape
    B = _batch(batch_size, C, G)
    cascade: Cascade | None = None
    if has_source:
        tau = check_positive_float(informative_priors_tau, "informative_priors_tau")
        cascade = cascade_from(
            adata, informative_priors_from, tau=tau, freeze=freeze, n_draws=cascade_draws, seed=seed
        )
    lib = np.asarray(counts.cell_totals(), dtype=np.float64)
    eta = resolve_eta(adata, lib, offset_key=offset_key, priors=priors, cascade=cascade)

    X = counts.X
    U = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    eta0 = eta.loc if eta.lower is None else np.maximum(eta.loc, eta.lower)
    Y = np.log1p(U.astype(np.float64)) + eta0[:, None]
    init = _init_globals(Y, k, seed)
    obs_names: tuple[str, ...] = spec.obs_params
    frozen: list[str] = []
    log_prior_terms = []
    if model == "nbln":
        mean, var = Y.mean(0), Y.var(0)
        init["log_r"] = np.log(np.clip(np.exp(2 * mean) / np.maximum(var, 1e-3), 0.5, 50.0))
        if cascade is not None:
            m_r, s_r = cascade.log_r
            init["log_r"] = m_r
            if "r" in freeze:
                frozen.append("log_r")
            else:
                sr = jnp.asarray(s_r * cascade.tau)
                mr = jnp.asarray(m_r)
                log_prior_terms.append(lambda p: _gauss(p["log_r"], mr, sr))
        else:
            loc, sc = priors.get("r", LOG_R_PRIOR)
            log_prior_terms.append(lambda p: _gauss(p["log_r"], loc, sc))
    derive = None
    if cascade is not None:
        m_m, s_m = (jnp.asarray(a) for a in cascade.log_mean)
        if "mu" in freeze:  # freeze the gene's log mean rate mu + sigma²/2 at the source's
            init["log_mean"] = np.asarray(cascade.log_mean[0])
            init.pop("mu")
            frozen.append("log_mean")

            def derive(p):
                out = dict(p)
                out["mu"] = p["log_mean"] - 0.5 * _sigma2(p)
                return out
        else:
            # unit-information scale: the source's posterior came from these same counts, so
            # at its own scale the prior would count the data twice and, as the NBVCP mean
            # and the Laplace-approximate NBLN mean differ slightly, pull Σ_gg (a spurious
            # factor on the low-count genes); scaled by √C it carries one cell's information
            s_mt = s_m * cascade.tau * np.sqrt(C)
            log_prior_terms.append(lambda p: _gauss(p["mu"] + 0.5 * _sigma2(p), m_m, s_mt))
    lp_w = _loadings_log_prior(kind, tau0, G)
    if lp_w is not None:
        log_prior_terms.append(lp_w)
        wp = init["W"] - init["W"].mean(0)
        sq = np.maximum((wp**2).sum(0) / (G - 1), 1e-6)
        if kind == "horseshoe_columnwise":
            init["log_tau"] = np.asarray(0.5 * np.log(sq.mean()))
            init["log_lam"] = 0.5 * np.log(sq / sq.mean())
        elif kind == "neg_columnwise":
            init["log_psi"] = np.log(sq)

    def log_prior(p):
        return sum((t(p) for t in log_prior_terms), jnp.zeros(()))

    X0 = np.log(U + 0.5) + eta0[:, None]
    logger.info("fitting %s (Laplace-EM, rank %d) to %d cells × %d genes", model, k, C, G)
    res = run_laplace(
        U,
        obs=spec.obs,
        init={n: np.asarray(v, np.float32) for n, v in init.items()},
        X0=X0.astype(np.float32),
        eta0=eta0.astype(np.float32),
        eta_loc=eta.loc.astype(np.float32),
        eta_scale=eta.scale.astype(np.float32),
        mode=EtaMode(latent=eta.latent, lower=eta.lower),
        obs_param_names=obs_names,
        frozen=tuple(frozen),
        log_prior=log_prior if log_prior_terms else None,
        derive=derive,
        batch_size=B,
        n_steps=n_steps,
        learning_rate=learning_rate,
        inner_steps=inner_steps,
        tol=tol,
        newton_tol=newton_tol,
        em_steps=em_steps if C * G <= _EM_ENTRIES else 0,
        rng_key=jax.random.PRNGKey(seed),
        progress_bar=show,
        desc=f"{model} Laplace",
    )
    if res.diverged:
        raise RuntimeError(
            f"the {model} fit diverged (non-finite loss or parameters) after {res.n_steps} "
            "steps; nothing was written. Try a smaller `learning_rate` or `latent_dim`."
        )
    if not res.converged:
        warnings.warn(
            f"the {model} fit did not converge in {n_steps} steps; increase `n_steps` "
            f"(results are written, with `adata.uns[{key!r}]['converged']` = False).",
            UserWarning,
            stacklevel=3,
        )
    target = adata.copy() if copy else adata
    params = {
        "priors": _plain(dict(priors)),
        "informative_priors_from": informative_priors_from or "",
        "informative_priors_tau": float(informative_priors_tau),
        "informative_priors_freeze": ",".join(freeze),
        "cascade_draws": cascade_draws,
        "em_steps": em_steps,
        "n_steps": n_steps,
        "learning_rate": learning_rate,
        "tol": tol,
        "inner_steps": inner_steps,
        "newton_tol": newton_tol,
        "model": model,
        "key_added": key,
        "layer": "X" if layer is None else layer,
        "rng": seed,
        "inference": "laplace",
        "latent_dim": k,
        "batch_size": 0 if B is None else int(B),
        "offset_key": "" if offset_key is None else str(offset_key),
        "eta_kind": eta.kind,
        "loadings_prior": kind,
        "tau_scale": tau0,
        "version": __version__,
    }
    write_lognormal(
        target, key, res, model=model, params=params, eta=eta, cascade=cascade,
        loadings=(kind, tau0),
    )  # fmt: skip
    return target if copy else None


_COMMON_DOC = """
    latent_dim
        Rank ``k`` of ``W`` (``Σ = W Wᵀ + diag(d)``); must be below the number of genes.
        With a loadings shrinkage prior it can be set generously.
    offset_key
        Column of ``adata.obs`` with known per-cell log-offsets ``o_c`` (rate
        ``exp(x + o_c)``, i.e. ``eta_c = -o_c``). Default (no capture prior, no cascade):
        ``eta_c = log(mean(L) / L_c)`` from the library sizes ``L_c``, so ``x`` is on the
        scale of counts at the average depth.
    priors
        ``{"capture_efficiency": (log M0, sigma)}`` makes ``eta_c = log(M_c / L_c)`` a latent
        per cell with a normal prior ``N(log M0 - log L_c, sigma)`` truncated to ``eta_c ≥ 0``
        (``M0``: expected total mRNA per cell), inferred in each cell's Newton solve.
        ``{"loadings": {"type": t, "tau_scale": s}}`` puts a column-wise shrinkage prior on
        the gauge-invariant loadings ``W⊥ = W - mean_g W`` so that a generous ``latent_dim``
        picks its own effective rank: ``"gaussian"`` (``W⊥ ~ N(0, s²)``),
        ``"horseshoe_columnwise"`` (column ``j`` ~ ``N(0, (τ λ_j)²)``, ``λ_j ~ C⁺(0, 1)``,
        ``τ ~ C⁺(0, s)``) or ``"neg_columnwise"`` (column variance ``ψ_j`` with the
        normal-exponential-gamma's Lomax(1/2, s²) marginal); scales are point-estimated
        with ``W``.
    layer
        Layer holding raw counts; ``None`` uses ``X``. The counts are densified for the fit
        (the per-cell latent log-rates are ``cells × genes`` anyway).
    key_added
        Prefix of every key written; defaults to the model name.
    rng
        Seed (int) or ``numpy.random.Generator``.
    batch_size
        Cells per outer step: ``"auto"`` uses all cells up to 4·2²⁰ count entries and
        minibatches above; ``None`` always all cells.
    n_steps
        Maximum number of outer (optax) steps; the fit stops once the loss plateaus.
    learning_rate
        Initial Adam learning rate on the globals (reduced on plateaus).
    tol
        Relative improvement of the 50-step mean loss below which a plateau is declared.
    inner_steps
        Newton iterations per outer step for the cells of the batch (warm-started from their
        previous modes); the last is the full step that the loss's gradient is taken through,
        the others are damped.
    newton_tol
        Newton decrement (nats) at which a cell's final solve counts as converged.
    em_steps
        Closed-form Laplace-EM iterations before the Adam phase (Newton on every cell, then
        the factor-analysis M-step of ``mu``, ``W``, ``d`` under each cell's Gaussian
        posterior); a warm start that lets Adam start near the optimum. 0 skips it; it is
        also skipped above 2²⁵ count entries (it holds all cells at once).
    progress_bar
        Show a tqdm bar; ``None`` follows ``snb.settings.progress_bar``.
    copy
        Return a fitted copy instead of writing into ``adata``.
"""

_RETURNS_DOC = """
    Returns
    -------
    ``None``, or the fitted copy if ``copy=True``. Writes

    * ``adata.varm[f"{key}_mean"]``: per-gene ``mu`` (log-rate mean), ``d`` (diagonal
      variance), ``sigma2`` (``Σ_gg``) and, for NBLN, ``r``;
    * ``adata.varm[f"{key}_W"]`` and ``[f"{key}_W_perp"]``: the loadings (genes × k) and
      their gauge-invariant projection ``W⊥ = W - mean_g W``, rotated so that the columns
      of ``W⊥`` are orthogonal and sorted by norm;
    * ``adata.obsm[f"{key}_mean"]`` / ``[f"{key}_sd"]``: ``eta`` per cell (its Laplace sd;
      0 where fixed or frozen); ``[f"{key}_x"]``: the MAP latent log-rates ``x̂_c`` (float32,
      cells × genes); ``[f"{key}_z"]``: factor scores ``E[z_c | x̂_c]`` (an embedding for
      ``sc.pp.neighbors(adata, use_rep=f"{key}_z")``); ``[f"{key}_newton"]``: per-cell
      Newton ``iterations``, ``grad_norm``, ``decrement``, ``converged`` and the Laplace
      ``log_marginal``;
    * ``adata.uns[key]``: ``params``, ``loss`` (negative Laplace log marginal per cell, per
      step), ``converged``, ``laplace`` (all fitted arrays), ``newton`` (summary),
      ``w_prior_diagnostics`` (``column_norms`` of ``W⊥``, ``effective_rank``,
      ``threshold``) and, for cascade fits, ``cascade`` (``source``, ``tau``, ``freeze``).
"""


def fit_pln(
    adata: AnnData,
    *,
    latent_dim: int = 5,
    offset_key: str | None = None,
    priors: Mapping[str, Any] | None = None,
    layer: str | None = None,
    key_added: str | None = None,
    rng: int | np.random.Generator = 0,
    batch_size: int | str | None = "auto",
    n_steps: int = 3000,
    learning_rate: float = 0.02,
    tol: float = 1e-5,
    inner_steps: int = 1,
    newton_tol: float = 1e-4,
    em_steps: int = 20,
    progress_bar: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit a Poisson log-normal model with low-rank covariance by Laplace-EM."""
    kw = dict(locals())
    return _fit(
        kw.pop("adata"),
        model="pln",
        informative_priors_from=None,
        informative_priors_tau=1.0,
        informative_priors_freeze=(),
        cascade_draws=200,
        **kw,
    )


def fit_nbln(
    adata: AnnData,
    *,
    latent_dim: int = 5,
    informative_priors_from: str | None = None,
    informative_priors_tau: float = 1.0,
    informative_priors_freeze: Sequence[str] | None = ("r", "eta"),
    cascade_draws: int = 200,
    offset_key: str | None = None,
    priors: Mapping[str, Any] | None = None,
    layer: str | None = None,
    key_added: str | None = None,
    rng: int | np.random.Generator = 0,
    batch_size: int | str | None = "auto",
    n_steps: int = 3000,
    learning_rate: float = 0.02,
    tol: float = 1e-5,
    inner_steps: int = 1,
    newton_tol: float = 1e-4,
    em_steps: int = 20,
    progress_bar: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit an NB log-normal model with low-rank covariance by Laplace-EM."""
    kw = dict(locals())
    return _fit(kw.pop("adata"), model="nbln", **kw)


fit_pln.__doc__ += f"""
    ``x_c ~ MVN(mu, W Wᵀ + diag(d))`` on log-rates, ``u_gc ~ Poisson(exp(x_gc - eta_c))``.
    Each cell's log-concave posterior of ``x_c`` is found by damped Newton (vmapped over
    cells, O(genes × k²) per step through Woodbury identities); the globals are updated
    by Adam on the Laplace approximation of the log marginal likelihood, including
    ``-½ log det`` of the negative Hessian and the dependence of the modes on the globals.

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw integer counts in ``X`` or ``layers[layer]``.
    {_COMMON_DOC.strip()}
{_RETURNS_DOC}"""

fit_nbln.__doc__ += f"""
    As :func:`fit_pln` with ``u_gc ~ NB(mean exp(x_gc - eta_c), dispersion r_g)``. NBLN has
    a per-cell gauge (``x_c + Δ_c 1``, ``eta_c + Δ_c`` leave the likelihood unchanged) that
    only the priors pin; the recommended fit is the cascade: first
    ``snb.tl.fit_nbvcp(adata, priors={{"capture_efficiency": (log M0, 0.5)}})``, then
    ``snb.tl.fit_nbln(adata, informative_priors_from="nbvcp")``.

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw integer counts in ``X`` or ``layers[layer]``.
    informative_priors_from
        Key of an NBVCP fit in the same AnnData (same cells and genes). Its posterior
        (``cascade_draws`` draws) gives Gaussian priors on ``log r_g``, on each gene's log
        mean rate ``mu_g + Σ_gg / 2`` (matched to the NBVCP mean ``log mu_g``) and on
        ``eta_c = -log nu_c``, with the source's posterior sd times
        ``informative_priors_tau`` as scale (times ``√n_cells`` for the mean rate: a
        unit-information prior, since the source saw the same counts; see the docs). The
        prior on ``eta_c`` enters each cell's Newton solve, so its scale shapes the Hessian.
    informative_priors_tau
        Multiplier of the cascade priors' scales (larger: weaker priors).
    informative_priors_freeze
        Cascade parameters held fixed at the source's posterior mean instead of refined:
        ``()``, ``("r",)``, ``("r", "eta")`` (default; pins the per-cell gauge) or
        ``("r", "mu", "eta")`` (NBLN then learns only ``W`` and ``d``). Aliases:
        ``"dispersion"`` = ``"r"``, ``"expression"`` / ``"mean_expression"`` = ``"mu"``,
        ``"capture_efficiency"`` = ``"eta"``; naming a parameter and its alias together is
        an error. Frozen parameters keep the source's full posterior for predictive checks.
        Ignored when it is the default and there is no source.
    cascade_draws
        Posterior draws of the source used to derive the cascade priors.
    {_COMMON_DOC.strip()}
{_RETURNS_DOC}"""
