"""AnnData front end of the Bayesian NB family: ``tl.fit``, ``tl.fit_nbdm``, ``tl.fit_zinb``."""

from __future__ import annotations

import importlib.metadata as md
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._core.engine import DivergenceError, fit_gene_model
from .._core.models import available_models as _available
from .._core.models import get_model
from .._core.models._spec import GUIDE_KINDS, parse_priors
from .._core.summaries import STATS
from .._logging import logger
from .._validate import (
    check_adata,
    check_bool,
    check_key,
    check_positive_float,
    check_positive_int,
    counts_from,
    resolve_progress,
    resolve_rng,
)
from .._version import __version__

__all__ = ["available_models", "fit", "fit_nbdm", "fit_zinb"]

_INFERENCE = ("svi", "map")


def available_models() -> pd.DataFrame:
    """The model registry as a table (name and description)."""
    reg = _available()
    return pd.DataFrame(
        {"description": list(reg.values())}, index=pd.Index(list(reg), name="model")
    )


def _user_stacklevel() -> int:
    """``warnings.warn`` stacklevel, seen from the caller, of the first frame outside this
    module, so a warning points at the user's line whether ``fit`` or ``fit_<model>`` was called."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    return level


def _versions() -> dict[str, str]:
    out = {"scnbtools": __version__}
    for pkg in ("jax", "numpyro", "optax", "anndata"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def fit(
    adata: AnnData,
    *,
    model: str = "zinb",
    layer: str | None = None,
    key_added: str | None = None,
    rng: int | np.random.Generator = 0,
    inference: str = "svi",
    guide: str = "hierarchical",
    priors: Mapping[str, Any] | None = None,
    n_steps: int = 20_000,
    learning_rate: float = 0.05,
    tol: float = 1e-6,
    n_posterior_samples: int = 1000,
    progress_bar: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit a Bayesian negative-binomial-family model to raw counts.

    The exact full-data ELBO is evaluated from per-gene count histograms, so a step costs
    the same for 1,000 or 1,000,000 cells (one log-pmf per distinct (gene, count) pair).

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw integer counts in ``X`` or ``layers[layer]``
        (dense, CSR and CSC give identical results; sparse input is never densified).
    model
        A registered model name, see :func:`available_models` (``"nbdm"``, ``"zinb"``).
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    key_added
        Prefix of every key written; defaults to the model name.
    rng
        Seed (int) or ``numpy.random.Generator``; the same seed gives identical results.
    inference
        ``"svi"`` (variational posterior) or ``"map"`` (point estimates; summaries have
        ``sd = 0`` and equal quantiles).
    guide
        Variational family for ``inference="svi"``: ``"hierarchical"`` (default;
        ``q(p) ∏_g q(r_g, gate_g | p)``, correlated within each gene and shifting with
        ``p`` — the model's own conditional-independence structure), ``"mean_field"``
        (fully factorized logit-normal / log-normal) or ``"mean_field_beta"`` (fully
        factorized Beta / log-normal, SCRIBE's family; slow on CPU).
    priors
        Hyperparameters by parameter name, e.g. ``{"p": (1, 1), "r": ("gamma", (2, 0.1)),
        "gate": (1, 9)}``. Defaults: ``p ~ Beta(1, 1)``, ``r ~ LogNormal(0, 2)``,
        ``gate ~ Beta(1, 1)``. ZINB's shared ``p`` is sensitive to the gate and ``r``
        priors through genes whose dropout is barely identified.
    n_steps
        Maximum number of optimisation steps (the fit stops earlier once converged).
    learning_rate
        Initial Adam learning rate; it is reduced on plateaus.
    tol
        Relative ELBO improvement per 100-step chunk below which a plateau is declared.
    n_posterior_samples
        Posterior draws used for the summaries.
    progress_bar
        Show a tqdm bar; ``None`` follows ``snb.settings.progress_bar``.
    copy
        Return a fitted copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the fitted copy if ``copy=True``. Writes

    * ``adata.varm[f"{key}_{stat}"]`` for ``stat`` in ``mean, sd, q05, q50, q95``:
      DataFrames indexed like ``var`` with columns ``r``, ``gate`` (ZINB), ``mu``
      (the NB mean ``r p / (1 - p)``) and ``rho`` (transcript fraction ``r / Σ r``);
    * ``adata.uns[key]``: ``params`` (every argument, versions, seed), ``global``
      (summaries of ``p``), ``loss`` and ``learning_rate`` traces, ``converged``,
      ``n_steps_run``, ``runtime_s`` and ``variational_params`` (all plain NumPy, so the
      posterior can be redrawn after ``write_h5ad`` / ``write_zarr``).
    """
    check_adata(adata)
    spec = get_model(model)
    key = check_key(spec.name if key_added is None else key_added)
    if inference not in _INFERENCE:
        raise ValueError(
            f"`inference`={inference!r} is not one of {', '.join(map(repr, _INFERENCE))}."
        )
    if guide not in GUIDE_KINDS or guide == "map":
        valid = [g for g in GUIDE_KINDS if g != "map"]
        raise ValueError(
            f"`guide`={guide!r} is not one of {', '.join(map(repr, valid))} "
            "(for point estimates use `inference='map'`)."
        )
    parsed_priors = parse_priors(spec, priors)
    n_steps = check_positive_int(n_steps, "n_steps")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    tol = check_positive_float(tol, "tol")
    n_posterior_samples = check_positive_int(n_posterior_samples, "n_posterior_samples", 2)
    seed = resolve_rng(rng)
    show = resolve_progress(progress_bar)
    copy = check_bool(copy, "copy")
    counts = counts_from(adata, layer)

    logger.info("fitting %s (%s) to %d cells × %d genes", spec.name, inference, *counts.shape)
    try:
        result = fit_gene_model(
            spec,
            counts,
            priors=parsed_priors,
            inference=inference,
            guide=guide,
            n_steps=n_steps,
            learning_rate=learning_rate,
            rng=seed,
            tol=tol,
            n_posterior_samples=n_posterior_samples,
            progress_bar=show,
        )
    except DivergenceError as e:
        raise RuntimeError(str(e)) from None
    if not result.converged:
        # a warning (not only a log record) so that users see it in notebooks and scripts
        warnings.warn(
            f"the {spec.name} fit did not converge in {n_steps} steps; increase `n_steps` "
            f"(results are written, with `adata.uns[{key!r}]['converged']` = False).",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )

    target = adata.copy() if copy else adata
    for stat in STATS:
        target.varm[_keys.gene_key(key, stat)] = pd.DataFrame(
            {
                name: np.asarray(result.gene_summaries[name][stat], dtype=np.float64)
                for name in spec.gene_outputs
            },
            index=target.var_names.copy(),
        )
    target.uns[_keys.uns_key(key)] = {
        "params": {
            "model": spec.name,
            "layer": "X" if layer is None else layer,
            "key_added": key,
            "rng": seed,
            "inference": inference,
            "guide": result.guide,
            "n_steps": n_steps,
            "learning_rate": learning_rate,
            "tol": tol,
            "n_posterior_samples": n_posterior_samples,
            "priors": {
                k: {"family": f, "hyper": np.asarray(h, dtype=float)}
                for k, (f, h) in parsed_priors.items()
            },
            "versions": _versions(),
        },
        "global": {name: dict(s) for name, s in result.global_summaries.items()},
        "loss": np.asarray(result.losses, dtype=np.float64),
        "learning_rate": np.asarray(result.lr_trace, dtype=np.float64),
        "converged": bool(result.converged),
        "n_steps_run": int(result.n_steps),
        "runtime_s": float(result.runtime_s),
        "n_cells": int(counts.n_cells),
        "variational_params": {k: np.asarray(v) for k, v in result.params.items()},
    }
    return target if copy else None


