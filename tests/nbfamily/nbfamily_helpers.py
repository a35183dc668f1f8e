"""Helpers of the NB-family tests: synthetic data settings, a quiet fit and the adjusted
Rand index (a few lines, so the tests need no scikit-learn)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import scnbtools as snb

#: every fit of these tests is silent and leaves the summaries to 500 draws
QUIET = {"progress_bar": False, "n_posterior_samples": 500}

#: the well-separated mixture: 500 cells × 100 genes, 3 equal components differing on 20
#: marker genes by ``separation=1`` (log scale); ``r ~ LogNormal(1, 1)``
MIX_SIM = {"n_components": 3, "separation": 1.0, "marker_fraction": 0.2, "r_prior": (1.0, 1.0)}
MIX_SHAPE = (500, 100)

#: the single-component NBDM / ZINB data (default generators) and fit length
NB_SHAPE = (1000, 100)
NB_STEPS = 3000


def fit_quiet(adata, **kwargs):
    """``snb.tl.fit`` without the progress bar and without the not-converged warning (the
    short test fits may stop at ``n_steps``; what they recover is what is tested)."""
    kw = {**QUIET, **kwargs}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"the \S+ fit did not converge")
        return snb.tl.fit(adata, **kw)


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985)."""
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1.0)

    def pairs(x):
        return float(np.sum(x * (x - 1.0) / 2.0))

    both = pairs(table)
    ra, rb = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = ra * rb / pairs(np.array([a.size]))
    top = (ra + rb) / 2.0
    return 1.0 if top == expected else (both - expected) / (top - expected)


def noisy_labels(truth: pd.Series, fraction: float, seed: int) -> pd.Categorical:
    """``truth`` (categorical) with a random ``fraction`` of cells moved to another category."""
    cats = list(truth.cat.categories)
    codes = np.asarray(truth.cat.codes).copy()
    rng = np.random.default_rng(seed)
    flip = rng.random(codes.size) < fraction
    codes[flip] = (codes[flip] + rng.integers(1, len(cats), flip.sum())) % len(cats)
    return pd.Categorical.from_codes(codes, categories=cats)
