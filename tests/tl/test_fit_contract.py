"""The AnnData contract of ``tl.fit`` / ``tl.fit_nbdm`` / ``tl.fit_zinb`` (DESIGN.md §3)."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnbtools as snb

#: the short test fits are deliberately not converged; that warning is tested in test_settings
pytestmark = pytest.mark.filterwarnings(r"ignore:the \w+ fit did not converge:UserWarning")

STATS = ["mean", "sd", "q05", "q50", "q95"]
#: documented ``varm`` columns per model (``tl.fit`` docstring)
GENE_COLUMNS = {"zinb": ["r", "gate", "mu", "rho"], "nbdm": ["r", "mu", "rho"]}
#: documented ``uns[key]`` entries
UNS_KEYS = {
    "params",
    "components",
    "global",
    "loss",
    "learning_rate",
    "converged",
    "n_steps_run",
    "runtime_s",
    "n_cells",
    "variational_params",
}
#: arguments that cannot change the numbers and so are not recorded in ``params``
UNRECORDED = {"adata", "progress_bar", "copy"}


def _summaries(a, key: str) -> dict[str, pd.DataFrame]:
    """``{stat: varm frame}`` of the fit under ``key``."""
    return {s: a.varm[f"{key}_{s}"] for s in STATS}


def _assert_same_fit(a, key_a: str, b, key_b: str) -> None:
    for s in STATS:
        pd.testing.assert_frame_equal(
            a.varm[f"{key_a}_{s}"], b.varm[f"{key_b}_{s}"], check_exact=True
        )
    ua, ub = a.uns[key_a], b.uns[key_b]
    np.testing.assert_array_equal(ua["loss"], ub["loss"])
    assert ua["global"] == ub["global"]
    assert ua["variational_params"].keys() == ub["variational_params"].keys()
    for k in ua["variational_params"]:
        np.testing.assert_array_equal(ua["variational_params"][k], ub["variational_params"][k])


# ----------------------------------------------------------------------------- registry
def test_available_models_lists_nbdm_and_zinb():
    table = snb.tl.available_models()
    assert isinstance(table, pd.DataFrame)
    assert table.index.name == "model"
    assert {"nbdm", "zinb"} <= set(table.index)
    assert list(table.columns) == ["description"]
    assert all(isinstance(d, str) and d for d in table["description"])


# ----------------------------------------------------------------------------- keys written
@pytest.mark.parametrize(("fixture", "model"), [("fitted", "zinb"), ("fitted_nbdm", "nbdm")])
def test_exact_keys_written(request, fixture, model, adata, adata_keys):
    fitted = request.getfixturevalue(fixture)
    before, after = adata_keys(adata), adata_keys(fitted)
    assert after["varm"] == before["varm"] | {f"{model}_{s}" for s in STATS}
    assert after["uns"] == before["uns"] | {model}
    for slot in set(before) - {"varm", "uns"}:
        assert after[slot] == before[slot], f"unexpected keys in {slot}"
    for s in STATS:
        df = fitted.varm[f"{model}_{s}"]
        assert isinstance(df, pd.DataFrame)
        assert list(df.columns) == GENE_COLUMNS[model]
        pd.testing.assert_index_equal(df.index, adata.var_names)
        assert all(dt == np.float64 for dt in df.dtypes)


def test_fit_leaves_data_slots_untouched(fitted, adata, assert_adata_identical):
    stripped = fitted.copy()
    stripped.varm.clear()
    stripped.uns.clear()
    assert_adata_identical(stripped, adata)


@pytest.mark.parametrize(("fixture", "model"), [("fitted", "zinb"), ("fitted_nbdm", "nbdm")])
def test_uns_entry_layout(request, fixture, model):
    res = request.getfixturevalue(fixture).uns[model]
    assert set(res) == UNS_KEYS
    assert res["params"]["model"] == model
    assert res["params"]["key_added"] == model
    assert set(res["global"]) == {"p"}
    assert set(res["global"]["p"]) == set(STATS)
    n = res["n_steps_run"]
    assert isinstance(n, int) and 1 <= n <= res["params"]["n_steps"]
    assert res["loss"].shape == (n,) and res["learning_rate"].shape == (n,)
    assert isinstance(res["converged"], bool)
    assert res["n_cells"] == 300
    assert res["runtime_s"] >= 0


def _leaves(obj, path="uns"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), f"{path}: non-string key {k!r}"
            yield from _leaves(v, f"{path}[{k!r}]")
    else:
        yield path, obj


@pytest.mark.parametrize("fixture", ["fitted", "fitted_nbdm", "fitted_map"])
def test_uns_holds_plain_types_only(request, fixture):
    a = request.getfixturevalue(fixture)
    for path, leaf in _leaves(dict(a.uns)):
        assert isinstance(leaf, str | bool | int | float | np.ndarray), f"{path}: {type(leaf)}"
        if isinstance(leaf, np.ndarray):
            assert leaf.dtype.kind in "biuf", f"{path}: dtype {leaf.dtype}"


# ----------------------------------------------------------------------------- summaries
@pytest.mark.parametrize(
    ("fixture", "model"),
    [
        ("fitted", "zinb"),
        ("fitted_nbdm", "nbdm"),
        ("fitted_map", "zinb"),
        ("fitted_beta", "nbdm"),
        ("fitted_custom", "zinb"),
    ],
)
def test_summaries_are_finite_ordered_and_in_support(request, fixture, model):
    a = request.getfixturevalue(fixture)
    key = a.uns[next(iter(a.uns))]["params"]["key_added"]
    out = _summaries(a, key)
    for s, df in out.items():
        assert np.isfinite(df.to_numpy()).all(), f"non-finite values in varm[{key}_{s}]"
    assert (out["sd"].to_numpy() >= 0).all()
    assert (out["q05"].to_numpy() <= out["q50"].to_numpy()).all()
    assert (out["q50"].to_numpy() <= out["q95"].to_numpy()).all()
    for s in ("mean", "q05", "q50", "q95"):
        assert (out[s][["r", "mu", "rho"]].to_numpy() > 0).all()
        if model == "zinb":
            assert out[s]["gate"].between(0, 1).all()
    # every draw of rho sums to one, so its posterior mean does too (float32 draws)
    assert out["mean"]["rho"].sum() == pytest.approx(1.0, abs=1e-5)
    p = a.uns[key]["global"]["p"]
    assert all(np.isfinite(v) for v in p.values())
    assert 0 < p["q05"] <= p["q50"] <= p["q95"] < 1
    assert np.isfinite(a.uns[key]["loss"]).all()
    assert (a.uns[key]["learning_rate"] > 0).all()


def test_map_writes_zero_sd_and_equal_quantiles(fitted_map):
    key = "zinb_map"
    res = fitted_map.uns[key]
    assert res["params"]["inference"] == "map"
    assert res["params"]["guide"] == "map"
    assert all(name.endswith("_map") for name in res["variational_params"])
    mean = fitted_map.varm[f"{key}_mean"]
    assert (fitted_map.varm[f"{key}_sd"].to_numpy() == 0).all()
    for q in ("q05", "q50", "q95"):
        pd.testing.assert_frame_equal(fitted_map.varm[f"{key}_{q}"], mean, check_exact=True)
    p = res["global"]["p"]
    assert p["sd"] == 0 and p["q05"] == p["q50"] == p["q95"] == p["mean"]


# ----------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize("model", ["nbdm", "zinb"])
def test_model_wrappers_have_the_generic_signature(model):
    """``fit_<model>`` is ``fit`` without ``model`` and with ``key_added=<model>``."""
    generic = dict(inspect.signature(snb.tl.fit).parameters)
    del generic["model"]
    generic["key_added"] = generic["key_added"].replace(default=model, annotation="str")
    wrapper = getattr(snb.tl, f"fit_{model}")
    assert dict(inspect.signature(wrapper).parameters) == generic
    assert wrapper.__name__ == f"fit_{model}"
    assert f"model={model!r}" in wrapper.__doc__ and "\n    model\n" not in wrapper.__doc__


def test_fit_nbdm_matches_generic_fit(adata, fitted_nbdm, fit_kw):
    assert snb.tl.fit_nbdm(adata, **fit_kw) is None
    _assert_same_fit(adata, "nbdm", fitted_nbdm, "nbdm")


def test_generic_fit_defaults_to_zinb(adata, fitted, fit_kw):
    snb.tl.fit(adata, **fit_kw)
    assert adata.uns["zinb"]["params"]["model"] == "zinb"
    _assert_same_fit(adata, "zinb", fitted, "zinb")


# ----------------------------------------------------------------------------- copy
def test_copy_true_returns_fitted_copy_and_leaves_input_identical(
    adata, fitted, fit_kw, assert_adata_identical
):
    before = adata.copy()
    out = snb.tl.fit_zinb(adata, copy=True, **fit_kw)
    assert out is not adata
    assert out.X is not adata.X
    assert_adata_identical(adata, before)
    assert "zinb_mean" not in adata.varm and "zinb" not in adata.uns
    _assert_same_fit(out, "zinb", fitted, "zinb")


@pytest.mark.parametrize("fmt", ["dense", "csc", "csr_unsorted_int64"])
def test_formats_give_identical_results_in_place(fmt, counts, make_adata, fitted, fit_kw):
    if fmt == "csr_unsorted_int64":
        a = make_adata(counts, "dense")
        X = sp.csr_matrix(counts.astype(np.int64))
        # reverse the column order inside every row: same matrix, unsorted indices
        for i in range(X.shape[0]):
            lo, hi = X.indptr[i], X.indptr[i + 1]
            X.indices[lo:hi] = X.indices[lo:hi][::-1].copy()
            X.data[lo:hi] = X.data[lo:hi][::-1].copy()
        X.has_sorted_indices = False
        a.X = X
    else:
        a = make_adata(counts, fmt)
    X_before = a.X.copy()
    assert snb.tl.fit_zinb(a, **fit_kw) is None
    _assert_same_fit(a, "zinb", fitted, "zinb")
    # the input matrix is not modified (not even re-sorted in place)
    assert type(a.X) is type(X_before)
    if sp.issparse(X_before):
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(a.X, part), getattr(X_before, part))
    else:
        np.testing.assert_array_equal(a.X, X_before)


# ----------------------------------------------------------------------------- layer
def test_layer_is_used_instead_of_x(adata, fitted, fit_kw, assert_adata_identical):
    adata.layers["counts"] = adata.X.copy()
    garbage = adata.X.copy()
    garbage.data = np.log1p(garbage.data / 3.0)  # normalized-looking, non-integer
    adata.X = garbage
    with pytest.raises(ValueError, match="non-integer"):
        snb.tl.fit_zinb(adata, **fit_kw)  # X really is unusable ...
    before = adata.copy()
    out = snb.tl.fit_zinb(adata, layer="counts", copy=True, **fit_kw)  # ... the layer is used
    assert_adata_identical(adata, before)
    assert out.uns["zinb"]["params"]["layer"] == "counts"
    assert fitted.uns["zinb"]["params"]["layer"] == "X"
    _assert_same_fit(out, "zinb", fitted, "zinb")


# ----------------------------------------------------------------------------- keys / rng
def test_two_keys_do_not_clobber(fitted, fit_kw):
    a = fitted.copy()
    snb.tl.fit_zinb(a, key_added="zinb_b", rng=1, **fit_kw)
    snb.tl.fit(a, model="nbdm", key_added="zinb_c", **fit_kw)
    assert {"zinb", "zinb_b", "zinb_c"} <= set(a.uns)
    assert {f"{k}_{s}" for k in ("zinb", "zinb_b", "zinb_c") for s in STATS} <= set(a.varm)
    _assert_same_fit(a, "zinb", fitted, "zinb")
    assert a.uns["zinb_b"]["params"]["rng"] == 1
    assert a.uns["zinb_c"]["params"]["model"] == "nbdm"
    assert list(a.varm["zinb_c_mean"].columns) == GENE_COLUMNS["nbdm"]


def test_same_rng_same_numbers_different_rng_different(adata, fitted, fit_kw):
    same = snb.tl.fit_zinb(adata, rng=0, copy=True, **fit_kw)
    _assert_same_fit(same, "zinb", fitted, "zinb")
    other = snb.tl.fit_zinb(adata, rng=1, copy=True, **fit_kw)
    assert other.uns["zinb"]["params"]["rng"] == 1
    assert not np.array_equal(other.uns["zinb"]["loss"], fitted.uns["zinb"]["loss"])
    assert not np.array_equal(
        other.varm["zinb_mean"].to_numpy(), fitted.varm["zinb_mean"].to_numpy()
    )


def test_numpy_generator_rng_is_recorded_and_reproducible(adata, fit_kw):
    out = snb.tl.fit_zinb(adata, rng=np.random.default_rng(7), copy=True, **fit_kw)
    seed = out.uns["zinb"]["params"]["rng"]
    assert isinstance(seed, int)
    again = snb.tl.fit_zinb(adata, rng=seed, copy=True, **fit_kw)
    _assert_same_fit(out, "zinb", again, "zinb")


# ----------------------------------------------------------------------------- params / guides
_CUSTOM = {
    "layer": "counts",
    "key_added": "custom-fit_1",
    "rng": 3,
    "inference": "svi",
    "guide": "mean_field",
    "priors": {"p": (2.0, 3.0), "r": ("gamma", (2, 0.5)), "gate": [1, 9]},
    "n_steps": 150,
    "learning_rate": 0.04,
    "tol": 1e-5,
    "n_posterior_samples": 50,
}


@pytest.fixture(scope="module")
def fitted_custom(counts, make_adata):
    a = make_adata(counts)
    a.layers["counts"] = a.X.copy()
    snb.tl.fit(a, model="zinb", progress_bar=False, **_CUSTOM)
    return a


def test_params_record_every_argument(fitted_custom):
    params = fitted_custom.uns["custom-fit_1"]["params"]
    signature = set(inspect.signature(snb.tl.fit).parameters)
    assert signature - UNRECORDED <= set(params), "an argument of tl.fit is not recorded"
    assert params["model"] == "zinb"
    for name, value in _CUSTOM.items():
        if name != "priors":
            assert params[name] == value, name
    expected_priors = {"p": ("beta", [2, 3]), "r": ("gamma", [2, 0.5]), "gate": ("beta", [1, 9])}
    assert set(params["priors"]) == set(expected_priors)
    for name, (family, hyper) in expected_priors.items():
        assert params["priors"][name]["family"] == family
        np.testing.assert_array_equal(params["priors"][name]["hyper"], hyper)
    versions = params["versions"]
    assert versions["scnbtools"] == snb.__version__
    assert {"jax", "numpyro", "optax", "anndata"} <= set(versions)
    assert all(isinstance(v, str) and v for v in versions.values())


def test_mean_field_guide_runs(fitted_custom):
    res = fitted_custom.uns["custom-fit_1"]
    assert res["params"]["guide"] == "mean_field"
    assert {"p_loc", "p_scale", "r_loc", "r_scale", "gate_loc", "gate_scale"} == set(
        res["variational_params"]
    )
    assert res["n_steps_run"] <= 150
    for s in STATS:
        assert np.isfinite(fitted_custom.varm[f"custom-fit_1_{s}"].to_numpy()).all()


@pytest.fixture(scope="module")
def fitted_beta(counts, make_adata):
    # NBDM: the Beta family is exercised on ``p``; ZINB's extra Beta gate doubles the
    # (compile-dominated) cost of this fit without testing anything new
    return snb.tl.fit_nbdm(
        make_adata(counts), guide="mean_field_beta", n_steps=50, progress_bar=False, copy=True
    )


def test_mean_field_beta_guide_runs(fitted_beta):
    res = fitted_beta.uns["nbdm"]
    assert res["params"]["guide"] == "mean_field_beta"
    assert set(res["variational_params"]) == {"p_alpha", "p_beta", "r_loc", "r_scale"}
    assert res["n_steps_run"] <= 50


# ----------------------------------------------------------------------------- divergence
def test_divergence_raises_and_writes_nothing(adata, fit_kw, assert_adata_identical):
    before = adata.copy()
    # an absurd learning rate overflows the parameters within the first chunk
    with pytest.raises(RuntimeError, match=r"diverged.*smaller `learning_rate` \(now 1000\)"):
        snb.tl.fit_zinb(adata, **{**fit_kw, "learning_rate": 1e3})
    assert_adata_identical(adata, before)
