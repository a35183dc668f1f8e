"""Synthetic data and baselines for the ZiPo tests (imported by ``conftest.py`` and the tests).

The synthetic data come from :func:`scnbtools._core.models.zipo_sim.simulate_lowrank_zinb`:
ZINB counts with a rank-6 structure (5 cell types), known rates and gates. Fits are small
(hundreds of cells and genes, tens of epochs) and shared per module, so the whole ZiPo suite
compiles each network shape once.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy.special import gammaln

from scnbtools._core.models.zipo_sim import simulate_lowrank_zinb

N_CELLS, N_GENES = 800, 200
#: the architecture every quality test fits (one compilation for all of them)
SMALL = {"encoder_dims": (64, 32), "n_latent": 8, "batch_size": 64}


def make_adata(n_cells=N_CELLS, n_genes=N_GENES, seed=0, **kwargs):
    sim = simulate_lowrank_zinb(n_cells, n_genes, seed=seed, **kwargs)
    adata = ad.AnnData(sim.counts.copy())
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["cell_type"] = pd.Categorical([f"t{k}" for k in sim.labels])
    adata.layers["rates"] = sim.rates
    adata.uns["truth"] = {"gate": sim.gate, "r": sim.r}
    return adata


def nb_logpmf_np(x, mu, r):
    """NB(mean mu, inverse dispersion r) log-pmf in NumPy (for the baselines)."""
    return (
        gammaln(x + r)
        - gammaln(r)
        - gammaln(x + 1)
        + r * np.log(r / (r + mu))
        + x * np.log(mu / (r + mu))
    )


def nb_baseline_nll(X_train, X_test) -> float:
    """Held-out NLL per entry of a per-gene NB with the cell's library size as offset.

    ``mean_cg = l_c * p_g`` with ``p_g`` the gene's share of the training counts; ``r_g`` by
    maximum likelihood on the training cells (grid search over log r, enough for a baseline
    the network must beat *clearly*).
    """
    X_train, X_test = np.asarray(X_train, float), np.asarray(X_test, float)
    p = (X_train.sum(0) + 0.5) / (X_train.sum() + 0.5 * X_train.shape[1])
    mu_tr = X_train.sum(1, keepdims=True) * p
    grid = np.exp(np.linspace(np.log(0.05), np.log(1e3), 60))
    ll = np.stack([nb_logpmf_np(X_train, mu_tr, r).sum(0) for r in grid])
    r = grid[np.argmax(ll, axis=0)]
    mu_te = X_test.sum(1, keepdims=True) * p
    return float(-nb_logpmf_np(X_test, mu_te, r).mean())


def pca_rates(X, n_components: int) -> np.ndarray:
    """Rates from a rank-``n_components`` PCA reconstruction of library-normalised counts,
    scaled back by each cell's library size and clipped at zero."""
    X = np.asarray(X, float)
    lib = X.sum(1, keepdims=True)
    scale = np.median(lib)
    Y = X / np.maximum(lib, 1) * scale
    m = Y.mean(0)
    U, s, Vt = np.linalg.svd(Y - m, full_matrices=False)
    k = n_components
    rec = (U[:, :k] * s[:k]) @ Vt[:k] + m
    return np.clip(rec, 0, None) * lib / scale
