"""Seeded synthetic count data with known truth (NBDM and ZINB)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from numpy.typing import ArrayLike

from .._core.models import get_model
from .._core.models._spec import parse_priors
from .._validate import check_positive_int, resolve_rng

__all__ = ["synthetic_nbdm", "synthetic_zinb"]

#: cells simulated per block; fixed so a seed gives the same data whatever the size
_BLOCK = 2048

#: generating distributions of the per-gene parameters (see the docstrings)
_DEFAULT_R_PRIOR = ("lognormal", (0.0, 1.0))
_DEFAULT_GATE_PRIOR = ("beta", (1.0, 4.0))


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"`p` must be a number in (0, 1), got {p!r}.")
    if not 0.0 < float(p) < 1.0:
        raise ValueError(
            f"`p` must lie strictly between 0 and 1, got {p!r} (the NB mean is r·p/(1-p))."
        )
    return float(p)


def _given(values: ArrayLike, name: str, n_vars: int, *, unit: bool) -> np.ndarray:
    """Validate per-gene truth passed explicitly (one value per gene)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be an array of numbers, got {type(values).__name__}."
        ) from None
    if arr.ndim == 0:
        arr = np.full(n_vars, float(arr))
    if arr.shape != (n_vars,):
        raise ValueError(
            f"`{name}` must have one value per gene (shape ({n_vars},)), got shape {arr.shape}."
        )
    # a gate may be exactly 0 (no zero inflation for that gene); r must be > 0
    ok = np.isfinite(arr) & ((arr >= 0) & (arr < 1) if unit else arr > 0)
    if not np.all(ok):
        bad = arr[~ok][:3]
        rng_txt = "in [0, 1)" if unit else "> 0"
        raise ValueError(f"`{name}` values must be finite and {rng_txt}; got e.g. {bad.tolist()}.")
    return arr


def _draw(rng: np.random.Generator, family: str, hyper: tuple[float, ...], n: int) -> np.ndarray:
    if family == "lognormal":
        return rng.lognormal(hyper[0], hyper[1], size=n)
    if family == "gamma":  # shape, rate
        return rng.gamma(hyper[0], 1.0 / hyper[1], size=n)
    if family == "beta":
        return rng.beta(hyper[0], hyper[1], size=n)
    raise ValueError(f"unknown prior family {family!r}")  # pragma: no cover - parse_priors checks


def _simulate(
    model: str,
    n_obs: int,
    n_vars: int,
    *,
    rng,
    p,
    r: ArrayLike | None,
    r_prior,
    gate: ArrayLike | None = None,
    gate_prior=None,
) -> AnnData:
    spec = get_model(model)
    n_obs = check_positive_int(n_obs, "n_obs")
    n_vars = check_positive_int(n_vars, "n_vars")
    seed = resolve_rng(rng)
    p = _check_p(p)
    zero_inflated = "gate" in spec.site_names
    user_priors: dict[str, Any] = {"r": r_prior}
    if zero_inflated:
        user_priors["gate"] = gate_prior
    priors = parse_priors(spec, user_priors)

    gen = np.random.default_rng(seed)
    truth: dict[str, np.ndarray] = {}
    given: list[str] = []
    for name, value in (("r", r), ("gate", gate)):
        if name == "gate" and not zero_inflated:
            continue
        if value is None:
            truth[name] = _draw(gen, *priors[name], n_vars)
        else:
            truth[name] = _given(value, name, n_vars, unit=name == "gate")
            given.append(name)
    # a lognormal draw can underflow to 0 for extreme hyperparameters; numpy needs r > 0
    r_true = np.maximum(truth["r"], np.finfo(np.float64).tiny)

    blocks = []
    for start in range(0, n_obs, _BLOCK):
        m = min(_BLOCK, n_obs - start)
        # NumPyro's NB(r, p) has mean r p / (1 - p): numpy's success probability is 1 - p
        x = gen.negative_binomial(r_true, 1.0 - p, size=(m, n_vars))
        if zero_inflated:
            x[gen.random((m, n_vars)) < truth["gate"]] = 0
        blocks.append(sp.csr_matrix(x.astype(np.float32)))
    X = sp.vstack(blocks, format="csr", dtype=np.float32)

    width = len(str(max(n_obs, n_vars) - 1))
    var = pd.DataFrame(index=pd.Index([f"gene_{i:0{width}d}" for i in range(n_vars)]))
    var["true_r"] = truth["r"]
    if zero_inflated:
        var["true_gate"] = truth["gate"]
    var["true_mu"] = truth["r"] * p / (1.0 - p)
    var["true_rho"] = truth["r"] / truth["r"].sum()
    obs = pd.DataFrame(index=pd.Index([f"cell_{i:0{width}d}" for i in range(n_obs)]))
    adata = AnnData(X=X, obs=obs, var=var)
    adata.uns["synthetic"] = {
        "model": spec.name,
        "p": p,
        "seed": seed,
        "n_obs": n_obs,
        "n_vars": n_vars,
        "priors": {
            k: {"family": priors[k][0], "hyper": np.asarray(priors[k][1], dtype=float)}
            for k in truth
            if k not in given
        },
        "given": np.asarray(given, dtype=str),
    }
    return adata


