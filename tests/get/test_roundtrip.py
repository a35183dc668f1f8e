"""After ``write_h5ad`` / ``write_zarr`` and reading back, every ``get`` and ``pl`` call works
and gives the same answers as on the in-memory object."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import scnbtools as snb

STATS = ["mean", "sd", "q05", "q50", "q95"]
FITS = {
    "zinb": ("p", "r", "gate", "mu", "rho"),
    "nbdm": ("p", "r", "mu", "rho"),
    "zinb_map": ("p", "r"),
}


@pytest.fixture(scope="module")
def multi_fit(fitted, fitted_nbdm, fitted_map):
    """One AnnData holding three fits (same counts, so their entries can be combined)."""
    a = fitted.copy()
    for other, key in ((fitted_nbdm, "nbdm"), (fitted_map, "zinb_map")):
        for s in STATS:
            a.varm[f"{key}_{s}"] = other.varm[f"{key}_{s}"].copy()
        a.uns[key] = other.uns[key]
    return a


def _assert_uns_equal(x, y, where="uns"):
    if isinstance(x, dict):
        assert set(x) == set(y), where
        for k in x:
            _assert_uns_equal(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, np.ndarray):
        np.testing.assert_array_equal(np.asarray(y), x, err_msg=where)
    else:
        assert x == y, f"{where}: {x!r} != {y!r}"


# anndata's notice about its future zarr-v3 default is not about scnbtools
@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_roundtrip_then_get_and_pl_work(fmt, multi_fit, tmp_path):
    path = tmp_path / f"fitted.{fmt}"
    getattr(multi_fit, f"write_{fmt}")(path)
    back = getattr(ad, f"read_{fmt}")(path)

    assert set(back.varm) == set(multi_fit.varm)
    for k in multi_fit.varm:
        pd.testing.assert_frame_equal(back.varm[k], multi_fit.varm[k], check_exact=True)
    _assert_uns_equal(dict(multi_fit.uns), dict(back.uns))

    for key, params in FITS.items():
        res = snb.get.fit_result(back, key=key)
        assert bool(res["converged"]) == multi_fit.uns[key]["converged"]
        for param in params:
            pd.testing.assert_frame_equal(
                snb.get.posterior_df(back, key=key, param=param),
                snb.get.posterior_df(multi_fit, key=key, param=param),
                check_exact=True,
            )
        before = snb.get.posterior_samples(multi_fit, key=key, n_samples=7, rng=3)
        after = snb.get.posterior_samples(back, key=key, n_samples=7, rng=3)
        assert set(before) == set(after)
        for name in before:
            np.testing.assert_array_equal(after[name], before[name])

    # plots read only what was stored (tests/pl covers every fit kind; one suffices here)
    n_figs = len(plt.get_fignums())
    figs = [
        snb.pl.loss(back, key="zinb", return_fig=True),
        snb.pl.ppc(back, key="zinb", n_genes=2, n_samples=20, return_fig=True),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        plt.close(fig)
    assert len(plt.get_fignums()) == n_figs
