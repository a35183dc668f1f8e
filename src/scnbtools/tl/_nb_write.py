"""NB-family fits: component ordering, the NUTS path and writing results into the AnnData."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jax
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._core.data import CountData
from .._core.engine import (
    GeneFit,
    cell_component_probs,
    cell_rows,
    posterior_draws,
    summarize_draws,
)
from .._core.models._spec import ModelSpec
from .._core.summaries import STATS

__all__ = ["order_components", "run_mcmc_fit", "write_fit"]


def _site_of_param(spec: ModelSpec, pname: str):
    best = None
    for s in spec.sites:
        if pname.startswith(s.name + "_") and (best is None or len(s.name) > len(best.name)):
            best = s
    return best


def order_components(spec: ModelSpec, fit: GeneFit) -> GeneFit:
    """Relabel components by decreasing posterior mean weight (variational parameters,
    summaries and assignments together), so the order does not depend on the seed."""
    w = fit.global_summaries.get("mixing_weights", {}).get("mean")
    if w is None:
        return fit
    perm = np.argsort(-np.asarray(w), kind="stable")
    if np.array_equal(perm, np.arange(perm.size)):
        return fit
    params = {}
    for k, v in fit.params.items():
        site = _site_of_param(spec, k)
        comp = site is not None and (site.components or site.support == "simplex")
        params[k] = (
            np.asarray(v)[perm] if comp and np.ndim(v) >= 1 and np.shape(v)[0] == perm.size else v
        )
    K = perm.size

    def perm_stats(d):
        return {
            s: (np.asarray(a)[perm] if np.ndim(a) >= 1 and np.shape(a)[0] == K else a)
            for s, a in d.items()
        }

    gene = {n: perm_stats(d) for n, d in fit.gene_summaries.items()}
    glob = {n: perm_stats(d) for n, d in fit.global_summaries.items()}
    assignment = None if fit.assignment is None else fit.assignment[:, perm]
    samples = getattr(fit, "samples", None)
    out = replace(
        fit, params=params, gene_summaries=gene, global_summaries=glob, assignment=assignment
    )
    if samples is not None:
        out.samples = samples
    return out


def run_mcmc_fit(
    adata: AnnData,
    spec: ModelSpec,
    counts: CountData,
    opts,
    *,
    seed: int,
    init_from: str | None,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    progress_bar: bool,
) -> GeneFit:
    """NUTS on the full-data model (float64), optionally started at an SVI fit's medians."""
    from .._core.engine import _model_data
    from .._core.infer.mcmc import run_nuts
    from .._core.models._spec import build_model
    from ..get._posterior import fit_result, posterior_samples

    data, _, _, layout = _model_data(spec, counts, None, opts.extras)
    model = build_model(spec, opts.priors, counts.n_genes, counts.n_cells)
    init = None
    if init_from is not None:
        src = fit_result(adata, key=init_from)
        if str(src["params"].get("spec", src["params"].get("model"))) != spec.name:
            raise ValueError(
                f"`init_from`={init_from!r} is a {src['params'].get('spec', src['params'].get('model'))} "
                f"fit, not {spec.name}; fit the same model with SVI first."
            )
        draws = posterior_samples(adata, key=init_from, n_samples=200, rng=seed)
        init = {s.name: np.median(draws[s.name], axis=0) for s in spec.sites}
        if "mixing_weights" in init:
            init["mixing_weights"] = init["mixing_weights"] / init["mixing_weights"].sum()
    res = run_nuts(
        model,
        data,
        rng=seed,
        init_values=init,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        progress_bar=progress_bar,
    )
    draws = dict(res.samples)
    draws.update({k: np.asarray(v) for k, v in spec.derived(draws).items()})
    n = next(iter(draws.values())).shape[0]
    gene, glob, cell = summarize_draws(spec, draws, n)
    assignment = None
    if spec.n_components > 1:
        rows = cell_rows(counts, None, opts.extras.get("prior_shift"), opts.extras.get("ann"))
        assignment = cell_component_probs(
            spec, {k: v.astype(np.float32) for k, v in draws.items()}, rows, n_max=100
        )
    fit = GeneFit(
        model=spec.name,
        inference="mcmc",
        guide="nuts",
        params={},
        losses=np.zeros(0),
        lr_trace=np.zeros(0),
        converged=bool(max(res.r_hat.values()) < 1.05),
        n_steps=0,
        n_compilations=0,
        runtime_s=res.runtime_s,
        gene_summaries=gene,
        global_summaries=glob,
        cell_summaries=cell,
        assignment=assignment,
        layout=layout,
        n_posterior_samples=n,
    )
    fit.samples = {s.name: np.asarray(res.samples[s.name]) for s in spec.sites}
    fit.mcmc = {
        "r_hat": dict(res.r_hat),
        "ess_bulk": dict(res.ess),
        "n_divergences": int(res.n_divergences),
    }
    return fit


