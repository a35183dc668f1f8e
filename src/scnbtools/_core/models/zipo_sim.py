"""Seeded ZINB data with low-rank structure and known rates (ground truth for ZiPo).

Cells belong to ``n_types`` types whose centres lie in a ``rank``-dimensional space; each
cell's coordinates scatter around its type centre. Log expression fractions are
``log_softmax(b_g + u_c . F_g)``; library sizes are log-normal; counts are
``ZINB(mean = library * fraction, r_g, gate_g)``. The *rate* of an entry is the NB mean
``library_c * fraction_cg`` (the expected count without dropout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["LowRankZINB", "simulate_lowrank_zinb"]


@dataclass(frozen=True)
class LowRankZINB:
    counts: sp.csr_matrix  # float32 [cells, genes]
    rates: np.ndarray  # float32 [cells, genes], NB means (no dropout)
    gate: np.ndarray  # [genes] dropout probabilities
    r: np.ndarray  # [genes] NB inverse dispersions
    library: np.ndarray  # [cells] library sizes used for the rates
    labels: np.ndarray  # [cells] integer cell types


def simulate_lowrank_zinb(
    n_cells: int,
    n_genes: int,
    *,
    n_types: int = 5,
    rank: int = 6,
    type_scale: float = 1.0,
    within_scale: float = 0.3,
    loading_scale: float = 1.0,
    base_scale: float = 1.5,
    mean_gate: float = 0.13,
    gate_concentration: float = 10.0,
    r_median: float = 5.0,
    library_median: float = 2000.0,
    library_sd: float = 0.35,
    seed: int = 0,
) -> LowRankZINB:
    """Simulate ``n_cells × n_genes`` counts (see module doc); the same ``seed`` gives the
    same data. Log fractions are ``base_g + u_c . F_g`` normalised, with ``base_g`` of sd
    ``base_scale`` and the cell-dependent part ``u_c . F_g`` of sd ``loading_scale``. Gates are
    ``Beta(mean_gate * c, (1 - mean_gate) * c)`` per gene with ``c = gate_concentration``;
    ``r_g`` is log-normal around ``r_median``."""
    rs = np.random.default_rng(seed)
    centres = rs.normal(0.0, type_scale, size=(n_types, rank))
    labels = rs.integers(0, n_types, size=n_cells)
    u = centres[labels] + rs.normal(0.0, within_scale, size=(n_cells, rank))
    # the cell-dependent part of a gene's log fraction has sd `loading_scale`
    f_sd = loading_scale / np.sqrt(rank * (type_scale**2 + within_scale**2))
    F = rs.normal(0.0, f_sd, size=(n_genes, rank))
    base = rs.normal(0.0, base_scale, size=n_genes)
    eta = base[None, :] + u @ F.T
    eta -= eta.max(axis=1, keepdims=True)
    frac = np.exp(eta)
    frac /= frac.sum(axis=1, keepdims=True)
    library = library_median * np.exp(rs.normal(0.0, library_sd, size=n_cells))
    rates = library[:, None] * frac
    r = r_median * np.exp(rs.normal(0.0, 0.5, size=n_genes))
    gate = rs.beta(
        mean_gate * gate_concentration, (1.0 - mean_gate) * gate_concentration, size=n_genes
    )
    lam = rs.gamma(r[None, :], rates / r[None, :])
    x = rs.poisson(lam).astype(np.float32)
    x[rs.random(size=x.shape) < gate[None, :]] = 0.0
    return LowRankZINB(
        counts=sp.csr_matrix(x),
        rates=rates.astype(np.float32),
        gate=gate,
        r=r,
        library=library,
        labels=labels,
    )
