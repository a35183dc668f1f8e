"""Starting values for mixture components: per-component gene means.

Mixture ELBOs are multimodal; SVI from symmetric starting values leaves components
identical. Components are seeded either from labels (an annotation column) or from
k-means++ on log-normalised counts of a cell sample projected on their top principal
components — cheap (at most ``max_cells`` cells, ``n_top`` genes) and deterministic per seed.
"""

from __future__ import annotations

import numpy as np

from ..data import CountData

__all__ = ["component_means_from_labels", "kmeans_component_means"]


def component_means_from_labels(counts: CountData, labels: np.ndarray, n_components: int):
    """Per-component gene means ``[K, G]`` and weights from integer labels (``-1`` =
    unlabelled; components without labelled cells get the overall mean)."""
    import scipy.sparse as sp

    X = counts.X
    G = counts.n_genes
    overall = counts.gene_totals() / counts.n_cells
    means = np.tile(overall, (n_components, 1))
    weights = np.ones(n_components)
    for k in range(n_components):
        idx = np.flatnonzero(labels == k)
        if idx.size == 0:
            continue
        sub = X[idx]
        tot = (
            np.asarray(sub.sum(axis=0, dtype=np.float64)).ravel()
            if sp.issparse(sub)
            else sub.sum(0)
        )
        means[k] = np.asarray(tot, dtype=np.float64).reshape(G) / idx.size
        weights[k] = idx.size + 1.0
    return means, weights / weights.sum()


def _kmeans_pp(Z: np.ndarray, K: int, rng: np.random.Generator, n_iter: int = 50):
    n = Z.shape[0]
    centers = [Z[rng.integers(n)]]
    d2 = np.sum((Z - centers[0]) ** 2, axis=1)
    for _ in range(1, K):
        prob = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centers.append(Z[rng.choice(n, p=prob)])
        d2 = np.minimum(d2, np.sum((Z - centers[-1]) ** 2, axis=1))
    C = np.array(centers)
    for _ in range(n_iter):
        dist = ((Z[:, None, :] - C[None]) ** 2).sum(-1)
        lab = dist.argmin(1)
        newC = np.array([Z[lab == k].mean(0) if np.any(lab == k) else C[k] for k in range(K)])
        if np.allclose(newC, C):
            break
        C = newC
    inertia = float(((Z - C[lab]) ** 2).sum())
    return lab, inertia


def kmeans_component_means(
    counts: CountData,
    n_components: int,
    seed: int,
    *,
    max_cells: int = 4000,
    n_top: int = 500,
    n_pcs: int = 10,
    n_restarts: int = 5,
):
    """Per-component gene means ``[K, G]`` and weights from k-means++ on a cell sample."""
    rng = np.random.default_rng(seed)
    N = counts.n_cells
    idx = np.sort(rng.choice(N, size=min(N, max_cells), replace=False))
    x = counts.dense_rows(idx).astype(np.float64)
    lib = np.maximum(x.sum(1, keepdims=True), 1.0)
    y = np.log1p(x / lib * np.median(lib))
    top = np.argsort(y.var(0))[::-1][: min(n_top, y.shape[1])]
    yt = y[:, top] - y[:, top].mean(0)
    u, s, _ = np.linalg.svd(yt, full_matrices=False)
    Z = u[:, : min(n_pcs, u.shape[1])] * s[: min(n_pcs, s.shape[0])]
    best = None
    for _ in range(n_restarts):
        lab, inertia = _kmeans_pp(Z, n_components, rng)
        if best is None or inertia < best[1]:
            best = (lab, inertia)
    lab = best[0]
    means = np.zeros((n_components, x.shape[1]))
    weights = np.zeros(n_components)
    overall = x.mean(0)
    for k in range(n_components):
        sel = lab == k
        means[k] = x[sel].mean(0) if sel.any() else overall
        weights[k] = sel.sum() + 1.0
    return means, weights / weights.sum()
