"""Validation and option resolution for the log-normal fits (``tl.fit_pln`` / ``tl.fit_nbln``):
freeze aliases, priors, the per-cell offset ``eta`` and the NBVCP cascade."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
from anndata import AnnData

from .._design import offset_from

__all__ = [
    "FREEZE_ALIASES",
    "LOADINGS_PRIORS",
    "Cascade",
    "EtaSetup",
    "cascade_from",
    "resolve_eta",
    "resolve_freeze",
    "resolve_loadings",
]

#: descriptive aliases of the freezable parameters (the seed documents' names)
FREEZE_ALIASES = {
    "r": "r",
    "dispersion": "r",
    "mu": "mu",
    "expression": "mu",
    "mean_expression": "mu",
    "eta": "eta",
    "capture_efficiency": "eta",
}
_FREEZE_ORDER = ("r", "mu", "eta")
LOADINGS_PRIORS = ("gaussian", "horseshoe_columnwise", "neg_columnwise")
_PRIOR_KEYS = ("capture_efficiency", "loadings", "r")
DEFAULT_FREEZE = ("r", "eta")
#: weak default prior on log r of NBLN without a cascade: N(0, 5²)
LOG_R_PRIOR = (0.0, 5.0)
#: floor of the cascade prior scales (a source posterior sd of exactly 0 would be a freeze)
_SCALE_FLOOR = 1e-3


def resolve_freeze(freeze, *, model: str, has_source: bool) -> tuple[str, ...]:
    """Canonical freeze set (subset of ``r, mu, eta`` in that order)."""
    if freeze is None:
        items: list = []
    elif isinstance(freeze, str):
        items = [freeze]
    elif isinstance(freeze, Sequence) and not isinstance(freeze, bytes):
        items = list(freeze)
    else:
        raise TypeError(
            "`informative_priors_freeze` must be a tuple of parameter names such as "
            f"('r', 'eta'), got {freeze!r}."
        )
    seen: dict[str, str] = {}
    for name in items:
        if not isinstance(name, str) or name not in FREEZE_ALIASES:
            raise ValueError(
                f"`informative_priors_freeze` entry {name!r} is not a freezable parameter; "
                f"choose from {', '.join(map(repr, FREEZE_ALIASES))}."
            )
        canon = FREEZE_ALIASES[name]
        if canon in seen:
            raise ValueError(
                f"`informative_priors_freeze` names {canon!r} twice ({seen[canon]!r} and "
                f"{name!r}); {', '.join(repr(a) for a, c in FREEZE_ALIASES.items() if c == canon)} "
                "are aliases of one parameter: give it once."
            )
        seen[canon] = name
    out = tuple(c for c in _FREEZE_ORDER if c in seen)
    if out and not has_source:
        if tuple(items) == DEFAULT_FREEZE:
            return ()  # the default applies to cascade fits only
        raise ValueError(
            f"`informative_priors_freeze`={tuple(items)!r} needs a source fit to freeze "
            "from: pass `informative_priors_from=<key of an NBVCP fit>`, or "
            "`informative_priors_freeze=()`."
        )
    if "r" in out and model == "pln":
        raise ValueError("PLN has no dispersion `r` to freeze; drop 'r' / 'dispersion'.")
    return out


def resolve_loadings(priors: Mapping[str, Any]) -> tuple[str, float]:
    """``(type, tau_scale)`` of the loadings shrinkage prior (``"none"`` when not set)."""
    spec = priors.get("loadings")
    if spec is None:
        return "none", 1.0
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            "`priors['loadings']` must be a dict such as {'type': 'horseshoe_columnwise', "
            f"'tau_scale': 1.0}}, got {spec!r}."
        )
    unknown = set(spec) - {"type", "tau_scale"}
    if unknown:
        raise ValueError(
            f"`priors['loadings']` has unknown entries {sorted(unknown)}; allowed: 'type', "
            "'tau_scale'."
        )
    kind = spec.get("type", "horseshoe_columnwise")
    if kind not in LOADINGS_PRIORS:
        raise ValueError(
            f"`priors['loadings']['type']`={kind!r} is not one of "
            f"{', '.join(map(repr, LOADINGS_PRIORS))}."
        )
    tau = spec.get("tau_scale", 1.0)
    if (
        isinstance(tau, bool)
        or not isinstance(tau, int | float)
        or not np.isfinite(tau)
        or tau <= 0
    ):
        raise ValueError(
            f"`priors['loadings']['tau_scale']` must be a positive number, got {tau!r}."
        )
    return str(kind), float(tau)


def check_priors(priors, model: str) -> dict[str, Any]:
    if priors is None:
        return {}
    if not isinstance(priors, Mapping):
        raise TypeError(f"`priors` must be a dict, got {type(priors).__name__}.")
    unknown = [k for k in priors if k not in _PRIOR_KEYS]
    if unknown:
        raise ValueError(
            f"`priors` has unknown entries {unknown}; the log-normal models take "
            f"{', '.join(map(repr, _PRIOR_KEYS))}."
        )
    if "r" in priors and model == "pln":
        raise ValueError("PLN has no dispersion `r`; drop `priors['r']`.")
    for name in ("capture_efficiency", "r"):
        if name in priors:
            v = priors[name]
            ok = isinstance(v, Sequence | np.ndarray) and len(v) == 2
            ok = ok and all(
                isinstance(a, Real) and not isinstance(a, bool) and np.isfinite(a) for a in v
            )
            if not ok or v[1] <= 0:
                what = (
                    "(log M0, sigma)" if name == "capture_efficiency" else "(loc, scale) of log r"
                )
                raise ValueError(
                    f"`priors[{name!r}]` must be two finite numbers {what} with a positive "
                    f"scale, got {v!r}."
                )
    return dict(priors)


@dataclass
class Cascade:
    """Gaussian priors derived from an NBVCP fit's posterior (log r, log mean rate, eta)."""

    source: str
    tau: float
    freeze: tuple[str, ...]
    log_r: tuple[np.ndarray, np.ndarray]  # (mean, sd) per gene
    log_mean: tuple[np.ndarray, np.ndarray]  # log of the NB mean mu_g per gene
    eta: tuple[np.ndarray, np.ndarray]  # per cell, eta = -log nu
    n_draws: int = 0


