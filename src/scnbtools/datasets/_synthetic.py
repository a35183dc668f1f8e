"""Seeded synthetic count data with known truth (NBDM, ZINB, NBVCP, ZINBVCP and mixtures)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from numpy.typing import ArrayLike

from .._core.models import get_model
from .._core.models._spec import LatentSite, parse_priors
from .._validate import check_positive_int, resolve_rng

__all__ = [
    "synthetic_mixture",
    "synthetic_nbdm",
    "synthetic_nbvcp",
    "synthetic_zinb",
    "synthetic_zinbvcp",
]

#: cells simulated per block; fixed so a seed gives the same data whatever the size
_BLOCK = 2048

#: generating distributions of the per-gene parameters (see the docstrings)
_DEFAULT_R_PRIOR = ("lognormal", (0.0, 1.0))
_DEFAULT_GATE_PRIOR = ("beta", (1.0, 4.0))
_DEFAULT_NU_PRIOR = ("beta", (4.0, 2.0))


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"`p` must be a number in (0, 1), got {p!r}.")
    if not 0.0 < float(p) < 1.0:
        raise ValueError(
            f"`p` must lie strictly between 0 and 1, got {p!r} (the NB mean is r·p/(1-p))."
        )
    return float(p)


_DOMAINS = {"positive": "finite and > 0", "unit": "finite and in [0, 1)", "any": "finite"}


def per_item(values: ArrayLike, name: str, n: int, *, what: str, domain: str) -> np.ndarray:
    """Validate values passed explicitly, one per ``what`` (a scalar is broadcast).

    ``domain``: ``"positive"`` (e.g. a size ``r``), ``"unit"`` (``[0, 1)``: a gate may be
    exactly 0, no zero inflation) or ``"any"`` (finite)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be an array of numbers, got {type(values).__name__}."
        ) from None
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(
            f"`{name}` must have one value per {what} (shape ({n},)), got shape {arr.shape}."
        )
    ok = np.isfinite(arr)
    if domain == "positive":
        ok &= arr > 0
    elif domain == "unit":
        ok &= (arr >= 0) & (arr < 1)
    if not np.all(ok):
        bad = arr[~ok][:3]
        raise ValueError(f"`{name}` values must be {_DOMAINS[domain]}; got e.g. {bad.tolist()}.")
    return arr


def _given(values: ArrayLike, name: str, n_vars: int, *, unit: bool) -> np.ndarray:
    """Validate per-gene truth passed explicitly (one value per gene)."""
    return per_item(values, name, n_vars, what="gene", domain="unit" if unit else "positive")


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


# ============================================================================ capture models and mixtures
#: the models a synthetic mixture can be built from
_MIXTURE_MODELS = ("nbdm", "zinb", "nbvcp", "zinbvcp")

#: independent random streams of the capture / mixture simulator (``SeedSequence`` spawn keys).
#: Every cell-level quantity of block ``b`` comes from its own ``(stream, b)`` generator and is
#: drawn element by element in row-major order, so the first cells are the same whatever
#: ``n_obs`` is; the gene-level truth comes from ``default_rng(seed)`` in the order used by
#: ``synthetic_nbdm`` / ``synthetic_zinb`` (the same seed gives the same ``r`` and gates).
_STREAM_STRUCTURE, _STREAM_NU, _STREAM_COUNTS, _STREAM_GATE, _STREAM_LABELS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class _SimSites:
    """The attributes of a ``ModelSpec`` that ``parse_priors`` reads, for simulated sites."""

    name: str
    sites: tuple[LatentSite, ...]
    default_priors: Mapping[str, tuple[str, tuple[float, ...]]]

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    def site(self, name: str) -> LatentSite:
        return next(s for s in self.sites if s.name == name)


_SIM_SITES = _SimSites(
    "synthetic",
    (
        LatentSite("r", "gene", "positive"),
        LatentSite("gate", "gene", "unit"),
        LatentSite("nu", "cell", "unit"),
    ),
    {"r": _DEFAULT_R_PRIOR, "gate": _DEFAULT_GATE_PRIOR, "nu": _DEFAULT_NU_PRIOR},
)


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _parse_sim_priors(user: Mapping[str, Any]) -> dict[str, tuple[str, tuple[float, ...]]]:
    """Validate ``r_prior`` / ``gate_prior`` / ``nu_prior``; errors name the argument."""
    out = {}
    for name, value in user.items():
        try:
            out[name] = parse_priors(_SIM_SITES, {name: value})[name]
        except (TypeError, ValueError) as e:
            raise type(e)(f"`{name}_prior`: {e}") from None
    return out


