"""Write a log-normal (Laplace-EM) fit into an AnnData (keys from ``_keys``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._core.infer.laplace import D_FLOOR, LaplaceResult

__all__ = ["EFFECTIVE_RANK_THRESHOLD", "rotate_loadings", "write_lognormal"]

#: a column of W⊥ counts towards the effective rank when its norm is at least this share
#: of the largest column's norm (its variance ≥ 1 % of the leading factor's)
EFFECTIVE_RANK_THRESHOLD = 0.1


def rotate_loadings(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W R, W⊥ R, R)`` with ``R`` orthogonal such that the columns of ``W⊥ R`` are
    orthogonal, sorted by decreasing norm, and each has its largest entry positive.
    ``W Wᵀ`` (and hence ``Σ``) is unchanged."""
    Wp = W - W.mean(0, keepdims=True)
    _, _, Vt = np.linalg.svd(Wp, full_matrices=False)
    R = Vt.T
    Wp_r = Wp @ R
    signs = np.sign(Wp_r[np.argmax(np.abs(Wp_r), axis=0), np.arange(R.shape[1])])
    signs[signs == 0] = 1.0
    R = R * signs
    return W @ R, Wp @ R, R


def write_lognormal(
    target: AnnData,
    key: str,
    res: LaplaceResult,
    *,
    model: str,
    params: dict[str, Any],
    eta,
    cascade,
    loadings: tuple[str, float],
) -> None:
    p = res.params
    W, Wp, _ = rotate_loadings(np.asarray(p["W"], np.float64))
    mu = np.asarray(p["mu"], np.float64)
    d = np.exp(np.asarray(p["log_d"], np.float64)) + D_FLOOR
    sigma2 = (W**2).sum(1) + d
    gene = {"mu": mu, "d": d, "sigma2": sigma2}
    if "log_r" in p:
        gene["r"] = np.exp(np.asarray(p["log_r"], np.float64))
    target.varm[_keys.gene_key(key, "mean")] = pd.DataFrame(gene, index=target.var_names.copy())
    target.varm[_keys.loadings_key(key)] = W
    target.varm[_keys.loadings_key(key, perp=True)] = Wp

    X = np.asarray(res.X, np.float32)
    k = W.shape[1]
    M = np.eye(k) + W.T @ (W / d[:, None])
    z = np.linalg.solve(M, ((X - mu).astype(np.float64) @ (W / d[:, None])).T).T
    obs_index = target.obs_names.copy()
    target.obsm[_keys.cell_key(key, "mean")] = pd.DataFrame(
        {"eta": np.asarray(res.eta, np.float64)}, index=obs_index
    )
    target.obsm[_keys.cell_key(key, "sd")] = pd.DataFrame(
        {"eta": np.asarray(res.eta_sd, np.float64)}, index=obs_index.copy()
    )
    target.obsm[_keys.latent_key(key)] = X
    target.obsm[_keys.factor_key(key)] = z
    conv = np.asarray(res.decrement) <= res.newton_tol
    target.obsm[_keys.newton_key(key)] = pd.DataFrame(
        {
            "iterations": np.asarray(res.iterations, np.int64),
            "grad_norm": np.asarray(res.grad_inf, np.float64),
            "decrement": np.asarray(res.decrement, np.float64),
            "converged": conv,
            "log_marginal": np.asarray(res.log_marginal, np.float64),
        },
        index=obs_index.copy(),
    )
    norms = np.linalg.norm(Wp, axis=0)
    top = float(norms.max()) if norms.size else 0.0
    eff = int((norms >= EFFECTIVE_RANK_THRESHOLD * top).sum()) if top > 0 else 0
    laplace = {"mu": mu, "W": W, "d": d, "eta": np.asarray(res.eta, np.float64)}
    if "r" in gene:
        laplace["r"] = gene["r"]
    for name in ("log_tau", "log_lam", "log_psi"):
        if name in p:
            laplace[name] = np.asarray(p[name], np.float64)
    kind, tau0 = loadings
    entry: dict[str, Any] = {
        "params": params,
        "loss": np.asarray(res.losses, np.float64),
        "learning_rate": np.asarray(res.lr_trace, np.float64),
        "converged": bool(res.converged),
        "n_steps_run": int(res.n_steps),
        "runtime_s": float(res.runtime_s),
        "n_cells": int(X.shape[0]),
        "laplace": laplace,
        "newton": {
            "n_not_converged": int((~conv).sum()),
            "max_grad_norm": float(np.max(res.grad_inf)),
            "mean_iterations": float(np.mean(res.iterations)),
            "tol": float(res.newton_tol),
        },
        "w_prior_diagnostics": {
            "type": kind,
            "tau_scale": float(tau0),
            "column_norms": norms,
            "effective_rank": eff,
            "threshold": EFFECTIVE_RANK_THRESHOLD,
        },
        "eta": {"kind": eta.kind, **{k: float(v) for k, v in eta.extra.items()}},
    }
    if cascade is not None:
        entry["cascade"] = {
            "source": cascade.source,
            "tau": float(cascade.tau),
            "freeze": ",".join(cascade.freeze),
            "n_draws": int(cascade.n_draws),
        }
    target.uns[_keys.uns_key(key)] = entry
