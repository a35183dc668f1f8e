"""Calibrate the tolerances of ``test_recovery.py`` (not collected by pytest).

Runs the recovery fits of ``test_recovery.py`` over many seeds and prints, per
configuration, every seed's errors and coverages and their min / mean / max, so the test
tolerances can be set at a stated margin beyond the worst seed::

    python tests/_core/calibrate_recovery.py --seeds 20
    python tests/_core/calibrate_recovery.py --seeds 20 --configs zinb/hierarchical zinb/mean_field

The data of each seed are simulated from the priors that are fitted
(``RECOVERY_PRIORS``), so over seeds the posterior is calibrated by construction
and the 90% intervals of a good guide cover the truth about 90% of the time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from scnbtools._core.data import CountData
from scnbtools._core.engine import GeneFit, fit_gene_model
from scnbtools._core.models import get_model
from scnbtools._core.models._spec import parse_priors

#: priors of the recovery tests: the data are simulated from exactly these
RECOVERY_PRIORS: dict[str, dict[str, Any]] = {
    "nbdm": {"p": (4.0, 4.0), "r": (0.0, 1.0)},
    "zinb": {"p": (4.0, 4.0), "r": (0.0, 1.0), "gate": (2.0, 6.0)},
}


def simulate_from_prior(
    model: str, n_cells: int, n_genes: int, seed: int, priors: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw parameters from the (parsed) priors of ``model``, then counts from the model.

    Returns ``(counts [cells, genes] int64, truth {site: value})``. NB in the NumPyro
    convention (mean ``r p / (1 - p)``) is numpy's ``negative_binomial(r, 1 - p)``.
    """
    spec = get_model(model)
    parsed = parse_priors(spec, RECOVERY_PRIORS[model] if priors is None else priors)
    rng = np.random.default_rng(seed)
    truth: dict[str, np.ndarray] = {}
    for site in spec.sites:
        family, hyper = parsed[site.name]
        size = None if site.plate == "global" else n_genes
        if family == "beta":
            truth[site.name] = rng.beta(*hyper, size=size)
        elif family == "lognormal":
            truth[site.name] = rng.lognormal(*hyper, size=size)
        elif family == "gamma":
            truth[site.name] = rng.gamma(hyper[0], 1.0 / hyper[1], size=size)
        else:  # pragma: no cover - new prior family
            raise NotImplementedError(family)
    p = float(truth["p"])
    x = rng.negative_binomial(truth["r"], 1.0 - p, size=(n_cells, n_genes))
    if "gate" in truth:
        x = x * (rng.uniform(size=(n_cells, n_genes)) >= truth["gate"])
    return x.astype(np.int64), truth


def recovery_metrics(fit: GeneFit, truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Errors of posterior means and 90% interval coverage of a ``GeneFit`` against truth.

    * ``p_err``: |posterior mean of p - true p|; ``p_z``: that error in posterior sds.
    * ``<site>_med_rel_err``: median |mean / truth - 1| over genes (gene sites, ``r``);
      ``<site>_med_abs_err``: median |mean - truth| (``gate``).
    * ``<site>_cov90``: fraction of genes whose 90% interval [q05, q95] holds the truth.
    """
    out: dict[str, float] = {}
    gp = fit.global_summaries["p"]
    out["p_err"] = abs(gp["mean"] - float(truth["p"]))
    out["p_z"] = out["p_err"] / gp["sd"] if gp["sd"] > 0 else np.inf
    for name in ("r", "gate"):
        if name not in truth:
            continue
        s, t = fit.gene_summaries[name], np.asarray(truth[name])
        if name == "r":
            out["r_med_rel_err"] = float(np.median(np.abs(s["mean"] / t - 1.0)))
        else:
            out["gate_med_abs_err"] = float(np.median(np.abs(s["mean"] - t)))
        out[f"{name}_cov90"] = float(np.mean((s["q05"] <= t) & (t <= s["q95"])))
    return out


#: configuration name -> (model, fit_gene_model keyword arguments)
CONFIGS: dict[str, tuple[str, dict]] = {
    "nbdm/hierarchical": ("nbdm", {}),
    "nbdm/map": ("nbdm", {"inference": "map"}),
    "zinb/hierarchical": ("zinb", {}),
    "zinb/mean_field": ("zinb", {"guide": "mean_field"}),
}

#: shared by the test and this script
N_CELLS, N_GENES = 5000, 200
FIT_KW = {"n_steps": 5000, "n_posterior_samples": 1000}


def run_one(config: str, seed: int, n_cells: int = N_CELLS, n_genes: int = N_GENES):
    """Simulate with ``seed``, fit ``config`` (rng = seed), return (fit, truth, metrics)."""
    model, extra = CONFIGS[config]
    spec = get_model(model)
    x, truth = simulate_from_prior(model, n_cells, n_genes, seed)
    fit = fit_gene_model(
        spec,
        CountData(x),
        priors=parse_priors(spec, RECOVERY_PRIORS[model]),
        rng=seed,
        **FIT_KW,
        **extra,
    )
    return fit, truth, recovery_metrics(fit, truth)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--n-cells", type=int, default=N_CELLS)
    ap.add_argument("--n-genes", type=int, default=N_GENES)
    args = ap.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for config in args.configs:
        rows = []
        print(
            f"\n== {config}: {args.n_cells} cells × {args.n_genes} genes, seeds {seeds}", flush=True
        )
        for seed in seeds:
            t0 = time.perf_counter()
            fit, truth, m = run_one(config, seed, args.n_cells, args.n_genes)
            m = {"true_p": float(truth["p"]), **m, "converged": float(fit.converged),
                 "steps": float(fit.n_steps), "seconds": time.perf_counter() - t0}  # fmt: skip
            rows.append(m)
            print(f"seed {seed:3d} " + " ".join(f"{k}={v:.4g}" for k, v in m.items()), flush=True)
        keys = rows[0].keys()
        table = {k: np.array([r[k] for r in rows]) for k in keys}
        print(f"-- {config} summary over {len(rows)} seeds (min / mean / max)")
        for k, v in table.items():
            print(f"   {k:18s} {v.min():10.4g} {v.mean():10.4g} {v.max():10.4g}")
        if "p_z" in table and np.all(np.isfinite(table["p_z"])):
            # the sign is lost in p_z; the rms is the sd of the z-score
            print(f"   {'p_z rms':18s} {np.sqrt(np.mean(table['p_z'] ** 2)):10.4g}")


if __name__ == "__main__":
    main()
