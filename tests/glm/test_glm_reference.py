"""Estimates equal an independent float64 MLE (scipy.stats + scipy.optimize), every family.

The reference (``glm_reference.py``) shares no code with scnbtools: scipy.stats log-pmfs,
a NumPy gradient and L-BFGS-B started at the truth. Two design variants per family:

* ``intercept+offset``: ``mean="~ x"`` with an obs-column offset, intercept-only dispersion
  and zero inflation;
* ``no intercept``: ``mean="~ x + z - 1"``, ``dispersion="~ w - 1"`` (a dispersion per cell)
  and ``zero_inflation="~ z - 1"``, no offset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from glm_reference import PARAMS, fit_reference, nll_and_grad, simulate

import scnbtools as snb
from conftest import make_glm_adata

N, G = 500, 5

VARIANTS = {
    "intercept+offset": {
        "formulas": {"mean": "~ x", "dispersion": "~ 1", "zero_inflation": "~ 1"},
        "cols": {
            "mean": ["Intercept", "x"],
            "dispersion": ["Intercept"],
            "zero_inflation": ["Intercept"],
        },
        "center": {"mean": [1.0, 0.6], "dispersion": [0.7], "zero_inflation": [-1.2]},
        "offset": True,
    },
    "no intercept": {
        "formulas": {"mean": "~ x + z - 1", "dispersion": "~ w - 1", "zero_inflation": "~ z - 1"},
        "cols": {"mean": ["x", "z"], "dispersion": ["w"], "zero_inflation": ["z"]},
        "center": {"mean": [0.9, -0.5], "dispersion": [0.6], "zero_inflation": [0.8]},
        "offset": False,
    },
}


def _data(family: str, variant: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    spec = VARIANTS[variant]
    obs = pd.DataFrame(
        {"x": rng.normal(size=N), "z": rng.normal(size=N), "w": rng.normal(size=N)},
        index=[f"c{i}" for i in range(N)],
    )
    obs["off"] = rng.normal(0.0, 0.3, N) if spec["offset"] else 0.0
    params = PARAMS[family]
    designs = [
        np.c_[[np.ones(N) if c == "Intercept" else obs[c].to_numpy() for c in spec["cols"][p]]].T
        for p in params
    ]
    truth = [
        np.asarray(spec["center"][p])[:, None] + rng.normal(0.0, 0.15, (len(spec["cols"][p]), G))
        for p in params
    ]
    Y = simulate(family, designs, truth, obs["off"].to_numpy(), rng)
    return obs, designs, truth, Y


def _fit(family, variant, dtype):
    obs, designs, truth, Y = _data(family, variant)
    spec = VARIANTS[variant]
    kw = {p: spec["formulas"][p] for p in PARAMS[family]}
    a = make_glm_adata(Y, obs)
    snb.tl.fit_glm(
        a,
        family=family,
        offset="off" if spec["offset"] else None,
        dtype=dtype,
        progress_bar=False,
        **kw,
    )
    coef = np.concatenate(
        [snb.get.glm_coef(a, param=p).to_numpy() for p in PARAMS[family]], axis=0
    ).T
    se = np.concatenate(
        [snb.get.glm_coef(a, param=p, stat="se").to_numpy() for p in PARAMS[family]], axis=0
    ).T
    return a, coef, se, (obs, designs, truth, Y)


_REF_CACHE: dict = {}


def _reference(family, variant):
    if (family, variant) not in _REF_CACHE:
        obs, designs, truth, Y = _data(family, variant)
        off = obs["off"].to_numpy()
        out = []
        for j in range(G):
            start = np.concatenate([t[:, j] for t in truth])
            out.append(fit_reference(Y[:, j], designs, off, family, start))
        _REF_CACHE[(family, variant)] = (
            np.array([o[0] for o in out]),
            np.array([o[1] for o in out]),
        )
    return _REF_CACHE[(family, variant)]


CASES = [
    (family, variant)
    for family in PARAMS
    for variant in VARIANTS
    # NB without intercepts is the seed notebook's experiment (test_seed_notebook_nb_experiment)
    if (family, variant) != ("nb", "no intercept")
]


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_float64_fit_is_the_reference_mle(family, variant):
    a, coef, se, (obs, designs, _, Y) = _fit(family, variant, "float64")
    ref, ref_nll = _reference(family, variant)
    stats = snb.get.glm_stats(a)
    assert stats["converged"].all(), stats["status"].tolist()
    # within 1e-3 standard errors of the reference optimum (tol=1e-8 puts us within 1.4e-4)
    assert np.max(np.abs(coef - ref) / se) < 1e-3, np.max(np.abs(coef - ref) / se)
    off = obs["off"].to_numpy()
    ours = np.array([nll_and_grad(coef[j], Y[:, j], designs, off, family)[0] for j in range(G)])
    assert np.all(ours <= ref_nll + 1e-7 * np.abs(ref_nll))
    # the reported log-likelihood is the reference's value at our estimate
    np.testing.assert_allclose(stats["loglik"].to_numpy(), -ours, rtol=1e-10)
    # columns named as the design
    for p in PARAMS[family]:
        assert list(snb.get.glm_coef(a, param=p).index) == VARIANTS[variant]["cols"][p]


@pytest.mark.parametrize(
    "family",
    [
        "nb",
        "zinb",
        # each family compiles its own float32 solver; two are enough for the default run
        pytest.param("poisson", marks=pytest.mark.slow),
        pytest.param("zip", marks=pytest.mark.slow),
    ],
)
def test_float32_fit_is_the_reference_mle_too(family):
    _, coef, se, _ = _fit(family, "intercept+offset", "float32")
    ref, _ = _reference(family, "intercept+offset")
    # per-cell work in float32, sums over cells in float64: as close as the float64 fit
    # (measured <= 1e-4 SE for all four families); 2e-3 leaves room for other data
    assert np.max(np.abs(coef - ref) / se) < 2e-3


def test_seed_notebook_nb_experiment(seed_nb_fit64, seed_nb_reference, seed_nb_data):
    """n = 1,000, g = 20, two mean and two dispersion covariates, no intercepts (a dispersion
    per cell): the float64 fit is the reference MLE, so our mean absolute coefficient error is
    within 5 % of the reference's."""
    _, _, truth = seed_nb_data
    a = seed_nb_fit64
    assert snb.get.glm_stats(a)["converged"].all()
    coef = np.concatenate([snb.get.glm_coef(a, param=p).to_numpy() for p in PARAMS["nb"]]).T
    se = np.concatenate(
        [snb.get.glm_coef(a, param=p, stat="se").to_numpy() for p in PARAMS["nb"]]
    ).T
    assert np.max(np.abs(coef - seed_nb_reference) / se) < 1e-3
    for k, p in enumerate(("mean", "dispersion")):
        est = snb.get.glm_coef(a, param=p).to_numpy()
        ref = seed_nb_reference[:, 2 * k : 2 * k + 2].T
        err, ref_err = np.mean(np.abs(est - truth[p])), np.mean(np.abs(ref - truth[p]))
        assert abs(err - ref_err) <= 0.05 * ref_err, (p, err, ref_err)
        # the notebook's own numbers for this experiment were 0.026 (mean), 0.078 (dispersion)
        assert err < {"mean": 0.06, "dispersion": 0.15}[p]


