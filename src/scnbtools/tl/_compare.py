"""``tl.compare_models``: WAIC / PSIS-LOO comparison of NB-family and log-normal fits stored in
one AnnData."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._core import loo
from .._core.engine import cell_logliks, cell_rows
from .._core.infer.laplace import D_FLOOR, gene_cavity_elpd
from .._core.pointwise import gene_loglik_draws
from .._validate import (
    check_adata,
    check_bool,
    check_key,
    check_positive_int,
    counts_from,
    resolve_rng,
)
from ..get._posterior import fit_result, fit_spec
from ._nb_options import annotation_boost
from ._nb_write import redraw

__all__ = ["compare_models"]

_UNITS = ("auto", "cell", "gene")


_LOGNORMAL = ("pln", "nbln")


def _fit_counts(adata, key, res):
    """The counts a stored fit was made on (its layer), checked to have its cells."""
    layer = res["params"].get("layer", "X")
    counts = counts_from(adata, None if layer == "X" else layer, allow_empty_genes=True)
    if int(res.get("n_cells", counts.n_cells)) != counts.n_cells:
        raise ValueError(
            f"the fit {key!r} was made on {int(res['n_cells'])} cells but adata has "
            f"{counts.n_cells}; compare fits on the AnnData they were fitted to."
        )
    return counts


def _lognormal_elpd(adata, key, res, spec):
    """Per-gene elpd of a Laplace fit: each count predicted from its cell's other genes
    (the cavity of the cell's Laplace posterior), summed over cells."""
    counts = _fit_counts(adata, key, res)
    lap = res["laplace"]
    params = {
        "mu": np.asarray(lap["mu"]),
        "W": np.asarray(lap["W"]),
        "log_d": np.log(np.maximum(np.asarray(lap["d"]) - D_FLOOR, 1e-30)),
    }
    if "r" in lap:
        params["log_r"] = np.log(np.asarray(lap["r"]))
    X = counts.X
    U = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    x_hat = np.asarray(adata.obsm[_keys.latent_key(key)], np.float32)
    elpd_i, lppd_i = gene_cavity_elpd(
        U, x_hat, np.asarray(lap["eta"], np.float32), params, spec.obs
    )
    n = elpd_i.size
    return {  # no "criterion" entry: loo.compare takes it as a plain per-unit elpd
        "elpd_i": elpd_i,
        "lppd_i": lppd_i,
        "p_i": lppd_i - elpd_i,
        "elpd": float(elpd_i.sum()),
        "p_eff": float((lppd_i - elpd_i).sum()),
        "se": float(np.sqrt(n * elpd_i.var())),
        "n_bad_k": 0,
        "n_units": n,
    }


def _pointwise(adata, key, res, spec, unit, n_samples, seed):
    counts = _fit_counts(adata, key, res)
    draws = redraw(spec, res, n_samples, seed)
    if unit == "gene":
        return gene_loglik_draws(spec, draws, counts)
    cfg = spec.config
    shift = None
    if cfg.get("capture") and cfg.get("capture_prior") == "truncnormal":
        shift = -np.log(counts.cell_totals())
    ann = annotation_boost(res, adata, int(cfg["n_components"]))
    rows = cell_rows(counts, None, shift, ann)
    d32 = {k: np.asarray(v, dtype=np.float32) for k, v in draws.items()}
    _, ll = cell_logliks(spec, d32, rows, n_max=n_samples)
    return ll


def compare_models(
    adata: AnnData,
    *,
    keys: Sequence[str],
    criterion: str = "loo",
    unit: str = "auto",
    n_samples: int = 200,
    rng: int | np.random.Generator = 0,
    key_added: str = "model_comparison",
    copy: bool = False,
) -> pd.DataFrame:
    """Compare NB-family and log-normal (PLN / NBLN) fits of the same data by WAIC or PSIS-LOO.

    The expected log pointwise predictive density (elpd) of each fit is estimated from
    ``n_samples`` posterior draws; higher is better. This answers e.g. "NB or ZINB for my
    data?": fit both (``tl.fit_nbdm``, ``tl.fit_zinb``) and compare.

    Parameters
    ----------
    adata
        AnnData holding every fit in ``keys`` (same cells, genes and count layer).
    keys
        ``key_added`` of two or more fits.
    criterion
        ``"loo"`` (PSIS-LOO, with Pareto-k diagnostics; k > 0.7 flags unreliable units) or
        ``"waic"``.
    unit
        What is left out: ``"cell"`` (a cell's whole count vector; mixtures must be
        compared this way) or ``"gene"`` (a gene's counts in every cell). ``"auto"`` uses
        genes when a capture model (``nbvcp``, ``zinbvcp``) without mixture components is
        compared — its per-cell capture probability is a cell-local parameter, so leaving a
        cell out is ill-posed — or log-normal fits are compared (each cell's latent log-rates
        are cell-local), and cells otherwise.
        Log-normal fits (compared with each other only) use neither PSIS nor WAIC: each
        count ``u_gc`` is predicted from the cell's other genes through the cavity of the
        cell's Laplace posterior (the posterior with gene ``g``'s own likelihood removed),
        ``log ∫ p(u_gc | x) N(x; m_gc, 1/τ_gc) dx`` by Gauss–Hermite, summed over cells per
        gene (``criterion`` is then ignored; ``n_bad_k`` is 0). For
        single-component fits the per-gene comparison is also computed when ``unit="cell"``.
    n_samples
        Posterior draws used (MCMC fits: resampled from the stored draws).
    rng
        Seed for the draws.
    key_added
        ``adata.uns`` key of the result.
    copy
        ``True``: only return the table and leave ``adata`` untouched (nothing to copy:
        the result is a table, not a modified AnnData).

    Returns
    -------
    The comparison table (index: fit keys, best first) with columns ``rank``, ``elpd``,
    ``se``, ``p_eff``, ``elpd_diff`` (best minus this fit, ≥ 0), ``se_diff``, ``n_bad_k``
    (units with Pareto k > 0.7; 0 for WAIC) and ``weight`` (pseudo-BMA). Also written
    (unless ``copy=True``) to ``adata.uns[key_added]``: ``table``, ``criterion``, ``unit``,
    ``per_gene`` (per-gene elpd of each fit as ``elpd_<key>``, the ``preferred`` fit and
    its ``elpd_margin`` over the runner-up; single-component fits only) and ``params``.
    Plot it with :func:`scnbtools.pl.model_comparison`.
    """
    check_adata(adata)
    if isinstance(keys, str) or not isinstance(keys, Sequence):
        raise TypeError(f"`keys` must be a list of fit keys, got {keys!r}.")
    keys = [check_key(k, "keys") for k in keys]
    if len(keys) < 2:
        raise ValueError(f"`keys` must name at least two fits to compare, got {keys!r}.")
    if len(set(keys)) != len(keys):
        raise ValueError(f"`keys` has duplicates: {keys!r}.")
    if criterion not in ("loo", "waic"):
        raise ValueError(f"`criterion`={criterion!r} is not one of 'loo', 'waic'.")
    if unit not in _UNITS:
        raise ValueError(f"`unit`={unit!r} is not one of {', '.join(map(repr, _UNITS))}.")
    n_samples = check_positive_int(n_samples, "n_samples", 2)
    seed = resolve_rng(rng)
    key_added = check_key(key_added)
    copy = check_bool(copy, "copy")
    fits = {}
    for k in keys:
        res = fit_result(adata, key=k)
        if str(res["params"].get("model")) not in ("nbdm", "zinb", "nbvcp", "zinbvcp", *_LOGNORMAL):
            raise ValueError(
                f"fit {k!r} is not an NB-family or log-normal fit; compare_models needs "
                "NB-family (tl.fit_*) or PLN / NBLN (tl.fit_pln, tl.fit_nbln) fits."
            )
        fits[k] = (res, fit_spec(res))
    layers = {str(r["params"].get("layer", "X")) for r, _ in fits.values()}
    if len(layers) > 1:
        raise ValueError(
            f"the fits use different count layers ({sorted(layers)}); they must share the data."
        )
    lognormal = [k for k, (r, _) in fits.items() if str(r["params"].get("model")) in _LOGNORMAL]
    mixtures = [k for k, (_, s) in fits.items() if getattr(s, "n_components", 1) > 1]
    capture = [k for k, (_, s) in fits.items() if k in lognormal or s.config.get("capture")]
    if unit == "auto":
        unit = "gene" if (capture and not mixtures) else "cell"
    if lognormal and len(lognormal) != len(fits):
        others = [k for k in fits if k not in lognormal]
        raise ValueError(
            f"log-normal fits ({', '.join(lognormal)}) are compared by predicting each count "
            f"from its cell's other genes, NB-family fits ({', '.join(others)}) by posterior "
            "draws: the two criteria are not on one scale. Compare log-normal fits with each "
            "other, and NB-family fits with each other."
        )
    if unit == "cell" and lognormal:
        raise ValueError(
            f"per-cell comparison is ill-posed for log-normal fits ({', '.join(lognormal)}): "
            "each cell's latent log-rates are its own parameters. Use unit='gene' (or 'auto')."
        )
    if unit == "gene" and mixtures:
        raise ValueError(
            f"per-gene comparison is not defined for mixtures ({', '.join(mixtures)}): a cell's "
            "component couples all its genes. Use unit='cell'."
        )
    score = loo.psis_loo if criterion == "loo" else loo.waic
    if lognormal:
        results = {k: _lognormal_elpd(adata, k, r, s) for k, (r, s) in fits.items()}
    else:
        results = {
            k: score(_pointwise(adata, k, r, s, unit, n_samples, seed))
            for k, (r, s) in fits.items()
        }
    table = pd.DataFrame(
        loo.compare(results, criterion="loo" if lognormal else criterion)
    ).set_index("model")
    if lognormal:
        criterion = "cavity"
    table.index = table.index.astype(str)
    entry = {
        "table": table,
        "criterion": criterion,
        "unit": unit,
        "params": {
            "keys": list(keys),
            "criterion": criterion,
            "unit": unit,
            "n_samples": n_samples,
            "rng": seed,
        },
    }
    if not mixtures:
        gene_res = (
            results
            if unit == "gene"
            else {
                k: score(_pointwise(adata, k, r, s, "gene", n_samples, seed))
                for k, (r, s) in fits.items()
            }
        )
        per_gene = pd.DataFrame(
            {f"elpd_{k}": np.asarray(v["elpd_i"], dtype=np.float64) for k, v in gene_res.items()},
            index=adata.var_names.copy(),
        )
        best, margin = loo.preferred_per_unit({k: v["elpd_i"] for k, v in gene_res.items()})
        per_gene["preferred"] = pd.Categorical(np.asarray(best, dtype=str), categories=list(keys))
        per_gene["elpd_margin"] = np.asarray(margin, dtype=np.float64)
        entry["per_gene"] = per_gene
    if not copy:
        adata.uns[key_added] = entry
    return table
