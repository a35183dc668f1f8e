"""Fixtures of the GLM tests (``tl.fit_glm`` and friends).

Compilation dominates the cost of a fit, and a compiled Newton solver is reused for
every fit with the same family and shapes, so the tests share a few standard data sets:

* ``seed_nb``: the seed notebook's NB experiment (1,000 cells × 20 genes, 2 mean and 2
  dispersion covariates, no intercepts), with its truth;
* ``small``: 400 cells × 30 genes of NB counts with a numeric covariate ``x``, a
  categorical ``g`` (levels a/b/c, b shifted) and ``batch``; fitted once as
  ``small_fit`` (``mean="~ x + g"``, ``dispersion="~ 1"``, float32) — never mutate the
  session-scoped objects, take ``.copy()`` first.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from glm_reference import fit_reference, seed_nb

import scnbtools as snb

SMALL_N, SMALL_G = 400, 30


def make_glm_adata(Y, obs, fmt: str = "csr") -> ad.AnnData:
    """AnnData with float32 counts ``Y`` (cells × genes) as dense / csr / csc."""
    Y = np.asarray(Y, dtype=np.float32)
    X = {
        "dense": lambda: Y.copy(),
        "csr": lambda: sp.csr_matrix(Y),
        "csc": lambda: sp.csc_matrix(Y),
    }[fmt]()
    var = pd.DataFrame(index=[f"gene{j}" for j in range(Y.shape[1])])
    return ad.AnnData(X=X, obs=obs.copy(), var=var)


def small_data(seed: int = 0, n: int = SMALL_N, g: int = SMALL_G):
    """NB counts with ``log mu = b0 + b1 x + b_g[g]`` and one dispersion per gene."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "g": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c"]),
            "batch": rng.choice(["p", "q"], n),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    truth = {
        "Intercept": rng.normal(1.0, 0.5, g),
        "x": rng.normal(0.0, 0.4, g),
        "g[T.b]": rng.normal(0.0, 0.5, g),
        "g[T.c]": np.zeros(g),
    }
    log_r = rng.normal(1.0, 0.5, g)
    eta = (
        truth["Intercept"][None]
        + obs["x"].to_numpy()[:, None] * truth["x"][None]
        + (obs["g"] == "b").to_numpy()[:, None] * truth["g[T.b]"][None]
    )
    mu, r = np.exp(eta), np.exp(log_r)[None]
    Y = rng.negative_binomial(r, r / (r + mu))
    return Y, obs, truth, log_r


@pytest.fixture(scope="session")
def seed_nb_data():
    """``(Y, obs, truth)`` of the seed notebook's NB experiment (read-only)."""
    return seed_nb()


@pytest.fixture(scope="session")
def seed_nb_fit64(seed_nb_data):
    """The seed NB experiment fitted in float64 (never mutate)."""
    Y, obs, _ = seed_nb_data
    a = make_glm_adata(Y, obs)
    snb.tl.fit_glm(
        a,
        mean="~ mean_dim0 + mean_dim1 - 1",
        dispersion="~ dispersion_dim0 + dispersion_dim1 - 1",
        dtype="float64",
        progress_bar=False,
    )
    return a


@pytest.fixture(scope="session")
def seed_nb_reference(seed_nb_data):
    """The scipy float64 MLE of every gene of the seed NB experiment, ``[genes, 4]``."""
    Y, obs, truth = seed_nb_data
    X1 = obs[["mean_dim0", "mean_dim1"]].to_numpy()
    X2 = obs[["dispersion_dim0", "dispersion_dim1"]].to_numpy()
    out = []
    for j in range(Y.shape[1]):
        start = np.r_[truth["mean"][:, j], truth["dispersion"][:, j]]
        out.append(fit_reference(Y[:, j], [X1, X2], np.zeros(len(obs)), "nb", start)[0])
    return np.asarray(out)


@pytest.fixture(scope="session")
def small():
    """``(Y, obs, truth, log_r)`` of the standard small data set (read-only)."""
    return small_data()


@pytest.fixture(scope="session")
def small_fit(small):
    """``small`` as CSR AnnData fitted with ``mean="~ x + g"`` (float32, key "glm")."""
    Y, obs, _, _ = small
    a = make_glm_adata(Y, obs)
    snb.tl.fit_glm(a, mean="~ x + g", progress_bar=False)
    return a


@pytest.fixture
def glm_adata():
    """``glm_adata(Y, obs, fmt="csr")``: AnnData of float32 counts."""
    return make_glm_adata


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
