"""Shared fixtures: small seeded synthetic count data and fitted AnnData objects.

Fitting is dominated by XLA compilation (each fit builds fresh jitted closures), not by
the optimisation itself. A session-scoped persistent compilation cache lets every later
fit with the same model, guide, priors and data shape reuse the compiled program, so the
contract tests share one standard configuration, ``FIT_KW``, wherever they can. The cache
only skips recompiling identical programs; tracing (and so the engine's own
no-recompilation counters) is unaffected.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnbtools as snb

N_CELLS, N_GENES = 300, 40

#: the standard short fit of the contract tests (short but enough for finite summaries)
FIT_KW = {"n_steps": 200, "n_posterior_samples": 200, "progress_bar": False}

_CACHE_DIR: str | None = None


def pytest_configure(config):
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="scnbtools-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def _zinb_counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    """Seeded ZINB counts (int64, cells × genes) with no all-zero gene or cell.

    ``r_g ~ LogNormal(0, 1)``, shared ``p = 0.6`` (NumPyro convention, mean ``r p / (1 - p)``),
    gates ``~ U(0, 0.3)``. One count is added where a gene or cell would be all-zero.
    """
    rng = np.random.default_rng(seed)
    r = rng.lognormal(0.0, 1.0, n_genes)
    p = 0.6
    gate = rng.uniform(0.0, 0.3, n_genes)
    x = rng.negative_binomial(r, 1.0 - p, size=(n_cells, n_genes))
    x = x * (rng.uniform(size=(n_cells, n_genes)) >= gate)
    for g in np.flatnonzero(x.sum(axis=0) == 0):
        x[g % n_cells, g] = 1
    for c in np.flatnonzero(x.sum(axis=1) == 0):
        x[c, c % n_genes] = 1
    return x.astype(np.int64)


def _make_adata(x: np.ndarray, fmt: str = "csr") -> ad.AnnData:
    """AnnData with float32 counts in ``X`` as ``fmt`` (``dense``, ``csr``, ``csc``) and names."""
    x = np.asarray(x, dtype=np.float32)
    X = {
        "dense": lambda: x.copy(),
        "csr": lambda: sp.csr_matrix(x),
        "csc": lambda: sp.csc_matrix(x),
    }[fmt]()
    n_cells, n_genes = x.shape
    obs = pd.DataFrame(
        {"batch": pd.Categorical(np.arange(n_cells) % 2)},
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(
        {"symbol": [f"G{j}" for j in range(n_genes)]},
        index=pd.Index([f"gene{j}" for j in range(n_genes)]),
    )
    return ad.AnnData(X=X, obs=obs, var=var)


@contextlib.contextmanager
def _short_fit():
    """The shared fits are deliberately too short to converge; silence only that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"the \w+ fit did not converge", category=UserWarning
        )
        yield


@pytest.fixture(scope="session")
def make_adata():
    """``make_adata(x, fmt="csr")``: AnnData of counts ``x`` as dense / csr / csc, with names."""
    return _make_adata


@pytest.fixture(scope="session")
def counts() -> np.ndarray:
    """The standard 300 × 40 ZINB count matrix (do not modify: session-scoped)."""
    x = _zinb_counts()
    x.setflags(write=False)
    return x


@pytest.fixture
def adata(counts) -> ad.AnnData:
    """A fresh CSR AnnData of the standard counts, with obs/var names and one column each."""
    return _make_adata(counts)


@pytest.fixture(scope="session")
def fit_kw() -> dict:
    """Keyword arguments of the standard short fit (a copy per use is the caller's job)."""
    return dict(FIT_KW)


@pytest.fixture(scope="session")
def fitted(counts) -> ad.AnnData:
    """``tl.fit_zinb`` on the standard counts with ``FIT_KW`` (session-scoped: never mutate
    it; take ``.copy()`` first)."""
    with _short_fit():
        return snb.tl.fit_zinb(_make_adata(counts), copy=True, **FIT_KW)


@pytest.fixture(scope="session")
def fitted_nbdm(counts) -> ad.AnnData:
    """``tl.fit(model="nbdm")`` on the standard counts with ``FIT_KW`` (never mutate it)."""
    with _short_fit():
        return snb.tl.fit(_make_adata(counts), model="nbdm", copy=True, **FIT_KW)


@pytest.fixture(scope="session")
def fitted_map(counts) -> ad.AnnData:
    """``tl.fit_zinb(inference="map", key_added="zinb_map")`` on the standard counts."""
    with _short_fit():
        return snb.tl.fit_zinb(
            _make_adata(counts), inference="map", key_added="zinb_map", copy=True, **FIT_KW
        )


@pytest.fixture
def restore_settings():
    """Restore ``snb.settings`` (and so the "scnbtools" logger level) after a test."""
    saved = (snb.settings.progress_bar, snb.settings.verbosity)
    yield snb.settings
    snb.settings.progress_bar, snb.settings.verbosity = saved


# ----------------------------------------------------------------------------- comparisons
_SLOTS = ("obs", "var", "obsm", "varm", "layers", "obsp", "varp", "uns")


def _adata_keys(a: ad.AnnData) -> dict[str, set]:
    """Key sets of every slot (obs/var columns, obsm, varm, layers, obsp, varp, uns)."""
    return {slot: set(getattr(a, slot).keys()) for slot in _SLOTS}


def _assert_value_identical(x, y, where: str) -> None:
    assert type(x) is type(y), f"{where}: type {type(x).__name__} != {type(y).__name__}"
    if sp.issparse(x):
        assert x.format == y.format and x.shape == y.shape and x.dtype == y.dtype, where
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(x, part), getattr(y, part), err_msg=where)
    elif isinstance(x, pd.DataFrame):
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=where)
    elif isinstance(x, np.ndarray):
        assert x.dtype == y.dtype and x.shape == y.shape, where
        np.testing.assert_array_equal(x, y, err_msg=where)
    elif isinstance(x, dict):
        assert set(x) == set(y), f"{where}: keys {sorted(x)} != {sorted(y)}"
        for k in x:
            _assert_value_identical(x[k], y[k], f"{where}[{k!r}]")
    else:
        assert x == y, f"{where}: {x!r} != {y!r}"


def _assert_adata_identical(a: ad.AnnData, b: ad.AnnData) -> None:
    """Every slot of ``a`` and ``b`` holds identical values, types, dtypes and key sets."""
    assert a.shape == b.shape
    assert _adata_keys(a) == _adata_keys(b)
    _assert_value_identical(a.X, b.X, "X")
    for slot in ("obs", "var"):
        pd.testing.assert_frame_equal(getattr(a, slot), getattr(b, slot), check_exact=True)
    for slot in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
        for k in getattr(a, slot).keys():
            _assert_value_identical(getattr(a, slot)[k], getattr(b, slot)[k], f"{slot}[{k!r}]")


@pytest.fixture(scope="session")
def adata_keys():
    """``adata_keys(a)``: ``{slot: set of keys}`` for obs, var, obsm, varm, layers, obsp, varp, uns."""
    return _adata_keys


@pytest.fixture(scope="session")
def assert_adata_identical():
    """``assert_adata_identical(a, b)``: every slot identical (values, dtypes, sparse layout)."""
    return _assert_adata_identical
