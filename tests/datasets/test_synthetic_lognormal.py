"""Synthetic log-normal counts (PLN, NBLN): structure, seeding, closed-form moments, errors.

The theoretical moments are computed here from the stored truth, independently of the
generator. With ``E_gc = exp(mu_g + Σ_gg / 2 - η_c)``:

* PLN:  ``E[u_gc] = E_gc``, ``Var[u_gc] = E_gc + E_gc² (exp(Σ_gg) - 1)``;
* NBLN: ``Var[u_gc] = E_gc + E_gc² (exp(Σ_gg) (1 + 1/r_g) - 1)``;
* both: ``Cov[u_gc, u_hc] = E_gc E_hc (exp(Σ_gh) - 1)`` for ``g != h``;
* given the latent rate ``λ_gc``, ``E[(u - λ)² - u] = λ² / r_g`` (NB) and ``0`` (Poisson).

Tolerances are ``Z_TOL`` standard errors of the compared statistic. Calibration: the moment
checks below (per-gene mean and variance with theoretical standard errors from the raw
moments up to order 4, covariance of the most correlated pairs, the NB-extra-variance
statistic), rerun with 300 other seeds each, gave 22,200 standardised differences with
standard deviations 0.96–1.09 and means within ±0.21 per statistic; the largest absolute value
was 5.37 (an NBLN variance z: the sample variance of log-normal counts is right-skewed).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scnbtools as snb

Z_TOL = 5.5

CASES = {
    "pln": snb.datasets.synthetic_pln,
    "nbln": snb.datasets.synthetic_nbln,
}


def _sigma(adata) -> np.ndarray:
    W = adata.varm["true_W"]
    return W @ W.T + np.diag(adata.var["true_d"].to_numpy())


def _dense(adata) -> np.ndarray:
    return adata.X.toarray().astype(np.float64)


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("case", CASES)
def test_structure_and_roundtrip(case, tmp_path):
    adata = CASES[case](300, 40, rank=3, rng=2, return_latent=True)
    assert adata.shape == (300, 40)
    X = adata.X
    assert sp.issparse(X) and X.format == "csr" and X.dtype == np.float32
    assert np.all(X.data >= 0) and np.all(X.data == np.round(X.data))
    expected_var = ["true_mu", "true_d", "true_sigma2", "true_mean"]
    assert list(adata.var.columns) == expected_var + (["true_r"] if case == "nbln" else [])
    assert list(adata.obs.columns) == ["true_eta", "true_offset"]
    assert adata.varm["true_W"].shape == (40, 3)
    assert adata.obsm["true_z"].shape == (300, 3)
    assert adata.obsm["true_x"].shape == (300, 40) and adata.obsm["true_x"].dtype == np.float32
    np.testing.assert_array_equal(adata.obs["true_offset"], -adata.obs["true_eta"])
    W, d = adata.varm["true_W"], adata.var["true_d"].to_numpy()
    assert np.all(d > 0)
    np.testing.assert_allclose(adata.var["true_sigma2"], (W**2).sum(1) + d)
    np.testing.assert_allclose(
        adata.var["true_mean"], np.exp(adata.var["true_mu"] + adata.var["true_sigma2"] / 2)
    )
    # the stored latent is mu + W z + sqrt(d) ε: its residual from mu + W z is diagonal noise
    resid = adata.obsm["true_x"] - adata.var["true_mu"].to_numpy() - adata.obsm["true_z"] @ W.T
    assert 0.7 < np.mean(resid.var(axis=0) / d) < 1.3
    meta = adata.uns["synthetic"]
    assert meta["model"] == case and meta["rank"] == 3 and meta["seed"] == 2
    assert (meta["n_obs"], meta["n_vars"], meta["offsets"]) == (300, 40, "normal")
    np.testing.assert_allclose(meta["column_variances"].sum(), 0.8 * 0.25)
    path = tmp_path / "syn.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["synthetic"]["model"] == case
    np.testing.assert_array_equal(back.X.toarray(), X.toarray())
    np.testing.assert_array_equal(back.varm["true_W"], W)


def test_latent_x_is_not_stored_by_default():
    adata = snb.datasets.synthetic_pln(50, 10, rank=2)
    assert "true_x" not in adata.obsm and "true_z" in adata.obsm


@pytest.mark.parametrize("case", CASES)
def test_reproducible_by_seed(case):
    a = CASES[case](400, 30, rng=5)
    b = CASES[case](400, 30, rng=5)
    c = CASES[case](400, 30, rng=6)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.varm["true_W"], b.varm["true_W"])
    np.testing.assert_array_equal(a.obs["true_eta"], b.obs["true_eta"])
    assert (a.X != c.X).nnz > 0
    assert not np.allclose(a.varm["true_W"], c.varm["true_W"])
    assert not np.allclose(a.obs["true_eta"], c.obs["true_eta"])
    g = CASES[case](20, 5, rank=2, rng=np.random.default_rng(3))
    assert isinstance(g.uns["synthetic"]["seed"], int)


def test_first_cells_do_not_depend_on_n_obs():
    small = snb.datasets.synthetic_nbln(100, 20, rng=4, return_latent=True)
    large = snb.datasets.synthetic_nbln(2500, 20, rng=4, return_latent=True)  # two blocks
    np.testing.assert_array_equal(small.X.toarray(), large.X[:100].toarray())
    np.testing.assert_array_equal(small.obsm["true_x"], large.obsm["true_x"][:100])
    np.testing.assert_array_equal(small.var["true_r"], large.var["true_r"])


def test_pln_and_nbln_share_the_latent_with_the_same_seed():
    p = snb.datasets.synthetic_pln(200, 30, rng=8, return_latent=True)
    n = snb.datasets.synthetic_nbln(200, 30, rng=8, return_latent=True)
    for key in ("true_mu", "true_d", "true_sigma2"):
        np.testing.assert_array_equal(p.var[key], n.var[key])
    np.testing.assert_array_equal(p.obsm["true_x"], n.obsm["true_x"])
    np.testing.assert_array_equal(p.obs["true_eta"], n.obs["true_eta"])
    assert (p.X != n.X).nnz > 0


# ----------------------------------------------------------------------------- moments
def _raw_moments(adata, nb: bool) -> list[np.ndarray]:
    """``E[u^j]`` (j = 1..4) of every cell (rows) and gene (columns), from factorial moments.

    ``E[u(u-1)...(u-k+1) | λ] = λ^k`` (Poisson) or ``λ^k Π_{i<k} (r + i) / r`` (NB), and
    ``E[λ^k] = exp(k (mu - η) + k² Σ_gg / 2)``; ``u^4 = u₍₄₎ + 6 u₍₃₎ + 7 u₍₂₎ + u₍₁₎`` etc.
    """
    mu, s_gg = adata.var["true_mu"].to_numpy(), adata.var["true_sigma2"].to_numpy()
    eta = adata.obs["true_eta"].to_numpy()[:, None]
    r = adata.var["true_r"].to_numpy() if nb else np.inf
    fact = []
    for k in range(1, 5):
        nb_factor = np.prod([(r + i) / r for i in range(k)], axis=0) if nb else 1.0
        fact.append(np.exp(k * (mu - eta) + k**2 * s_gg / 2) * nb_factor)
    f1, f2, f3, f4 = fact
    return [f1, f2 + f1, f3 + 3 * f2 + f1, f4 + 6 * f3 + 7 * f2 + f1]


def _moment_z(adata, nb: bool) -> dict[str, np.ndarray]:
    """Per-gene standardised differences of the mean and variance across cells.

    Cells differ only by their offsets; the theory is the mixture over the realised offsets
    (raw moments averaged over cells), with standard errors from the theoretical second and
    fourth central moments (the sample's own fourth moment is too heavy-tailed to be used).
    """
    u = _dense(adata)
    n = u.shape[0]
    m1, m2, m3, m4 = (m.mean(axis=0) for m in _raw_moments(adata, nb))
    var = m2 - m1**2
    mu4 = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4
    z_mean = (u.mean(axis=0) - m1) / np.sqrt(var / n)
    z_var = (u.var(axis=0, ddof=1) - var) / np.sqrt((mu4 - var**2) / n)
    return {"mean": z_mean, "var": z_var}


_MOMENT_KW = {"n_obs": 20000, "n_vars": 12, "rank": 4, "sigma2": 0.3, "mean_range": (0.5, 8.0)}


@pytest.mark.parametrize("case", CASES)
def test_marginal_moments_match_the_closed_form(case):
    adata = CASES[case](**_MOMENT_KW, rng=11)
    for stat, z in _moment_z(adata, nb=case == "nbln").items():
        assert np.all(np.abs(z) < Z_TOL), f"{stat}: {np.round(z, 2)}"


def test_moment_check_detects_a_wrong_variance():
    # the same check fails when NB counts are compared with the Poisson closed form
    adata = snb.datasets.synthetic_nbln(**_MOMENT_KW, rng=11, r=2.0)
    assert np.max(np.abs(_moment_z(adata, nb=False)["var"])) > 10


def test_gene_covariances_match_the_low_rank_sigma():
    adata = snb.datasets.synthetic_pln(
        20000, 12, rank=2, rng=12, offset_sd=0.0, sigma2=0.4, mean_range=(2.0, 8.0)
    )
    u, sig = _dense(adata), _sigma(adata)
    m = adata.var["true_mean"].to_numpy()
    iu = np.triu_indices(12, 1)
    top = np.argsort(-np.abs(sig[iu]))[:6]  # the most correlated pairs
    for g, h in zip(iu[0][top], iu[1][top], strict=True):
        prod = (u[:, g] - u[:, g].mean()) * (u[:, h] - u[:, h].mean())
        theory = m[g] * m[h] * (np.exp(sig[g, h]) - 1)
        z = (prod.mean() - theory) / (prod.std() / np.sqrt(u.shape[0]))
        assert abs(z) < Z_TOL, (g, h, sig[g, h], z)
        assert abs(theory) > 6 * prod.std() / np.sqrt(u.shape[0])  # the check has power


def test_true_latent_has_covariance_sigma():
    adata = snb.datasets.synthetic_pln(5000, 60, rank=3, rng=13, return_latent=True)
    sig = _sigma(adata)
    S = np.cov(adata.obsm["true_x"].astype(np.float64), rowvar=False)
    rel = np.linalg.norm(S - sig) / np.linalg.norm(sig)
    floor = np.sqrt((np.trace(sig) ** 2 / np.linalg.norm(sig) ** 2 + 1) / 5000)
    assert rel < 2 * floor, (rel, floor)
    np.testing.assert_allclose(
        adata.obsm["true_x"].mean(axis=0), adata.var["true_mu"], atol=6 * np.sqrt(sig.max() / 5000)
    )


@pytest.mark.parametrize("case", CASES)
def test_extra_variance_given_the_latent_rate(case):
    # E[(u - λ)² - u | λ] = λ² / r for NB and 0 for Poisson
    kw = {"rank": 2, "rng": 14, "mean_range": (3.0, 30.0), "return_latent": True}
    adata = CASES[case](8000, 10, **kw, **({"r": 4.0} if case == "nbln" else {}))
    u = _dense(adata)
    lam = np.exp(
        adata.obsm["true_x"].astype(np.float64) - adata.obs["true_eta"].to_numpy()[:, None]
    )
    t = (u - lam) ** 2 - u
    target = lam**2 / 4.0 if case == "nbln" else np.zeros_like(lam)
    dev = t - target
    z = dev.mean(axis=0) / (dev.std(axis=0) / np.sqrt(u.shape[0]))
    assert np.all(np.abs(z) < Z_TOL), np.round(z, 2)
    if case == "nbln":  # and the statistic tells NB from Poisson (Stouffer over genes)
        z0 = t.mean(axis=0) / (t.std(axis=0) / np.sqrt(u.shape[0]))
        assert z0.sum() / np.sqrt(z0.size) > 8, np.round(z0, 1)


def test_drawn_dispersions_follow_r_prior():
    adata = snb.datasets.synthetic_nbln(5, 4000, rank=1, rng=15, r_prior=(1.0, 0.3))
    log_r = np.log(adata.var["true_r"].to_numpy())
    assert abs(log_r.mean() - 1.0) < 5 * 0.3 / np.sqrt(4000)
    assert abs(log_r.std() - 0.3) < 0.02
    np.testing.assert_allclose(adata.uns["synthetic"]["r_prior"]["hyper"], [1.0, 0.3])


def test_offset_models():
    normal = snb.datasets.synthetic_pln(20000, 5, rank=1, rng=16, offset_sd=0.5)
    eta = normal.obs["true_eta"].to_numpy()
    assert abs(eta.mean()) < 5 * 0.5 / np.sqrt(eta.size) and abs(eta.std() - 0.5) < 0.02
    cap = snb.datasets.synthetic_pln(20000, 5, rank=1, rng=16, offsets="capture")
    nu = np.exp(-cap.obs["true_eta"].to_numpy())
    assert cap.uns["synthetic"]["offsets"] == "capture"
    assert np.all(cap.obs["true_eta"] >= 0)
    # ν ~ Beta(4, 2): mean 2/3, sd sqrt(8 / 252)
    assert abs(nu.mean() - 2 / 3) < 5 * np.sqrt(8 / 252 / nu.size)
    given = np.linspace(-1, 1, 30)
    g = snb.datasets.synthetic_nbln(30, 5, rank=1, eta=given, r=3.0)
    np.testing.assert_array_equal(g.obs["true_eta"], given)
    np.testing.assert_array_equal(g.var["true_r"], np.full(5, 3.0))
    assert list(g.uns["synthetic"]["given"]) == ["eta", "r"]
    assert g.uns["synthetic"]["offsets"] == "given"
    zero = snb.datasets.synthetic_pln(30, 5, rank=1, offset_sd=0.0)
    np.testing.assert_array_equal(zero.obs["true_eta"], 0.0)


def test_defaults_make_the_documented_benchmark_setting():
    # mean counts per cell between 0.5 and 30; 80 % of the latent variance in W Wᵀ
    adata = snb.datasets.synthetic_pln(20, 500)
    m = adata.var["true_mean"].to_numpy()
    assert m.min() >= 0.5 and m.max() <= 30.0
    s = adata.var["true_sigma2"].to_numpy()
    assert abs(s.mean() - 0.25) < 0.025
    share = (adata.varm["true_W"] ** 2).sum() / s.sum()
    assert abs(share - 0.8) < 0.05


# ----------------------------------------------------------------------------- bad input
BAD = [
    ({"n_obs": 0}, ValueError, "n_obs"),
    ({"n_vars": 2.5}, TypeError, "n_vars"),
    ({"rank": 0}, ValueError, "rank"),
    ({"n_vars": 4, "rank": 5}, ValueError, "rank.*exceeds"),
    ({"rng": "zero"}, TypeError, "rng"),
    ({"mean_range": (3.0, 1.0)}, ValueError, "mean_range"),
    ({"mean_range": (0.0, 1.0)}, ValueError, "mean_range"),
    ({"mean_range": 5.0}, ValueError, "mean_range"),
    ({"sigma2": -1.0}, ValueError, "sigma2"),
    ({"sigma2": "big"}, TypeError, "sigma2"),
    ({"lowrank_share": 1.0}, ValueError, "lowrank_share"),
    ({"lowrank_share": 0.0}, ValueError, "lowrank_share"),
    ({"decay": 0.0}, ValueError, "decay"),
    ({"decay": 1.5}, ValueError, "decay"),
    ({"offsets": "poisson"}, ValueError, "offsets.*'normal', 'capture'"),
    ({"offsets": 0.3}, TypeError, "offsets"),
    ({"offset_sd": -0.1}, ValueError, "offset_sd"),
    ({"capture_prior": (0.0, 1.0)}, ValueError, "capture_prior"),
    ({"capture_prior": (1.0,)}, ValueError, "capture_prior"),
    ({"eta": np.zeros(3)}, ValueError, r"eta.*shape \(10,\)"),
    ({"eta": [0.0] * 9 + [np.nan]}, ValueError, "eta.*finite"),
    ({"return_latent": "yes"}, TypeError, "return_latent"),
    ({"mean_range": (1e10, 1e10)}, ValueError, "rates exceed"),
]
BAD_NB = [
    ({"r": -1.0}, ValueError, "`r` values must be finite and > 0"),
    ({"r": np.ones(3)}, ValueError, r"`r` must have one value per gene \(shape \(6,\)\)"),
    ({"r": "many"}, TypeError, "`r` must be an array"),
    ({"r_prior": (0.0, -1.0)}, ValueError, "r_prior"),
    ({"r_prior": ("gamma", (2.0, 1.0))}, ValueError, "r_prior.*lognormal"),
]


@pytest.mark.parametrize(("kwargs", "err", "match"), BAD)
@pytest.mark.parametrize("case", CASES)
def test_bad_arguments(case, kwargs, err, match):
    base = {"n_obs": 10, "n_vars": 6, "rank": 2}
    with pytest.raises(err, match=match):
        CASES[case](**{**base, **kwargs})


@pytest.mark.parametrize(("kwargs", "err", "match"), BAD_NB)
def test_bad_nbln_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        snb.datasets.synthetic_nbln(10, 6, rank=2, **kwargs)


def test_pln_takes_no_dispersion():
    with pytest.raises(TypeError, match="r"):
        snb.datasets.synthetic_pln(10, 6, r=1.0)
