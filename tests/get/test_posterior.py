"""``get.posterior_df`` / ``get.posterior_samples`` / ``get.fit_result``: values and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scnbtools as snb

STATS = ["mean", "sd", "q05", "q50", "q95"]


# ----------------------------------------------------------------------------- fit_result
def test_fit_result_is_the_uns_entry(fitted):
    assert snb.get.fit_result(fitted, key="zinb") is fitted.uns["zinb"]


def test_fit_result_missing_key_lists_fits(fitted):
    with pytest.raises(
        KeyError, match=r"`key`='nbdm': no scnbtools fit.*fits found: 'zinb'.*fit_zinb"
    ):
        snb.get.fit_result(fitted, key="nbdm")


def test_fit_result_ignores_non_fit_uns_entries(adata):
    adata.uns["neighbors"] = {"params": {"n_neighbors": 15}}
    with pytest.raises(KeyError, match=r"fits found: none"):
        snb.get.fit_result(adata, key="neighbors")


# ----------------------------------------------------------------------------- posterior_df
@pytest.mark.parametrize("param", ["r", "gate", "mu", "rho"])
def test_posterior_df_gene_param(fitted, param):
    df = snb.get.posterior_df(fitted, key="zinb", param=param)
    assert list(df.columns) == STATS
    pd.testing.assert_index_equal(df.index, fitted.var_names)
    for s in STATS:
        np.testing.assert_array_equal(df[s].to_numpy(), fitted.varm[f"zinb_{s}"][param].to_numpy())


def test_posterior_df_global_param(fitted_nbdm):
    df = snb.get.posterior_df(fitted_nbdm, key="nbdm", param="p")
    assert list(df.columns) == STATS
    assert list(df.index) == ["p"]
    assert df.loc["p"].to_dict() == fitted_nbdm.uns["nbdm"]["global"]["p"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"key": "zinb2", "param": "r"}, KeyError, r"`key`='zinb2'.*fits found: 'zinb'"),
        (
            {"key": "zinb", "param": "theta"},
            KeyError,
            r"`param`='theta' is not a parameter of this zinb fit; choose one of 'p', 'r', 'gate', 'mu', 'rho'",
        ),
        ({"key": "zinb", "param": 0}, TypeError, r"`param` must be a string, got 0"),
        ({"key": 0, "param": "r"}, TypeError, r"`key` must be a string"),
    ],
)
def test_posterior_df_bad_input(fitted, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        snb.get.posterior_df(fitted, **kwargs)


def test_posterior_df_gate_not_in_nbdm(fitted_nbdm):
    with pytest.raises(
        KeyError, match=r"`param`='gate'.*nbdm fit; choose one of 'p', 'r', 'mu', 'rho'"
    ):
        snb.get.posterior_df(fitted_nbdm, key="nbdm", param="gate")


def test_posterior_df_missing_varm_says_refit(fitted):
    a = fitted.copy()
    del a.varm["zinb_q95"]
    with pytest.raises(KeyError, match=r"`adata\.varm\['zinb_q95'\]` is missing.*key_added='zinb'"):
        snb.get.posterior_df(a, key="zinb", param="r")


def test_get_rejects_non_anndata():
    for fn, kw in [
        (snb.get.fit_result, {}),
        (snb.get.posterior_df, {"param": "r"}),
        (snb.get.posterior_samples, {}),
    ]:
        with pytest.raises(TypeError, match=r"`adata` must be an AnnData object, got dict"):
            fn({"zinb": {}}, key="zinb", **kw)


# ----------------------------------------------------------------------------- posterior_samples
@pytest.fixture(scope="module")
def draws(fitted):
    return snb.get.posterior_samples(fitted, key="zinb", n_samples=2000, rng=0)


def test_posterior_samples_shapes_and_support(draws):
    n, g = 2000, 40
    assert set(draws) == {"p", "r", "gate", "mu", "rho"}
    assert draws["p"].shape == (n,)
    for name in ("r", "gate", "mu", "rho"):
        assert draws[name].shape == (n, g), name
        assert np.isfinite(draws[name]).all()
    assert ((draws["p"] > 0) & (draws["p"] < 1)).all()
    assert ((draws["gate"] > 0) & (draws["gate"] < 1)).all()
    assert (draws["r"] > 0).all()
    np.testing.assert_allclose(draws["rho"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        draws["mu"], draws["r"] * (draws["p"] / (1 - draws["p"]))[:, None], rtol=1e-5
    )


def test_posterior_samples_agree_with_stored_summaries(fitted, draws):
    # fresh draws from the stored variational parameters reproduce the written posterior
    # means within Monte Carlo error (summaries used 200 draws, these 2000: 5 joint sd's)
    for name in ("r", "gate", "mu", "rho"):
        mean = fitted.varm["zinb_mean"][name].to_numpy()
        sd = fitted.varm["zinb_sd"][name].to_numpy()
        err = 5 * sd * np.sqrt(1 / 200 + 1 / 2000)
        assert (np.abs(draws[name].mean(axis=0) - mean) <= err + 1e-9).all(), name
    p = fitted.uns["zinb"]["global"]["p"]
    assert abs(draws["p"].mean() - p["mean"]) <= 5 * p["sd"] * np.sqrt(1 / 200 + 1 / 2000)


def test_posterior_samples_rng(fitted, draws):
    again = snb.get.posterior_samples(fitted, key="zinb", n_samples=2000, rng=0)
    other = snb.get.posterior_samples(fitted, key="zinb", n_samples=2000, rng=1)
    for name in draws:
        np.testing.assert_array_equal(again[name], draws[name])
        assert not np.array_equal(other[name], draws[name])
    gen = snb.get.posterior_samples(fitted, key="zinb", n_samples=5, rng=np.random.default_rng(0))
    assert gen["r"].shape == (5, 40)


def test_posterior_samples_of_map_fit_are_the_point_estimate(fitted_map):
    d = snb.get.posterior_samples(fitted_map, key="zinb_map", n_samples=3)
    for name in ("r", "gate", "mu", "rho"):
        expected = fitted_map.varm["zinb_map_mean"][name].to_numpy()
        np.testing.assert_allclose(d[name], np.broadcast_to(expected, (3, 40)), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_samples": 0}, ValueError, r"`n_samples` must be >= 1, got 0"),
        ({"n_samples": 2.0}, TypeError, r"`n_samples` must be an integer"),
        ({"rng": "a"}, TypeError, r"`rng` must be an int seed"),
        ({"key": "other"}, KeyError, r"`key`='other'"),
    ],
)
def test_posterior_samples_bad_input(fitted, kwargs, exc, match):
    kwargs = {"key": "zinb", **kwargs}
    with pytest.raises(exc, match=match):
        snb.get.posterior_samples(fitted, **kwargs)
