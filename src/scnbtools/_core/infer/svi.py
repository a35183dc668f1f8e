"""Generic SVI driver on NumPyro (ELBO) + optax (updates).

* Steps are jitted and run in ``lax.scan`` chunks of ``chunk_size``; the host sees only
  each chunk's losses, so the progress bar (updated between chunks) costs nothing.
* At most ``n_steps`` steps: a final partial chunk runs masked steps with the same
  compiled function, so nothing recompiles after the first chunk (``n_compilations``
  in the result counts traces; tests hold it at 1).
* Learning rate: Adam with reduce-on-plateau. The chunk-mean loss is the smoothed ELBO;
  when it has not improved by a relative ``tol`` for ``patience`` chunks the learning
  rate is multiplied by ``lr_factor``; after ``max_lr_reductions`` reductions a further
  plateau means convergence. Decaying the rate matters: with a constant rate Adam's
  jitter around the optimum is wider than the posterior itself and intervals undercover.
  The learning rate lives in the optax state (``inject_hyperparams``), so changing it
  does not recompile.
* Two data paths: full data (``data`` passed to the model, e.g. sufficient statistics)
  and cell minibatches (``batch_fn(key, batch_source)`` draws a batch inside the jitted
  step; the model scales it so the likelihood estimate is unbiased).
* Divergence (a non-finite loss or parameter) stops the fit and is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import transform_fn

from ._plateau import Plateau, drive_chunks

__all__ = ["SVIResult", "init_params", "run_svi"]


@dataclass
class SVIResult:
    params: dict[str, np.ndarray]  # constrained
    losses: np.ndarray
    lr_trace: np.ndarray
    converged: bool
    diverged: bool
    n_steps: int
    n_compilations: int
    runtime_s: float


def init_params(guide: Callable, rng_key, **kwargs):
    """Unconstrained initial values of the guide's ``numpyro.param`` sites and their transforms.

    The guide is traced once inside ``jax.jit`` (an eager trace dispatches, and on a first
    call compiles, every operation separately); the transforms are captured while tracing.
    """
    transforms: dict = {}

    def _trace(key, kw):
        tr = handlers.trace(handlers.seed(guide, key)).get_trace(**kw)
        out = {}
        for name, site in tr.items():
            if site["type"] != "param":
                continue
            constraint = site["kwargs"].get("constraint")
            # a param declared without a constraint is real-valued (biject_to(None) raises)
            t = biject_to(constraint if constraint is not None else constraints.real)
            transforms[name] = t
            out[name] = t.inv(site["value"])
        return out

    unconstrained = jax.jit(_trace)(rng_key, kwargs)
    return unconstrained, transforms


def run_svi(
    model: Callable,
    guide: Callable,
    *,
    data: Any = None,
    rng_key,
    n_steps: int,
    learning_rate: float = 0.05,
    chunk_size: int = 100,
    tol: float = 1e-6,
    patience: int = 2,
    lr_factor: float = 0.25,
    max_lr_reductions: int = 4,
    min_steps: int = 200,
    num_particles: int = 1,
    batch_fn: Callable | None = None,
    batch_source: Any = None,
    progress_bar: bool = False,
    desc: str = "SVI",
    cache: dict | None = None,
) -> SVIResult:
    """Maximise the ELBO of ``model`` under ``guide``.

    ``model`` and ``guide`` take keyword arguments ``data`` and ``batch``.

    ``cache``: a dict owned by the caller for one (model, guide, batch_fn) configuration.
    The jitted chunk runner is stored there and reused by later calls with the same
    configuration, so refitting (another seed, learning rate or data set of the same
    padded shapes) does not compile again. The caller guarantees that the cached
    model / guide / batch_fn are equivalent to the ones passed (guide parameter *values*
    may differ: they are substituted at every step).
    """
    if n_steps < 1:
        raise ValueError(f"`n_steps` must be >= 1, got {n_steps}.")
    t0 = time.perf_counter()
    init_key, run_key = jax.random.split(rng_key)
    batch0 = None if batch_fn is None else batch_fn(init_key, batch_source)
    u0, transforms = init_params(guide, init_key, data=data, batch=batch0)

    def constrain(u):
        return transform_fn(transforms, u)

    elbo = Trace_ELBO(num_particles=num_particles)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    opt_state = opt.init(u0)

    chunk = int(min(chunk_size, n_steps))
    traces = [0]

    def _chunk(u, opt_state, key, n_active, data, batch_source):
        traces[0] += 1  # runs only while tracing

        def body(carry, i):
            u, s, k = carry
            k, k_loss, k_batch = jax.random.split(k, 3)
            batch = None if batch_fn is None else batch_fn(k_batch, batch_source)

            def loss_fn(uu):
                return elbo.loss(k_loss, constrain(uu), model, guide, data=data, batch=batch)

            loss, grads = jax.value_and_grad(loss_fn)(u)
            updates, s_new = opt.update(grads, s, u)
            u_new = optax.apply_updates(u, updates)
            active = i < n_active
            keep = lambda a, b: jnp.where(active, a, b)  # noqa: E731
            return (
                jax.tree_util.tree_map(keep, u_new, u),
                jax.tree_util.tree_map(keep, s_new, s),
                k,
            ), loss

        (u, opt_state, key), losses = jax.lax.scan(body, (u, opt_state, key), jnp.arange(chunk))
        return u, opt_state, key, losses

    if cache is not None and cache.get("chunk") == chunk and "run_chunk" in cache:
        run_chunk = cache["run_chunk"]
    else:
        run_chunk = jax.jit(_chunk)
        if cache is not None:
            cache.update(chunk=chunk, run_chunk=run_chunk)

    plateau = Plateau(
        learning_rate,
        tol=tol,
        patience=patience,
        lr_factor=lr_factor,
        max_lr_reductions=max_lr_reductions,
        min_steps=min_steps,
    )

    def step(state, n_active):
        u, opt_state, key = state
        u, opt_state, key, chunk_losses = run_chunk(u, opt_state, key, n_active, data, batch_source)
        return (u, opt_state, key), chunk_losses

    run = drive_chunks(
        step,
        (u0, opt_state, run_key),
        n_steps=n_steps,
        chunk=chunk,
        plateau=plateau,
        opt_state_of=lambda state: state[1],
        progress_bar=progress_bar,
        desc=desc,
    )
    u = run.state[0]
    diverged = run.diverged
    params = {k: np.asarray(v) for k, v in constrain(u).items()}
    if not diverged and not all(np.all(np.isfinite(v)) for v in params.values()):
        diverged = True
    return SVIResult(
        params=params,
        losses=run.losses,
        lr_trace=run.lr_trace,
        converged=run.converged and not diverged,
        diverged=diverged,
        n_steps=run.n_steps,
        n_compilations=traces[0],
        runtime_s=time.perf_counter() - t0,
    )
