"""Fixtures of the plotting tests (the shared fitted objects live in ``tests/conftest.py``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest


@pytest.fixture(autouse=True)
def _close_figures():
    """Start and end every plotting test with no open figure."""
    plt.close("all")
    yield
    plt.close("all")
