"""Synthetic capture models (NBVCP, ZINBVCP) and mixtures: truth, determinism, moments, errors.

The theoretical moments are computed independently of the generator, with
``scipy.stats.nbinom(n=r, p=1 - p̂)`` (scipy's success probability is one minus NumPyro's
``p``). Tolerances are 5 standard errors of the compared statistic. Calibration: the NBVCP and
ZINBVCP moment checks below, rerun with 300 other seeds each, gave standardised differences
with per-gene standard deviations 0.94–1.04, means within ±0.07 and a largest absolute value
of 4.45 among 7,200 (2 models × 4 genes × 3 statistics × 300 seeds).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import scnbtools as snb
from scnbtools.datasets import _synthetic

Z_TOL = 5.0


def _assert_raw_counts(X) -> None:
    assert sp.issparse(X) and X.format == "csr" and X.dtype == np.float32
    assert np.all(X.data >= 0) and np.all(X.data == np.round(X.data))


def _p_hat(p, nu):
    """NumPyro-convention success probability of a cell with capture probability ``nu``."""
    return p * nu / (1.0 - p * (1.0 - nu))


def _theory(r, p_hat, gate=None):
    """Per-cell (rows) × gene (columns) mean, variance and P(0) of the (ZI)NB."""
    d = stats.nbinom(n=np.asarray(r)[None, :], p=1.0 - np.asarray(p_hat)[:, None])
    m, v, p0 = d.mean(), d.var(), d.pmf(0)
    if gate is None:
        return m, v, p0
    g = np.broadcast_to(np.asarray(gate), m.shape)
    mean = (1 - g) * m
    return mean, (1 - g) * (v + m**2) - mean**2, g + (1 - g) * p0


def moment_z(x: np.ndarray, mean_c, var_c, p0_c) -> dict[str, np.ndarray]:
    """Standardised differences (per gene) between empirical and theoretical statistics.

    Cells are independent but not identically distributed (their p̂ differ), so the
    theoretical per-gene mean is the average of the per-cell means with standard error
    ``sqrt(Σ_c var_c) / N``; the variance across cells is the mixture variance
    ``mean(var_c + mean_c²) - mean(mean_c)²`` compared with the sample variance (standard error
    from the sample's fourth central moment); the zero fraction is the average of the per-cell
    P(0), standard error ``sqrt(Σ_c P0_c (1 - P0_c)) / N``.
    """
    n = x.shape[0]
    mu = mean_c.mean(axis=0)
    z_mean = (x.mean(axis=0) - mu) / (np.sqrt(var_c.sum(axis=0)) / n)
    tvar = (var_c + mean_c**2).mean(axis=0) - mu**2
    dev = x - x.mean(axis=0)
    s2 = (dev**2).mean(axis=0)
    m4 = (dev**4).mean(axis=0)
    z_var = (x.var(axis=0, ddof=1) - tvar) / np.sqrt((m4 - s2**2) / n)
    z_zero = ((x == 0).mean(axis=0) - p0_c.mean(axis=0)) / (
        np.sqrt((p0_c * (1 - p0_c)).sum(axis=0)) / n
    )
    return {"mean": z_mean, "var": z_var, "zero": z_zero}


def _assert_moments(x, mean_c, var_c, p0_c) -> None:
    for stat, z in moment_z(x, mean_c, var_c, p0_c).items():
        assert np.all(np.abs(z) < Z_TOL), f"{stat}: standardised differences {np.round(z, 2)}"


# ----------------------------------------------------------------------------- structure
CASES = {
    "nbvcp": lambda **kw: snb.datasets.synthetic_nbvcp(**kw),
    "zinbvcp": lambda **kw: snb.datasets.synthetic_zinbvcp(**kw),
    "mix_nbdm": lambda **kw: snb.datasets.synthetic_mixture(model="nbdm", **kw),
    "mix_zinbvcp": lambda **kw: snb.datasets.synthetic_mixture(model="zinbvcp", **kw),
}


@pytest.mark.parametrize("case", list(CASES))
def test_structure_and_roundtrip(case, tmp_path):
    a = CASES[case](n_obs=300, n_vars=25, rng=4, p=0.3)
    assert a.shape == (300, 25)
    _assert_raw_counts(a.X)
    meta = a.uns["synthetic"]
    assert meta["p"] == 0.3 and meta["seed"] == 4 and (meta["n_obs"], meta["n_vars"]) == (300, 25)
    zi, capture = "zi" in case, "vcp" in case
    assert meta["model"] == case.removeprefix("mix_")
    if capture:
        assert set(a.obs.columns) >= {"true_nu", "true_p_hat"}
        nu = a.obs["true_nu"].to_numpy()
        assert np.all((nu > 0) & (nu < 1))
        np.testing.assert_allclose(a.obs["true_p_hat"], _p_hat(0.3, nu))
        np.testing.assert_array_equal(meta["priors"]["nu"]["hyper"], [4.0, 2.0])
    else:
        assert "true_nu" not in a.obs
        assert "nu" not in meta["priors"]
    assert ("gate" in meta["priors"]) == zi
    if case.startswith("mix_"):
        assert set(a.var.columns) == {"true_marker"}
        assert set(a.varm.keys()) == {"true_r", "true_mu", "true_rho"} | (
            {"true_gate"} if zi else set()
        )
        assert a.varm["true_r"].shape == (25, 3)
        np.testing.assert_allclose(a.varm["true_mu"], a.varm["true_r"] * 0.3 / 0.7)
        np.testing.assert_allclose(a.varm["true_rho"].sum(axis=0), 1.0)
        lab = a.obs["true_component"]
        assert isinstance(lab.dtype, pd.CategoricalDtype)
        assert list(lab.cat.categories) == ["0", "1", "2"]
        assert meta["n_components"] == 3 and meta["n_markers"] == 5  # round(0.2 * 25)
        np.testing.assert_allclose(meta["weights"], [1 / 3] * 3)
        assert not meta["component_p"]
    else:
        cols = {"true_r", "true_mu", "true_rho"} | ({"true_gate"} if zi else set())
        assert set(a.var.columns) == cols
        np.testing.assert_allclose(a.var["true_mu"], a.var["true_r"] * 0.3 / 0.7)
    assert list(meta["given"]) == []
    a.write_h5ad(tmp_path / "s.h5ad")  # plain types only
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    assert back.uns["synthetic"]["model"] == meta["model"] and (back.X != a.X).nnz == 0
    if case.startswith("mix_"):
        assert back.obs["true_component"].equals(a.obs["true_component"])


# ----------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("case", list(CASES))
def test_reproducible_by_seed(case):
    a, b, c = (CASES[case](n_obs=150, n_vars=20, rng=s) for s in (7, 7, 8))
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    d = CASES[case](n_obs=40, n_vars=5, rng=np.random.default_rng(1))
    e = CASES[case](n_obs=40, n_vars=5, rng=int(d.uns["synthetic"]["seed"]))
    assert (d.X != e.X).nnz == 0


@pytest.mark.parametrize("case", ["zinbvcp", "mix_zinbvcp"])
def test_first_cells_do_not_depend_on_n_obs(case):
    """Every stream is per block and drawn in cell order: a prefix of a larger data set."""
    block = _synthetic._BLOCK
    big = CASES[case](n_obs=block + 300, n_vars=6, rng=3)
    for n in (1, 57, block + 41):
        small = CASES[case](n_obs=n, n_vars=6, rng=3)
        assert (small.X != big.X[:n]).nnz == 0, n
        # names are zero-padded to the size, so compare the values
        pd.testing.assert_frame_equal(
            small.obs.reset_index(drop=True), big.obs.iloc[:n].reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(
            small.var.reset_index(drop=True), big.var.reset_index(drop=True)
        )
    # and the second block is new data, not a repeat of the first
    assert (big.X[:300] != big.X[block : block + 300]).nnz > 0


def test_gene_truth_matches_nbdm_and_zinb_with_the_same_seed():
    np.testing.assert_array_equal(
        snb.datasets.synthetic_nbvcp(20, 30, rng=5).var["true_r"],
        snb.datasets.synthetic_nbdm(20, 30, rng=5).var["true_r"],
    )
    zi = snb.datasets.synthetic_zinb(20, 30, rng=5).var
    zv = snb.datasets.synthetic_zinbvcp(20, 30, rng=5).var
    np.testing.assert_array_equal(zv[["true_r", "true_gate"]], zi[["true_r", "true_gate"]])


# ----------------------------------------------------------------------------- moments
R4 = np.array([0.3, 1.0, 3.0, 10.0])


def test_nbvcp_moments_match_the_model():
    p, n = 0.6, 20_000
    a = snb.datasets.synthetic_nbvcp(n, 4, rng=11, p=p, r=R4)
    x = a.X.toarray().astype(np.float64)
    nu = a.obs["true_nu"].to_numpy()
    m, v, p0 = _theory(R4, _p_hat(p, nu))
    _assert_moments(x, m, v, p0)
    # the capture probabilities act cell by cell: the same checks within each half by ν
    low = nu < np.median(nu)
    for sel in (low, ~low):
        _assert_moments(x[sel], m[sel], v[sel], p0[sel])
    assert stats.kstest(nu, stats.beta(4.0, 2.0).cdf).pvalue > 1e-3
    np.testing.assert_array_equal(a.var["true_r"], R4)
    assert list(a.uns["synthetic"]["given"]) == ["r"]


def test_zinbvcp_moments_match_the_model_with_given_nu():
    p, n = 0.3, 20_000
    gate = np.array([0.0, 0.4, 0.1, 0.7])
    nu = np.linspace(0.05, 1.0, n)  # ν = 1 (full capture) is allowed
    a = snb.datasets.synthetic_zinbvcp(n, 4, rng=2, p=p, r=R4, gate=gate, nu=nu)
    x = a.X.toarray().astype(np.float64)
    np.testing.assert_array_equal(a.obs["true_nu"], nu)
    m, v, p0 = _theory(R4, _p_hat(p, nu), gate)
    _assert_moments(x, m, v, p0)
    low = nu < 0.5
    for sel in (low, ~low):
        _assert_moments(x[sel], m[sel], v[sel], p0[sel])
    assert sorted(a.uns["synthetic"]["given"]) == ["gate", "nu", "r"]
    assert dict(a.uns["synthetic"]["priors"]) == {}


def test_drawn_parameters_follow_the_stated_priors():
    kw = {"r_prior": ("gamma", (2.0, 0.5)), "gate_prior": (2.0, 2.0), "nu_prior": (1, 3)}
    genes = snb.datasets.synthetic_zinbvcp(5, 4000, rng=0, **kw)
    assert stats.kstest(genes.var["true_r"], stats.gamma(2.0, scale=2.0).cdf).pvalue > 1e-3
    assert stats.kstest(genes.var["true_gate"], stats.beta(2.0, 2.0).cdf).pvalue > 1e-3
    cells = snb.datasets.synthetic_zinbvcp(4000, 2, rng=0, **kw)
    assert stats.kstest(cells.obs["true_nu"], stats.beta(1.0, 3.0).cdf).pvalue > 1e-3
    assert cells.uns["synthetic"]["priors"]["nu"]["hyper"].tolist() == [1.0, 3.0]


def test_mixture_moments_per_component():
    """Component-specific r, gate and p (all given) shape each component's cells."""
    n = 24_000
    r = np.array([[0.5, 4.0], [2.0, 2.0], [8.0, 1.0]])
    gate = np.array([[0.0, 0.5], [0.3, 0.3], [0.6, 0.0]])
    p = np.array([0.4, 0.7])
    w = np.array([0.3, 0.7])
    a = snb.datasets.synthetic_mixture(
        n, 3, n_components=2, model="zinbvcp", weights=w, p=p, r=r, gate=gate, rng=9
    )
    x = a.X.toarray().astype(np.float64)
    z = a.obs["true_component"].cat.codes.to_numpy()
    nu = a.obs["true_nu"].to_numpy()
    counts = np.bincount(z, minlength=2)
    assert np.all(np.abs(counts / n - w) < Z_TOL * np.sqrt(w * (1 - w) / n))
    for k in range(2):
        sel = z == k
        m, v, p0 = _theory(r[:, k], _p_hat(p[k], nu[sel]), gate[:, k])
        _assert_moments(x[sel], m, v, p0)
    np.testing.assert_array_equal(a.varm["true_r"], r)
    np.testing.assert_array_equal(a.varm["true_gate"], gate)
    np.testing.assert_allclose(a.obs["true_p_hat"], _p_hat(p[z], nu))
    meta = a.uns["synthetic"]
    assert meta["component_p"] and np.array_equal(meta["p"], p)
    assert sorted(meta["given"]) == ["gate", "r", "weights"]


def test_mixture_components_really_differ():
    a = snb.datasets.synthetic_mixture(1200, 200, n_components=4, rng=0)
    r = a.varm["true_r"]
    marker = a.var["true_marker"].to_numpy()
    assert marker.sum() == 40 and a.uns["synthetic"]["n_markers"] == 40
    # non-markers are shared; every pair of components differs on the markers
    assert np.all(r[~marker] == r[~marker, :1])
    lr = np.log(r[marker])
    for j in range(4):
        for k in range(j):
            assert np.std(lr[:, j] - lr[:, k]) > 1.0
    # the truth separates the cells: classify each by its likelihood under each component
    x = a.X.toarray()
    ll = np.stack(
        [stats.nbinom.logpmf(x, r[:, k], 0.5).sum(axis=1) for k in range(4)],
        axis=1,
    )
    z = a.obs["true_component"].cat.codes.to_numpy()
    assert (ll.argmax(axis=1) == z).mean() > 0.97
    # every component is populated, about equally
    assert np.all(np.abs(np.bincount(z, minlength=4) / 1200 - 0.25) < 0.07)


def test_mixture_separation_knob():
    kw = {"n_obs": 10, "n_vars": 100, "n_components": 3, "rng": 4}
    same = snb.datasets.synthetic_mixture(separation=0.0, **kw)
    assert np.all(same.varm["true_r"] == same.varm["true_r"][:, :1])
    a = snb.datasets.synthetic_mixture(separation=0.5, **kw)
    b = snb.datasets.synthetic_mixture(separation=2.0, **kw)
    da, db = (np.log(x.varm["true_r"]) - np.log(same.varm["true_r"]) for x in (a, b))
    np.testing.assert_allclose(db, 4.0 * da)  # the same effects, scaled
    # nested marker sets
    c = snb.datasets.synthetic_mixture(marker_fraction=0.5, **kw)
    assert np.all(c.var["true_marker"][a.var["true_marker"].to_numpy()])
    assert c.var["true_marker"].sum() == 50


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("fn", "kwargs", "err", "match"),
    [
        ("nbvcp", {"n_obs": 0}, ValueError, "`n_obs`"),
        ("nbvcp", {"n_vars": 2.5}, TypeError, "`n_vars`"),
        ("nbvcp", {"p": 0.0}, ValueError, "`p` must lie strictly between 0 and 1"),
        (
            "nbvcp",
            {"nu": [0.5, 0.5]},
            ValueError,
            r"`nu` must have one value per cell \(shape \(10,\)\)",
        ),
        ("nbvcp", {"nu": [0.5] * 9 + [0.0]}, ValueError, r"`nu` values .* in \(0, 1\]"),
        ("nbvcp", {"nu": [0.5] * 9 + [1.5]}, ValueError, r"`nu` values"),
        ("nbvcp", {"nu": "high"}, TypeError, "`nu` must be an array of numbers"),
        ("nbvcp", {"nu_prior": (1.0,)}, ValueError, "`nu_prior`.*takes 2 hyperparameters"),
        ("nbvcp", {"nu_prior": ("gamma", (1, 1))}, ValueError, "`nu_prior`.*not allowed"),
        ("nbvcp", {"nu_prior": (0.0, 1.0)}, ValueError, "`nu_prior`.*must be > 0"),
        ("nbvcp", {"r_prior": ("beta", (1, 1))}, ValueError, "`r_prior`.*not allowed"),
        ("nbvcp", {"r": [1.0, 2.0]}, ValueError, r"`r` must have one value per gene"),
        ("zinbvcp", {"gate": [0.1, 1.0, 0, 0, 0]}, ValueError, r"`gate` values .* in \[0, 1\)"),
        ("zinbvcp", {"gate_prior": (1.0,)}, ValueError, "`gate_prior`.*takes 2"),
        ("zinbvcp", {"rng": 1.5}, TypeError, "`rng`"),
        ("mix", {"model": "pln"}, ValueError, "`model`='pln' has no synthetic mixture"),
        ("mix", {"model": 3}, TypeError, "`model` must be a string"),
        ("mix", {"n_components": 0}, ValueError, "`n_components`"),
        ("mix", {"n_components": None}, TypeError, "`n_components`"),
        ("mix", {"weights": [0.5, 0.5]}, ValueError, r"one value per component \(shape \(3,\)\)"),
        ("mix", {"weights": [0.5, 0.5, 0.5]}, ValueError, "must sum to 1.*weights.sum"),
        ("mix", {"weights": [1.0, 0.0, 0.0]}, ValueError, "`weights` must be finite and > 0"),
        ("mix", {"weights": "equal"}, TypeError, "`weights` must be an array"),
        ("mix", {"separation": -1.0}, ValueError, "`separation`"),
        ("mix", {"separation": "big"}, TypeError, "`separation` must be a number"),
        ("mix", {"separation": 1e6}, ValueError, "overflow or underflow; use a smaller"),
        ("mix", {"marker_fraction": 1.5}, ValueError, r"`marker_fraction` .* \[0, 1\]"),
        ("mix", {"p": [0.5, 0.5]}, ValueError, r"one per component \(shape \(3,\)\)"),
        ("mix", {"p": [0.5, 0.5, 1.0]}, ValueError, "`p` values must lie strictly"),
        ("mix", {"p": ["a", "b", "c"]}, TypeError, "`p` must be a number"),
        ("mix", {"r": np.ones((5, 2))}, ValueError, r"one column per component \(shape \(5, 3\)\)"),
        ("mix", {"gate": [0.1] * 5}, ValueError, "`gate` was given but model='nbdm'"),
        ("mix", {"nu": [0.5] * 10}, ValueError, "`nu` was given but model='nbdm'"),
    ],
)
def test_bad_arguments(fn, kwargs, err, match):
    gens = {
        "nbvcp": snb.datasets.synthetic_nbvcp,
        "zinbvcp": snb.datasets.synthetic_zinbvcp,
        "mix": snb.datasets.synthetic_mixture,
    }
    kw = {"n_obs": 10, "n_vars": 5, **kwargs}
    with pytest.raises(err, match=match):
        gens[fn](**kw)