def _gene_frame(spec: ModelSpec, fit: GeneFit, stat: str, index: pd.Index) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {}
    for name in spec.gene_outputs:
        a = np.asarray(fit.gene_summaries[name][stat], dtype=np.float64)
        if a.ndim == 1:
            cols[name] = a
        else:
            for k in range(a.shape[0]):
                cols[f"{name}_{k}"] = a[k]
    return pd.DataFrame(cols, index=index.copy())


def _global_dict(fit: GeneFit) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, s in fit.global_summaries.items():
        first = next(iter(s.values()))
        if np.ndim(first) == 0:
            out[name] = {k: float(v) for k, v in s.items()}
        else:
            for k in range(np.shape(first)[0]):
                out[f"{name}_{k}"] = {st: float(np.asarray(v)[k]) for st, v in s.items()}
    return out


def write_fit(
    target: AnnData,
    key: str,
    spec: ModelSpec,
    fit: GeneFit,
    opts,
    *,
    params: dict[str, Any],
    n_cells: int,
) -> None:
    """Write an NB-family fit under ``key`` (DESIGN.md's AnnData contract)."""
    for stat in STATS:
        target.varm[_keys.gene_key(key, stat)] = _gene_frame(spec, fit, stat, target.var_names)
    if fit.cell_summaries:
        for stat in STATS:
            target.obsm[_keys.cell_key(key, stat)] = pd.DataFrame(
                {
                    name: np.asarray(s[stat], dtype=np.float64)
                    for name, s in sorted(fit.cell_summaries.items())
                },
                index=target.obs_names.copy(),
            )
    if fit.assignment is not None:
        target.obsm[_keys.assignment_key(key)] = pd.DataFrame(
            np.asarray(fit.assignment, dtype=np.float64),
            index=target.obs_names.copy(),
            columns=pd.Index(opts.components, dtype=str),
        )
    entry: dict[str, Any] = {
        "params": params,
        "global": _global_dict(fit),
        # {"0": name, ...}: plain str values (string arrays do not survive every round trip)
        "components": {str(k): str(name) for k, name in enumerate(opts.components)},
        "loss": np.asarray(fit.losses, dtype=np.float64),
        "learning_rate": np.asarray(fit.lr_trace, dtype=np.float64),
        "converged": bool(fit.converged),
        "n_steps_run": int(fit.n_steps),
        "runtime_s": float(fit.runtime_s),
        "n_cells": int(n_cells),
        "variational_params": {k: np.asarray(v) for k, v in fit.params.items()},
    }
    if getattr(fit, "samples", None) is not None:
        entry["samples"] = {k: np.asarray(v) for k, v in fit.samples.items()}
        entry["mcmc"] = fit.mcmc
    target.uns[_keys.uns_key(key)] = entry


def redraw(spec: ModelSpec, res: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    """Posterior draws of a stored fit: from the guide (SVI / MAP) or resampled from the
    stored NUTS draws."""
    if "samples" in res:
        samples = {k: np.asarray(v) for k, v in res["samples"].items()}
        m = next(iter(samples.values())).shape[0]
        idx = np.random.default_rng(seed).choice(m, size=n, replace=n > m)
        draws = {k: v[idx] for k, v in samples.items()}
        draws.update({k: np.asarray(v) for k, v in spec.derived(draws).items()})
        return draws
    params = {k: np.asarray(v) for k, v in res["variational_params"].items()}
    return posterior_draws(spec, str(res["params"]["guide"]), params, jax.random.PRNGKey(seed), n)
