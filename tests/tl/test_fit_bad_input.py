"""Bad input to ``tl.fit*``: the right error type, a message naming the argument, the value
and the fix, raised before any JAX work, and nothing written to ``adata``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnbtools as snb
import scnbtools.tl._fit as fit_module


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch):
    """Validation must fail before the engine (and so any JAX work) is reached."""

    def engine_reached(*args, **kwargs):
        raise AssertionError("bad input reached the fitting engine")

    monkeypatch.setattr(fit_module, "fit_gene_model", engine_reached)


def _raises_and_untouched(adata, exc, match, assert_adata_identical, fn=None, **kwargs):
    before = adata.copy() if isinstance(adata, ad.AnnData) else None
    with pytest.raises(exc, match=match):
        (fn or snb.tl.fit_zinb)(adata, **kwargs)
    if before is not None:
        assert_adata_identical(adata, before)


def test_engine_guard_is_active(adata):
    with pytest.raises(AssertionError, match="engine"):
        snb.tl.fit_zinb(adata, n_steps=1, progress_bar=False)


# ----------------------------------------------------------------------------- counts
_BAD_VALUES = [
    (-1.0, r"adata\.X.*negative.*min -1.*raw counts"),
    (0.5, r"adata\.X.*non-integer.*0\.5.*raw counts.*layer="),
    (np.nan, r"adata\.X.*NaN or infinite.*raw counts"),
    (np.inf, r"adata\.X.*NaN or infinite.*raw counts"),
]


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
@pytest.mark.parametrize(("value", "match"), _BAD_VALUES)
def test_invalid_count_values(fmt, value, match, counts, make_adata, assert_adata_identical):
    x = counts.astype(np.float32)
    x[5, 7] = value
    _raises_and_untouched(make_adata(x, fmt), ValueError, match, assert_adata_identical)


def test_invalid_values_in_layer_name_the_layer(adata, assert_adata_identical):
    bad = adata.X.copy()
    bad.data[0] = 0.25
    adata.layers["counts"] = bad
    _raises_and_untouched(
        adata,
        ValueError,
        r"adata\.layers\['counts'\] contains non-integer",
        assert_adata_identical,
        layer="counts",
    )


def test_all_zero_gene(counts, make_adata, assert_adata_identical):
    x = counts.copy()
    x[:, [3, 11]] = 0
    _raises_and_untouched(
        make_adata(x),
        ValueError,
        r"2 gene\(s\) have zero counts.*gene3, gene11.*snb\.pp\.filter_empty",
        assert_adata_identical,
    )


def test_all_zero_cells_are_allowed_by_validation(counts, make_adata):
    # an empty cell contributes a well-defined all-zero likelihood term; only genes need counts
    x = counts.copy()
    x[4] = 0
    with pytest.raises(AssertionError, match="engine"):
        snb.tl.fit_zinb(make_adata(x), progress_bar=False)


@pytest.mark.parametrize("shape", [(0, 40), (300, 0), (0, 0)])
def test_empty_adata(shape):
    a = ad.AnnData(np.zeros(shape, dtype=np.float32))
    with pytest.raises(
        ValueError, match=rf"`adata` is empty \({shape[0]} cells × {shape[1]} genes\)"
    ):
        snb.tl.fit_zinb(a)
    assert not a.varm and not a.uns


def test_x_is_none():
    a = ad.AnnData(obs=pd.DataFrame(index=["a", "b"]), var=pd.DataFrame(index=["g"]))
    with pytest.raises(ValueError, match=r"`adata\.X` is None.*`layer=`"):
        snb.tl.fit_zinb(a)
    assert not a.varm and not a.uns


def test_missing_layer(adata, assert_adata_identical):
    adata.layers["spliced"] = adata.X.copy()
    _raises_and_untouched(
        adata,
        KeyError,
        r"`layer`='counts' is not in `adata\.layers` \(available: 'spliced'\)",
        assert_adata_identical,
        layer="counts",
    )


def test_layer_wrong_type(adata, assert_adata_identical):
    _raises_and_untouched(
        adata,
        TypeError,
        r"`layer` must be the name of a layer.*got 0",
        assert_adata_identical,
        layer=0,
    )


def test_view_is_rejected(adata):
    view = adata[:100]
    with pytest.raises(ValueError, match=r"`adata` is a view.*\.copy\(\)"):
        snb.tl.fit_zinb(view)
    assert not adata.varm and not adata.uns
    assert view.is_view  # not silently actualised


@pytest.mark.parametrize(
    "obj", [np.ones((3, 2)), sp.csr_matrix(np.ones((3, 2))), pd.DataFrame({"a": [1]}), None]
)
def test_adata_wrong_type(obj):
    with pytest.raises(TypeError, match=r"`adata` must be an AnnData object.*anndata\.AnnData"):
        snb.tl.fit_zinb(obj)


# ----------------------------------------------------------------------------- arguments
_BAD_ARGS = [
    ({"n_steps": 10.0}, TypeError, r"`n_steps` must be an integer, got 10\.0"),
    ({"n_steps": True}, TypeError, r"`n_steps` must be an integer"),
    ({"n_steps": -5}, ValueError, r"`n_steps` must be >= 1, got -5"),
    ({"n_steps": 0}, ValueError, r"`n_steps` must be >= 1, got 0"),
    ({"learning_rate": 0}, ValueError, r"`learning_rate` must be a finite number > 0, got 0"),
    (
        {"learning_rate": -0.1},
        ValueError,
        r"`learning_rate` must be a finite number > 0, got -0\.1",
    ),
    ({"learning_rate": float("nan")}, ValueError, r"`learning_rate` must be a finite number > 0"),
    ({"learning_rate": float("inf")}, ValueError, r"`learning_rate` must be a finite number > 0"),
    ({"learning_rate": "0.1"}, TypeError, r"`learning_rate` must be a number, got '0\.1'"),
    ({"tol": 0.0}, ValueError, r"`tol` must be a finite number > 0"),
    ({"n_posterior_samples": 1}, ValueError, r"`n_posterior_samples` must be >= 2, got 1"),
    ({"rng": "0"}, TypeError, r"`rng` must be an int seed or a numpy\.random\.Generator, got '0'"),
    ({"rng": 1.5}, TypeError, r"`rng` must be an int seed"),
    ({"rng": None}, TypeError, r"`rng` must be an int seed.*rng=0"),
    ({"rng": -1}, ValueError, r"`rng` must be in \[0, 2\*\*32\), got -1"),
    ({"rng": 2**32}, ValueError, r"`rng` must be in \[0, 2\*\*32\)"),
    ({"progress_bar": "yes"}, TypeError, r"`progress_bar` must be True, False or None, got 'yes'"),
    ({"progress_bar": 1}, TypeError, r"`progress_bar` must be True, False or None, got 1"),
    ({"copy": "yes"}, TypeError, r"`copy` must be True or False, got 'yes'"),
    ({"copy": None}, TypeError, r"`copy` must be True or False, got None"),
    ({"key_added": ""}, ValueError, r"`key_added` must be a non-empty string.*got ''"),
    ({"key_added": "my key"}, ValueError, r"`key_added` must be a non-empty string of letters"),
    ({"key_added": "a/b"}, ValueError, r"`key_added` must be a non-empty string of letters"),
    ({"key_added": 3}, TypeError, r"`key_added` must be a string, got 3"),
    ({"inference": "nuts"}, ValueError, r"`inference`='nuts' is not one of 'svi', 'map', 'mcmc'"),
    ({"guide": "full_rank"}, ValueError, r"`guide`='full_rank' is not one of .*'mean_field'"),
    ({"guide": "map"}, ValueError, r"`guide`='map'.*use `inference='map'`"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), _BAD_ARGS, ids=lambda v: repr(v)[:40])
def test_bad_arguments(kwargs, exc, match, adata, assert_adata_identical):
    _raises_and_untouched(adata, exc, match, assert_adata_identical, **kwargs)


@pytest.mark.parametrize(
    ("model", "exc", "match"),
    [
        (
            "poisson_lognormal_xyz",
            ValueError,
            r"`model`='poisson_lognormal_xyz' is not a registered model; choose one of.*'nbdm'.*'zinb'",
        ),
        (3, TypeError, r"`model` must be a string, got int"),
    ],
)
def test_unknown_model(model, exc, match, adata, assert_adata_identical):
    _raises_and_untouched(adata, exc, match, assert_adata_identical, fn=snb.tl.fit, model=model)


# ----------------------------------------------------------------------------- priors
_BAD_PRIORS = [
    (
        {"q": (1, 1)},
        ValueError,
        r"`priors` has an unknown parameter 'q' for model 'zinb'; valid names are 'p', 'r', 'gate'",
    ),
    (
        {"p": ("gamma", (1, 1))},
        ValueError,
        r"`priors\['p'\]` uses family 'gamma'.*unit parameter; choose one of 'beta'",
    ),
    (
        {"r": ("beta", (1, 1))},
        ValueError,
        r"`priors\['r'\]` uses family 'beta'.*choose one of 'lognormal', 'gamma'",
    ),
    ({"r": ("cauchy", (0, 1))}, ValueError, r"`priors\['r'\]` uses family 'cauchy'"),
    (
        {"p": (1, 1, 1)},
        ValueError,
        r"`priors\['p'\]`.*a beta prior takes 2 hyperparameters \(alpha, beta\), got 3",
    ),
    (
        {"r": ("gamma", (2.0,))},
        ValueError,
        r"`priors\['r'\]`.*a gamma prior takes 2 hyperparameters \(shape, rate\), got 1",
    ),
    ({"p": (0, 1)}, ValueError, r"`priors\['p'\]`.*the beta alpha must be > 0"),
    ({"gate": (1, -9)}, ValueError, r"`priors\['gate'\]`.*the beta beta must be > 0"),
    (
        {"r": ("lognormal", (0, -1))},
        ValueError,
        r"`priors\['r'\]`.*the lognormal scale must be > 0",
    ),
    ({"r": ("gamma", (0, 1))}, ValueError, r"`priors\['r'\]`.*the gamma shape must be > 0"),
    ({"p": (np.nan, 1)}, ValueError, r"`priors\['p'\]`.*must be finite"),
    ({"p": ("beta", ("a", "b"))}, ValueError, r"`priors\['p'\]`.*hyperparameters must be numbers"),
    (
        {"r": "gamma"},
        ValueError,
        r"`priors\['r'\]` = 'gamma' gives a family but no hyperparameters",
    ),
    ([("p", (1, 1))], TypeError, r"`priors` must be a dict"),
]


@pytest.mark.parametrize(("priors", "exc", "match"), _BAD_PRIORS, ids=lambda v: repr(v)[:40])
def test_bad_priors(priors, exc, match, adata, assert_adata_identical):
    _raises_and_untouched(adata, exc, match, assert_adata_identical, priors=priors)


def test_zinb_only_prior_rejected_for_nbdm(adata, assert_adata_identical):
    _raises_and_untouched(
        adata,
        ValueError,
        r"unknown parameter 'gate' for model 'nbdm'; valid names are 'p', 'r'",
        assert_adata_identical,
        fn=snb.tl.fit_nbdm,
        priors={"gate": (1, 9)},
    )
