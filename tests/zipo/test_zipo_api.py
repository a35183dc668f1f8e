"""Bad input, `get.zipo_gene_programs` and the plots (on a few-epoch fit)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from zipo_helpers import SMALL, make_adata

import scnbtools as snb


@pytest.fixture(scope="module")
def quick():
    a = make_adata(seed=3)
    snb.tl.fit_zipo(a, likelihood="zinb", max_epochs=3, progress_bar=False, **SMALL)
    return a


# ----------------------------------------------------------------------------- bad input
def _small(n=40):
    a = make_adata(n_cells=n, n_genes=20, seed=1)
    a.obs["label"] = np.array(["x", "y"] * (n // 2), dtype=object)
    return a


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"covariate_keys": ["nope"]}, KeyError, "nope"),
        ({"covariate_keys": ["label"]}, TypeError, "astype\\('category'\\)"),
        ({"likelihood": "gaussian"}, ValueError, "likelihood"),
        ({"library": "fixed"}, ValueError, "library"),
        ({"encoder_dims": ()}, ValueError, "encoder_dims"),
        ({"encoder_dims": (16, 0)}, ValueError, "encoder_dims"),
        ({"encoder_dims": "64"}, TypeError, "encoder_dims"),
        ({"alpha_z": -1.0}, ValueError, "alpha_z"),
        ({"alpha_w": "big"}, TypeError, "alpha_w"),
        ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
        ({"batch_size": 1}, ValueError, "batch_size"),
        ({"lr_decay": 1.5}, ValueError, "lr_decay"),
        ({"key_added": "a b"}, ValueError, "key_added"),
        ({"copy": "yes"}, TypeError, "copy"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        snb.tl.fit_zipo(_small(), progress_bar=False, **kwargs)


def test_covariate_with_nan():
    a = _small()
    a.obs["age"] = np.where(np.arange(a.n_obs) == 3, np.nan, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        snb.tl.fit_zipo(a, covariate_keys=["age"], progress_bar=False)


def test_too_few_cells_for_validation_split():
    a = _small(12)
    with pytest.raises(ValueError, match=r"validation_fraction.*12 cells"):
        snb.tl.fit_zipo(a, validation_fraction=0.1, progress_bar=False)


@pytest.mark.parametrize(
    ("value", "match"), [(0.5, "non-integer"), (-1.0, "negative"), (np.nan, "NaN")]
)
def test_non_count_data(value, match):
    a = _small()
    X = a.X.toarray()
    X[2, 3] = value
    a.X = X
    with pytest.raises(ValueError, match=match):
        snb.tl.fit_zipo(a, progress_bar=False)


def test_missing_fit_and_wrong_model(quick):
    a = quick.copy()
    with pytest.raises(KeyError, match="fit_zipo"):
        snb.tl.zipo_transform(a, key="other")
    a.uns["zinb"] = {"params": {"model": "zinb"}}
    with pytest.raises(ValueError, match="not available yet for 'zinb'"):
        snb.tl.denoise(a, key="zinb")
    with pytest.raises(ValueError, match="not a ZiPo fit"):
        snb.tl.zipo_heldout_nll(a, key="zinb")
    with pytest.raises(KeyError, match="no scnbtools fit"):
        snb.tl.denoise(a, key="missing")


def test_bad_apply_arguments(quick):
    a = quick.copy()
    with pytest.raises(ValueError, match="kind"):
        snb.tl.denoise(a, kind="imputed")
    with pytest.raises(ValueError, match="target_library"):
        snb.tl.denoise(a, target_library=-5)
    with pytest.raises(ValueError, match="delta"):
        snb.tl.zipo_prune(a, delta=1.5)
    with pytest.raises(ValueError, match="shape"):
        snb.tl.zipo_rate_mse(a, true_rates=np.ones((3, 3)))
    missing = a[:, 5:].copy()
    with pytest.raises(KeyError, match="lacks 5"):
        snb.tl.zipo_transform(missing, reference=a)
    with pytest.raises(ValueError, match="genes"):
        snb.tl.denoise(missing)
    with pytest.raises(TypeError, match="cells"):
        snb.tl.zipo_heldout_nll(a, cells=[0.5, 1.5])


# ----------------------------------------------------------------------------- get
def test_gene_programs(quick):
    a = quick.copy()
    df = snb.get.zipo_gene_programs(a)
    W = a.uns["zipo"]["weights"]["enc_0"]["W"]
    assert len(df) == int(np.count_nonzero(W))
    assert list(df.columns) == ["neuron", "gene", "weight", "relative_weight", "n_genes"]
    assert df["relative_weight"].max() == pytest.approx(1.0)
    top = snb.get.zipo_gene_programs(a, n_top=3)
    assert top.groupby("neuron").size().max() == 3
    # neuron 0's top gene is the gene with its largest |weight|
    g0 = a.var_names[np.argmax(np.abs(W[:, 0]))]
    assert top[top.neuron == 0].iloc[0]["gene"] == g0
    snb.tl.zipo_prune(a, delta=0.5)
    pruned = snb.get.zipo_gene_programs(a)
    assert len(pruned) == int(np.count_nonzero(a.uns["zipo"]["weights"]["enc_0"]["W"])) < len(df)
    assert pruned["relative_weight"].min() >= 0.5


# ----------------------------------------------------------------------------- plots
def test_training_plot(quick):
    axes = snb.pl.zipo_training(quick, show=False)
    assert len(axes) == 2 and axes[1].get_yscale() == "log"
    assert len(axes[0].lines) >= 2
    plt.close("all")
    _, given = plt.subplots(1, 2)
    out = snb.pl.zipo_training(quick, ax=given, show=False)
    assert out[0] is given[0]
    fig2 = snb.pl.zipo_training(quick, return_fig=True)
    assert isinstance(fig2, plt.Figure)
    plt.close("all")


def test_sparsity_plot(quick):
    a = quick.copy()
    ax = snb.pl.zipo_sparsity(a, delta=1e-3, show=False)
    assert len(ax.patches) > 0
    plt.close("all")
    snb.tl.zipo_prune(a, delta=1e-2)
    _, ax0 = plt.subplots()
    ax = snb.pl.zipo_sparsity(a, ax=ax0, show=False)
    assert ax is ax0 and "held-out NLL" in ax.get_title()
    plt.close("all")
    with pytest.raises(ValueError, match="delta"):
        snb.pl.zipo_sparsity(a, delta=2.0)
