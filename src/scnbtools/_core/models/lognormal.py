"""Log-normal models with gene–gene covariance: Poisson log-normal (PLN) and NB log-normal (NBLN).

For cell c: ``x_c ~ MVN(mu, W Wᵀ + diag(d))`` on log-rates, a per-cell log-rate offset
``eta_c`` (capture), ``t_gc = x_gc − eta_c`` and

* PLN:  ``u_gc ~ Poisson(exp(t_gc))``;
* NBLN: ``u_gc ~ NB_mean(exp(t_gc), r_g)`` (variance ``λ + λ² / r``); PLN is its ``r → ∞`` limit.

Both observation models are concave in ``t``, so the per-cell posterior of ``x_c`` is
log-concave and the Laplace approximation of :mod:`..infer.laplace` applies. The model
modules supply only the elementwise log-pmf and its derivatives in ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from ..infer.laplace import Observation

__all__ = ["NBLN", "PLN", "LaplaceModel", "nb_mean_obs", "poisson_obs"]


def _poisson_loglik(t, u, params):
    return u * t - jnp.exp(t) - gammaln(u + 1.0)


def _poisson_loglik_t(t, u, params):
    return u * t - jnp.exp(t)


def _poisson_grad_hess(t, u, params):
    lam = jnp.exp(t)
    return u - lam, lam


def _nb_loglik(t, u, params):
    log_r = params["log_r"]
    r = jnp.exp(log_r)
    lse = jnp.logaddexp(t, log_r)  # log(r + λ)
    return gammaln(u + r) - gammaln(r) - gammaln(u + 1.0) + r * (log_r - lse) + u * (t - lse)


def _nb_loglik_t(t, u, params):
    log_r = params["log_r"]
    return u * t - (u + jnp.exp(log_r)) * jnp.logaddexp(t, log_r)


def _nb_grad_hess(t, u, params):
    log_r = params["log_r"]
    s = jax.nn.sigmoid(t - log_r)  # λ / (λ + r)
    ur = u + jnp.exp(log_r)
    return u - ur * s, ur * s * (1.0 - s)


poisson_obs = Observation(_poisson_loglik, _poisson_grad_hess, _poisson_loglik_t)
nb_mean_obs = Observation(_nb_loglik, _nb_grad_hess, _nb_loglik_t)


@dataclass(frozen=True)
class LaplaceModel:
    """Registry entry of a model fitted by Laplace-EM (``inference="laplace"``)."""

    name: str
    description: str
    obs: Observation
    obs_params: tuple[str, ...]  # per-gene observation parameters (log scale)
    inference: str = "laplace"


PLN = LaplaceModel(
    name="pln",
    description=(
        "Poisson log-normal: log-rates x_c ~ MVN(mu, W Wᵀ + diag(d)) with low-rank W, "
        "per-cell log-rate offset eta_c, u ~ Poisson(exp(x - eta)); Laplace-EM."
    ),
    obs=poisson_obs,
    obs_params=(),
)

NBLN = LaplaceModel(
    name="nbln",
    description=(
        "NB log-normal: PLN's low-rank log-normal rates with a per-gene NB dispersion r_g, "
        "u ~ NB(mean exp(x - eta), r); Laplace-EM, optionally with an NBVCP fit as an "
        "informative prior and frozen r / eta."
    ),
    obs=nb_mean_obs,
    obs_params=("log_r",),
)