@pytest.mark.parametrize("family", ["poisson", "nb"])
def test_intercept_only_mean_is_the_log_sample_mean(family):
    """``mean="~ 1"`` without offset (one linear predictor for all cells, evaluated once
    per gene): the MLE of both families is the log of the sample mean, and the Poisson
    standard error is ``1 / sqrt(sum y)`` (closed forms, no shared code)."""
    rng = np.random.default_rng(11)
    Y = rng.negative_binomial(2.0, 2.0 / (2.0 + rng.uniform(0.5, 20.0, (1, 6))), (800, 6))
    obs = pd.DataFrame({"x": rng.normal(size=800)}, index=[f"c{i}" for i in range(800)])
    a = make_glm_adata(Y, obs)
    snb.tl.fit_glm(a, mean="~ 1", family=family, dtype="float64", progress_bar=False)
    coef = snb.get.glm_coef(a, param="mean").loc["Intercept"].to_numpy()
    np.testing.assert_allclose(coef, np.log(Y.mean(axis=0)), rtol=0, atol=1e-7)
    assert snb.get.glm_stats(a)["converged"].all()
    if family == "poisson":
        se = np.asarray(a.varm["glm_mean_se"]["Intercept"], dtype=float)
        np.testing.assert_allclose(se, 1.0 / np.sqrt(Y.sum(axis=0)), rtol=1e-6)
