"""AnnData front end of the Bayesian NB family: ``tl.fit``, ``tl.fit_nbdm``, ``tl.fit_zinb``."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.engine import DivergenceError, fit_gene_model
from .._core.models import available_models as _available
from .._core.models import get_model
from .._core.models._spec import GUIDE_KINDS
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
from ._nb_options import resolve_options
from ._nb_write import order_components, run_mcmc_fit, write_fit

__all__ = ["available_models", "fit", "fit_nbdm", "fit_nbvcp", "fit_zinb", "fit_zinbvcp"]

_INFERENCE = ("svi", "map", "mcmc")


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
    parameterization: str = "canonical",
    n_components: int | None = None,
    mixture_params: Sequence[str] | str | None = None,
    annotation_key: str | None = None,
    annotation_confidence: float = 3.0,
    layer: str | None = None,
    key_added: str | None = None,
    rng: int | np.random.Generator = 0,
    inference: str = "svi",
    guide: str = "hierarchical",
    guide_rank: int | None = None,
    priors: Mapping[str, Any] | None = None,
    n_steps: int = 20_000,
    learning_rate: float = 0.05,
    tol: float = 1e-6,
    batch_size: int | str | None = "auto",
    n_posterior_samples: int = 1000,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    init_from: str | None = None,
    progress_bar: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit a Bayesian negative-binomial-family model to raw counts.

    Models (``model``): ``"nbdm"`` (NB with one shared ``p``), ``"zinb"`` (plus a per-gene
    dropout gate), ``"nbvcp"`` and ``"zinbvcp"`` (plus a per-cell capture probability
    ``nu_c``: ``p̂_c = p nu_c / (1 - p (1 - nu_c))``). Every model can be a mixture of
    ``n_components`` components and sampled in three parameterizations. The likelihood is
    always exact: NBDM / ZINB use per-gene count histograms (a step costs the same for
    1,000 or 1,000,000 cells), NBVCP a closed form over cells and genes, mixtures and
    ZINBVCP all cells' sparse rows or cell minibatches (``batch_size``).

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw integer counts in ``X`` or ``layers[layer]``
        (dense, CSR and CSC give identical results; sparse input is never densified).
    model
        A registered model name, see :func:`available_models`.
    parameterization
        Which parameters are sampled: ``"canonical"`` (``p``, ``r_g``), ``"mean_prob"``
        (``p``, the NB mean ``mu_g``; ``r = mu (1 - p) / p``) or ``"mean_odds"`` (the odds
        ``phi = (1 - p) / p`` and ``mu_g``; ``r = mu phi``). Outputs always include ``r``,
        ``p`` and ``mu``.
    n_components
        Number of mixture components; ``None`` means 1, or the number of categories of
        ``annotation_key``. Mixing weights have a ``Dirichlet(1, ..., 1)`` prior.
    mixture_params
        Which parameters are component-specific: names among ``p`` / ``phi``, ``r`` /
        ``mu`` and ``gate``, or ``"all"``. Default: the gene-level ones (``p`` shared).
    annotation_key
        Column of ``adata.obs`` with cell labels: component ``k`` is tied to the ``k``-th
        category and each labelled cell's log prior of its own component is raised by
        ``annotation_confidence`` (missing labels: no boost). This fixes the components'
        order (no label switching) and seeds them from the labelled cells.
    annotation_confidence
        The log prior boost ``kappa >= 0`` (0 ignores the labels; 3 makes the labelled
        component e^3 ≈ 20 times as likely a priori).
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    key_added
        Prefix of every key written; defaults to the model name.
    rng
        Seed (int) or ``numpy.random.Generator``; the same seed gives identical results.
    inference
        ``"svi"`` (variational posterior), ``"map"`` (point estimates; summaries have
        ``sd = 0``) or ``"mcmc"`` (NUTS in float64, for small data; no minibatches).
    guide
        Variational family for ``inference="svi"``: ``"hierarchical"`` (default;
        ``q(p) ∏_g q(r_g, gate_g | p)``, correlated within each gene and shifting with
        ``p`` — the model's own conditional-independence structure; cell-level capture
        probabilities shift with ``p`` too), ``"mean_field"`` (fully factorized
        logit-normal / log-normal) or ``"mean_field_beta"`` (Beta for (0, 1) parameters).
    guide_rank
        If set, a joint Gaussian with a rank-``guide_rank`` plus diagonal covariance over
        all unconstrained parameters (instead of ``guide``); needs full-data steps
        (``batch_size=None``).
    priors
        Hyperparameters by parameter name, e.g. ``{"p": (1, 1), "r": ("gamma", (2, 0.1)),
        "gate": (1, 9), "nu": (4, 2)}``. ``"capture_efficiency": (log M0, sigma)`` switches
        capture models to the biology-informed prior ``eta_c = log(M_c / L_c) ~ N(log M0 -
        log L_c, sigma)`` truncated to ``eta_c >= 0`` (``nu_c = exp(-eta_c)``; ``M0`` is the
        expected total mRNA per cell, ``L_c`` the library size). Defaults: ``p ~ Beta(1,
        1)``, ``r, mu, phi ~ LogNormal(0, 2)``, ``gate, nu ~ Beta(1, 1)``. Aliases:
        ``dispersion`` = ``r``, ``expression`` = ``mu``.
    n_steps
        Maximum number of optimisation steps (the fit stops earlier once converged).
    learning_rate
        Initial Adam learning rate; it is reduced on plateaus.
    tol
        Relative ELBO improvement per 100-step chunk below which a plateau is declared.
    batch_size
        Cells per step for the models that need cell rows (mixtures, ZINBVCP);
        ``"auto"`` uses all cells when a step would touch at most ~4 million sparse
        entries and minibatches otherwise; ``None`` always uses all cells.
    n_posterior_samples
        Posterior draws used for the summaries (for capture models on very many cells at
        least 100, bounded so that draws × cells stays below 4·10⁷).
    num_warmup
        NUTS warm-up (adaptation) steps per chain for ``inference="mcmc"``.
    num_samples
        NUTS draws kept per chain.
    num_chains
        Number of NUTS chains (run one after the other); R-hat needs at least 2.
    init_from
        ``inference="mcmc"`` only: key of an SVI fit of the same model in ``adata`` whose
        posterior medians start the chains.
    progress_bar
        Show a tqdm bar; ``None`` follows ``snb.settings.progress_bar``.
    copy
        Return a fitted copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the fitted copy if ``copy=True``. Writes

    * ``adata.varm[f"{key}_{stat}"]`` for ``stat`` in ``mean, sd, q05, q50, q95``:
      DataFrames indexed like ``var`` with columns ``r``, ``gate`` (zero-inflated models),
      ``mu`` (the NB mean ``r p / (1 - p)``, for capture models at ``nu = 1``) and ``rho``
      (transcript fraction ``r / Σ r``); for mixtures one column per component,
      ``r_0, r_1, ...``;
    * capture models: ``adata.obsm[f"{key}_{stat}"]`` with columns ``nu`` (and ``eta``);
    * mixtures: ``adata.obsm[f"{key}_assignment"]``: posterior component probabilities per
      cell (columns = component names);
    * ``adata.uns[key]``: ``params`` (every argument, versions, seed, model configuration),
      ``global`` (summaries of ``p`` (``p_0, ...`` when component-specific), ``phi``,
      ``mixing_weights_k``), ``components`` (``{"0": name, ...}``), ``loss`` and ``learning_rate`` traces,
      ``converged``, ``n_steps_run``, ``runtime_s`` and ``variational_params`` (all plain
      NumPy, so the posterior can be redrawn after ``write_h5ad`` / ``write_zarr``); for
      MCMC ``samples`` and ``mcmc`` (worst R-hat, smallest bulk ESS per parameter,
      divergences).

    Notes
    -----
    Label switching: the variational posterior sits in one mode, so summaries are
    coherent within a fit. Without ``annotation_key`` components are ordered by decreasing
    posterior mean weight after fitting; with it, component ``k`` is the ``k``-th category.
    """
    check_adata(adata)
    laplace = getattr(get_model(model), "inference", None) == "laplace"
    if laplace:
        raise ValueError(
            f"`model`={model!r} is fitted by Laplace-EM with its own options (latent_dim, "
            f"offsets, cascade); call `snb.tl.fit_{model.lower()}(adata, ...)` instead."
        )
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
    if guide_rank is not None:
        guide_rank = check_positive_int(guide_rank, "guide_rank")
        if inference != "svi":
            raise ValueError("`guide_rank` applies to `inference='svi'` only.")
    n_steps = check_positive_int(n_steps, "n_steps")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    tol = check_positive_float(tol, "tol")
    n_posterior_samples = check_positive_int(n_posterior_samples, "n_posterior_samples", 2)
    num_warmup = check_positive_int(num_warmup, "num_warmup")
    num_samples = check_positive_int(num_samples, "num_samples", 2)
    num_chains = check_positive_int(num_chains, "num_chains")
    seed = resolve_rng(rng)
    show = resolve_progress(progress_bar)
    copy = check_bool(copy, "copy")
    counts = counts_from(adata, layer)
    opts = resolve_options(
        adata,
        counts,
        model=model,
        parameterization=parameterization,
        n_components=n_components,
        mixture_params=mixture_params,
        annotation_key=annotation_key,
        annotation_confidence=annotation_confidence,
        priors=priors,
        batch_size=batch_size if inference != "mcmc" else None,
        seed=seed,
    )
    spec = opts.spec
    key = check_key(str(spec.config.get("base", spec.name)) if key_added is None else key_added)
    if guide_rank is not None and opts.batch_size is not None:
        raise ValueError(
            f"`guide_rank` needs full-data steps, but this fit would use cell minibatches of "
            f"{opts.batch_size}; pass `batch_size=None`."
        )
    if init_from is not None and inference != "mcmc":
        raise ValueError("`init_from` applies to `inference='mcmc'` only.")

    logger.info("fitting %s (%s) to %d cells × %d genes", spec.name, inference, *counts.shape)
    try:
        if inference == "mcmc":
            result = run_mcmc_fit(
                adata,
                spec,
                counts,
                opts,
                seed=seed,
                init_from=init_from,
                num_warmup=num_warmup,
                num_samples=num_samples,
                num_chains=num_chains,
                progress_bar=show,
            )
        else:
            result = fit_gene_model(
                spec,
                counts,
                priors=opts.priors,
                inference=inference,
                guide=f"low_rank_{guide_rank}" if guide_rank is not None else guide,
                n_steps=n_steps,
                learning_rate=learning_rate,
                rng=seed,
                tol=tol,
                n_posterior_samples=n_posterior_samples,
                batch_size=opts.batch_size,
                progress_bar=show,
                extras=opts.extras,
            )
    except DivergenceError as e:
        raise RuntimeError(str(e)) from None
    if spec.n_components > 1 and opts.labels is None:
        result = order_components(spec, result)
    if inference != "mcmc" and not result.converged:
        # a warning (not only a log record) so that users see it in notebooks and scripts
        warnings.warn(
            f"the {spec.name} fit did not converge in {n_steps} steps; increase `n_steps` "
            f"(results are written, with `adata.uns[{key!r}]['converged']` = False).",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )

    target = adata.copy() if copy else adata
    write_fit(
        target,
        key,
        spec,
        result,
        opts,
        params={
            "model": str(spec.config.get("base", spec.name)),
            "spec": spec.name,
            "layer": "X" if layer is None else layer,
            "key_added": key,
            "rng": seed,
            "inference": inference,
            "guide": result.guide,
            "guide_rank": 0 if guide_rank is None else int(guide_rank),
            "parameterization": parameterization,
            "n_components": int(spec.n_components),
            "mixture_params": ",".join(spec.config.get("mixture_params", ())),
            "capture_prior": str(spec.config.get("capture_prior", "beta")),
            "annotation_key": "" if annotation_key is None else annotation_key,
            "annotation_confidence": float(annotation_confidence),
            "batch_size": 0 if opts.batch_size is None else int(opts.batch_size),
            "layout": result.layout,
            "n_steps": n_steps,
            "learning_rate": learning_rate,
            "tol": tol,
            "n_posterior_samples": n_posterior_samples,
            "num_warmup": num_warmup,
            "num_samples": num_samples,
            "num_chains": num_chains,
            "init_from": "" if init_from is None else init_from,
            "priors": {
                k: {"family": f, "hyper": np.asarray(h, dtype=float)}
                for k, (f, h) in opts.priors.items()
            },
            "config": {
                k: (",".join(v) if isinstance(v, tuple | list) else v)
                for k, v in spec.config.items()
            },
            "versions": _versions(),
        },
        n_cells=counts.n_cells,
    )
    return target if copy else None


