"""``pp.check_counts`` and ``pp.filter_empty``."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnbtools as snb

SUMMARY_FIELDS = [
    "n_cells",
    "n_genes",
    "nonzero_fraction",
    "max_count",
    "n_zero_genes",
    "n_zero_cells",
]


@pytest.fixture
def sparse_counts(counts):
    """Standard counts with genes 3 and 11 and cells 0, 5, 6 emptied."""
    x = counts.copy()
    x[:, [3, 11]] = 0
    x[[0, 5, 6]] = 0
    return x


# ----------------------------------------------------------------------------- check_counts
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_check_counts_summary(fmt, sparse_counts, make_adata, assert_adata_identical):
    a = make_adata(sparse_counts, fmt)
    before = a.copy()
    s = snb.pp.check_counts(a)
    assert isinstance(s, pd.Series)
    assert list(s.index) == SUMMARY_FIELDS
    assert s["n_cells"] == 300 and s["n_genes"] == 40
    assert s["nonzero_fraction"] == pytest.approx(np.mean(sparse_counts > 0))
    assert s["max_count"] == sparse_counts.max()
    assert s["n_zero_genes"] == 2
    assert s["n_zero_cells"] == 3
    assert_adata_identical(a, before)


def test_check_counts_uses_layer_and_accepts_views(adata, counts):
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(counts / 2.0))
    s = snb.pp.check_counts(adata[:100], layer="counts")
    assert s["n_cells"] == 100
    assert s["max_count"] == counts[:100].max()
    with pytest.raises(ValueError, match=r"adata\.X contains non-integer values.*layer="):
        snb.pp.check_counts(adata)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-2.0, r"negative values \(min -2\)"),
        (1.5, r"non-integer values \(e\.g\. 1\.5\)"),
        (np.nan, r"NaN or infinite"),
        (-np.inf, r"NaN or infinite"),
    ],
)
@pytest.mark.parametrize("fn", [snb.pp.check_counts, snb.pp.filter_empty])
def test_pp_rejects_non_counts(fn, value, match, counts, make_adata, assert_adata_identical):
    x = counts.astype(np.float32)
    x[1, 2] = value
    a = make_adata(x, "csr")
    a.layers["counts"] = a.X.copy()
    before = a.copy()
    with pytest.raises(
        ValueError, match=r"adata\.layers\['counts'\] contains " + match + r".*raw counts"
    ):
        fn(a, layer="counts")
    assert_adata_identical(a, before)


@pytest.mark.parametrize("fn", [snb.pp.check_counts, snb.pp.filter_empty])
def test_pp_bad_arguments(fn, adata):
    with pytest.raises(
        KeyError, match=r"`layer`='counts' is not in `adata\.layers` \(available: none\)"
    ):
        fn(adata, layer="counts")
    with pytest.raises(TypeError, match=r"`adata` must be an AnnData object"):
        fn(adata.X)
    with pytest.raises(ValueError, match=r"`adata` is empty \(0 cells × 3 genes\)"):
        fn(ad.AnnData(np.zeros((0, 3))))


# ----------------------------------------------------------------------------- filter_empty
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_filter_empty_copy_leaves_input_untouched(
    fmt, sparse_counts, make_adata, assert_adata_identical
):
    a = make_adata(sparse_counts, fmt)
    before = a.copy()
    out = snb.pp.filter_empty(a, copy=True)
    assert_adata_identical(a, before)
    keep_c, keep_g = sparse_counts.sum(axis=1) > 0, sparse_counts.sum(axis=0) > 0
    assert out.shape == (297, 38)
    pd.testing.assert_index_equal(out.obs_names, a.obs_names[keep_c])
    pd.testing.assert_index_equal(out.var_names, a.var_names[keep_g])
    assert list(out.var["symbol"]) == list(a.var["symbol"][keep_g])
    X = out.X.toarray() if sp.issparse(out.X) else out.X
    np.testing.assert_array_equal(X, sparse_counts[np.ix_(keep_c, keep_g)])
    s = snb.pp.check_counts(out)
    assert s["n_zero_genes"] == 0 and s["n_zero_cells"] == 0


def test_filter_empty_in_place_matches_copy(sparse_counts, make_adata, assert_adata_identical):
    a = make_adata(sparse_counts)
    out = snb.pp.filter_empty(a, copy=True)
    assert snb.pp.filter_empty(a) is None
    assert_adata_identical(a, out)


def test_filter_empty_judges_the_layer(adata, counts):
    x = counts.copy()
    x[:, 7] = 0
    adata.layers["counts"] = sp.csr_matrix(x.astype(np.float32))
    snb.pp.filter_empty(adata, layer="counts")  # X has no empty gene; the layer does
    assert adata.n_vars == 39 and "gene7" not in adata.var_names
    assert adata.n_obs == 300


def test_filter_empty_nothing_to_remove(adata, assert_adata_identical):
    before = adata.copy()
    assert snb.pp.filter_empty(adata) is None
    assert_adata_identical(adata, before)


def test_filter_empty_views_only_with_copy(sparse_counts, make_adata):
    a = make_adata(sparse_counts)
    view = a[:50]
    out = snb.pp.filter_empty(view, copy=True)
    assert out.n_obs == 47 and not out.is_view
    with pytest.raises(ValueError, match=r"`adata` is a view.*\.copy\(\)"):
        snb.pp.filter_empty(view)


def test_filter_empty_copy_must_be_bool(adata):
    with pytest.raises(TypeError, match=r"`copy` must be True or False, got 'yes'"):
        snb.pp.filter_empty(adata, copy="yes")
    assert adata.n_obs == 300


def test_filter_empty_logs_what_it_removed(sparse_counts, make_adata, caplog, restore_settings):
    restore_settings.verbosity = 2
    with caplog.at_level(logging.INFO, logger="scnbtools"):
        snb.pp.filter_empty(make_adata(sparse_counts))
    msgs = [r.getMessage() for r in caplog.records if r.name == "scnbtools"]
    assert any("2 all-zero gene(s) and 3 all-zero cell(s)" in m for m in msgs)
