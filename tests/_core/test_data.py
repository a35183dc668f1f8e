"""``CountData``: format agreement, sufficient statistics, validation, no densification."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import special, stats

from scnbtools._core import data as data_mod
from scnbtools._core.data import CountData, CountValidationError
from scnbtools._core.engine import histogram_arrays
from scnbtools._core.models import get_model
from scnbtools._core.models._spec import dense_loglik, hist_loglik


def _summary(cd: CountData) -> dict[str, np.ndarray]:
    """Everything CountData computes, as flat arrays."""
    h = cd.gene_histograms()
    s = h.survival()
    rows = cd.padded_rows()
    mean, var = cd.gene_moments()
    return {
        "hist.value": h.value, "hist.gene": h.gene, "hist.weight": h.weight,
        "hist.n_zeros": h.n_zeros, "hist.n_cells": np.asarray(h.n_cells),
        "surv.gene": s.gene, "surv.j": s.j, "surv.count": s.count,
        "surv.log_factorial_sum": np.asarray(s.log_factorial_sum),
        "rows.cols": rows.cols, "rows.vals": rows.vals,
        "mean": mean, "var": var,
        "gene_totals": cd.gene_totals(), "cell_totals": cd.cell_totals(),
        "zero_genes": cd.zero_genes(), "zero_cells": cd.zero_cells(),
    }  # fmt: skip


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, f"{what}: {k} shape {a[k].shape} != {b[k].shape}"
        assert a[k].dtype == b[k].dtype, f"{what}: {k} dtype {a[k].dtype} != {b[k].dtype}"
        # moments go through different summation orders (chunked dense vs sparse sums)
        if k in ("mean", "var"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=f"{what}: {k}")
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


# ----------------------------------------------------------------------------- correctness
def test_statistics_match_brute_force(raw_counts, monkeypatch):
    """Histograms, survival counts, moments and padded rows equal a direct numpy computation.

    ``_CHUNK_ROWS`` is shrunk so the dense path crosses many chunk boundaries.
    """
    monkeypatch.setattr(data_mod, "_CHUNK_ROWS", 10)
    x = raw_counts
    cd = CountData(x)
    n, g = x.shape
    assert cd.shape == (n, g) and not cd.is_sparse

    h = cd.gene_histograms()
    assert h.n_cells == n and h.n_genes == g
    for j in range(g):
        want = np.bincount(x[:, j])
        np.testing.assert_array_equal(h.dense(j), want, err_msg=f"gene {j}")
        sel = h.gene == j
        np.testing.assert_array_equal(h.value[sel], np.flatnonzero(want[1:]) + 1)
        assert h.n_zeros[j] == np.sum(x[:, j] == 0)
    assert h.weight.sum() + h.n_zeros.sum() == n * g
    assert h.n_unique == sum(len(np.unique(x[:, j][x[:, j] > 0])) for j in range(g))

    s = h.survival()
    for j in range(g):
        sel = s.gene == j
        top = int(x[:, j].max())
        np.testing.assert_array_equal(s.j[sel], np.arange(top), err_msg=f"gene {j}")
        np.testing.assert_array_equal(
            s.count[sel], [(x[:, j] > k).sum() for k in range(top)], err_msg=f"gene {j}"
        )
    assert s.size == x.max(axis=0).sum()
    np.testing.assert_allclose(s.log_factorial_sum, special.gammaln(x + 1.0).sum(), rtol=1e-12)

    mean, var = cd.gene_moments()
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(cd.gene_totals(), x.sum(axis=0))
    np.testing.assert_array_equal(cd.cell_totals(), x.sum(axis=1))
    np.testing.assert_array_equal(cd.zero_genes(), [0])
    np.testing.assert_array_equal(cd.zero_cells(), [0])

    rows = cd.padded_rows()
    assert rows.n_genes == g
    assert rows.cols.shape[1] == max((x > 0).sum(axis=1).max(), 1)
    dense = np.zeros((n, g + 1), np.float32)
    np.add.at(dense, (np.arange(n)[:, None].repeat(rows.cols.shape[1], 1), rows.cols), rows.vals)
    np.testing.assert_array_equal(dense[:, :g], x.astype(np.float32))
    assert np.all(dense[:, g] == 0), "padding must carry value 0"
    np.testing.assert_array_equal(cd.dense_rows([3, 1]), x[[3, 1]].astype(np.float32))


@pytest.mark.parametrize(
    "fmt", ["csr_matrix", "csc_matrix", "csr_array", "csc_array", "coo_matrix", "coo_array"]
)
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_sparse_formats_agree_with_dense(raw_counts, sparse_formats, fmt, dtype):
    """Dense, CSR, CSC (and COO, converted) give identical statistics."""
    x = raw_counts.astype(dtype)
    dense = _summary(CountData(x))
    X = sparse_formats[fmt](x)
    cd = CountData(X)
    assert cd.is_sparse and cd.X.format in ("csr", "csc")
    _assert_same(dense, _summary(cd), fmt)


def test_explicit_zeros_and_unsorted_indices(raw_counts):
    """Stored zeros count as zeros; unsorted indices are fine; the input is not modified."""
    x = raw_counts
    csr = sp.csr_matrix(x)
    # store an explicit zero in every row and shuffle each row's entries
    rng = np.random.default_rng(1)
    rows, cols, vals = [], [], []
    for i in range(x.shape[0]):
        nz = np.flatnonzero(x[i])
        zero_cols = np.flatnonzero(x[i] == 0)
        extra = rng.choice(zero_cols, size=min(2, zero_cols.size), replace=False)
        c = np.concatenate([nz, extra])
        v = np.concatenate([x[i, nz], np.zeros(extra.size, x.dtype)])
        perm = rng.permutation(c.size)
        rows.append(np.full(c.size, i))
        cols.append(c[perm])
        vals.append(v[perm])
    indptr = np.r_[0, np.cumsum([c.size for c in cols])]
    weird = sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr), shape=x.shape)
    weird.has_sorted_indices = False
    assert weird.nnz > csr.nnz, "the test matrix must hold explicit zeros"
    before = (weird.data.copy(), weird.indices.copy(), weird.indptr.copy())

    want = _summary(CountData(x))
    _assert_same(want, _summary(CountData(weird)), "csr with stored zeros")
    ordered = weird.copy()
    ordered.sort_indices()  # sorted, zeros still stored
    assert ordered.has_sorted_indices and np.any(ordered.data == 0)
    _assert_same(want, _summary(CountData(ordered)), "sorted csr with stored zeros")
    _assert_same(want, _summary(CountData(weird.tocsc())), "csc with stored zeros")
    for a, b in zip(before, (weird.data, weird.indices, weird.indptr), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bool_counts_are_zero_one(raw_counts):
    x = raw_counts > 2
    _assert_same(_summary(CountData(x.astype(np.int64))), _summary(CountData(x)), "bool")


# ----------------------------------------------------------------------------- likelihood
def _random_values(spec, n_genes: int, rng) -> dict[str, jax.Array]:
    vals = {
        "p": rng.uniform(0.1, 0.9),
        "r": np.exp(rng.normal(0.0, 1.5, n_genes)),
        "gate": rng.uniform(0.01, 0.8, n_genes),
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in vals.items() if k in spec.site_names}


def _scipy_loglik(x, values) -> float:
    """float64 full-data log-likelihood (NB in the NumPyro convention; ZI mixed by hand)."""
    v = {k: np.asarray(a, np.float64) for k, a in values.items()}
    lp = stats.nbinom.logpmf(x, v["r"], 1.0 - v["p"])
    if "gate" in v:
        g = v["gate"]
        lp = np.where(x == 0, np.logaddexp(np.log(g), np.log1p(-g) + lp), np.log1p(-g) + lp)
    return float(lp.sum())


@pytest.mark.parametrize("fmt", ["dense", "float32", "csr", "csc"])
def test_count_histograms_by_bincount_equal_the_sorted_non_zeros(fmt, raw_counts, monkeypatch):
    """The bincount histograms (dense row chunks or sparse values) list exactly each gene's
    distinct non-zero counts with their multiplicities, gene-major and sorted, and
    ``gene_histograms`` gives the same arrays by either path (bincount or sort)."""
    monkeypatch.setattr(data_mod, "_HIST_CHUNK", 1000)  # many dense chunks, a short last one
    x = raw_counts.copy()
    x[5, 2] = 70_000  # a large count: many empty bins
    mat = {
        "dense": x,
        "float32": x.astype(np.float32),
        "csr": sp.csr_matrix(x),
        "csc": sp.csc_matrix(x),
    }[fmt]
    cd = CountData(mat)
    gene, value, mult = cd.count_histograms()
    want = {}
    for i, j in zip(*np.nonzero(x), strict=True):
        want[(j, x[i, j])] = want.get((j, x[i, j]), 0) + 1
    assert (
        dict(zip(zip(gene.tolist(), value.tolist(), strict=True), mult.tolist(), strict=True))
        == want
    )
    order = np.lexsort((value, gene))
    np.testing.assert_array_equal(order, np.arange(gene.shape[0]))  # gene-major, then value
    assert cd.count_histograms(max_bins=70_000) is None  # too many bins: no histograms
    fast = cd.gene_histograms()
    monkeypatch.setattr(CountData, "count_histograms", lambda self, max_bins=0: None)
    slow = cd.gene_histograms()
    for name in ("value", "gene", "weight", "n_zeros"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
        assert getattr(fast, name).dtype == getattr(slow, name).dtype, name


@pytest.mark.parametrize("model", ["nbdm", "zinb"])
def test_histogram_loglik_equals_dense(model, raw_counts):
    """The histogram likelihood (plain and with the closed-form survival normaliser) equals
    the dense per-cell sum, and both equal scipy in float64, to float32 precision.

    Tolerance: relative 2e-6 of the total. Measured worst over 20 draws: 2.8e-7 (plain
    histogram), 2.0e-7 (survival), 1.4e-7 (dense). The survival path that subtracted
    ``Σ lgamma(x + 1)`` as a separate float32 total was off by 6e-6 here and fails.
    """
    spec = get_model(model)
    x = raw_counts
    hist = CountData(sp.csr_matrix(x)).gene_histograms()
    plain, surv = histogram_arrays(hist), histogram_arrays(hist, spec)
    assert "surv_gene" not in plain and "surv_gene" in surv, "both likelihood paths are tested"
    f_hist = jax.jit(lambda v, h: hist_loglik(spec, v, h))
    f_dense = jax.jit(lambda v, x: dense_loglik(spec, v, x))
    rng = np.random.default_rng(0)
    for _ in range(4):
        values = _random_values(spec, x.shape[1], rng)
        want = _scipy_loglik(x, values)
        got = {
            "histogram": float(f_hist(values, plain)),
            "survival": float(f_hist(values, surv)),
            "dense": float(f_dense(values, jnp.asarray(x, jnp.float32))),
        }
        for path, value in got.items():
            assert value == pytest.approx(want, rel=2e-6), f"{path}: {value} vs scipy {want}"


# ----------------------------------------------------------------------------- validation
_NAME = "adata.layers['counts']"
_BAD = {
    "negative": (np.array([[1.0, -1.0], [0.0, 2.0]]), "negative values .*raw counts"),
    "non-integer": (np.array([[1.0, 0.5], [0.0, 2.0]]), r"non-integer values \(e\.g\. 0\.5\).*raw counts"),
    "log1p-normalized": (np.log1p(np.array([[1.0, 3.0], [0.0, 2.0]])), "non-integer.*raw counts"),
    "nan": (np.array([[1.0, np.nan], [0.0, 2.0]]), "NaN or infinite.*raw counts"),
    "inf": (np.array([[1.0, np.inf], [0.0, 2.0]]), "NaN or infinite.*raw counts"),
    "complex": (np.array([[1.0 + 0j, 2.0], [0.0, 2.0]]), "dtype complex128.*raw counts"),
    "empty cells": (np.zeros((0, 3)), r"empty \(shape 0 × 3\)"),
    "empty genes": (np.zeros((3, 0)), r"empty \(shape 3 × 0\)"),
}  # fmt: skip
_DENSE_ONLY = {
    "1-D": (np.array([1.0, 2.0]), r"2-D cells × genes matrix of raw counts, got shape \(2,\)"),
    "3-D": (np.zeros((2, 2, 2)), r"2-D cells × genes matrix of raw counts"),
    "strings": (np.array([["1", "2"]]), "dtype <U1.*raw counts"),
    "object": (np.array([[1, 2]], dtype=object), "dtype object.*raw counts"),
}


def _invalid_cases():
    sparse = {"csr": sp.csr_matrix, "csc": sp.csc_matrix}
    out = [pytest.param(X, msg, id=f"dense-{k}") for k, (X, msg) in {**_BAD, **_DENSE_ONLY}.items()]
    for fmt, make in sparse.items():
        out += [pytest.param(make(X), msg, id=f"{fmt}-{k}") for k, (X, msg) in _BAD.items()]
    return out


@pytest.mark.parametrize(("X", "msg"), _invalid_cases())
def test_invalid_counts_raise(X, msg):
    with pytest.raises(CountValidationError, match=msg) as err:
        CountData(X, name=_NAME)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(_NAME), "the message must name the matrix"


def test_one_dimensional_sparse_raises():
    with pytest.raises(CountValidationError, match="2-D cells × genes"):
        CountData(sp.coo_array(np.array([1.0, 2.0, 0.0])))


def test_non_array_input_is_type_error():
    with pytest.raises(TypeError, match="numpy array or scipy sparse matrix, got dict"):
        CountData({"a": 1})


def test_validation_reads_every_chunk(monkeypatch):
    """A bad value in the last dense chunk is still found."""
    monkeypatch.setattr(data_mod, "_CHUNK_ROWS", 4)
    x = np.ones((11, 3))
    x[10, 2] = 0.25
    with pytest.raises(CountValidationError, match="non-integer"):
        CountData(x)


# ----------------------------------------------------------------------------- no densification
@pytest.mark.parametrize("fmt", ["csr_matrix", "csc_matrix", "csr_array", "coo_array"])
def test_sparse_input_is_never_densified(raw_counts, sparse_formats, fmt, monkeypatch):
    """Validation, histograms, survival, moments, totals and padded rows work on the sparse
    structure only: densifying any scipy sparse matrix or array raises during the test."""
    X = sparse_formats[fmt](raw_counts.astype(np.float32))
    want = _summary(CountData(raw_counts.astype(np.float32)))

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was densified")

    for cls in set(sparse_formats.values()) | {sp.spmatrix, sp.sparray}:
        for method in ("toarray", "todense"):
            monkeypatch.setattr(cls, method, refuse, raising=False)
    with pytest.raises(AssertionError, match="densified"):  # the trap works
        X.toarray()
    _assert_same(want, _summary(CountData(X)), fmt)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_duplicate_sparse_entries_are_summed_like_toarray(fmt, raw_counts):
    """A sparse matrix may store one (cell, gene) entry several times, meaning their sum:
    every statistic equals the dense matrix's, and the caller's matrix is not changed."""
    x = raw_counts
    ref = sp.csr_matrix(x) if fmt == "csr" else sp.csc_matrix(x)
    half = ref.data // 2  # each entry stored twice, as half and the rest (zeros included)
    data = np.stack([half, ref.data - half], axis=1).ravel()
    cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    mat = cls((data, np.repeat(ref.indices, 2), 2 * ref.indptr), shape=x.shape)
    assert not mat.has_canonical_format
    before = (mat.data.copy(), mat.indices.copy(), mat.indptr.copy())
    np.testing.assert_array_equal(mat.toarray(), x)
    got, want = CountData(mat), CountData(x)
    for a, b in zip(got.count_histograms(), want.count_histograms(), strict=True):
        np.testing.assert_array_equal(a, b)
    _assert_same(_summary(got), _summary(want), f"{fmt} with duplicates")
    for a, b in zip((mat.data, mat.indices, mat.indptr), before, strict=True):
        np.testing.assert_array_equal(a, b)
