"""Count log-pmfs in stable log space.

Conventions
-----------
* Negative binomial in the ``(r, p)`` ("probs") parameterization follows NumPyro /
  SCRIBE: ``P(k) = C(k + r - 1, k) p^k (1 - p)^r`` so that ``E[k] = r p / (1 - p)``.
  (``scipy.stats.nbinom(n=r, p=1 - p)`` is the same distribution.)
* Negative binomial in the ``(mu, r)`` parameterization has mean ``mu`` and variance
  ``mu + mu^2 / r``; it is the ``(r, p)`` form with ``logit(p) = log(mu) - log(r)``.
* Zero-inflated forms mix a point mass at zero with weight ``gate`` (the dropout
  probability ``pi``).

Every function accepts probabilities *or* logits (log-rates for Poisson). The logit
forms are the numerically safe ones: they use ``log_sigmoid`` instead of ``log(p)``
and never add an epsilon. ``lgamma(k + r) - lgamma(r)`` is evaluated through
``betaln`` so that it stays accurate when ``r`` is huge (``r -> inf``, the Poisson
limit) or tiny (``r -> 0``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.nn import log_sigmoid
from jax.scipy.special import betaln, gammaln

__all__ = [
    "log_rising_factorial_ratio",
    "nb_logpmf",
    "nb_mean_logpmf",
    "poisson_logpmf",
    "zero_inflate",
    "zinb_logpmf",
    "zinb_mean_logpmf",
    "zip_logpmf",
]


def _one_of(a, b, name_a: str, name_b: str):
    if (a is None) == (b is None):
        raise TypeError(f"pass exactly one of `{name_a}` or `{name_b}`")


def _logit_from_probs(p):
    return jnp.log(p) - jnp.log1p(-p)


def log_rising_factorial_ratio(x, r):
    """``lgamma(x + r) - lgamma(r) - lgamma(x + 1)``, accurate for every ``r > 0``.

    For ``x > 0`` this is ``-log(x) - betaln(r, x)``; at ``x = 0`` it is exactly 0.
    """
    x = jnp.asarray(x)
    pos = x > 0
    x_safe = jnp.where(pos, x, 1.0)
    val = -jnp.log(x_safe) - betaln(r, x_safe)
    return jnp.where(pos, val, 0.0)


def nb_logpmf(x, r, p=None, *, logits=None):
    """Log-pmf of NB(r, p) (NumPyro convention: mean ``r p / (1 - p)``).

    Parameters
    ----------
    x
        Counts (any float or int array; non-negative whole numbers).
    r
        Dispersion ("total count"), ``r > 0``.
    p, logits
        Success probability or its logit; pass exactly one.
    """
    _one_of(p, logits, "p", "logits")
    if logits is None:
        logits = _logit_from_probs(p)
    x = jnp.asarray(x, dtype=jnp.result_type(logits, float))
    # x * log p is 0 at x == 0 even when p == 0 (logits == -inf)
    xlogp = jnp.where(x > 0, x * log_sigmoid(logits), 0.0)
    return log_rising_factorial_ratio(x, r) + xlogp + r * log_sigmoid(-logits)


def nb_mean_logpmf(x, mu, r):
    """Log-pmf of the NB with mean ``mu`` and dispersion ``r`` (variance ``mu + mu²/r``)."""
    logits = jnp.log(mu) - jnp.log(r)
    return nb_logpmf(x, r, logits=logits)


def zero_inflate(x, logpmf, gate=None, *, gate_logits=None):
    """Mix ``logpmf`` (the count model evaluated at ``x``) with a point mass at zero."""
    _one_of(gate, gate_logits, "gate", "gate_logits")
    if gate_logits is None:
        gate_logits = _logit_from_probs(gate)
    log_gate = log_sigmoid(gate_logits)
    log_keep = log_sigmoid(-gate_logits)
    at_zero = jnp.logaddexp(log_gate, log_keep + logpmf)
    return jnp.where(jnp.asarray(x) == 0, at_zero, log_keep + logpmf)


def zinb_logpmf(x, r, p=None, gate=None, *, logits=None, gate_logits=None):
    """Log-pmf of the zero-inflated NB(r, p) with dropout probability ``gate``."""
    return zero_inflate(x, nb_logpmf(x, r, p, logits=logits), gate, gate_logits=gate_logits)


def zinb_mean_logpmf(x, mu, r, gate=None, *, gate_logits=None):
    """Log-pmf of the zero-inflated NB with mean ``mu`` (of the NB part) and dispersion ``r``."""
    return zero_inflate(x, nb_mean_logpmf(x, mu, r), gate, gate_logits=gate_logits)


def poisson_logpmf(x, rate=None, *, log_rate=None):
    """Log-pmf of the Poisson with ``rate`` (or ``log_rate``)."""
    _one_of(rate, log_rate, "rate", "log_rate")
    if log_rate is None:
        # log(0) = -inf through a double `where`, so that the gradient at rate == 0 stays
        # finite (it is -1 at x == 0); a negative rate gives NaN.
        rate = jnp.asarray(rate)
        rate = jnp.where(rate < 0, jnp.nan, rate)
        zero = rate == 0
        log_rate = jnp.where(zero, -jnp.inf, jnp.log(jnp.where(zero, 1.0, rate)))
    else:
        rate = jnp.exp(log_rate)
    x = jnp.asarray(x, dtype=jnp.result_type(log_rate, float))
    # x * log_rate is 0 at x == 0 even when rate == 0 (log_rate == -inf).
    xlog = jnp.where(x > 0, x * log_rate, 0.0)
    return xlog - rate - gammaln(x + 1.0)


def zip_logpmf(x, rate=None, gate=None, *, log_rate=None, gate_logits=None):
    """Log-pmf of the zero-inflated Poisson."""
    return zero_inflate(
        x, poisson_logpmf(x, rate, log_rate=log_rate), gate, gate_logits=gate_logits
    )