def cascade_from(
    adata: AnnData, source, *, tau: float, freeze: tuple[str, ...], n_draws: int, seed: int
) -> Cascade:
    """Validate the source fit and turn its posterior draws into Gaussian priors."""
    from ..get._posterior import fit_result, posterior_samples

    if not isinstance(source, str):
        raise TypeError(
            "`informative_priors_from` must be the `key_added` of an NBVCP fit stored in this "
            f"AnnData (a string), got {type(source).__name__}."
        )
    if source not in adata.uns:
        raise KeyError(
            f"`informative_priors_from`={source!r}: no fit under that key in `adata.uns`; fit "
            f"the source first, e.g. `snb.tl.fit_nbvcp(adata, key_added={source!r})`."
        )
    res = fit_result(adata, key=source)
    model = str(res["params"].get("model", ""))
    if model != "nbvcp":
        raise ValueError(
            f"`informative_priors_from`={source!r} is a {model!r} fit; the cascade needs an "
            "NBVCP fit (`snb.tl.fit_nbvcp`)."
        )
    if int(res["params"].get("n_components", 1)) != 1:
        raise ValueError(
            f"`informative_priors_from`={source!r} is a mixture fit; the cascade needs a "
            "single-component NBVCP fit."
        )
    n_src_cells = int(res.get("n_cells", adata.n_obs))
    if n_src_cells != adata.n_obs:
        raise ValueError(
            f"the source fit {source!r} was fitted to {n_src_cells} cells but `adata` has "
            f"{adata.n_obs}: cells differ between the source fit and this AnnData; refit the "
            "source on this AnnData."
        )
    draws = posterior_samples(adata, key=source, n_samples=n_draws, rng=seed)
    n_src_genes = np.shape(draws["r"])[-1]
    if n_src_genes != adata.n_vars:
        raise ValueError(
            f"genes differ between the source fit {source!r} and this AnnData (the source has "
            f"{n_src_genes} genes, `adata` has {adata.n_vars}); refit the source on this AnnData."
        )

    def ms(a):
        a = np.asarray(a, dtype=np.float64)
        return a.mean(0), np.maximum(a.std(0), _SCALE_FLOOR)

    eta = -np.log(np.clip(np.asarray(draws["nu"], np.float64), 1e-30, 1.0))
    return Cascade(
        source=source,
        tau=tau,
        freeze=freeze,
        log_r=ms(np.log(draws["r"])),
        log_mean=ms(np.log(draws["mu"])),
        eta=ms(eta),
        n_draws=n_draws,
    )


@dataclass
class EtaSetup:
    """How the per-cell offset enters the fit."""

    kind: str  # "library" | "offset_key" | "capture_prior" | "cascade_soft" | "cascade_frozen"
    latent: bool
    lower: float | None
    loc: np.ndarray  # fixed value, or prior location
    scale: np.ndarray  # prior sd (ones when fixed)
    extra: dict = field(default_factory=dict)


def resolve_eta(
    adata: AnnData, lib: np.ndarray, *, offset_key, priors, cascade: Cascade | None
) -> EtaSetup:
    n = adata.n_obs
    ones = np.ones(n)
    cap = priors.get("capture_efficiency")
    if offset_key is not None and (cap is not None or cascade is not None):
        other = "`priors['capture_efficiency']`" if cap is not None else "`informative_priors_from`"
        raise ValueError(
            f"`offset_key` fixes the per-cell offsets, which conflicts with {other}; pass one "
            "of them."
        )
    if cascade is not None:
        m, s = cascade.eta
        if "eta" in cascade.freeze:
            return EtaSetup("cascade_frozen", False, None, m, ones)
        return EtaSetup("cascade_soft", True, None, m, s * cascade.tau)
    if cap is not None:
        log_m0, sigma = float(cap[0]), float(cap[1])
        return EtaSetup(
            "capture_prior", True, 0.0, log_m0 - np.log(lib), np.full(n, sigma),
            {"log_M0": log_m0, "sigma": sigma},
        )  # fmt: skip
    if offset_key is not None:
        if not isinstance(offset_key, str) or offset_key not in adata.obs:
            raise KeyError(
                f"`offset_key`={offset_key!r} is not a column of `adata.obs`; pass the name of "
                "a numeric column of per-cell log-offsets (rate = exp(x + offset))."
            )
        off = offset_from(offset_key, adata.obs, "offset_key")  # numeric and finite
        return EtaSetup("offset_key", False, None, -off, ones)
    return EtaSetup("library", False, None, np.log(lib.mean() / lib), ones)
