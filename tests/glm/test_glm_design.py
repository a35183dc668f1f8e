"""Formulas against ``obs``: reference levels, splines, ``~ .``, stored and rebuilt designs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scnbtools._design import build_design, rebuild_design


@pytest.fixture
def obs():
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame(
        {
            "t": rng.uniform(0, 1, n),
            "ct": pd.Categorical(
                rng.choice(["beta", "alpha", "delta"], n), categories=["beta", "alpha", "delta"]
            ),
            "s": rng.choice(["z", "y"], n),
            "flag": rng.random(n) > 0.5,
        },
        index=[f"c{i}" for i in range(n)],
    )


def test_reference_level_rule(obs):
    d = build_design("~ ct + s + flag", obs, param="mean")
    # categorical: first category of the pandas Categorical; strings: sorted, first
    assert d.columns == [
        "Intercept",
        "ct[T.alpha]",
        "ct[T.delta]",
        "s[T.z]",
        "flag[T.True]",
    ] or d.columns == [
        "Intercept",
        "ct[T.alpha]",
        "ct[T.delta]",
        "s[T.z]",
        "flag",
    ]
    assert d.reference["ct"] == "beta" and d.reference["s"] == "y"
    assert d.categories["ct"] == ["beta", "alpha", "delta"] and d.categories["s"] == ["y", "z"]
    # explicit reference level
    e = build_design("~ C(ct, contr.treatment('delta'))", obs, param="mean")
    assert e.reference["C(ct, contr.treatment('delta'))"] == "delta"
    assert e.columns[1:] == [
        "C(ct, contr.treatment('delta'))[T.beta]",
        "C(ct, contr.treatment('delta'))[T.alpha]",
    ]
    # no intercept: one column per level, so no reference
    f = build_design("~ ct - 1", obs, param="mean")
    assert f.columns == ["ct[beta]", "ct[alpha]", "ct[delta]"] and f.reference == {}
    np.testing.assert_array_equal(f.matrix.sum(axis=1), 1.0)


def test_dot_expands_to_every_obs_column(obs):
    d = build_design("~ .", obs, param="dispersion")
    expanded = json.loads(d.spec_json)["formula"]
    assert all(name in expanded for name in ("t", "ct", "s", "flag"))
    assert d.matrix.shape == (60, 6)


def test_splines_interactions_and_transforms_rebuild_exactly(obs):
    d = build_design("~ bs(t, df=4) + ct * s + np.log(t + 1)", obs, param="mean")
    assert d.matrix.shape[1] == 1 + 4 + 2 + 1 + 2 + 1
    # rebuilt for a subset of the cells: same rows (spline knots come from the fit, not the subset)
    sub = obs.iloc[[3, 10, 11]]
    M = rebuild_design(d.spec_json, sub, param="mean", columns=d.columns)
    np.testing.assert_allclose(M, d.matrix[[3, 10, 11]], rtol=1e-12)
    # and for values outside the fitted range the stored knots still apply
    new = pd.DataFrame({"t": [0.5], "ct": ["alpha"], "s": ["z"]})
    M2 = rebuild_design(d.spec_json, new, param="mean", columns=d.columns)
    assert M2.shape == (1, d.matrix.shape[1]) and np.isfinite(M2).all()


def test_no_intercept_formula_is_stored_without_one(obs):
    d = build_design("~ t - 1", obs, param="mean")
    assert d.columns == ["t"]
    M = rebuild_design(d.spec_json, obs, param="mean", columns=d.columns)
    np.testing.assert_array_equal(M, d.matrix)
    assert json.loads(d.spec_json)["formula"].startswith("0 +")


def test_uns_record_is_plain(obs):
    rec = build_design("~ C(ct, contr.treatment('delta')) + t", obs, param="mean").to_uns()
    assert set(rec) == {"formula", "expanded", "columns", "categories", "reference", "spec"}
    assert isinstance(rec["spec"], str) and isinstance(rec["columns"], np.ndarray)
    json.loads(rec["spec"])


def test_errors_name_the_problem(obs):
    with pytest.raises(KeyError, match="'nope'"):
        build_design("~ nope", obs, param="mean")
    d = build_design("~ ct", obs, param="mean")
    with pytest.raises(ValueError, match="gamma"):
        rebuild_design(
            d.spec_json, pd.DataFrame({"ct": ["gamma"]}), param="mean", columns=d.columns
        )
    with pytest.raises(ValueError, match="rank deficient"):
        build_design("~ ct + C(ct, contr.treatment('delta'))", obs, param="mean")
    with np.errstate(all="ignore"):  # the transforms below are meant to fail
        with pytest.raises(ValueError, match="non-finite"):
            build_design("~ np.log(t * 0)", obs, param="mean")
        with pytest.raises(ValueError, match="missing"):
            build_design("~ np.log(t - 2)", obs, param="mean")
    with pytest.raises(ValueError, match="only 2 cells"):
        build_design("~ ct + t", obs.iloc[:2], param="mean")
