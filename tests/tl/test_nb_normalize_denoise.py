"""``tl.normalize`` and the NB-family kinds of ``tl.denoise``: posterior means of the
Gamma–Poisson rates, checked against independent NumPy / SciPy computations over the same
posterior draws (``get.posterior_samples`` with the same seed and number)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy import stats
from scipy.special import softmax

import scnbtools as snb

#: the short test fits are deliberately not converged
pytestmark = pytest.mark.filterwarnings(r"ignore:the \S+ fit did not converge:UserWarning")

KINDS = ("fractions", "counts", "true_counts")
QUIET = {"progress_bar": False}


def _adata(x: np.ndarray, labels=None) -> ad.AnnData:
    a = ad.AnnData(
        X=sp.csr_matrix(np.asarray(x, dtype=np.float32)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])]),
    )
    if labels is not None:
        a.obs["truth"] = pd.Categorical(labels)
    return a


def _fit(a, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"the \S+ fit did not converge")
        snb.tl.fit(a, **kw, **QUIET)
    return a


def _dense(a) -> np.ndarray:
    return np.asarray(a.X.toarray(), dtype=np.float64)


def _draws(a, key, n=100, rng=0):
    """Draws as float64 with a component axis: r, gate [S, K, G], p [S, K], nu [S, N]."""
    d = snb.get.posterior_samples(a, key=key, n_samples=n, rng=rng)
    S, G = d["r"].shape[0], d["r"].shape[-1]
    K = d["r"].shape[1] if d["r"].ndim == 3 else 1
    out = {
        "r": d["r"].astype(float).reshape(S, K, G),
        "p": np.broadcast_to(d["p"].astype(float).reshape(S, -1), (S, K)),
        "nu": d["nu"].astype(float) if "nu" in d else np.ones((S, a.n_obs)),
    }
    if "gate" in d:
        out["gate"] = np.broadcast_to(d["gate"].astype(float).reshape(S, -1, G), (S, K, G))
    if "mixing_weights" in d:
        out["w"] = d["mixing_weights"].astype(float)
    return out


# ----------------------------------------------------------------------------- fits
@pytest.fixture(scope="module")
def zinb_gated():
    """ZINB (MAP) on counts whose first five genes have a 60 % dropout gate."""
    rng = np.random.default_rng(1)
    n, g = 200, 16
    r = np.full(g, 3.0)
    x = rng.negative_binomial(r, 0.3, size=(n, g))  # numpy's p = 1 - p: mean 7
    gate = np.where(np.arange(g) < 5, 0.6, 0.02)
    x = x * (rng.uniform(size=(n, g)) >= gate)
    x[:, 0] += x.sum(axis=1) == 0
    return _fit(_adata(x), model="zinb", inference="map", n_steps=1000, key_added="zinb")


@pytest.fixture(scope="module")
def nbvcp_map():
    """NBVCP (MAP): cells with capture probabilities between 0.2 and 1."""
    rng = np.random.default_rng(2)
    n, g = 150, 16
    r = rng.lognormal(0.5, 0.5, g)
    lam = rng.gamma(r, 4.0, size=(n, g))
    nu = rng.uniform(0.2, 1.0, n)
    x = rng.poisson(nu[:, None] * lam)
    x[:, 0] += x.sum(axis=1) == 0
    return _fit(_adata(x), model="nbvcp", inference="map", n_steps=1000, key_added="nbvcp")


@pytest.fixture(scope="module")
def mixture():
    """Two-component NBDM (SVI) on two well-separated cell types (labels in ``obs``)."""
    rng = np.random.default_rng(3)
    n, g = 160, 16
    labels = np.repeat(["A", "B"], n // 2)
    high = np.arange(g) < g // 2
    r = np.where((labels == "A")[:, None] == high[None, :], 8.0, 0.3)
    x = rng.negative_binomial(r, 0.4)  # NumPyro p = 0.6
    x[:, 0] += x.sum(axis=1) == 0
    a = _adata(x, labels)
    return _fit(a, model="nbdm", n_components=2, n_steps=600, key_added="mix")


# ----------------------------------------------------------------------------- NBDM
def test_fractions_rows_sum_to_one(fitted_nbdm):
    a = fitted_nbdm.copy()
    snb.tl.normalize(a, key="nbdm")
    f = a.layers["nbdm_fractions"]
    assert f.dtype == np.float32 and f.shape == a.shape
    assert np.all(f > 0)
    np.testing.assert_allclose(f.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n_samples", [100, 7])
def test_nbdm_equals_dirichlet_multinomial_mean(fitted_nbdm, n_samples):
    a = fitted_nbdm.copy()
    snb.tl.normalize(a, key="nbdm", n_samples=n_samples, rng=5)
    d = _draws(a, "nbdm", n=n_samples, rng=5)
    x = _dense(a)
    r = d["r"][:, 0]  # [S, G]
    U = x.sum(axis=1)
    expected = np.mean((r[:, None, :] + x) / (r.sum(axis=1)[:, None, None] + U[:, None]), axis=0)
    np.testing.assert_allclose(a.layers["nbdm_fractions"], expected, rtol=1e-5)


def test_nbdm_counts_are_p_times_r_plus_x(fitted_nbdm):
    a = fitted_nbdm.copy()
    snb.tl.denoise(a, key="nbdm", kind="counts")
    snb.tl.denoise(a, key="nbdm", kind="true_counts")
    d = _draws(a, "nbdm")  # denoise: 100 draws, seed 0
    x = _dense(a)
    # no capture: E[λ | x] = (r + x) / (β + 1) = p (r + x), and counts = true_counts
    expected = np.mean(d["p"][:, 0, None, None] * (d["r"][:, 0][:, None, :] + x), axis=0)
    np.testing.assert_allclose(a.layers["nbdm_counts"], expected, rtol=1e-5)
    np.testing.assert_array_equal(a.layers["nbdm_counts"], a.layers["nbdm_true_counts"])


def test_seed_and_denoise_agree_with_normalize(fitted_nbdm):
    a = fitted_nbdm.copy()
    snb.tl.normalize(a, key="nbdm", layer_added="n0")
    snb.tl.normalize(a, key="nbdm", layer_added="n1", rng=1)
    snb.tl.denoise(a, key="nbdm", kind="fractions")
    np.testing.assert_array_equal(a.layers["n0"], a.layers["nbdm_fractions"])
    assert not np.array_equal(a.layers["n0"], a.layers["n1"])  # other draws, other numbers


def test_targets_and_log(fitted_nbdm):
    a = fitted_nbdm.copy()
    snb.tl.normalize(a, key="nbdm")
    frac = a.layers["nbdm_fractions"].astype(np.float64)
    snb.tl.normalize(a, key="nbdm", target_sum=1e4, layer_added="cp10k")
    np.testing.assert_allclose(a.layers["cp10k"], 1e4 * frac, rtol=1e-5)
    snb.tl.normalize(a, key="nbdm", log=True, target_sum=500.0, layer_added="log500")
    np.testing.assert_allclose(a.layers["log500"], np.log1p(500.0 * frac), rtol=1e-5)
    snb.tl.normalize(a, key="nbdm", log=True, layer_added="logdef")  # target_sum 1e4
    np.testing.assert_allclose(a.layers["logdef"], np.log1p(1e4 * frac), rtol=1e-5)
    snb.tl.denoise(a, key="nbdm", kind="counts", target_library=100.0, layer_added="c100")
    np.testing.assert_allclose(a.layers["c100"].sum(axis=1), 100.0, rtol=1e-5)


def test_dense_and_sparse_agree_and_pca_runs(fitted_nbdm):
    a = fitted_nbdm.copy()
    dense = a.copy()
    dense.X = a.X.toarray()
    snb.tl.normalize(a, key="nbdm", log=True)
    snb.tl.normalize(dense, key="nbdm", log=True)
    np.testing.assert_allclose(
        a.layers["nbdm_fractions"], dense.layers["nbdm_fractions"], rtol=1e-6
    )
    sc.pp.pca(a, layer="nbdm_fractions", n_comps=5)
    assert a.obsm["X_pca"].shape == (a.n_obs, 5)
    assert np.all(np.isfinite(a.obsm["X_pca"]))


def test_inputs_not_mutated_and_copy(fitted_nbdm, assert_adata_identical):
    a = fitted_nbdm.copy()
    before = a.copy()
    out = snb.tl.normalize(a, key="nbdm", copy=True)
    assert isinstance(out, ad.AnnData) and "nbdm_fractions" in out.layers
    assert_adata_identical(a, before)  # copy=True: untouched
    assert snb.tl.denoise(a, key="nbdm", kind="counts", copy=True) is not None
    assert_adata_identical(a, before)
    assert snb.tl.normalize(a, key="nbdm", layer_added="mine") is None
    assert snb.tl.denoise(a, key="nbdm", kind="true_counts") is None
    assert set(a.layers) == {"mine", "nbdm_true_counts"}
    del a.layers["mine"], a.layers["nbdm_true_counts"]
    assert_adata_identical(a, before)  # only the layers were added


# ----------------------------------------------------------------------------- ZINB
def test_zinb_zeros_are_treated_as_dropouts(zinb_gated):
    a = zinb_gated.copy()
    snb.tl.denoise(a, key="zinb", kind="counts")
    snb.tl.normalize(a, key="zinb")
    d = _draws(a, "zinb", n=1)  # MAP: every draw is the point estimate
    x = _dense(a)
    r, p, gate = d["r"][0, 0], d["p"][0, 0], d["gate"][0, 0]
    assert np.all(gate[:5] > 0.4) and np.all(gate[5:] < 0.2), gate  # the fit found the gates
    beta = (1 - p) / p
    nb_only = np.broadcast_to(r * p, x.shape)  # E[λ | 0] = r / (β + 1) without a gate
    w = gate / (gate + (1 - gate) * (1 - p) ** r)
    zi = w * r / beta + (1 - w) * r * p
    expected = np.where(x == 0, zi, (r + x) * p)
    got = a.layers["zinb_counts"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    zeros = x[:, :5] == 0
    assert zeros.sum() > 100
    # with a large gate a zero is mostly a dropout: well above the NB-only posterior mean
    assert np.all(got[:, :5][zeros] > 2.0 * nb_only[:, :5][zeros])
    np.testing.assert_array_equal(a.layers["zinb_counts"], _true(a, "zinb"))
    f = a.layers["zinb_fractions"]
    np.testing.assert_allclose(f.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)


def _true(a, key):
    b = a.copy()
    snb.tl.denoise(b, key=key, kind="true_counts")
    return b.layers[f"{key}_true_counts"]


# ----------------------------------------------------------------------------- NBVCP
def test_nbvcp_true_counts_are_counts_over_capture(nbvcp_map):
    a = nbvcp_map.copy()
    for kind in KINDS:
        snb.tl.denoise(a, key="nbvcp", kind=kind)
    d = _draws(a, "nbvcp", n=1)
    nu = d["nu"][0]
    assert np.ptp(nu) > 0.1  # capture differs between cells
    counts, true = a.layers["nbvcp_counts"], a.layers["nbvcp_true_counts"]
    np.testing.assert_allclose(true, counts / nu[:, None], rtol=1e-5)
    x = _dense(a)
    r, p = d["r"][0, 0], d["p"][0, 0]
    np.testing.assert_allclose(true, (r + x) / ((1 - p) / p + nu[:, None]), rtol=1e-5)
    # without zero inflation capture cancels out of the fractions: (r + x) / (R + U)
    frac = (r + x) / (r.sum() + x.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(a.layers["nbvcp_fractions"], frac, rtol=1e-5)


# ----------------------------------------------------------------------------- mixtures
def test_mixture_fractions_follow_the_cells_component(mixture):
    a = mixture.copy()
    snb.tl.normalize(a, key="mix")
    snb.tl.denoise(a, key="mix", kind="counts")
    x = _dense(a)
    d = _draws(a, "mix")
    # independent P(k | x_c) per draw: log w_k + Σ_g log NB(x | r_k, p) (SciPy's p = 1 - p)
    ll = np.log(d["w"])[:, None, :] + np.stack(
        [
            stats.nbinom.logpmf(x[None], d["r"][:, k, None, :], 1 - d["p"][:, k, None, None]).sum(
                -1
            )
            for k in range(2)
        ],
        axis=-1,
    )  # [S, N, K]
    P = softmax(ll, axis=-1)
    r, p, U = d["r"], d["p"], x.sum(axis=1)
    per_k = (r[:, :, None, :] + x) / (r.sum(-1)[:, :, None, None] + U[:, None])  # [S, K, N, G]
    expected = np.einsum("snk,skng->ng", P, per_k) / P.shape[0]
    f = a.layers["mix_fractions"]
    np.testing.assert_allclose(f, expected, rtol=1e-4, atol=1e-7)
    counts = np.einsum("snk,sk,skng->ng", P, p, r[:, :, None, :] + x) / P.shape[0]
    np.testing.assert_allclose(a.layers["mix_counts"], counts, rtol=1e-4, atol=1e-6)
    # each cell's fractions are close to its own component's profile, far from the other's
    comp = a.obsm["mix_assignment"].to_numpy().argmax(axis=1)
    truth = a.obs["truth"].cat.codes.to_numpy()
    agree = np.mean(comp == truth)
    assert agree in (0.0, 1.0)  # well separated: the components are the cell types
    rho = np.stack([a.varm["mix_mean"][f"rho_{k}"].to_numpy() for k in range(2)])  # [K, G]
    dist = np.abs(f[:, None, :] - rho[None]).sum(-1)  # L1 distance [N, K]
    own, other = dist[np.arange(a.n_obs), comp], dist[np.arange(a.n_obs), 1 - comp]
    assert np.all(own < other)
    assert np.median(own) < 0.5 * np.median(other)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(fitted_nbdm, nbvcp_map):
    a = fitted_nbdm.copy()
    with pytest.raises(KeyError, match=r"no scnbtools fit.*fit_zinb"):
        snb.tl.normalize(a, key="missing")
    with pytest.raises(KeyError, match=r"no scnbtools fit.*fit_zinb"):
        snb.tl.denoise(a, key="missing")
    with pytest.raises(ValueError, match=r"'fractions', 'counts', 'true_counts'"):
        snb.tl.denoise(a, key="nbdm", kind="counts_without_dropout")
    with pytest.raises(ValueError, match="target_sum"):
        snb.tl.normalize(a, key="nbdm", target_sum=-1.0)
    with pytest.raises(TypeError, match="target_sum"):
        snb.tl.normalize(a, key="nbdm", target_sum="1e4")
    with pytest.raises(ValueError, match="target_library"):
        snb.tl.denoise(a, key="nbdm", kind="counts", target_library=0)
    with pytest.raises(ValueError, match="n_samples"):
        snb.tl.normalize(a, key="nbdm", n_samples=0)
    with pytest.raises(TypeError, match="log"):
        snb.tl.normalize(a, key="nbdm", log="yes")
    with pytest.raises(ValueError, match="layer_added"):
        snb.tl.normalize(a, key="nbdm", layer_added="")
    with pytest.raises(KeyError, match="layer"):
        snb.tl.normalize(a, key="nbdm", layer="raw")
    with pytest.raises(ValueError, match=r"30 genes but the fit .* has 40"):
        snb.tl.normalize(a[:, :30].copy(), key="nbdm")
    with pytest.raises(ValueError, match=r"30 genes but the fit .* has 40"):
        snb.tl.denoise(a[:, :30].copy(), key="nbdm")
    b = nbvcp_map[:100].copy()
    with pytest.raises(ValueError, match=r"100 cells .* fitted on 150"):
        snb.tl.denoise(b, key="nbvcp", kind="counts")
    with pytest.raises(ValueError, match=r"100 cells .* fitted on 150"):
        snb.tl.normalize(b, key="nbvcp")
    a.uns["other"] = {"params": {"model": "zipo"}, "variational_params": {}}
    with pytest.raises(ValueError, match=r"NB-family.*kind='fractions'"):
        snb.tl.normalize(a, key="other")
    assert not any(k in a.layers for k in ("nbdm_fractions", "nbdm_counts"))
