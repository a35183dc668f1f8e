"""Fixtures shared by the NB-family test modules (fits are expensive: each is done once).

Compilation dominates a short fit, so the fits here reuse one data shape per model
configuration where they can (the session's persistent compilation cache, set up in
``tests/conftest.py``, then skips recompiling identical programs).
"""

from __future__ import annotations

import pytest
from nbfamily_helpers import MIX_SHAPE, MIX_SIM, fit_quiet

import scnbtools as snb


@pytest.fixture(scope="session")
def mixture_sim():
    """The well-separated 3-component NBDM mixture (seed 0); never mutate it."""
    return snb.datasets.synthetic_mixture(*MIX_SHAPE, model="nbdm", rng=0, **MIX_SIM)


@pytest.fixture(scope="session")
def mixture_fit(mixture_sim):
    """``(input, before, fitted)``: an unannotated K=3 NBDM fit of ``mixture_sim`` made with
    ``copy=True`` from ``input`` (``before`` is a copy of ``input`` taken before the call),
    key ``"mix"``. Never mutate them."""
    a = mixture_sim.copy()
    before = a.copy()
    out = fit_quiet(a, model="nbdm", n_components=3, n_steps=500, rng=0, key_added="mix", copy=True)
    return a, before, out
