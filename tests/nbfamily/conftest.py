"""Fixtures shared by the NB-family test modules (fits are expensive: each is done once).

Compilation dominates a short fit, so the fits here reuse one data shape per model
configuration where they can (the session's persistent compilation cache, set up in
``tests/conftest.py``, then skips recompiling identical programs).
"""

from __future__ import annotations

import pytest
from nbfamily_helpers import MIX_SHAPE, MIX_SIM, NB_SHAPE, NB_STEPS, fit_quiet

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


@pytest.fixture(scope="session")
def nb_pair():
    """``nb_pair(kind, seed)``: ``synthetic_<kind>(1000, 100, rng=seed)`` (kind ``"nbdm"`` or
    ``"zinb"``) with canonical NBDM and ZINB fits under keys ``"nbdm"`` and ``"zinb"``
    (cached per argument pair; never mutate the result, take ``.copy()``)."""
    cache = {}

    def get(kind: str, seed: int):
        if (kind, seed) not in cache:
            a = getattr(snb.datasets, f"synthetic_{kind}")(*NB_SHAPE, rng=seed)
            for model in ("nbdm", "zinb"):
                fit_quiet(a, model=model, n_steps=NB_STEPS, rng=seed)
            cache[kind, seed] = a
        return cache[kind, seed]

    return get
