"""Bad input to the NB-family options of ``tl.fit`` and to ``tl.compare_models``: the right
error type, a message that names the argument and says what to do, raised before any JAX
work, and the input AnnData left exactly as it was. ``copy=True`` leaves the input untouched.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scnbtools as snb
import scnbtools.tl._fit as fit_module


@pytest.fixture
def no_engine(monkeypatch):
    """Validation must fail before the engine (SVI / MAP) or NUTS is reached."""

    def engine_reached(*args, **kwargs):
        raise AssertionError("bad input reached the fitting engine")

    monkeypatch.setattr(fit_module, "fit_gene_model", engine_reached)
    monkeypatch.setattr(fit_module, "run_mcmc_fit", engine_reached)


@pytest.fixture
def labelled(adata):
    """The standard 300 × 40 AnnData with a 3-category label column and a 1-category one."""
    adata.obs["cell_type"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(adata.n_obs) % 3])
    adata.obs["one_type"] = pd.Categorical(["a"] * adata.n_obs)
    return adata


def _raises_untouched(adata, exc, match, assert_adata_identical, fn=snb.tl.fit, **kwargs):
    before = adata.copy()
    with pytest.raises(exc, match=match):
        fn(adata, **kwargs)
    assert_adata_identical(adata, before)


def test_engine_guard_is_active(no_engine, adata):
    with pytest.raises(AssertionError, match="engine"):
        snb.tl.fit(adata, model="nbdm", n_components=2, n_steps=1, progress_bar=False)


_BAD = [
    # ------------------------------------------------------------------ n_components
    ({"n_components": 0}, ValueError, r"`n_components` must be >= 1, got 0"),
    ({"n_components": -1}, ValueError, r"`n_components` must be >= 1, got -1"),
    ({"n_components": 1.5}, TypeError, r"`n_components` must be a positive integer, got 1\.5"),
    ({"n_components": True}, TypeError, r"`n_components` must be a positive integer, got True"),
    ({"n_components": "2"}, TypeError, r"`n_components` must be a positive integer, got '2'"),
    # ------------------------------------------------------------------ parameterization
    (
        {"parameterization": "mean"},
        ValueError,
        r"`parameterization`='mean' is not one of 'canonical', 'mean_prob', 'mean_odds'",
    ),
    (
        {"parameterization": None},
        ValueError,
        r"`parameterization`=None is not one of 'canonical', 'mean_prob', 'mean_odds'",
    ),
    # ------------------------------------------------------------------ annotations
    (
        {"annotation_key": "celltype", "n_components": 3},
        KeyError,
        r"`annotation_key`='celltype' is not a column of adata\.obs; available columns: "
        r".*'cell_type'",
    ),
    (
        {"annotation_key": "cell_type", "n_components": 2},
        ValueError,
        r"`adata\.obs\['cell_type'\]` has 3 categories \(a, b, c\) but `n_components`=2.*"
        r"Use n_components >= 3 or n_components=None",
    ),
    (
        {"annotation_key": "one_type"},
        ValueError,
        r"`annotation_key` needs a mixture.*single category.*drop `annotation_key` or use more",
    ),
    (
        {"annotation_key": "cell_type", "annotation_confidence": -1.0},
        ValueError,
        r"`annotation_confidence` must be a finite number >= 0, got -1\.0",
    ),
    # ------------------------------------------------------------------ priors
    (
        {"model": "nbvcp", "priors": {"capture_efficiency": (1.0,)}},
        ValueError,
        r"`priors\['capture_efficiency'\]` must be \(log M0, sigma\).*got \(1\.0,\)",
    ),
    (
        {"model": "zinbvcp", "priors": {"capture_efficiency": "high"}},
        ValueError,
        r"`priors\['capture_efficiency'\]` must be \(log M0, sigma\).*got 'high'",
    ),
    (
        {"model": "nbvcp", "priors": {"nu": (1, 2, 3)}},
        ValueError,
        r"`priors\['nu'\]`.*a beta prior takes 2 hyperparameters \(alpha, beta\), got 3",
    ),
    (
        {"model": "nbdm", "priors": {"capture_efficiency": (9.0, 1.0)}},
        ValueError,
        r"`priors\['capture_efficiency'\]` applies only to capture models "
        r"\(model='nbvcp' or 'zinbvcp'\)",
    ),
    (
        {"model": "nbvcp", "priors": {"nu": (4, 2), "capture_efficiency": (9.0, 1.0)}},
        ValueError,
        r"`priors` sets both 'nu'.*and 'capture_efficiency'.*choose one",
    ),
    (
        {"model": "nbdm", "priors": {"r": (0.0, 1.0), "dispersion": (0.0, 2.0)}},
        ValueError,
        r"`priors` names 'r' twice \(directly and through its alias 'dispersion'\); keep one",
    ),
    (
        {
            "model": "zinb",
            "parameterization": "mean_prob",
            "priors": {"expression": (0.0, 1.0), "mu": (0.0, 2.0)},
        },
        ValueError,
        r"`priors` names 'mu' twice \(directly and through its alias 'expression'\); keep one",
    ),
    # ------------------------------------------------------------------ mixture_params
    (
        {"model": "nbdm", "n_components": 2, "mixture_params": ("gate",)},
        ValueError,
        r"`mixture_params` has \['gate'\], which is not a parameter of nbdm \(canonical\); "
        r"choose from 'p', 'r' or 'all'",
    ),
    (
        {"model": "zinb", "n_components": 2, "mixture_params": ("r", "nu")},
        ValueError,
        r"`mixture_params` has \['nu'\].*choose from 'p', 'r', 'gate' or 'all'",
    ),
    (
        {"model": "nbdm", "n_components": 2, "mixture_params": ()},
        ValueError,
        r"`mixture_params` is empty; name at least one parameter or use None",
    ),
    (
        {"model": "nbdm", "mixture_params": "all"},
        ValueError,
        r"`mixture_params` needs `n_components` > 1",
    ),
    (
        {"model": "nbdm", "n_components": 1, "mixture_params": ("r",)},
        ValueError,
        r"`mixture_params` needs `n_components` > 1",
    ),
    # ------------------------------------------------------------------ guide_rank / init_from
    (
        {"model": "nbdm", "guide_rank": 3, "batch_size": 100},
        ValueError,
        r"`guide_rank` needs full-data steps.*minibatches of 100; pass `batch_size=None`",
    ),
    (
        {"model": "nbdm", "n_components": 2, "guide_rank": 2, "batch_size": 64},
        ValueError,
        r"`guide_rank` needs full-data steps.*minibatches of 64; pass `batch_size=None`",
    ),
    ({"guide_rank": 0}, ValueError, r"`guide_rank` must be >= 1, got 0"),
    (
        {"guide_rank": 2, "inference": "map"},
        ValueError,
        r"`guide_rank` applies to `inference='svi'` only",
    ),
    (
        {"model": "nbdm", "init_from": "nbdm"},
        ValueError,
        r"`init_from` applies to `inference='mcmc'` only",
    ),
    (
        {"model": "nbdm", "inference": "map", "init_from": "nbdm"},
        ValueError,
        r"`init_from` applies to `inference='mcmc'` only",
    ),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), _BAD, ids=lambda v: repr(v)[:60])
def test_bad_nb_family_options(kwargs, exc, match, no_engine, labelled, assert_adata_identical):
    _raises_untouched(labelled, exc, match, assert_adata_identical, progress_bar=False, **kwargs)


@pytest.mark.parametrize("model", ["nbvcp", "zinbvcp"])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_empty_cells_with_a_capture_model(
    model, fmt, no_engine, counts, make_adata, assert_adata_identical
):
    x = counts.copy()
    x[[4, 9]] = 0
    _raises_untouched(
        make_adata(x, fmt),
        ValueError,
        r"2 cells have no counts; capture models need every cell's library size\. "
        r"Remove them first, e.g\. `snb\.pp\.filter_empty\(adata\)`",
        assert_adata_identical,
        model=model,
        progress_bar=False,
    )


def test_empty_cells_are_fine_without_capture(no_engine, counts, make_adata):
    # control for the test above: the same data pass validation for a model without capture
    x = counts.copy()
    x[[4, 9]] = 0
    with pytest.raises(AssertionError, match="engine"):
        snb.tl.fit(make_adata(x), model="nbdm", progress_bar=False)


def test_init_from_unknown_fit_fails_before_sampling(adata, monkeypatch, assert_adata_identical):
    import scnbtools._core.infer.mcmc as mcmc_module

    def nuts_reached(*args, **kwargs):
        raise AssertionError("NUTS reached")

    monkeypatch.setattr(mcmc_module, "run_nuts", nuts_reached)
    _raises_untouched(
        adata,
        KeyError,
        r"`key`='svi_fit': no scnbtools fit.*snb\.tl\.fit_zinb\(adata, key_added='svi_fit'\)",
        assert_adata_identical,
        model="nbdm",
        inference="mcmc",
        init_from="svi_fit",
        progress_bar=False,
    )


# ----------------------------------------------------------------------------- copy=True
def test_copy_true_leaves_the_input_untouched(mixture_fit, assert_adata_identical):
    a, before, out = mixture_fit
    assert_adata_identical(a, before)
    assert "mix" not in a.uns and "mix_assignment" not in a.obsm
    assert out is not a and "mix" in out.uns and "mix_assignment" in out.obsm
    assert out.X is not a.X
    np.testing.assert_array_equal(out.X.toarray(), a.X.toarray())


# ----------------------------------------------------------------------------- compare_models
@pytest.fixture
def mixture_fitted(mixture_fit):
    """A private copy of the fitted mixture, with the fit also stored under ``"mix_copy"``."""
    out = mixture_fit[2].copy()
    out.uns["mix_copy"] = out.uns["mix"]
    return out


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"keys": ["mix"]},
            ValueError,
            r"`keys` must name at least two fits to compare, got \['mix'\]",
        ),
        ({"keys": "mix"}, TypeError, r"`keys` must be a list of fit keys, got 'mix'"),
        ({"keys": ["mix", "mix"]}, ValueError, r"`keys` has duplicates"),
        (
            {"keys": ["mix", "zinb"]},
            KeyError,
            r"`key`='zinb': no scnbtools fit under this key.*fits found: 'mix', 'mix_copy'.*"
            r"snb\.tl\.fit_zinb\(adata, key_added='zinb'\)",
        ),
        (
            {"keys": ["mix", "mix_copy"], "unit": "gene"},
            ValueError,
            r"per-gene comparison is not defined for mixtures \(mix, mix_copy\).*Use unit='cell'",
        ),
        (
            {"keys": ["mix", "mix_copy"], "unit": "genes"},
            ValueError,
            r"`unit`='genes' is not one of 'auto', 'cell', 'gene'",
        ),
        (
            {"keys": ["mix", "mix_copy"], "criterion": "aic"},
            ValueError,
            r"`criterion`='aic' is not one of 'loo', 'waic'",
        ),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_compare_models_bad_input(kwargs, exc, match, mixture_fitted, assert_adata_identical):
    _raises_untouched(
        mixture_fitted, exc, match, assert_adata_identical, fn=snb.tl.compare_models, **kwargs
    )


def test_compare_models_rejects_fits_of_other_data(mixture_fitted, assert_adata_identical):
    sub = mixture_fitted[:200].copy()
    _raises_untouched(
        sub,
        ValueError,
        r"the fit 'mix' was made on 500 cells but adata has 200; compare fits on the AnnData",
        assert_adata_identical,
        fn=snb.tl.compare_models,
        keys=["mix", "mix_copy"],
    )
