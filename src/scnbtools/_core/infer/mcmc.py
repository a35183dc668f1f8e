"""NUTS (NumPyro) for small problems, in float64, with convergence diagnostics.

The model is the same NumPyro model that SVI fits (full-data likelihood, no minibatches).
Sampling runs with 64-bit floats switched on for the duration of the call only
(``jax.enable_x64``); data arrays are converted inside that context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MCMCResult", "run_nuts"]


@dataclass
class MCMCResult:
    samples: dict[str, np.ndarray]  # [chains * draws, ...] constrained
    r_hat: dict[str, float]  # worst (largest) split R-hat per site
    ess: dict[str, float]  # smallest bulk effective sample size per site
    n_divergences: int
    runtime_s: float


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda a: (
            jnp.asarray(a, dtype=jnp.float64)
            if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
            else jnp.asarray(a)
        ),
        tree,
    )


def run_nuts(
    model: Callable,
    data: Mapping[str, Any],
    *,
    rng: int,
    init_values: Mapping[str, Any] | None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    target_accept_prob: float = 0.85,
    progress_bar: bool = False,
) -> MCMCResult:
    """Run NUTS on ``model(data=data)``; chains run sequentially (CPU friendly)."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_value

    t0 = time.perf_counter()
    with jax.enable_x64(True):
        data64 = _to64(dict(data))
        if init_values is not None:
            init = init_to_value(
                values={k: jnp.asarray(v, jnp.float64) for k, v in init_values.items()}
            )
        else:
            init = init_to_median(num_samples=15)
        kernel = NUTS(model, init_strategy=init, target_accept_prob=target_accept_prob)
        mcmc = MCMC(
            kernel,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method="sequential",
            progress_bar=progress_bar,
        )
        mcmc.run(jax.random.PRNGKey(int(rng)), data=data64, extra_fields=("diverging",))
        grouped = mcmc.get_samples(group_by_chain=True)
        r_hat, ess = {}, {}
        for name, v in grouped.items():
            v = np.asarray(v, dtype=np.float64)
            # split R-hat: defined for one chain too (its two halves are compared)
            r_hat[name] = float(np.nanmax(split_gelman_rubin(v)))
            ess[name] = float(np.nanmin(effective_sample_size(v)))
        samples = {
            k: np.asarray(v, dtype=np.float64).reshape((-1, *np.shape(v)[2:]))
            for k, v in grouped.items()
        }
        n_div = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
    return MCMCResult(
        samples=samples,
        r_hat=r_hat,
        ess=ess,
        n_divergences=n_div,
        runtime_s=time.perf_counter() - t0,
    )
