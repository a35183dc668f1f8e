"""``tl.fit_pln`` / ``tl.fit_nbln``: recovery, cascade and freezes, contract, bad input.

Recovery tolerances were calibrated on seeds 0–1 of these settings (``synthetic_pln``,
300–600 cells × 30–50 genes): the relative Frobenius error of Σ was 1.6–1.9 × the sampling
floor (the error of the empirical covariance of the *true* latent log-rates, which no
method can beat), the correlation of Σ's off-diagonal entries ≥ 0.98; the bounds below
leave room for other seeds (2.5 × the floor, 0.95).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scnbtools as snb

C, G, K = 400, 30, 2


def _sigma(adata, key):
    W = adata.varm[f"{key}_W"]
    return W @ W.T + np.diag(adata.varm[f"{key}_mean"]["d"].to_numpy())


def _true_sigma(adata):
    W = adata.varm["true_W"]
    return W @ W.T + np.diag(adata.var["true_d"].to_numpy())


def _angle(A, B):
    """Largest principal angle (degrees) between the column spaces of A and B."""
    Q1, _ = np.linalg.qr(A)
    Q2, _ = np.linalg.qr(B)
    cos = np.linalg.svd(Q1.T @ Q2, compute_uv=False).min()
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _fit(fn, adata, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "did not converge" on tiny budgets
        return fn(adata, progress_bar=False, **kw)


@pytest.fixture(scope="module")
def pln_fit():
    a = snb.datasets.synthetic_pln(C, G, rank=K, rng=0, return_latent=True)
    _fit(snb.tl.fit_pln, a, latent_dim=K, offset_key="true_offset")
    return a


@pytest.fixture(scope="module")
def cascade_fit():
    """NBLN data with capture-like offsets, an NBVCP source and three cascade fits."""
    a = snb.datasets.synthetic_nbln(300, 25, rank=2, rng=1, offsets="capture")
    _fit(snb.tl.fit_nbvcp, a, key_added="src", n_steps=500)
    for key, freeze in (("f_re", ("r", "eta")), ("f_none", ()), ("f_all", ("r", "mu", "eta"))):
        _fit(
            snb.tl.fit_nbln, a, latent_dim=2, informative_priors_from="src",
            informative_priors_freeze=freeze, key_added=key, n_steps=150,
        )  # fmt: skip
    return a


# ----------------------------------------------------------------------------- recovery


def test_pln_recovers_the_covariance(pln_fit):
    a = pln_fit
    S, St = _sigma(a, "pln"), _true_sigma(a)
    x = a.obsm["true_x"]
    floor = _rel(np.cov(x, rowvar=False), St)
    assert _rel(S, St) < 2.5 * floor
    off = ~np.eye(G, dtype=bool)
    assert np.corrcoef(S[off], St[off])[0, 1] > 0.95
    # largest principal angle between the fitted and true loadings' subspaces, against the
    # same angle for the principal subspace of the true latent's sample covariance (its
    # floor: 4.4° at seed 0, where the fit gives 15.9°: the counts' Poisson noise hides the
    # weaker factor; the bound leaves room for other seeds)
    _, vecs = np.linalg.eigh(np.cov(x, rowvar=False) - np.diag(a.var["true_d"]))
    floor_angle = _angle(vecs[:, -K:], a.varm["true_W"])
    assert _angle(a.varm["pln_W"], a.varm["true_W"]) < max(6 * floor_angle, 10.0)
    # mu and the per-cell modes
    assert np.abs(a.varm["pln_mean"]["mu"] - a.var["true_mu"]).mean() < 0.1
    assert np.corrcoef(a.obsm["pln_x"].ravel(), x.ravel())[0, 1] > 0.8
    assert a.uns["pln"]["newton"]["n_not_converged"] == 0


def test_pln_fit_is_seeded_and_offsets_matter(pln_fit):
    a = pln_fit
    b = a.copy()
    _fit(snb.tl.fit_pln, b, latent_dim=K, offset_key="true_offset")
    np.testing.assert_array_equal(a.varm["pln_W"], b.varm["pln_W"])
    # the offsets are used: library offsets instead of the true ones change the fit
    _fit(snb.tl.fit_pln, b, latent_dim=K, key_added="lib")
    assert not np.allclose(b.varm["lib_mean"]["mu"], a.varm["pln_mean"]["mu"], atol=1e-3)
    np.testing.assert_allclose(a.obsm["pln_mean"]["eta"], -a.obs["true_offset"], rtol=1e-6)


def test_horseshoe_picks_the_true_rank():
    a = snb.datasets.synthetic_pln(C, G, rank=K, rng=2, decay=0.7)
    _fit(
        snb.tl.fit_pln, a, latent_dim=6, offset_key="true_offset",
        priors={"loadings": {"type": "horseshoe_columnwise", "tau_scale": 1.0}},
    )  # fmt: skip
    diag = a.uns["pln"]["w_prior_diagnostics"]
    assert diag["type"] == "horseshoe_columnwise"
    assert diag["effective_rank"] == K
    norms = np.asarray(diag["column_norms"])
    assert np.all(np.diff(norms) <= 1e-9) and norms[K] < 0.05 * norms[0]
    # without shrinkage the spare columns keep fitting noise
    _fit(snb.tl.fit_pln, a, latent_dim=6, offset_key="true_offset", key_added="plain")
    plain = np.asarray(a.uns["plain"]["w_prior_diagnostics"]["column_norms"])
    assert plain[K] > 10 * norms[K]


def test_nbln_approaches_pln_as_r_grows(pln_fit):
    """With r pinned at 10⁴ (prior sd 0.01 on log r), NBLN's Σ is PLN's."""
    a = pln_fit.copy()
    _fit(
        snb.tl.fit_nbln, a, latent_dim=K, offset_key="true_offset",
        priors={"r": (float(np.log(1e4)), 0.01)},
    )  # fmt: skip
    assert np.allclose(a.varm["nbln_mean"]["r"], 1e4, rtol=0.05)
    assert _rel(_sigma(a, "nbln"), _sigma(a, "pln")) < 0.02


def test_nbln_recovers_covariance_and_dispersion_direction():
    a = snb.datasets.synthetic_nbln(C, G, rank=K, rng=3, return_latent=True)
    _fit(snb.tl.fit_nbln, a, latent_dim=K, offset_key="true_offset")
    S, St = _sigma(a, "nbln"), _true_sigma(a)
    off = ~np.eye(G, dtype=bool)
    assert np.corrcoef(S[off], St[off])[0, 1] > 0.95
    assert _rel(S, St) < 0.35
    r = a.varm["nbln_mean"]["r"].to_numpy()
    assert np.all(np.isfinite(r)) and np.all(r > 0)


# ----------------------------------------------------------------------------- cascade


def test_cascade_freeze_levels(cascade_fit):
    a = cascade_fit
    draws = snb.get.posterior_samples(a, key="src", n_samples=200, rng=0)
    log_r = np.log(draws["r"]).mean(0)
    eta = (-np.log(draws["nu"])).mean(0)
    log_mean = np.log(draws["mu"]).mean(0)
    re = a.varm["f_re_mean"]
    # ("r", "eta"): r and eta are the source's posterior means, exactly (float32 fit)
    np.testing.assert_allclose(np.log(re["r"]), log_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.obsm["f_re_mean"]["eta"], eta, rtol=1e-5, atol=1e-5)
    assert np.all(a.obsm["f_re_sd"]["eta"] == 0)
    assert a.uns["f_re"]["cascade"] == {
        "source": "src",
        "tau": 1.0,
        "freeze": "r,eta",
        "n_draws": 200,
    }
    # (): both refined (soft priors), eta gets a Laplace sd
    none = a.varm["f_none_mean"]
    assert np.abs(np.log(none["r"]) - log_r).max() > 1e-3
    assert np.abs(a.obsm["f_none_mean"]["eta"] - eta).max() > 1e-3
    assert np.all(a.obsm["f_none_sd"]["eta"] > 0)
    assert a.uns["f_none"]["cascade"]["freeze"] == ""
    # ("r", "mu", "eta"): the gene's log mean rate mu + Σ_gg / 2 is the source's log mean
    allf = a.varm["f_all_mean"]
    np.testing.assert_allclose(allf["mu"] + allf["sigma2"] / 2, log_mean, rtol=1e-4, atol=1e-4)


def test_cascade_aliases_give_identical_fits(cascade_fit):
    a = cascade_fit.copy()
    _fit(
        snb.tl.fit_nbln, a, latent_dim=2, informative_priors_from="src",
        informative_priors_freeze=("dispersion", "capture_efficiency"), key_added="alias",
        n_steps=150,
    )  # fmt: skip
    np.testing.assert_array_equal(a.varm["alias_W"], a.varm["f_re_W"])
    assert a.uns["alias"]["cascade"]["freeze"] == "r,eta"


def test_cascade_mean_prior_adds_no_spurious_common_factor():
    """The cascade's prior on the gene's log mean rate mu_g + Σ_gg / 2 is a unit-information
    prior (the source's posterior sd × √n_cells). At the source's own sd it counted the data
    twice and held NBLN's mean at NBVCP's, which NBLN met by inflating Σ_gg through one
    factor on the low-count genes. Measured here (400 × 100, true rank 3, the default
    ``latent_dim=5``, which leaves spare columns for such a factor; seed 1): the mean
    off-diagonal entry of Σ̂ was 0.0218 at the source's sd (truth 0.0021) and 0.0000 with
    the unit-information prior; the relative Frobenius error of Σ 0.583 and 0.395.
    """
    a = snb.datasets.synthetic_nbln(400, 100, rank=3, rng=1, offsets="capture")
    a = a[:, np.asarray(a.X.getnnz(axis=0)) > 0].copy()
    log_m0 = float(np.log(a.var["true_mean"].sum()))
    _fit(snb.tl.fit_nbvcp, a, priors={"capture_efficiency": (log_m0, 0.5)})
    _fit(snb.tl.fit_nbln, a, informative_priors_from="nbvcp")
    S, St = _sigma(a, "nbln"), _true_sigma(a)
    off = ~np.eye(a.n_vars, dtype=bool)
    assert abs(S[off].mean() - St[off].mean()) < 0.01
    assert _rel(S, St) < 0.5


def test_gauge_invariant_quantities_agree_across_eta_treatments(cascade_fit):
    """Frozen eta (cascade) and latent eta (capture prior) differ in the per-cell gauge,
    which only the raw W's all-ones component sees; the gauge-invariant compositional
    correlations (from W⊥) of the two fits agree, and agree with the truth's.

    Not asserted: that freezing lowers the raw W's all-ones share. Measured on this
    setting (300 cells, 25 genes, seeds 1–2) the frozen fits had the larger share (0.017
    vs 0.014, 0.065 vs 0.050; truth 0.002; with the cascade's unit-information mean prior):
    the source's per-cell eta errors leak into it.
    """
    a = cascade_fit.copy()
    lib = np.asarray(a.X.sum(1)).ravel()
    _fit(
        snb.tl.fit_nbln, a, latent_dim=2, key_added="free",
        priors={"capture_efficiency": (float(np.log(np.median(lib) * 3)), 2.0)}, n_steps=150,
    )  # fmt: skip
    off = ~np.eye(a.n_vars, dtype=bool)
    c_free = snb.get.correlation(a, key="free", compositional=True).to_numpy()[off]
    c_frozen = snb.get.correlation(a, key="f_re", compositional=True).to_numpy()[off]
    W = a.varm["true_W"]
    Wp = W - W.mean(0)
    S = Wp @ Wp.T + np.diag(a.var["true_d"].to_numpy())
    c_true = (S / np.sqrt(np.outer(np.diag(S), np.diag(S))))[off]
    assert np.corrcoef(c_free, c_frozen)[0, 1] > 0.9
    assert np.corrcoef(c_frozen, c_true)[0, 1] > 0.8
    for key in ("free", "f_re"):
        g = snb.get.gauge_diagnostics(a, key=key)
        assert 0.0 <= g["fraction_total"] < 1.0


# ----------------------------------------------------------------------------- contract


def test_contract_keys_and_types(pln_fit):
    a = pln_fit
    assert list(a.varm["pln_mean"].columns) == ["mu", "d", "sigma2"]
    assert a.varm["pln_W"].shape == (G, K) and a.varm["pln_W_perp"].shape == (G, K)
    np.testing.assert_allclose(a.varm["pln_W_perp"].mean(0), 0, atol=1e-10)
    Wp = a.varm["pln_W_perp"]
    gram = Wp.T @ Wp
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-8 * gram.max())
    assert a.obsm["pln_x"].shape == (C, G) and a.obsm["pln_x"].dtype == np.float32
    assert a.obsm["pln_z"].shape == (C, K)
    assert set(a.obsm["pln_newton"].columns) == {
        "iterations", "grad_norm", "decrement", "converged", "log_marginal",
    }  # fmt: skip
    u = a.uns["pln"]
    assert u["params"]["model"] == "pln" and u["params"]["latent_dim"] == K
    assert u["converged"] is True and np.all(np.isfinite(u["loss"]))
    assert u["w_prior_diagnostics"]["effective_rank"] == K
    for arr in (a.varm["pln_mean"].to_numpy(), a.obsm["pln_x"], a.obsm["pln_z"]):
        assert np.all(np.isfinite(arr))


def test_dense_and_sparse_identical_copy_and_layer(pln_fit):
    a = pln_fit
    dense = ad.AnnData(
        np.asarray(a.X.todense()), obs=a.obs[["true_offset"]].copy(), var=a.var[[]].copy()
    )
    out = _fit(snb.tl.fit_pln, dense, latent_dim=K, offset_key="true_offset", copy=True)
    assert "pln" not in dense.uns  # copy=True leaves the input alone
    np.testing.assert_allclose(out.varm["pln_W"], a.varm["pln_W"], rtol=1e-5, atol=1e-6)
    lay = ad.AnnData(
        sp.csr_matrix(a.shape, dtype=np.float32), obs=dense.obs.copy(), var=dense.var.copy()
    )
    lay.layers["counts"] = a.X.copy()
    _fit(snb.tl.fit_pln, lay, latent_dim=K, offset_key="true_offset", layer="counts")
    np.testing.assert_allclose(lay.varm["pln_W"], a.varm["pln_W"], rtol=1e-5, atol=1e-6)


def test_h5ad_roundtrip_then_get_and_pl(pln_fit, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "f.h5ad"
    pln_fit.write_h5ad(path)
    b = ad.read_h5ad(path)
    np.testing.assert_array_equal(b.varm["pln_W"], pln_fit.varm["pln_W"])
    assert snb.get.correlation(b, key="pln").shape == (G, G)
    assert snb.get.W_compositional(b, key="pln").shape == (G, K)
    for fig in (
        snb.pl.ppc(b, key="pln", return_fig=True, n_samples=20),
        snb.pl.loadings_spectrum(b, key="pln", return_fig=True),
        snb.pl.compositional_corner(
            b, key="pln", genes=list(b.var_names[:3]), n_draws=200, return_fig=True
        ),
    ):
        plt.close(fig)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small():
    return snb.datasets.synthetic_nbln(120, 12, rank=1, rng=5, offsets="capture")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"latent_dim": 12}, ValueError, "smaller than the number of genes"),
        ({"latent_dim": 0}, ValueError, "latent_dim"),
        ({"informative_priors_from": "nope"}, KeyError, "no fit under that key"),
        ({"informative_priors_from": 3}, TypeError, "key_added"),
        (
            {"informative_priors_freeze": ("r", "dispersion"), "informative_priors_from": "x"},
            ValueError,
            "aliases of one parameter",
        ),
        ({"informative_priors_freeze": ("zeta",)}, ValueError, "not a freezable parameter"),
        ({"informative_priors_freeze": ("mu",)}, ValueError, "needs a source fit"),
        ({"offset_key": "missing"}, KeyError, "not a column"),
        (
            {"offset_key": "true_offset", "priors": {"capture_efficiency": (5.0, 1.0)}},
            ValueError,
            "conflicts",
        ),
        ({"priors": {"bogus": 1}}, ValueError, "unknown entries"),
        ({"priors": {"loadings": {"type": "lasso"}}}, ValueError, "horseshoe_columnwise"),
        ({"priors": {"loadings": {"type": "gaussian", "tau_scale": -1}}}, ValueError, "tau_scale"),
        ({"priors": {"capture_efficiency": (5.0, 0.0)}}, ValueError, "positive"),
        ({"batch_size": "big"}, ValueError, "batch_size"),
    ],
)
def test_bad_input(small, kwargs, exc, match):
    a = small.copy()
    with pytest.raises(exc, match=match):
        snb.tl.fit_nbln(a, progress_bar=False, **kwargs)
    assert "nbln" not in a.uns


def test_bad_cascade_sources(small):
    a = small.copy()
    _fit(snb.tl.fit_zinb, a, key_added="zinb", n_steps=50)
    with pytest.raises(ValueError, match="the cascade needs an NBVCP fit"):
        snb.tl.fit_nbln(a, informative_priors_from="zinb", progress_bar=False)
    _fit(snb.tl.fit_nbvcp, a, key_added="src", n_steps=50)
    sub = a[:, :-1].copy()  # genes differ between the source fit and the target
    with pytest.raises(ValueError, match="genes differ"):
        snb.tl.fit_nbln(sub, informative_priors_from="src", progress_bar=False)
    cells = a[:-1].copy()
    with pytest.raises(ValueError, match="cells differ"):
        snb.tl.fit_nbln(cells, informative_priors_from="src", progress_bar=False)


def test_pln_rejects_dispersion_prior_and_bad_offsets(small):
    a = small.copy()
    with pytest.raises(ValueError, match="PLN has no dispersion"):
        snb.tl.fit_pln(a, priors={"r": (0.0, 1.0)}, progress_bar=False)
    a.obs["bad"] = np.where(np.arange(a.n_obs) == 0, np.nan, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        snb.tl.fit_pln(a, offset_key="bad", progress_bar=False)
    a.obs["txt"] = "x"
    with pytest.raises(TypeError, match="numeric"):
        snb.tl.fit_pln(a, offset_key="txt", progress_bar=False)


def test_compare_models_prefers_nbln_on_overdispersed_data():
    """Per-gene cavity elpd: with r = 1 the NB channel must win overall and for most genes;
    a log-normal fit cannot be ranked against NB-family fits (different criteria)."""
    a = snb.datasets.synthetic_nbln(300, 20, rank=2, rng=4, r=np.full(20, 1.0))
    _fit(snb.tl.fit_pln, a, latent_dim=2, offset_key="true_offset")
    _fit(snb.tl.fit_nbln, a, latent_dim=2, offset_key="true_offset")
    tab = snb.tl.compare_models(a, keys=["pln", "nbln"])
    assert tab.index[0] == "nbln" and tab.loc["pln", "elpd_diff"] > 2 * tab.loc["pln", "se_diff"]
    res = a.uns["model_comparison"]
    assert res["criterion"] == "cavity" and res["unit"] == "gene"
    assert (res["per_gene"]["preferred"] == "nbln").mean() > 0.5
    with pytest.raises(ValueError, match="ill-posed"):
        snb.tl.compare_models(a, keys=["pln", "nbln"], unit="cell")
    _fit(snb.tl.fit_nbdm, a, key_added="nbdm", n_steps=50)
    with pytest.raises(ValueError, match="not on one scale"):
        snb.tl.compare_models(a, keys=["pln", "nbdm"])


def test_generic_fit_points_to_the_laplace_front_end(small):
    with pytest.raises(ValueError, match=r"snb\.tl\.fit_nbln"):
        snb.tl.fit(small.copy(), model="nbln")
    assert "nbln" in snb.tl.available_models().index


def test_numpy_scalar_priors_accepted_and_loss_plot_labelled(small):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = small.copy()
    lib = np.asarray(a.X.sum(1)).ravel()  # float32: np.log gives np.float32
    _fit(
        snb.tl.fit_nbln, a, latent_dim=1, n_steps=20, em_steps=1,
        priors={"capture_efficiency": (np.log(np.median(lib) * 3), np.float64(0.5))},
    )  # fmt: skip
    assert a.uns["nbln"]["params"]["eta_kind"] == "capture_prior"
    fig = snb.pl.loss(a, key="nbln", return_fig=True)
    assert "Laplace log marginal" in " ".join(t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)
