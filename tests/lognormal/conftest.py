"""Fixtures of the log-normal (PLN / NBLN) read and plot tests.

The data are simulated from known parameters (numpy only). ``_contract_fit`` writes a "fit"
in the storage layout of the log-normal contract: adata.varm ``{key}_mean`` / ``{key}_W`` /
``{key}_W_perp``, adata.obsm ``{key}_mean`` / ``{key}_sd`` / ``{key}_x`` / ``{key}_z`` /
``{key}_newton`` and adata.uns ``{key}``.

STAND-IN: until ``snb.tl.fit_pln`` / ``snb.tl.fit_nbln`` land, ``_contract_fit`` writes the
TRUE simulation parameters as the fit (mu, W, d, r, eta, x = the true latent, z = E[z | x]).
When the real fits exist, replace the body of ``_contract_fit`` by the one line marked
below; the tests that compare with the truth (``TRUTH``) then hold approximately.
"""

from __future__ import annotations

import contextlib
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnbtools as snb

N_CELLS, N_GENES, RANK = 300, 40, 3
#: keys of the contract fits in the fixtures
PLN, NBLN, CASCADE, SOURCE = "pln", "nbln", "nbln_cascade", "nbvcp"


def simulate(model: str, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Counts ``[C, G]`` (int64) of a PLN or NBLN with known parameters, and the truth.

    ``x_c ~ MVN(mu, W Wᵀ + diag(d))``, rate ``exp(x_c - eta_c)``; PLN Poisson, NBLN
    ``Poisson(rate γ)`` with ``γ ~ Gamma(r, rate r)``.
    """
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-0.5, 2.0, N_GENES)
    W = rng.normal(0.0, 0.35, (N_GENES, RANK))
    d = rng.uniform(0.05, 0.2, N_GENES)
    eta = rng.normal(0.0, 0.3, N_CELLS)
    z = rng.standard_normal((N_CELLS, RANK))
    x = mu + z @ W.T + np.sqrt(d) * rng.standard_normal((N_CELLS, N_GENES))
    rate = np.exp(x - eta[:, None])
    truth = {"mu": mu, "W": W, "d": d, "eta": eta, "x": x, "z": z}
    if model == "nbln":
        r = rng.uniform(2.0, 10.0, N_GENES)
        rate = rate * rng.standard_gamma(np.broadcast_to(r, rate.shape)) / r
        truth["r"] = r
    u = rng.poisson(rate).astype(np.int64)
    u[np.flatnonzero(u.sum(axis=1) == 0), 0] = 1
    return u, truth


def make_adata(u: np.ndarray) -> ad.AnnData:
    obs = pd.DataFrame(index=pd.Index([f"cell_{i:03d}" for i in range(u.shape[0])]))
    var = pd.DataFrame(index=pd.Index([f"gene_{j:02d}" for j in range(u.shape[1])]))
    return ad.AnnData(X=sp.csr_matrix(u.astype(np.float32)), obs=obs, var=var)


def write_contract(
    adata: ad.AnnData,
    *,
    model: str,
    key: str,
    mu: np.ndarray,
    W: np.ndarray,
    d: np.ndarray,
    eta: np.ndarray,
    x: np.ndarray,
    r: np.ndarray | None = None,
    threshold: float = 0.1,
) -> None:
    """Write the given parameters in the contract's layout (exact keys, dtypes, plain types)."""
    _G, k = W.shape
    W = np.asarray(W, dtype=np.float64)
    W_perp = W - W.mean(axis=0, keepdims=True)
    sigma2 = np.einsum("gk,gk->g", W, W) + d
    genes = {"mu": mu, "d": d, "sigma2": sigma2}
    if model == "nbln":
        genes["r"] = r
    adata.varm[f"{key}_mean"] = pd.DataFrame(genes, index=adata.var_names.copy())
    adata.varm[f"{key}_W"] = W
    adata.varm[f"{key}_W_perp"] = W_perp
    adata.obsm[f"{key}_mean"] = pd.DataFrame({"eta": eta}, index=adata.obs_names.copy())
    adata.obsm[f"{key}_sd"] = pd.DataFrame(
        {"eta": np.zeros(adata.n_obs)}, index=adata.obs_names.copy()
    )
    adata.obsm[f"{key}_x"] = np.asarray(x, dtype=np.float32)
    # E[z | x] = (I + Wᵀ D⁻¹ W)⁻¹ Wᵀ D⁻¹ (x - mu)
    Wd = W / d[:, None]
    adata.obsm[f"{key}_z"] = np.linalg.solve(np.eye(k) + W.T @ Wd, Wd.T @ (x - mu).T).T
    adata.obsm[f"{key}_newton"] = pd.DataFrame(
        {
            "iterations": np.zeros(adata.n_obs, dtype=np.int64),
            "grad_norm": np.zeros(adata.n_obs),
            "converged": np.ones(adata.n_obs, dtype=bool),
        },
        index=adata.obs_names.copy(),
    )
    norms = np.sqrt(np.einsum("gk,gk->k", W_perp, W_perp))
    laplace = {"mu": mu, "W": W, "d": d, "eta": eta}
    if model == "nbln":
        laplace["r"] = r
    adata.uns[key] = {
        "params": {
            "model": model,
            "latent_dim": int(k),
            "layer": "X",
            "offset_key": "",
            "version": snb.__version__,
            "rng": 0,
        },
        "loss": np.linspace(2.0, 1.0, 10),
        "converged": True,
        "n_steps": 10,
        "laplace": laplace,
        "newton": {"n_not_converged": 0, "max_grad_norm": 0.0, "mean_iterations": 0.0},
        "w_prior_diagnostics": {
            "type": "none",
            "tau_scale": 1.0,
            "column_norms": norms,
            "effective_rank": int(np.sum(norms > threshold * norms.max())),
            "threshold": float(threshold),
        },
    }


def _contract_fit(adata: ad.AnnData, truth: dict, *, model: str, key_added: str) -> None:
    """STAND-IN for the real fit: write the truth as a contract fit.

    Switch to the real fit (one line) when it lands:
    ``getattr(snb.tl, f"fit_{model}")(adata, latent_dim=RANK, key_added=key_added, rng=0, progress_bar=False)``
    """
    write_contract(
        adata,
        model=model,
        key=key_added,
        mu=truth["mu"],
        W=truth["W"],
        d=truth["d"],
        eta=truth["eta"],
        x=truth["x"],
        r=truth.get("r"),
    )


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"the \w+ fit did not converge")
        yield


