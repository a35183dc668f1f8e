"""An independent float64 reference for the GLM tests: scipy.stats log-pmfs + scipy.optimize.

Nothing here touches JAX or scnbtools' likelihood code. The value is the sum of
``scipy.stats`` log-pmfs (zero inflation mixed in with ``logaddexp``); the gradient is
the textbook chain rule in NumPy with ``scipy.special.digamma`` (checked against finite
differences in the tests). ``fit_reference`` minimises it per gene with L-BFGS-B at tight
tolerances from a given start (the truth in the tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.optimize as so
import scipy.special as sps
import scipy.stats as st

PARAMS = {
    "nb": ("mean", "dispersion"),
    "zinb": ("mean", "dispersion", "zero_inflation"),
    "poisson": ("mean",),
    "zip": ("mean", "zero_inflation"),
}


def _split(theta, sizes):
    return np.split(np.asarray(theta, dtype=np.float64), np.cumsum(sizes)[:-1])


def nll_and_grad(theta, y, designs, offset, family):
    """Negative log-likelihood of one gene and its gradient (float64, NumPy/SciPy only)."""
    sizes = [D.shape[1] for D in designs]
    parts = _split(theta, sizes)
    y = np.asarray(y, dtype=np.float64)
    eta_m = offset + designs[0] @ parts[0]
    mu = np.exp(eta_m)
    grads = []
    if "dispersion" in PARAMS[family]:
        r = np.exp(designs[1] @ parts[1])
        logp = st.nbinom.logpmf(y, r, r / (r + mu))
        logp0 = r * (np.log(r) - np.log(r + mu))
        d_m = r * (y - mu) / (r + mu)
        d_r = r * (
            sps.digamma(y + r) - sps.digamma(r) + np.log(r) - np.log(r + mu) + (mu - y) / (r + mu)
        )
        d0_m = -r * mu / (r + mu)
        d0_r = r * (np.log(r) - np.log(r + mu) + mu / (r + mu))
        base = [(d_m, d0_m), (d_r, d0_r)]
    else:
        logp = st.poisson.logpmf(y, mu)
        logp0 = -mu
        base = [(y - mu, -mu)]
    if "zero_inflation" in PARAMS[family]:
        z = designs[-1] @ parts[-1]
        pi = sps.expit(z)
        log_pi, log_keep = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
        l0 = np.logaddexp(log_pi, log_keep + logp0)
        ll = np.where(y == 0, l0, log_keep + logp)
        w = np.exp(log_keep + logp0 - l0)
        for d, d0 in base:
            grads.append(np.where(y == 0, w * d0, d))
        grads.append(np.where(y == 0, 1.0 - pi - w, -pi))
    else:
        ll = logp
        grads = [d for d, _ in base]
    g = np.concatenate([-(D.T @ gk) for D, gk in zip(designs, grads, strict=True)])
    return -float(np.sum(ll)), g


def fit_reference(y, designs, offset, family, start):
    """Per-gene float64 MLE by L-BFGS-B from ``start``; returns ``(theta, nll)``."""
    res = so.minimize(
        nll_and_grad,
        np.asarray(start, dtype=np.float64),
        args=(y, designs, offset, family),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 30},
    )
    return res.x, float(res.fun)


def simulate(family, designs, coefs, offset, rng):
    """Counts from the model with linear predictors ``designs[k] @ coefs[k]`` (cells × genes)."""
    mu = np.exp(offset[:, None] + designs[0] @ coefs[0])
    if "dispersion" in PARAMS[family]:
        r = np.exp(designs[1] @ coefs[1])
        y = rng.negative_binomial(r, r / (r + mu))
    else:
        y = rng.poisson(mu)
    if "zero_inflation" in PARAMS[family]:
        pi = sps.expit(designs[-1] @ coefs[-1])
        y = y * (rng.random(y.shape) >= pi)
    return y


def seed_nb(n=1000, g=20, seed=0):
    """The seed notebook's NB experiment: 2 mean and 2 dispersion covariates, no intercepts."""
    rng = np.random.default_rng(seed)
    X1, X2 = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    B, D = rng.normal(size=(2, g)), rng.normal(size=(2, g))
    mu, r = np.exp(X1 @ B), np.exp(X2 @ D)
    Y = rng.negative_binomial(r, r / (r + mu))
    obs = pd.DataFrame(
        np.c_[X1, X2], columns=["mean_dim0", "mean_dim1", "dispersion_dim0", "dispersion_dim1"]
    )
    obs.index = [f"cell{i}" for i in range(n)]
    return Y, obs, {"mean": B, "dispersion": D}


def seed_zinb(n=50_000, g=20, seed=0):
    """The seed notebook's ZINB experiment: two covariates per parameter, no intercepts."""
    rng = np.random.default_rng(seed)
    X1, X2, X3 = (rng.normal(size=(n, 2)) for _ in range(3))
    B, D, Z = (rng.normal(size=(2, g)) for _ in range(3))
    mu, r, pi = np.exp(X1 @ B), np.exp(X2 @ D), sps.expit(X3 @ Z)
    Y = rng.negative_binomial(r, r / (r + mu)) * (rng.random((n, g)) >= pi)
    cols = [f"{p}_dim{j}" for p in ("mean", "dispersion", "zero_inflation") for j in range(2)]
    obs = pd.DataFrame(np.c_[X1, X2, X3], columns=cols)
    obs.index = [f"cell{i}" for i in range(n)]
    return Y, obs, {"mean": B, "dispersion": D, "zero_inflation": Z}