def _check_p_components(p, n_components: int) -> tuple[np.ndarray, bool]:
    """One ``p`` per component, and whether they were given per component."""
    if np.ndim(p) == 0:
        return np.full(n_components, _check_p(p)), False
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"`p` must be a number in (0, 1) or one such number per component, got {p!r}."
        ) from None
    if arr.shape != (n_components,):
        raise ValueError(
            f"`p` must be one number (shared) or one per component (shape ({n_components},)), "
            f"got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr) & (arr > 0) & (arr < 1)):
        raise ValueError(
            f"`p` values must lie strictly between 0 and 1, got {arr.tolist()} (the NB mean is "
            "r·p/(1-p))."
        )
    return arr, True


def _check_weights(weights, n_components: int) -> np.ndarray:
    if weights is None:
        return np.full(n_components, 1.0 / n_components)
    try:
        arr = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"`weights` must be an array of {n_components} numbers, got {type(weights).__name__}."
        ) from None
    if arr.shape != (n_components,):
        raise ValueError(
            f"`weights` must have one value per component (shape ({n_components},)), got shape "
            f"{arr.shape}; or pass `n_components=len(weights)`."
        )
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"`weights` must be finite and > 0, got {arr.tolist()}.")
    if abs(arr.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"`weights` must sum to 1, got {arr.tolist()} (sum {arr.sum():.6g}); pass "
            "`weights / weights.sum()`."
        )
    return arr