def _model_fit(name: str):
    """``tl.fit`` with ``model`` fixed to ``name``: same keyword-only signature otherwise."""
    sig = inspect.signature(fit)
    params = [
        (p.replace(default=name, annotation="str") if p.name == "key_added" else p)
        for p in sig.parameters.values()
        if p.name != "model"
    ]
    names = [p.name for p in params]

    def fit_model(adata: AnnData, **kwargs) -> AnnData | None:
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"fit_{name}() got unexpected keyword argument(s) {', '.join(unknown)}")
        kwargs.setdefault("key_added", name)
        return fit(adata, model=name, **kwargs)

    fit_model.__signature__ = sig.replace(parameters=params)
    fit_model.__name__ = fit_model.__qualname__ = f"fit_{name}"
    fit_model.__module__ = __name__
    doc = (fit.__doc__ or "").replace(
        "Fit a Bayesian negative-binomial-family model to raw counts.",
        f"Fit the ``{name}`` model to raw counts (same as ``fit(adata, model={name!r}, ...)``).",
    )
    # the fixed model is not a parameter here
    start = doc.index("    model\n")
    fit_model.__doc__ = doc[:start] + doc[doc.index("    parameterization\n") :]
    return fit_model


fit_nbdm = _model_fit("nbdm")
fit_zinb = _model_fit("zinb")
fit_nbvcp = _model_fit("nbvcp")
fit_zinbvcp = _model_fit("zinbvcp")