@pytest.fixture(autouse=True)
def _close_figures():
    """Start and end every test with no open figure."""
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture(scope="session", name="write_contract")
def _write_contract_fixture():
    """``write_contract(adata, *, model, key, mu, W, d, eta, x, r=None)``: store parameters in
    the contract's layout (for hand-made fits)."""
    return write_contract


@pytest.fixture(scope="session")
def pln_data() -> tuple[ad.AnnData, dict]:
    """``(adata, truth)``: PLN counts with a contract fit under ``"pln"`` (never mutate)."""
    u, truth = simulate("pln", seed=0)
    a = make_adata(u)
    _contract_fit(a, truth, model="pln", key_added=PLN)
    return a, truth


@pytest.fixture(scope="session")
def nbln_data() -> tuple[ad.AnnData, dict]:
    """``(adata, truth)``: NBLN counts with a contract fit under ``"nbln"`` (never mutate)."""
    u, truth = simulate("nbln", seed=1)
    a = make_adata(u)
    _contract_fit(a, truth, model="nbln", key_added=NBLN)
    return a, truth


@pytest.fixture(scope="session")
def cascade_data() -> ad.AnnData:
    """NBLN counts with a REAL short NBVCP fit under ``"nbvcp"`` and, under
    ``"nbln_cascade"``, a contract NBLN fit whose ``r`` and ``eta`` are frozen at that
    source's posterior means (``uns[key]["cascade"]``; never mutate)."""
    u, truth = simulate("nbln", seed=2)
    a = make_adata(u)
    with _quiet():
        snb.tl.fit(
            a, model="nbvcp", n_steps=200, n_posterior_samples=200, rng=0, progress_bar=False
        )
    r = a.varm[f"{SOURCE}_mean"]["r"].to_numpy(dtype=np.float64)
    eta = -np.log(a.obsm[f"{SOURCE}_mean"]["nu"].to_numpy(dtype=np.float64))
    # the same rates exp(x - eta) in the source's gauge (a per-cell rigid translation)
    shift = eta - truth["eta"]
    write_contract(
        a,
        model="nbln",
        key=CASCADE,
        mu=truth["mu"] + shift.mean(),
        W=truth["W"],
        d=truth["d"],
        eta=eta,
        x=truth["x"] + shift[:, None],
        r=r,
    )
    a.uns[CASCADE]["cascade"] = {"source": SOURCE, "tau": 1.0, "freeze": "r,eta"}
    return a
