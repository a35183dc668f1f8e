"""Bundled small real data and seeded synthetic generators with ground truth."""

from ._pbmc3k import pbmc3k
from ._synthetic import (
    synthetic_mixture,
    synthetic_nbdm,
    synthetic_nbvcp,
    synthetic_zinb,
    synthetic_zinbvcp,
)
from ._synthetic_lognormal import synthetic_nbln, synthetic_pln

__all__ = [
    "pbmc3k",
    "synthetic_mixture",
    "synthetic_nbdm",
    "synthetic_nbln",
    "synthetic_nbvcp",
    "synthetic_pln",
    "synthetic_zinb",
    "synthetic_zinbvcp",
]
