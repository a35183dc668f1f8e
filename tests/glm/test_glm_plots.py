"""``pl.glm_coef``, ``pl.mean_variance``, ``pl.simulation_check``: return types, ``ax``, data shown."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import scnbtools as snb


def test_glm_coef_boxes_and_truth(small_fit, small):
    _, _, truth, _ = small
    ax = snb.pl.glm_coef(small_fit, show=False)
    assert isinstance(ax, Axes) and [t.get_text() for t in ax.get_xticklabels()] == [
        "Intercept",
        "x",
        "g[T.b]",
        "g[T.c]",
    ]
    _, ax2 = plt.subplots()
    t = np.vstack([truth[c] for c in ("Intercept", "x", "g[T.b]", "g[T.c]")])  # columns × genes
    out = snb.pl.glm_coef(small_fit, truth=t, ax=ax2, show=False)
    assert out is ax2 and "mean |error|" in ax2.get_title()
    est = snb.get.glm_coef(small_fit).to_numpy()
    assert f"{np.mean(np.abs(est - t)):.4f}" in ax2.get_title()
    fig = snb.pl.glm_coef(small_fit, truth=t.T, columns=["x"], return_fig=True)
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="shape"):
        snb.pl.glm_coef(small_fit, truth=np.zeros((2, 2)), show=False)
    with pytest.raises(KeyError, match="'nope'"):
        snb.pl.glm_coef(small_fit, columns=["nope"], show=False)


def test_mean_variance(small_fit):
    ax = snb.pl.mean_variance(small_fit, show=False)
    assert isinstance(ax, Axes) and ax.get_xscale() == "log"
    # observed and model points: one per gene each
    sizes = [c.get_offsets().shape[0] for c in ax.collections]
    assert sizes == [small_fit.n_vars, small_fit.n_vars]
    obs_var = ax.collections[0].get_offsets()[:, 1]
    model_var = ax.collections[1].get_offsets()[:, 1]
    # the NB fit reproduces the observed variances (log scale, within sampling noise)
    assert np.median(np.abs(np.log(model_var / obs_var))) < 0.2


def test_simulation_check(small_fit):
    sim = snb.tl.simulate(small_fit, rng=0)
    axes = snb.pl.simulation_check(small_fit, simulated=sim, show=False)
    assert len(axes) == 4 and all(isinstance(a, Axes) for a in axes)
    fig, grid = plt.subplots(2, 2)
    out = snb.pl.simulation_check(small_fit, simulated=sim, ax=grid, show=False)
    assert [a.figure for a in out] == [fig] * 4
    assert isinstance(snb.pl.simulation_check(small_fit, simulated=sim, return_fig=True), Figure)
    with pytest.raises(ValueError, match="same genes"):
        snb.pl.simulation_check(small_fit, simulated=sim[:, :5].copy(), show=False)
    with pytest.raises(ValueError, match="4 panel"):
        snb.pl.simulation_check(small_fit, simulated=sim, ax=grid[0], show=False)
