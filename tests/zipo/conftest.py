"""Fixtures of the ZiPo tests (data generators and baselines live in ``zipo_helpers.py``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from zipo_helpers import make_adata


@pytest.fixture(scope="module")
def sim_adata():
    """The 800 × 200 synthetic ZINB data set of the quality tests (seed 0)."""
    return make_adata()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
