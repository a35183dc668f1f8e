"""Validation and resolution of the NB-family options of ``tl.fit`` (no fitting here)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.data import CountData
from .._core.models import resolve_spec
from .._core.models._spec import ModelSpec, parse_priors
from .._core.models.nbfamily import (
    BASES,
    PARAMETERIZATIONS,
    data_layout,
    mixture_param_choices,
)
from ..get._posterior import component_names

__all__ = ["NBOptions", "annotation_boost", "resolve_options"]

#: user-facing aliases of prior / parameter names
PRIOR_ALIASES = {"capture_efficiency": "eta", "dispersion": "r", "expression": "mu"}

#: sparse-row entries evaluated per step before cell minibatches are switched on
_STEP_BUDGET = 1 << 22
#: the same for ZINBVCP, whose zeros make every (cell, gene) pair a transcendental
#: evaluation: a 4M-entry dense step ran ~10× slower than a 512-cell dense baseline step
_DENSE_STEP_BUDGET = 1 << 20


@dataclass
class NBOptions:
    spec: ModelSpec
    priors: dict[str, tuple[str, tuple]]
    extras: dict[str, Any]
    batch_size: int | None
    components: list[str]
    labels: np.ndarray | None  # integer component per cell, -1 unlabelled


def _check_components(
    n_components, annotation_key, adata
) -> tuple[int, list[str], np.ndarray | None]:
    cats: list[str] | None = None
    labels = None
    if annotation_key is not None:
        if not isinstance(annotation_key, str):
            raise TypeError(
                f"`annotation_key` must be a column name of adata.obs, got {annotation_key!r}."
            )
        if annotation_key not in adata.obs.columns:
            raise KeyError(
                f"`annotation_key`={annotation_key!r} is not a column of adata.obs; "
                f"available columns: {', '.join(map(repr, adata.obs.columns[:20]))}."
            )
        col = adata.obs[annotation_key]
        cat = col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col
        used = cat.cat.remove_unused_categories()
        cats = [str(c) for c in used.cat.categories]
        if not cats:
            raise ValueError(f"`adata.obs[{annotation_key!r}]` has no labels (all missing).")
        labels = np.asarray(used.cat.codes, dtype=np.int64)  # -1 = missing
    if n_components is None:
        K = len(cats) if cats is not None else 1
    else:
        if isinstance(n_components, bool) or not isinstance(n_components, numbers.Integral):
            raise TypeError(f"`n_components` must be a positive integer, got {n_components!r}.")
        K = int(n_components)
        if K < 1:
            raise ValueError(f"`n_components` must be >= 1, got {n_components}.")
        if cats is not None and len(cats) > K:
            raise ValueError(
                f"`adata.obs[{annotation_key!r}]` has {len(cats)} categories ({', '.join(cats[:8])}"
                f"{', ...' if len(cats) > 8 else ''}) but `n_components`={K}: every label must "
                f"name a component. Use n_components >= {len(cats)} or n_components=None."
            )
    if cats is not None and K == 1:
        raise ValueError(
            "`annotation_key` needs a mixture: the column has a single category, so there is "
            "nothing to assign; drop `annotation_key` or use more components."
        )
    names = list(cats or []) + [f"component_{k}" for k in range(len(cats or []), K)]
    return K, names, labels


def _split_priors(priors, base: str):
    """Apply aliases; a parameter and its alias together is an error."""
    if priors is None:
        return None, "beta"
    if not isinstance(priors, Mapping):
        raise TypeError(
            f"`priors` must be a dict mapping parameter names to hyperparameters, got {type(priors).__name__}."
        )
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in priors.items():
        target = PRIOR_ALIASES.get(name, name)
        if target in out:
            alias = name if name != target else given[target]
            raise ValueError(
                f"`priors` names {target!r} twice (directly and through its alias {alias!r}); keep one."
            )
        out[target] = value
        given[target] = name
    capture_prior = "beta"
    if "eta" in out:
        if base not in ("nbvcp", "zinbvcp"):
            raise ValueError(
                "`priors['capture_efficiency']` applies only to capture models "
                "(model='nbvcp' or 'zinbvcp')."
            )
        if "nu" in out:
            raise ValueError(
                "`priors` sets both 'nu' (a Beta prior on the capture probability) and "
                "'capture_efficiency' (a truncated-normal prior on eta = log(M/L)); choose one."
            )
        value = out["eta"]
        arr = np.asarray(value, dtype=object)
        if arr.shape != (2,) or isinstance(value, str):
            raise ValueError(
                "`priors['capture_efficiency']` must be (log M0, sigma): the log of the expected "
                f"total mRNA per cell and the prior's scale, got {value!r}."
            )
        out["eta"] = ("truncnormal", tuple(value))
        capture_prior = "truncnormal"
    return out, capture_prior


def resolve_options(
    adata: AnnData,
    counts: CountData,
    *,
    model: str,
    parameterization: str,
    n_components,
    mixture_params,
    annotation_key,
    annotation_confidence,
    priors,
    batch_size,
    seed: int = 0,
) -> NBOptions:
    """Validate the NB-family options and build the spec, priors and per-cell extras."""
    if not isinstance(parameterization, str) or parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"`parameterization`={parameterization!r} is not one of "
            f"{', '.join(map(repr, PARAMETERIZATIONS))}."
        )
    if not isinstance(model, str):
        raise TypeError(f"`model` must be a string, got {type(model).__name__}.")
    base = model.lower()
    if base not in BASES:
        resolve_spec(base)  # raises the registry's error for unknown names
    K, names, labels = _check_components(n_components, annotation_key, adata)
    if mixture_params is not None:
        if K == 1:
            raise ValueError("`mixture_params` needs `n_components` > 1.")
        if isinstance(mixture_params, str):
            mixture_params = (
                mixture_param_choices(base, parameterization)
                if mixture_params == "all"
                else (mixture_params,)
            )
        mixture_params = tuple(PRIOR_ALIASES.get(m, m) for m in mixture_params)
        valid = mixture_param_choices(base, parameterization)
        bad = [m for m in mixture_params if m not in valid]
        if bad:
            raise ValueError(
                f"`mixture_params` has {bad!r}, which is not a parameter of {base} "
                f"({parameterization}); choose from {', '.join(map(repr, valid))} or 'all'."
            )
        if not mixture_params:
            raise ValueError("`mixture_params` is empty; name at least one parameter or use None.")
    if isinstance(annotation_confidence, bool) or not isinstance(
        annotation_confidence, numbers.Real
    ):
        raise TypeError(
            f"`annotation_confidence` must be a number >= 0, got {annotation_confidence!r}."
        )
    if not np.isfinite(annotation_confidence) or annotation_confidence < 0:
        raise ValueError(
            f"`annotation_confidence` must be a finite number >= 0, got {annotation_confidence!r}."
        )
    user_priors, capture_prior = _split_priors(priors, base)
    spec = resolve_spec(
        base,
        parameterization=parameterization,
        n_components=K,
        mixture_params=mixture_params,
        capture_prior=capture_prior,
    )
    parsed = parse_priors(spec, user_priors)
    extras: dict[str, Any] = {}
    lib = counts.cell_totals()
    if spec.config.get("capture"):
        if np.any(lib == 0):
            raise ValueError(
                f"{int(np.sum(lib == 0))} cells have no counts; capture models need every "
                "cell's library size. Remove them first, e.g. `snb.pp.filter_empty(adata)`."
            )
        if capture_prior == "truncnormal":
            extras["prior_shift"] = -np.log(lib)
    if K > 1:
        from .._core.models._mixture_init import (
            component_means_from_labels,
            kmeans_component_means,
        )

        if labels is not None:
            ann = np.zeros((counts.n_cells, K), np.float32)
            has = labels >= 0
            ann[np.flatnonzero(has), labels[has]] = float(annotation_confidence)
            extras["ann"] = ann
            means, weights = component_means_from_labels(counts, labels, K)
        else:
            means, weights = kmeans_component_means(counts, K, seed=seed)
        extras["component_means"] = means
        extras["component_weights"] = weights
    bs = _resolve_batch_size(batch_size, spec, counts)
    return NBOptions(spec, parsed, extras, bs, names, labels)


def _resolve_batch_size(batch_size, spec: ModelSpec, counts: CountData) -> int | None:
    N = counts.n_cells
    if batch_size is None:
        return None
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(
                f"`batch_size` must be 'auto', None or a positive integer, got {batch_size!r}."
            )
        layout = data_layout(spec.config) if spec.loglik is not None else "hist"
        if layout in ("hist", "capture_hist"):
            return None
        width = (
            counts.n_genes
            if (spec.config["capture"] and spec.config["zero_inflated"])
            else int(
                np.max(np.diff(counts.X.tocsr().indptr)) if counts.is_sparse else counts.n_genes
            )
        )
        per_cell = max(width, 1) * spec.n_components
        dense = spec.config["capture"] and spec.config["zero_inflated"]
        budget = _DENSE_STEP_BUDGET if dense else _STEP_BUDGET
        if N * per_cell <= budget:
            return None
        return int(min(N, max(256, (budget // per_cell) // 128 * 128)))
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be 'auto', None or a positive integer, got {batch_size!r}."
        )
    return int(min(int(batch_size), N)) if int(batch_size) < N else None


def annotation_boost(res, adata, K: int) -> np.ndarray | None:
    """The per-cell log prior boosts ``[N, K]`` of a stored annotated mixture fit, or None.

    Labels are matched to the fit's component names (not to category codes), so a
    subset of cells that lacks some categories gets the same boosts as in the fit.
    """
    params = res["params"]
    ann_key = str(params.get("annotation_key", "") or "")
    kappa = float(params.get("annotation_confidence", 0.0))
    if not ann_key or kappa == 0.0:
        return None
    if ann_key not in adata.obs.columns:
        raise KeyError(
            f"the fit used `annotation_key`={ann_key!r}, which is not a column of `adata.obs` "
            "any more; restore it (its labels enter each cell's component probabilities)."
        )
    comps = component_names(res)
    col = adata.obs[ann_key]
    labels = np.array(["" if v is None or v != v else str(v) for v in col.tolist()], dtype=object)
    ann = np.zeros((adata.n_obs, K), np.float32)
    for k, c in enumerate(comps[:K]):
        ann[labels == c, k] = kappa
    return ann
