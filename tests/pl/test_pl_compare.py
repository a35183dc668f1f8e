"""``pl.model_comparison``: a hand-built ``uns`` entry in the schema of ``tl.compare_models``."""

from __future__ import annotations

import copy

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from scnbtools._core.loo import compare, preferred_per_unit, psis_loo
from scnbtools.pl._compare import model_comparison

N_GENES = 40


def _n_figs() -> int:
    return len(plt.get_fignums())


def _fake(unit: str = "gene", with_per_gene: bool = True) -> ad.AnnData:
    """AnnData with a comparison of three models on 40 genes ('nb' best, 'zinb' close)."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((5, N_GENES)))
    adata.var_names = [f"gene{i}" for i in range(N_GENES)]
    base = rng.normal(-50.0, 5.0, N_GENES)
    draws = rng.normal(0.0, 0.3, (200, N_GENES))
    lls = {
        "zinb": base - 0.5 + rng.normal(0, 2.0, N_GENES) + draws,
        "nb": base + draws,
        "poisson": base - 8.0 + draws * 2.0,
    }
    lls["nb"][:, 3] -= 10 * np.abs(draws[:, 3])  # a gene with a heavy tail
    res = {m: psis_loo(ll) for m, ll in lls.items()}
    table = pd.DataFrame(compare(res, criterion="loo")).set_index("model")
    rec = {"table": table, "criterion": "loo", "unit": unit, "params": {"keys": list(lls)}}
    if with_per_gene:
        pointwise = {m: r["elpd_i"] for m, r in res.items()}
        pref, margin = preferred_per_unit(pointwise)
        pg = pd.DataFrame({f"elpd_{m}": v for m, v in pointwise.items()}, index=adata.var_names)
        pg["preferred"] = pref
        pg["elpd_margin"] = margin
        rec["per_gene"] = pg
    adata.uns["model_comparison"] = rec
    return adata


@pytest.fixture
def adata():
    return _fake()


def test_sanity_of_the_fake(adata):
    assert list(adata.uns["model_comparison"]["table"].index) == ["nb", "zinb", "poisson"]


# ----------------------------------------------------------------------------- elpd
def test_elpd_returns_axes_with_best_on_top(adata):
    out = model_comparison(adata, show=False)
    assert isinstance(out, Axes) and _n_figs() == 1
    labels = [t.get_text() for t in out.get_yticklabels()]
    ys = list(out.get_yticks())
    top_to_bottom = [lab for _, lab in sorted(zip(ys, labels, strict=True), reverse=True)]
    assert top_to_bottom == ["nb", "zinb", "poisson"]
    texts = [t.get_text() for t in out.texts]
    tab = adata.uns["model_comparison"]["table"]
    assert "best" in texts[0]
    d, s = tab.loc["poisson", ["elpd_diff", "se_diff"]]
    assert any(f"Δ = {-d:.1f} ± {s:.1f}" in t for t in texts)
    assert any("k > 0.7" in t for t in texts) == bool(tab["n_bad_k"].sum())
    assert "LOO" in out.get_xlabel()


def test_elpd_return_fig_and_ax(adata):
    fig = model_comparison(adata, return_fig=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and _n_figs() == 1
    fig2, ax = plt.subplots()
    assert model_comparison(adata, ax=ax, show=False) is ax
    assert model_comparison(adata, ax=ax, return_fig=True) is fig2
    assert _n_figs() == 2


# ----------------------------------------------------------------------------- per gene
def test_per_gene_returns_two_axes_and_counts_genes(adata):
    out = model_comparison(adata, kind="per_gene", show=False)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(a, Axes) for a in out)
    assert _n_figs() == 1
    bars, scatter = out
    pg = adata.uns["model_comparison"]["per_gene"]
    # stacked bars per model: clear + close margins add up to the genes preferring it
    widths = {}
    labels = [t.get_text() for t in bars.get_yticklabels()]
    ys = list(bars.get_yticks())
    for patch in bars.patches:
        y = patch.get_y() + patch.get_height() / 2
        lab = labels[int(np.argmin(np.abs(np.asarray(ys) - y)))]
        widths[lab] = widths.get(lab, 0) + patch.get_width()
    expected = pg["preferred"].value_counts()
    for m in ["nb", "zinb", "poisson"]:
        assert widths[m] == expected.get(m, 0)
    assert sum(widths.values()) == N_GENES
    # the scatter holds every gene's difference between the two best models
    pts = np.concatenate([c.get_offsets()[:, 1] for c in scatter.collections])
    diff = (pg["elpd_nb"] - pg["elpd_zinb"]).to_numpy()
    np.testing.assert_allclose(np.sort(pts), np.sort(diff))


def test_per_gene_return_fig_and_axes(adata):
    fig = model_comparison(adata, kind="per_gene", return_fig=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    _, axs = plt.subplots(1, 2)
    assert model_comparison(adata, kind="per_gene", ax=axs, show=False) == list(axs)
    with pytest.raises(ValueError, match="2 panel"):
        model_comparison(adata, kind="per_gene", ax=axs[0], show=False)


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("kind", ["elpd", "per_gene"])
def test_does_not_mutate_adata(adata, kind):
    before = copy.deepcopy(adata.uns["model_comparison"])
    table_id = id(adata.uns["model_comparison"]["table"])
    model_comparison(adata, kind=kind, show=False)
    after = adata.uns["model_comparison"]
    assert id(after["table"]) == table_id and set(after) == set(before)
    pd.testing.assert_frame_equal(after["table"], before["table"])
    pd.testing.assert_frame_equal(after["per_gene"], before["per_gene"])
    assert after["params"] == before["params"]


def test_table_in_any_order_is_sorted_for_display(adata):
    rec = adata.uns["model_comparison"]
    rec["table"] = rec["table"].iloc[::-1]  # worst first, as someone might store it
    out = model_comparison(adata, show=False)
    top = max(zip(out.get_yticks(), [t.get_text() for t in out.get_yticklabels()], strict=True))
    assert top[1] == "nb"
    assert list(rec["table"].index) == ["poisson", "zinb", "nb"]  # untouched


def test_works_after_h5ad_round_trip(adata, tmp_path):
    path = tmp_path / "cmp.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert isinstance(model_comparison(back, show=False), Axes)
    assert len(model_comparison(back, kind="per_gene", show=False)) == 2


# ----------------------------------------------------------------------------- bad input
def test_missing_key_says_what_to_run(adata):
    with pytest.raises(KeyError, match=r"snb\.tl\.compare_models\(adata, keys=\[\.\.\.\]\)"):
        model_comparison(ad.AnnData(np.zeros((2, 2))), show=False)
    with pytest.raises(KeyError, match=r"'model_comparison'.*key_added='other'"):
        model_comparison(adata, key="other", show=False)
    adata.uns["fit"] = {"loss": [1.0]}
    with pytest.raises(KeyError, match="no model comparison"):
        model_comparison(adata, key="fit", show=False)
    assert _n_figs() == 0


def test_per_gene_needs_per_gene_results():
    adata = _fake(unit="cell", with_per_gene=False)
    assert isinstance(model_comparison(adata, show=False), Axes)
    plt.close("all")
    with pytest.raises(ValueError, match=r"no per-gene comparison.*kind='elpd'"):
        model_comparison(adata, kind="per_gene", show=False)
    assert _n_figs() == 0


def test_per_gene_needs_two_models(adata):
    rec = adata.uns["model_comparison"]
    rec["table"] = rec["table"].iloc[:1]
    assert isinstance(model_comparison(adata, show=False), Axes)  # one model still plots
    with pytest.raises(ValueError, match="at least two models"):
        model_comparison(adata, kind="per_gene", show=False)


def test_bad_arguments(adata):
    with pytest.raises(ValueError, match="`kind` must be 'elpd' or 'per_gene', got 'bars'"):
        model_comparison(adata, kind="bars", show=False)
    with pytest.raises(TypeError, match="AnnData"):
        model_comparison(np.zeros((2, 2)), show=False)
    with pytest.raises(TypeError, match="`key` must be a string"):
        model_comparison(adata, key=1, show=False)
    with pytest.raises(TypeError, match="`return_fig`"):
        model_comparison(adata, return_fig="yes")
    rec = adata.uns["model_comparison"]
    rec["table"] = rec["table"].drop(columns=["se"])
    with pytest.raises(ValueError, match="has no se"):
        model_comparison(adata, show=False)
    assert _n_figs() == 0


def test_scores_are_consistent_with_a_clear_model_ranking():
    # independent of the fake: a clearly better model gets the top row
    rng = np.random.default_rng(1)
    y = rng.normal(size=(1, 30))
    good = psis_loo(stats.norm.logpdf(y, rng.normal(0, 0.05, (300, 1)), 1.0))
    bad = psis_loo(stats.norm.logpdf(y, rng.normal(2, 0.05, (300, 1)), 1.0))
    adata = ad.AnnData(np.zeros((30, 2)))
    adata.uns["cmp"] = {
        "table": pd.DataFrame(compare({"bad": bad, "good": good})).set_index("model"),
        "criterion": "loo",
        "unit": "cell",
        "params": {},
    }
    out = model_comparison(adata, key="cmp", show=False)
    top = max(zip(out.get_yticks(), [t.get_text() for t in out.get_yticklabels()], strict=True))
    assert top[1] == "good"