def _model_fit(name: str):
    """``tl.fit`` with ``model`` fixed to ``name``: same keyword-only signature otherwise."""

    def fit_model(
        adata: AnnData,
        *,
        layer: str | None = None,
        key_added: str = name,
        rng: int | np.random.Generator = 0,
        inference: str = "svi",
        guide: str = "hierarchical",
        priors: Mapping[str, Any] | None = None,
        n_steps: int = 20_000,
        learning_rate: float = 0.05,
        tol: float = 1e-6,
        n_posterior_samples: int = 1000,
        progress_bar: bool | None = None,
        copy: bool = False,
    ) -> AnnData | None:
        return fit(
            adata,
            model=name,
            layer=layer,
            key_added=key_added,
            rng=rng,
            inference=inference,
            guide=guide,
            priors=priors,
            n_steps=n_steps,
            learning_rate=learning_rate,
            tol=tol,
            n_posterior_samples=n_posterior_samples,
            progress_bar=progress_bar,
            copy=copy,
        )

    fit_model.__name__ = fit_model.__qualname__ = f"fit_{name}"
    fit_model.__module__ = __name__
    doc = (fit.__doc__ or "").replace(
        "Fit a Bayesian negative-binomial-family model to raw counts.",
        f"Fit the ``{name}`` model to raw counts (same as ``fit(adata, model={name!r}, ...)``).",
    )
    # the fixed model is not a parameter here
    start = doc.index("    model\n")
    fit_model.__doc__ = doc[:start] + doc[doc.index("    layer\n") :]
    return fit_model


fit_nbdm = _model_fit("nbdm")
fit_zinb = _model_fit("zinb")
