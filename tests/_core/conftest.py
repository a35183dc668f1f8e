"""Fixtures of the ``_core`` engine tests.

The simulation and recovery-metric helpers live in ``calibrate_recovery.py`` (the script
that calibrated the tolerances of ``test_recovery.py``), so the tests and the calibration
measure exactly the same thing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibrate_recovery import simulate_from_prior

#: sparse constructors every format-agreement test runs over (COO is converted by CountData)
SPARSE_FORMATS = {
    "csr_matrix": sp.csr_matrix,
    "csc_matrix": sp.csc_matrix,
    "csr_array": sp.csr_array,
    "csc_array": sp.csc_array,
    "coo_matrix": sp.coo_matrix,
    "coo_array": sp.coo_array,
}


def _raw_counts(seed: int = 0, n_cells: int = 257, n_genes: int = 23) -> np.ndarray:
    """Awkward raw counts: NB genes of very different depth, an all-zero gene (0), an
    all-zero cell (0), a deep gene with counts in the tens of thousands (last)."""
    rng = np.random.default_rng(seed)
    r = rng.lognormal(0.0, 1.0, n_genes)
    p = rng.uniform(0.05, 0.95, n_genes)
    x = rng.negative_binomial(r, 1.0 - p, size=(n_cells, n_genes)).astype(np.int64)
    x[:, -1] = rng.negative_binomial(5.0, 1e-4, n_cells)  # mean 5e4
    x[:, 0] = 0
    x[0, :] = 0
    return x


@pytest.fixture(scope="session")
def raw_counts() -> np.ndarray:
    """257 × 23 int64 counts with an empty gene, an empty cell and a very deep gene."""
    x = _raw_counts()
    x.setflags(write=False)
    return x


@pytest.fixture(scope="session")
def simulate():
    """``simulate(model, n_cells, n_genes, seed)`` -> (counts, truth); see ``simulate_from_prior``."""
    return simulate_from_prior


@pytest.fixture(scope="session")
def sparse_formats() -> dict:
    """``{name: constructor}`` of every scipy sparse format CountData must accept."""
    return dict(SPARSE_FORMATS)
