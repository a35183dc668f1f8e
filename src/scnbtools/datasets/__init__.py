"""Bundled small real data and seeded synthetic generators with ground truth."""

from ._pbmc3k import pbmc3k
from ._synthetic import synthetic_nbdm, synthetic_zinb

__all__ = ["pbmc3k", "synthetic_nbdm", "synthetic_zinb"]
