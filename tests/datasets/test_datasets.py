"""Bundled PBMC data and the seeded synthetic generators."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

import scnbtools as snb
from scnbtools.datasets import _build_pbmc3k, _pbmc3k, _synthetic

# shared/ sits beside the repository checkout (dev machines and CI alike)
_REPO = Path(__file__).resolve().parents[2]
SHARED_PBMC = next(
    (
        p
        for p in (
            _REPO.parent / "shared" / "data" / "pbmc3k_desc.h5ad",
            Path("/work/shared/data/pbmc3k_desc.h5ad"),
        )
        if p.exists()
    ),
    _REPO.parent / "shared" / "data" / "pbmc3k_desc.h5ad",
)


def _assert_raw_counts(X) -> None:
    assert sp.issparse(X) and X.format == "csr" and X.dtype == np.float32
    assert np.all(X.data >= 0) and np.all(X.data == np.round(X.data))
    assert X.has_sorted_indices


# ----------------------------------------------------------------------------- pbmc3k
@pytest.fixture(scope="module")
def pbmc():
    return snb.datasets.pbmc3k()


def test_pbmc3k_contents(pbmc):
    assert pbmc.shape == (2638, 2000)
    _assert_raw_counts(pbmc.X)
    assert pbmc.X.max() == 419  # the largest UMI count of the 10x data set
    assert np.all(np.asarray(pbmc.X.sum(axis=0)).ravel() > 0)
    # genes detected in >= 3 cells (the documented filter)
    assert np.asarray((pbmc.X > 0).sum(axis=0)).ravel().min() >= 3
    counts = pbmc.obs["cell_type_derived"].value_counts()
    assert counts.to_dict() == {
        "CD4 T": 1010,
        "CD8 T": 423,
        "CD14+ Mono": 419,
        "B": 340,
        "FCGR3A+ Mono": 214,
        "NK": 176,
        "DC": 40,
        "Megakaryocyte": 16,
    }
    assert "qc_fail" not in pbmc.obs["cell_type_coarse"].cat.categories
    t_cells = pbmc.obs["cell_type_derived"].isin(["CD4 T", "CD8 T"])
    assert (pbmc.obs["cell_type_coarse"][t_cells] == "T").all()
    assert pbmc.var["gene_ids"].str.match(r"^ENSG\d{11}$").all()
    assert pbmc.var_names.is_unique
    assert sorted(pbmc.var["hvg_rank"]) == list(range(2000))  # the top 2000 of the ranking
    for marker in ("LYZ", "MS4A1", "CD3E", "NKG7", "PPBP", "FCGR3A"):
        assert marker in pbmc.var_names
    # obs totals are over all genes, so at least the totals over the kept ones
    kept = np.asarray(pbmc.X.sum(axis=1)).ravel()
    assert np.all(pbmc.obs["total_counts_all_genes"].to_numpy() >= kept)
    assert "10x Genomics" in pbmc.uns["source"]["data"]


def test_pbmc3k_file_is_small_and_packaged():
    path = Path(str(_pbmc3k._path()))
    assert path.is_file() and path.stat().st_size <= 5 * 2**20


def test_pbmc3k_returns_a_fresh_object_each_call(pbmc):
    a = snb.datasets.pbmc3k()
    a.X.data[:] = 0
    a.obs["cell_type_derived"] = "changed"
    a.uns["source"]["data"] = "changed"
    b = snb.datasets.pbmc3k()
    assert a is not b and b.X.data.max() == 419
    assert (b.obs["cell_type_derived"] != "changed").all()
    assert b.uns["source"]["data"] == pbmc.uns["source"]["data"]


def test_pearson_residual_variance_matches_direct_formula():
    rng = np.random.default_rng(0)
    x = rng.negative_binomial(0.5, 0.2, size=(60, 25)).astype(float)
    x[:, 3] = 0
    x[0, 3] = 200  # one extreme value: its residual is clipped at sqrt(60)
    n_c, n_g = x.sum(axis=1), x.sum(axis=0)
    mu = np.outer(n_c, n_g / n_g.sum())
    z = np.clip((x - mu) / np.sqrt(mu + mu**2 / 100.0), -np.sqrt(60), np.sqrt(60))
    got = _build_pbmc3k.pearson_residual_variance(sp.csr_matrix(x), chunk=7)
    np.testing.assert_allclose(got, z.var(axis=0), rtol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_PBMC.exists(), reason="the source h5ad is only in the dev checkout")
def test_pbmc3k_rebuilds_identically(pbmc):
    """The build script reproduces the bundled file from its documented source."""
    rebuilt = _build_pbmc3k.build(SHARED_PBMC)
    assert rebuilt.var_names.equals(pbmc.var_names) and rebuilt.obs_names.equals(pbmc.obs_names)
    assert (rebuilt.X != pbmc.X).nnz == 0
    np.testing.assert_array_equal(rebuilt.var["hvg_rank"], pbmc.var["hvg_rank"])


# ----------------------------------------------------------------------------- synthetic
GENERATORS = [snb.datasets.synthetic_nbdm, snb.datasets.synthetic_zinb]


@pytest.mark.parametrize("gen", GENERATORS, ids=["nbdm", "zinb"])
def test_synthetic_structure(gen, tmp_path):
    a = gen(300, 25, rng=4, p=0.3)
    assert a.shape == (300, 25)
    _assert_raw_counts(a.X)
    model = "zinb" if gen is snb.datasets.synthetic_zinb else "nbdm"
    cols = {"true_r", "true_mu", "true_rho"} | ({"true_gate"} if model == "zinb" else set())
    assert set(a.var.columns) == cols
    np.testing.assert_allclose(a.var["true_mu"], a.var["true_r"] * 0.3 / 0.7)
    np.testing.assert_allclose(a.var["true_rho"].sum(), 1.0)
    meta = a.uns["synthetic"]
    assert meta["model"] == model and meta["p"] == 0.3 and meta["seed"] == 4
    assert (meta["n_obs"], meta["n_vars"]) == (300, 25)
    assert meta["priors"]["r"]["family"] == "lognormal"
    np.testing.assert_array_equal(meta["priors"]["r"]["hyper"], [0.0, 1.0])
    if model == "zinb":
        np.testing.assert_array_equal(meta["priors"]["gate"]["hyper"], [1.0, 4.0])
    assert list(meta["given"]) == []
    a.write_h5ad(tmp_path / "s.h5ad")  # plain types only
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    assert back.uns["synthetic"]["model"] == model and (back.X != a.X).nnz == 0


@pytest.mark.parametrize("gen", GENERATORS, ids=["nbdm", "zinb"])
def test_synthetic_reproducible_by_seed(gen):
    a, b, c = gen(200, 30, rng=7), gen(200, 30, rng=7), gen(200, 30, rng=8)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.var.to_numpy(), b.var.to_numpy())
    assert (a.X != c.X).nnz > 0
    # a Generator works and the seed drawn from it is recorded
    d = gen(50, 5, rng=np.random.default_rng(1))
    e = gen(50, 5, rng=int(d.uns["synthetic"]["seed"]))
    assert (d.X != e.X).nnz == 0


def test_synthetic_large_is_built_in_blocks_deterministically():
    n = _synthetic._BLOCK * 2 + 17
    a = snb.datasets.synthetic_nbdm(n, 3, rng=2)
    b = snb.datasets.synthetic_nbdm(n, 3, rng=2)
    assert a.shape == (n, 3) and (a.X != b.X).nnz == 0
    # every block is new data, not a repeat of the first
    first, second = (
        a.X[: _synthetic._BLOCK].toarray(),
        a.X[_synthetic._BLOCK : 2 * _synthetic._BLOCK].toarray(),
    )
    assert not np.array_equal(first, second)


def test_synthetic_zinb_counts_follow_the_numpyro_convention():
    """Per-gene mean and zero fraction match the ZINB with NB mean r p / (1 - p)."""
    r = np.array([0.5, 2.0, 8.0, 1.0])
    gate = np.array([0.0, 0.3, 0.6, 0.1])
    p = 0.7
    n = 20_000
    a = snb.datasets.synthetic_zinb(n, 4, rng=11, p=p, r=r, gate=gate)
    x = a.X.toarray()
    mean = (1 - gate) * r * p / (1 - p)
    nb_var = r * p / (1 - p) ** 2
    var = (1 - gate) * (nb_var + (r * p / (1 - p)) ** 2) - mean**2
    np.testing.assert_array_less(np.abs(x.mean(axis=0) - mean), 5 * np.sqrt(var / n))
    p0 = gate + (1 - gate) * stats.nbinom.pmf(0, r, 1 - p)
    np.testing.assert_array_less(np.abs((x == 0).mean(axis=0) - p0), 5 * np.sqrt(p0 * (1 - p0) / n))
    np.testing.assert_array_equal(a.var["true_r"], r)
    np.testing.assert_array_equal(a.var["true_gate"], gate)
    assert sorted(a.uns["synthetic"]["given"]) == ["gate", "r"]
    assert dict(a.uns["synthetic"]["priors"]) == {}


def test_synthetic_parameters_drawn_from_the_stated_priors():
    a = snb.datasets.synthetic_zinb(
        10, 4000, rng=0, r_prior=("gamma", (2.0, 0.5)), gate_prior=(2.0, 2.0)
    )
    r, g = a.var["true_r"].to_numpy(), a.var["true_gate"].to_numpy()
    assert stats.kstest(r, stats.gamma(2.0, scale=2.0).cdf).pvalue > 1e-3
    assert stats.kstest(g, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3
    assert a.uns["synthetic"]["priors"]["r"]["family"] == "gamma"


def test_synthetic_default_has_no_empty_gene():
    a = snb.datasets.synthetic_zinb()
    assert a.shape == (1000, 200)
    assert np.asarray(a.X.sum(axis=0)).ravel().min() > 0


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"n_obs": 0}, ValueError, "`n_obs`"),
        ({"n_vars": 2.5}, TypeError, "`n_vars`"),
        ({"p": 1.0}, ValueError, "`p`"),
        ({"p": "half"}, TypeError, "`p`"),
        ({"r": [1.0, 2.0]}, ValueError, r"`r` must have one value per gene \(shape \(5,\)\)"),
        ({"r": [1.0, -1.0, 1.0, 1.0, 1.0]}, ValueError, "`r` values must be finite and > 0"),
        (
            {"gate": [0.1, 1.0, 0, 0, 0]},
            ValueError,
            r"`gate` values must be finite and in \[0, 1\)",
        ),
        ({"r_prior": ("beta", (1, 1))}, ValueError, "not allowed"),
        ({"gate_prior": (1.0,)}, ValueError, "takes 2 hyperparameters"),
        ({"rng": 1.5}, TypeError, "`rng`"),
    ],
)
def test_synthetic_bad_arguments(kwargs, err, match):
    kw = {"n_obs": 10, "n_vars": 5, **kwargs}
    with pytest.raises(err, match=match):
        snb.datasets.synthetic_zinb(**kw)