def _check_real(value, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not (np.isfinite(value) and lo <= float(value) <= hi):
        raise ValueError(f"`{name}` must be a finite number in [{lo:g}, {hi:g}], got {value!r}.")
    return float(value)


def _given_genes_by_component(
    values: ArrayLike, name: str, n_vars: int, n_components: int, *, unit: bool
) -> np.ndarray:
    """Per-gene truth for a mixture: shape ``(n_vars,)`` (shared) or ``(n_vars, K)``."""
    if np.ndim(values) == 2:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (n_vars, n_components):
            raise ValueError(
                f"`{name}` must have one value per gene (shape ({n_vars},)) or one column per "
                f"component (shape ({n_vars}, {n_components})), got shape {arr.shape}."
            )
        return np.stack(
            [_given(arr[:, k], name, n_vars, unit=unit) for k in range(n_components)], axis=1
        )
    return np.repeat(_given(values, name, n_vars, unit=unit)[:, None], n_components, axis=1)


def _given_nu(values: ArrayLike, n_obs: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`nu` must be an array of numbers, got {type(values).__name__}.") from None
    if arr.ndim == 0:
        arr = np.full(n_obs, float(arr))
    if arr.shape != (n_obs,):
        raise ValueError(
            f"`nu` must have one value per cell (shape ({n_obs},)), got shape {arr.shape}."
        )
    ok = np.isfinite(arr) & (arr > 0) & (arr <= 1)
    if not np.all(ok):
        raise ValueError(
            f"`nu` values (capture probabilities) must be finite and in (0, 1]; got e.g. "
            f"{arr[~ok][:3].tolist()}."
        )
    return arr


def _simulate_capture_mixture(
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
    nu: ArrayLike | None = None,
    nu_prior=None,
    n_components: int | None = None,
    weights: ArrayLike | None = None,
    separation: float = 0.0,
    marker_fraction: float = 0.0,
) -> AnnData:
    """NB-family counts with optional zero inflation, capture probabilities and components."""
    mixture = n_components is not None
    n_obs = check_positive_int(n_obs, "n_obs")
    n_vars = check_positive_int(n_vars, "n_vars")
    n_comp = check_positive_int(n_components, "n_components") if mixture else 1
    seed = resolve_rng(rng)
    zero_inflated, capture = model.startswith("zi"), model.endswith("vcp")
    if mixture:
        p_k, p_per_component = _check_p_components(p, n_comp)
    else:
        p_k, p_per_component = np.array([_check_p(p)]), False
    w = _check_weights(weights, n_comp) if mixture else np.ones(1)
    if mixture:
        separation = _check_real(separation, "separation", 0.0, np.inf)
        marker_fraction = _check_real(marker_fraction, "marker_fraction", 0.0, 1.0)
    user_priors: dict[str, Any] = {"r": r_prior}
    if zero_inflated:
        user_priors["gate"] = gate_prior
    if capture:
        user_priors["nu"] = nu_prior
    priors = _parse_sim_priors(user_priors)

    # ---- gene-level truth: same generator and order as synthetic_nbdm / synthetic_zinb
    gen = np.random.default_rng(seed)
    given: list[str] = []
    if r is None:
        r_base = _draw(gen, *priors["r"], n_vars)
        r_gk = None
    else:
        r_gk = _given_genes_by_component(r, "r", n_vars, n_comp, unit=False)
        r_base = r_gk[:, 0] if np.ndim(r) < 2 else None
        given.append("r")
    if zero_inflated:
        if gate is None:
            gate_gk = np.repeat(_draw(gen, *priors["gate"], n_vars)[:, None], n_comp, axis=1)
        else:
            gate_gk = _given_genes_by_component(gate, "gate", n_vars, n_comp, unit=True)
            given.append("gate")
    nu_given = None
    if capture and nu is not None:
        nu_given = _given_nu(nu, n_obs)
        given.append("nu")
    if mixture and weights is not None:
        given.append("weights")

    # ---- component structure: marker genes shifted by separation · N(0, 1) on the log scale
    markers = np.zeros(n_vars, dtype=bool)
    if r_gk is None:
        if mixture:
            s = _stream(seed, _STREAM_STRUCTURE)
            order = s.permutation(n_vars)  # nested marker sets as marker_fraction grows
            eps = s.standard_normal((n_vars, n_comp))
            markers[order[: round(marker_fraction * n_vars)]] = True
            with np.errstate(over="ignore", under="ignore"):
                r_gk = np.exp(np.log(r_base)[:, None] + separation * eps * markers[:, None])
            if not np.all(np.isfinite(r_gk) & (r_gk > 0)):
                raise ValueError(
                    f"`separation`={separation!r} makes some component dispersions overflow or "
                    "underflow; use a smaller value (1–3 already separates components well)."
                )
        else:
            r_gk = r_base[:, None]
    # a lognormal draw can underflow to 0 for extreme hyperparameters; numpy needs r > 0
    r_sim = np.maximum(r_gk, np.finfo(np.float64).tiny)

    # ---- cells, in fixed blocks with their own streams
    blocks, nu_all, z_all = [], [], []
    for b, start in enumerate(range(0, n_obs, _BLOCK)):
        m = min(_BLOCK, n_obs - start)
        z = (
            _stream(seed, _STREAM_LABELS, b).choice(n_comp, size=m, p=w)
            if mixture
            else np.zeros(m, dtype=np.int64)
        )
        pc = p_k[z]
        if capture:
            if nu_given is not None:
                nu_b = nu_given[start : start + m]
            else:
                nu_b = _stream(seed, _STREAM_NU, b).beta(*priors["nu"][1], size=m)
            nu_all.append(nu_b)
            # numpy's success probability is 1 - p_hat = (1 - p) / (1 - p (1 - nu))
            q = (1.0 - pc) / (1.0 - pc * (1.0 - nu_b))
        else:
            q = 1.0 - pc
        z_all.append(z)
        x = _stream(seed, _STREAM_COUNTS, b).negative_binomial(
            r_sim[:, z].T, q[:, None], size=(m, n_vars)
        )
        if zero_inflated:
            x[_stream(seed, _STREAM_GATE, b).random((m, n_vars)) < gate_gk[:, z].T] = 0
        blocks.append(sp.csr_matrix(x.astype(np.float32)))
        del x
    X = sp.vstack(blocks, format="csr", dtype=np.float32)

    # ---- AnnData with the truth
    width = len(str(max(n_obs, n_vars) - 1))
    var = pd.DataFrame(index=pd.Index([f"gene_{i:0{width}d}" for i in range(n_vars)]))
    obs = pd.DataFrame(index=pd.Index([f"cell_{i:0{width}d}" for i in range(n_obs)]))
    mu_gk = r_gk * p_k / (1.0 - p_k)
    if mixture:
        var["true_marker"] = markers
    else:
        var["true_r"] = r_gk[:, 0]
        if zero_inflated:
            var["true_gate"] = gate_gk[:, 0]
        var["true_mu"] = mu_gk[:, 0]
        var["true_rho"] = r_gk[:, 0] / r_gk[:, 0].sum()
    z = np.concatenate(z_all)
    if mixture:
        labels = [str(k) for k in range(n_comp)]
        obs["true_component"] = pd.Categorical.from_codes(z, categories=labels)
    if capture:
        nu_c = np.concatenate(nu_all)
        pc = p_k[z]
        obs["true_nu"] = nu_c
        obs["true_p_hat"] = pc * nu_c / (1.0 - pc * (1.0 - nu_c))
    adata = AnnData(X=X, obs=obs, var=var)
    if mixture:
        adata.varm["true_r"] = r_gk
        if zero_inflated:
            adata.varm["true_gate"] = gate_gk
        adata.varm["true_mu"] = mu_gk
        adata.varm["true_rho"] = r_gk / r_gk.sum(axis=0, keepdims=True)
    drawn = [k for k in priors if k not in given]
    meta: dict[str, Any] = {
        "model": model,
        "p": p_k if p_per_component else float(p_k[0]),
        "seed": seed,
        "n_obs": n_obs,
        "n_vars": n_vars,
        "priors": {
            k: {"family": priors[k][0], "hyper": np.asarray(priors[k][1], dtype=float)}
            for k in drawn
        },
        "given": np.asarray(sorted(given), dtype=str),
    }
    if mixture:
        meta.update(
            n_components=n_comp,
            weights=w,
            component_p=p_per_component,
            separation=float(separation),
            marker_fraction=float(marker_fraction),
            n_markers=int(markers.sum()),
        )
    adata.uns["synthetic"] = meta
    return adata


_CAPTURE_DOC = """
    nu
        The per-cell capture probabilities ``ν_c`` (one value per cell, in (0, 1]; 1 means
        every transcript is captured). ``None`` draws them from ``nu_prior``.
    nu_prior
        Beta distribution the capture probabilities are drawn from, ``(alpha, beta)`` or
        ``("beta", (alpha, beta))``. The default ``Beta(4, 2)`` (mean 2/3, 90 % of cells between
        about 0.37 and 0.9) spreads library sizes over roughly a factor of three."""

_GATE_DOC = """
    gate
        The per-gene dropout probabilities (one value per gene, in [0, 1)). ``None`` draws
        them from ``gate_prior``.
    gate_prior
        Beta distribution the gates are drawn from, ``(alpha, beta)``; default ``Beta(1, 4)``."""

_CAPTURE_RETURNS_DOC = """
    Returns
    -------
    AnnData with raw counts in ``X`` (CSR, ``float32`` whole numbers); the truth in ``var``
    (``true_r``, {gate}``true_mu`` = ``r p / (1 - p)``, the mean at full capture, and
    ``true_rho`` = ``r / Σ r``), in ``obs`` (``true_nu`` and ``true_p_hat`` =
    ``p ν / (1 - p (1 - ν))``) and in ``uns["synthetic"]`` (``model``, ``p``, ``seed``,
    ``n_obs``, ``n_vars``, ``priors`` of the drawn parameters, ``given``).
    Cells are simulated in fixed blocks with their own random streams, so the first cells
    are identical whatever ``n_obs`` is, and memory stays bounded for large ``n_obs``. With
    the same seed, ``r`` (and the gates) equal those of :func:`synthetic_nbdm`
    (:func:`synthetic_zinb`)."""


def synthetic_nbvcp(
    n_obs: int = 1000,
    n_vars: int = 200,
    *,
    rng: int | np.random.Generator = 0,
    p: float = 0.5,
    r: ArrayLike | None = None,
    nu: ArrayLike | None = None,
    r_prior: Any = _DEFAULT_R_PRIOR,
    nu_prior: Any = _DEFAULT_NU_PRIOR,
) -> AnnData:
    return _simulate_capture_mixture(
        "nbvcp", n_obs, n_vars, rng=rng, p=p, r=r, r_prior=r_prior, nu=nu, nu_prior=nu_prior
    )


def synthetic_zinbvcp(
    n_obs: int = 1000,
    n_vars: int = 200,
    *,
    rng: int | np.random.Generator = 0,
    p: float = 0.5,
    r: ArrayLike | None = None,
    gate: ArrayLike | None = None,
    nu: ArrayLike | None = None,
    r_prior: Any = _DEFAULT_R_PRIOR,
    gate_prior: Any = _DEFAULT_GATE_PRIOR,
    nu_prior: Any = _DEFAULT_NU_PRIOR,
) -> AnnData:
    return _simulate_capture_mixture(
        "zinbvcp",
        n_obs,
        n_vars,
        rng=rng,
        p=p,
        r=r,
        r_prior=r_prior,
        gate=gate,
        gate_prior=gate_prior,
        nu=nu,
        nu_prior=nu_prior,
    )


def synthetic_mixture(
    n_obs: int = 1000,
    n_vars: int = 200,
    *,
    n_components: int = 3,
    model: str = "nbdm",
    weights: ArrayLike | None = None,
    separation: float = 1.0,
    marker_fraction: float = 0.2,
    rng: int | np.random.Generator = 0,
    p: float | ArrayLike = 0.5,
    r: ArrayLike | None = None,
    gate: ArrayLike | None = None,
    nu: ArrayLike | None = None,
    r_prior: Any = _DEFAULT_R_PRIOR,
    gate_prior: Any = _DEFAULT_GATE_PRIOR,
    nu_prior: Any = _DEFAULT_NU_PRIOR,
) -> AnnData:
    """Simulate counts from a K-component mixture of an NB-family model.

    Each cell belongs to component ``z_c ~ Categorical(weights)`` and its counts follow
    ``model`` with component-specific gene parameters ``r_{g,z_c}`` (and ``gate_{g,z_c}``):
    ``x_cg ~ [gate_{g,z} δ_0 +] (1 - gate_{g,z}) NB(r_{g,z}, p̂_c)`` with
    ``p̂_c = p_z`` (``nbdm``, ``zinb``) or ``p_z ν_c / (1 - p_z (1 - ν_c))`` (``nbvcp``,
    ``zinbvcp``).

    Components differ on a random subset of *marker genes* (a fraction ``marker_fraction`` of
    all genes): ``log r_{g,k} = log r_g + separation · ε_{g,k}``, ``ε_{g,k} ~ N(0, 1)``
    independently per component; elsewhere ``r_{g,k} = r_g``. ``separation=0`` makes all
    components identical; at the default 1.0 two components' log-dispersions differ by about
    1.4 (sd) on every marker gene, which separates the cells of a few hundred genes cleanly.
    Gates, when drawn, are per gene and shared by the components (so ``separation`` alone
    controls how different they are); pass ``gate`` with one column per component otherwise.

    Parameters
    ----------
    n_obs
        Number of cells.
    n_vars
        Number of genes.
    n_components
        Number of components ``K``.
    model
        The component model: ``"nbdm"``, ``"zinb"``, ``"nbvcp"`` or ``"zinbvcp"``.
    weights
        Mixing weights (``K`` positive numbers summing to 1); ``None`` gives equal weights.
    separation
        Standard deviation of the component effects on the log dispersions of marker genes
        (``>= 0``). Ignored when ``r`` has one column per component.
    marker_fraction
        Fraction of genes (in [0, 1]) whose dispersion differs between components. Marker sets
        are nested: with the same seed a larger fraction keeps the smaller one's markers.
    rng
        Seed (int) or ``numpy.random.Generator``; the same seed gives identical data.
    p
        The success probability, in (0, 1): one number shared by the components or one per
        component (NumPyro convention: the NB mean is ``r p / (1 - p)``).
    r
        Per-gene base dispersions (shape ``(n_vars,)``), shifted on marker genes as described
        above, or the component dispersions themselves (shape ``(n_vars, K)``). ``None`` draws
        the base from ``r_prior``.
    gate
        Zero-inflated models only: per-gene gates (shape ``(n_vars,)``, shared) or one column
        per component (``(n_vars, K)``), in [0, 1). ``None`` draws shared gates from
        ``gate_prior``.
    nu
        Capture models only: per-cell capture probabilities in (0, 1]; ``None`` draws them from
        ``nu_prior``.
    r_prior, gate_prior, nu_prior
        Distributions of the drawn parameters, as in :func:`synthetic_zinbvcp`.

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR, ``float32`` whole numbers) and the truth:
    ``obs["true_component"]`` (categorical, ``"0"`` … ``"K-1"``), ``obs["true_nu"]`` and
    ``obs["true_p_hat"]`` (capture models), ``var["true_marker"]``, ``varm["true_r"]``,
    ``varm["true_mu"]`` (``r p / (1 - p)``), ``varm["true_rho"]`` (``r / Σ_g r`` per
    component) and ``varm["true_gate"]`` (zero-inflated models), each genes × K; and
    ``uns["synthetic"]``: ``model``, ``n_components``, ``weights``, ``p`` (a number, or one per
    component when ``component_p``), ``separation``, ``marker_fraction``, ``n_markers``,
    ``seed``, ``n_obs``, ``n_vars``, ``priors``, ``given``. Cells are simulated in fixed blocks
    with their own random streams, so the first cells do not depend on ``n_obs``.

    Examples
    --------
    >>> import scnbtools as snb
    >>> adata = snb.datasets.synthetic_mixture(600, 100, n_components=3, model="zinbvcp", rng=1)
    >>> adata.varm["true_r"].shape, list(adata.obs["true_component"].cat.categories)
    ((100, 3), ['0', '1', '2'])
    """
    if not isinstance(model, str):
        raise TypeError(f"`model` must be a string, got {model!r}.")
    if model.lower() not in _MIXTURE_MODELS:
        raise ValueError(
            f"`model`={model!r} has no synthetic mixture; choose one of "
            f"{', '.join(map(repr, _MIXTURE_MODELS))}."
        )
    model = model.lower()
    if n_components is None:
        raise TypeError("`n_components` must be an integer >= 1, got None.")
    if not model.startswith("zi") and gate is not None:
        raise ValueError(
            f"`gate` was given but model={model!r} has no zero inflation; use model='zinb' or "
            "'zinbvcp', or drop `gate`."
        )
    if not model.endswith("vcp") and nu is not None:
        raise ValueError(
            f"`nu` was given but model={model!r} has no capture probabilities; use "
            "model='nbvcp' or 'zinbvcp', or drop `nu`."
        )
    return _simulate_capture_mixture(
        model,
        n_obs,
        n_vars,
        rng=rng,
        p=p,
        r=r,
        r_prior=r_prior,
        gate=gate,
        gate_prior=gate_prior,
        nu=nu,
        nu_prior=nu_prior,
        n_components=n_components,
        weights=weights,
        separation=separation,
        marker_fraction=marker_fraction,
    )


synthetic_nbvcp.__doc__ = (
    """Simulate counts from the NBVCP model: ``x_cg ~ NB(r_g, p̂_c)`` with per-cell capture.

    ``p̂_c = p ν_c / (1 - p (1 - ν_c))``, so cell ``c`` sees the mean ``r_g p̂_c / (1 - p̂_c)``
    ``= ν_c · r_g p / (1 - p)``: a fraction ``ν_c`` of the gene's expected transcripts.
"""
    + _COMMON_DOC
    + _CAPTURE_DOC
    + "\n"
    + _CAPTURE_RETURNS_DOC.format(gate="")
    + """

    Examples
    --------
    >>> import scnbtools as snb
    >>> adata = snb.datasets.synthetic_nbvcp(500, 50, rng=1)
    >>> bool(adata.obs["true_nu"].between(0, 1).all())
    True
"""
)

synthetic_zinbvcp.__doc__ = (
    """Simulate counts from the ZINBVCP model: ``x_cg ~ gate_g δ_0 + (1 - gate_g) NB(r_g, p̂_c)``.

    ``p̂_c = p ν_c / (1 - p (1 - ν_c))`` with per-cell capture probability ``ν_c``.
"""
    + _COMMON_DOC
    + _GATE_DOC
    + _CAPTURE_DOC
    + "\n"
    + _CAPTURE_RETURNS_DOC.format(gate="``true_gate``, ")
    + """

    Examples
    --------
    >>> import scnbtools as snb
    >>> adata = snb.datasets.synthetic_zinbvcp(500, 50, rng=1, p=0.3)
    >>> sorted(adata.obs.columns)
    ['true_nu', 'true_p_hat']
"""
)