_COMMON_DOC = """
    Parameters
    ----------
    n_obs
        Number of cells.
    n_vars
        Number of genes.
    rng
        Seed (int) or ``numpy.random.Generator``; the same seed gives identical data.
    p
        The success probability shared by all genes, in (0, 1). Each gene's NB mean is
        ``r_g p / (1 - p)`` (NumPyro convention; ``numpy``'s ``negative_binomial(r, 1 - p)``).
        The fit's prior on ``p`` is flat, so there is no "default draw"; 0.5 gives means
        equal to ``r``.
    r
        The per-gene dispersions (one value per gene, > 0). ``None`` draws them from
        ``r_prior``.
    r_prior
        Distribution ``r`` is drawn from, in the format of the fit's ``priors``
        (``(loc, scale)`` of a log-normal, or ``("gamma", (shape, rate))``). The default
        ``LogNormal(0, 1)`` is narrower than the fit's weakly informative ``LogNormal(0, 2)``
        so that, with the defaults, essentially no gene is zero in every cell (a gene with
        no counts cannot be fitted): means then span about 0.1–10 UMIs per cell."""

_RETURNS_DOC = """
    Returns
    -------
    AnnData with raw counts in ``X`` (CSR, ``float32`` whole numbers), the truth in
    ``var`` (``true_r``, {gate}``true_mu`` = ``r p / (1 - p)`` as written by the fit,
    ``true_rho`` = ``r / Σ r``) and ``uns["synthetic"]``: ``model``, ``p``, ``seed``, ``n_obs``,
    ``n_vars``, ``priors`` (``{{param: {{"family", "hyper"}}}}`` for the parameters that were
    drawn) and ``given`` (names of the parameters passed explicitly).
    Cells are simulated in fixed blocks, so memory stays bounded for large ``n_obs``."""


def synthetic_nbdm(
    n_obs: int = 1000,
    n_vars: int = 200,
    *,
    rng: int | np.random.Generator = 0,
    p: float = 0.5,
    r: ArrayLike | None = None,
    r_prior: Any = _DEFAULT_R_PRIOR,
) -> AnnData:
    return _simulate("nbdm", n_obs, n_vars, rng=rng, p=p, r=r, r_prior=r_prior)


def synthetic_zinb(
    n_obs: int = 1000,
    n_vars: int = 200,
    *,
    rng: int | np.random.Generator = 0,
    p: float = 0.5,
    r: ArrayLike | None = None,
    gate: ArrayLike | None = None,
    r_prior: Any = _DEFAULT_R_PRIOR,
    gate_prior: Any = _DEFAULT_GATE_PRIOR,
) -> AnnData:
    return _simulate(
        "zinb", n_obs, n_vars, rng=rng, p=p, r=r, r_prior=r_prior, gate=gate, gate_prior=gate_prior
    )


synthetic_nbdm.__doc__ = (
    """Simulate counts from the NBDM model: ``x_cg ~ NB(r_g, p)``, independent cells.
"""
    + _COMMON_DOC
    + "\n"
    + _RETURNS_DOC.format(gate="")
    + """

    Examples
    --------
    >>> import scnbtools as snb
    >>> adata = snb.datasets.synthetic_nbdm(500, 50, rng=1)
    >>> adata.var[["true_r", "true_mu"]].shape
    (50, 2)
"""
)

synthetic_zinb.__doc__ = (
    """Simulate counts from the ZINB model: ``x_cg ~ gate_g δ_0 + (1 - gate_g) NB(r_g, p)``.
"""
    + _COMMON_DOC
    + """
    gate
        The per-gene dropout probabilities (one value per gene, in [0, 1)). ``None`` draws
        them from ``gate_prior``.
    gate_prior
        Beta distribution the gates are drawn from, ``(alpha, beta)``. The default
        ``Beta(1, 4)`` (mean 0.2, 6 % of genes above 0.5) keeps most genes' dropout modest, as
        in UMI data, so ``r`` stays identifiable; ``(1, 1)`` draws from the fit's flat prior.
"""
    + _RETURNS_DOC.format(gate="``true_gate``, ")
    + """

    Examples
    --------
    >>> import scnbtools as snb
    >>> adata = snb.datasets.synthetic_zinb(500, 50, rng=1, p=0.3)
    >>> float(adata.uns["synthetic"]["p"])
    0.3
"""
)
