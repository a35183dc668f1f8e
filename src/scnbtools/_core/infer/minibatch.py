"""Generic minibatch training loop on optax (no model names here).

* A model supplies ``loss_fn(params, state, batch, mask, key, train, hyper) -> (loss,
  (state, metrics))``: ``batch`` is the model's per-cell data pytree indexed by a batch of
  cells, ``mask`` ``[batch]`` is 1 for real cells and 0 for padding (only validation batches
  are padded), ``state`` is non-trainable state (e.g. batch-norm statistics), ``hyper`` a
  pytree of traced hyperparameters (e.g. penalty weights, so changing them does not
  recompile; also constants of the data set the batches come from, so validation batches
  get their own, ``val_hyper``) and ``metrics`` a dict of mask-weighted scalar means.
* One epoch — shuffle (on the host), then every full batch of the training cells (the
  last partial batch is dropped) — is one jitted ``lax.scan``; validation is another jitted
  scan over padded batches in evaluation mode (or a model's own host-side ``validate``
  callable, e.g. one that reuses a program the model compiles anyway). The host sees only
  per-epoch numbers, so the progress bar (updated between epochs) costs nothing, and
  nothing recompiles after the first epoch (``n_compilations`` counts traces). The compiled
  epoch and evaluator are cached per ``(loss_fn, n_cells, batch_size)``, so a second fit of
  the same shapes compiles nothing.
* Learning rate: start high, decay geometrically per epoch to a floor
  (``max(lr0 * decay^epoch, floor)``), times a reduce-on-plateau factor: when the monitored
  loss (validation if there is a validation split, else training) has not improved by a
  relative ``tol`` for ``plateau_patience`` epochs the factor is multiplied by
  ``plateau_factor``. Training stops early after ``early_stopping_patience`` epochs without
  improvement and returns the parameters of the best epoch. The learning rate lives in the
  optax state (``inject_hyperparams``), so changing it does not recompile.
* A non-finite loss stops training and is reported (``diverged``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._progress import progress
from ._adam import adam as _optimizer
from ._adam import initial_state as _initial_opt_state

__all__ = ["MinibatchResult", "ScheduleConfig", "run_minibatch", "take"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, plateau handling and early stopping."""

    learning_rate: float = 0.02
    lr_decay: float = 0.9
    lr_floor: float = 1e-3
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    tol: float = 1e-3
    early_stopping_patience: int = 20
    min_epochs: int = 1

    def base_lr(self, epoch: int) -> float:
        return max(
            self.learning_rate * self.lr_decay**epoch, min(self.lr_floor, self.learning_rate)
        )


@dataclass
class MinibatchResult:
    params: Any
    state: Any
    history: dict[str, np.ndarray] = field(default_factory=dict)
    best_epoch: int = -1
    n_epochs: int = 0
    stopped_early: bool = False
    diverged: bool = False
    n_compilations: int = 0
    runtime_s: float = 0.0


def take(tree, idx):
    """Index the leading (cell) axis of every leaf."""
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _padded_index(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n_batches, batch_size]`` indices covering ``0..n-1`` once, and the padding mask."""
    nb = -(-n // batch_size)
    idx = np.zeros(nb * batch_size, dtype=np.int32)
    idx[:n] = np.arange(n)
    mask = np.zeros(nb * batch_size, dtype=np.float32)
    mask[:n] = 1.0
    return idx.reshape(nb, batch_size), mask.reshape(nb, batch_size)


_TRACES = [0]


def _spec(params) -> tuple:
    """Hashable structure of a parameter pytree (tree structure, shapes and dtypes)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in leaves)


def _unravel_fn(spec: tuple):
    """``unravel(flat)`` for parameters of structure ``spec``: slices and reshapes that run
    traced inside a jitted function, or with NumPy on a host vector (no eager JAX ops, each
    of which would compile a small kernel per leaf)."""
    treedef, shapes = spec
    ends = np.cumsum([int(np.prod(s)) for s, _ in shapes])

    def unravel(flat):
        leaves = [
            flat[end - int(np.prod(s)) : end].reshape(s).astype(d)
            for end, (s, d) in zip(ends, shapes, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return unravel


def _ravel_traced(tree, dtype) -> jax.Array:
    """The leaves of ``tree`` as one vector in ``_spec`` order, inside a jitted function."""
    return jnp.concatenate([jnp.ravel(a).astype(dtype) for a in jax.tree_util.tree_leaves(tree)])


def _ravel_host(params) -> np.ndarray:
    """The parameters as one host vector, in ``_spec`` order (``ravel_pytree``'s layout)."""
    leaves = [np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(params)]
    dtype = np.result_type(*leaves)
    return np.concatenate(leaves).astype(dtype, copy=False)


@functools.lru_cache(maxsize=32)
def make_evaluator(loss_fn: Callable, n_cells: int, batch_size: int, spec: tuple):
    """Jitted ``evaluate(flat_params, state, data, hyper) -> (loss, metrics)`` over all
    ``n_cells`` cells in evaluation mode (padded batches, mask-weighted means)."""
    idx, mask = _padded_index(n_cells, batch_size)
    unravel = _unravel_fn(spec)

    def _eval(flat, state, data, hyper):
        _TRACES[0] += 1
        params = unravel(flat)

        def body(carry, im):
            i, m = im
            loss, (_, metrics) = loss_fn(params, state, take(data, i), m, None, False, hyper)
            w = m.sum()
            return carry, (loss * w, jax.tree_util.tree_map(lambda v: v * w, metrics), w)

        _, (losses, metrics, ws) = jax.lax.scan(body, None, (jnp.asarray(idx), jnp.asarray(mask)))
        tot = ws.sum()
        return losses.sum() / tot, jax.tree_util.tree_map(lambda v: v.sum() / tot, metrics)

    return jax.jit(_eval)


@functools.lru_cache(maxsize=32)
def make_epoch(loss_fn: Callable, n_train: int, batch_size: int, spec: tuple):
    """Jitted ``epoch(flat_params, state, opt_state, batches, key, epoch, data, hyper)``: one
    pass over ``batches`` (``[n_steps, batch_size]`` cell indices, shuffled on the host),
    Adam steps in a ``lax.scan``; step ``i`` gets the key ``fold_in(fold_in(key, epoch), i)``
    (nothing of it is compiled for a loss that ignores its key).

    Adam works on the parameters raveled into one vector: the same updates as per leaf, but
    one fused update instead of one per leaf, which roughly halves the compile time of a
    network with a few dozen parameter arrays."""
    n_steps = n_train // batch_size
    opt = _optimizer(0.0)  # the learning rate is read from ``opt_state``
    unravel = _unravel_fn(spec)

    def _epoch(params, state, opt_state, batches, key, epoch, data, hyper):
        _TRACES[0] += 1
        ones = jnp.ones((batch_size,), jnp.float32)

        def body(carry, xs):
            p, s, o = carry
            idx, i = xs
            k = jax.random.fold_in(jax.random.fold_in(key, epoch), i)

            def objective(tree):
                return loss_fn(tree, s, take(data, idx), ones, k, True, hyper)

            # gradients per leaf, then one concatenation (differentiating through the
            # slices of ``unravel`` would pad every leaf's gradient to the full length)
            (loss, (s_new, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
                unravel(p)
            )
            updates, o_new = opt.update(_ravel_traced(grads, p.dtype), o, p)
            return (optax.apply_updates(p, updates), s_new, o_new), (loss, metrics)

        (params, state, opt_state), (losses, metrics) = jax.lax.scan(
            body, (params, state, opt_state), (batches, jnp.arange(n_steps))
        )
        return params, state, opt_state, losses.mean(), jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.jit(_epoch)


def run_minibatch(
    loss_fn: Callable,
    params: Any,
    state: Any,
    train_data: Any,
    val_data: Any | None,
    *,
    hyper: Any = None,
    val_hyper: Any = None,
    validate: Callable[[Any, Any], tuple[float, dict]] | None = None,
    rng_key,
    batch_size: int,
    max_epochs: int,
    schedule: ScheduleConfig | None = None,
    progress_bar: bool = False,
    desc: str = "training",
) -> MinibatchResult:
    """Train ``params`` by Adam on minibatches of cells.

    Parameters
    ----------
    loss_fn
        ``loss_fn(params, state, batch, mask, key, train, hyper)`` as described in the
        module doc; keep the same function object across fits to reuse compiled code.
    params, state
        Initial trainable parameters and non-trainable state (pytrees of arrays).
    train_data, val_data
        Pytrees of arrays whose leading axis is cells; ``val_data=None`` monitors the
        training loss instead.
    hyper
        Traced hyperparameters passed to every ``loss_fn`` call on training batches; they may
        also hold constants of the training cells as a whole (e.g. summaries of their data).
    val_hyper
        The same for the validation batches (default: ``hyper``).
    validate
        Instead of ``val_data``: ``validate(params, state) -> (loss, metrics)`` called after
        every epoch with the parameters as a pytree of host arrays and the current state;
        its ``loss`` is monitored as the validation loss and ``metrics`` (a dict of numbers)
        recorded as ``val_*``. For a model that evaluates cells with a program it compiles
        anyway, so that no evaluator is compiled.
    batch_size
        Cells per step; must not exceed the number of training cells.
    max_epochs
        Upper bound on the number of passes over the training cells.
    """
    sched = schedule or ScheduleConfig()
    t0 = time.perf_counter()
    n_train = int(jax.tree_util.tree_leaves(train_data)[0].shape[0])
    if not 1 <= batch_size <= n_train:
        raise ValueError(
            f"`batch_size` must be in [1, {n_train}] (training cells), got {batch_size}."
        )
    spec = _spec(params)
    unravel = _unravel_fn(spec)
    params = jax.device_put(_ravel_host(params))  # one transfer, no eager kernels
    opt_state = _initial_opt_state(params, sched.learning_rate)
    traces0 = _TRACES[0]
    run_epoch = make_epoch(loss_fn, n_train, batch_size, spec)
    evaluate = None
    if validate is not None and val_data is not None:
        raise ValueError("pass either `val_data` or `validate`, not both.")
    if val_data is not None:
        n_val = int(jax.tree_util.tree_leaves(val_data)[0].shape[0])
        evaluate = make_evaluator(loss_fn, n_val, min(batch_size, n_val), spec)

    v_hyper = hyper if val_hyper is None else val_hyper
    # shuffles on the host (a permutation in the compiled epoch costs a sort and ~0.5 s of
    # compilation), seeded by the key; step keys are folded in on the device
    raw = rng_key
    if jnp.issubdtype(raw.dtype, jax.dtypes.prng_key):
        raw = jax.random.key_data(raw)
    shuffle = np.random.default_rng(np.asarray(raw, dtype=np.uint32).ravel())
    n_steps = n_train // batch_size
    hist: dict[str, list[float]] = {"loss": [], "learning_rate": []}
    best, ref, best_epoch, since_best, since_plateau, factor = np.inf, np.inf, -1, 0, 0, 1.0
    best_params, best_state = params, state
    diverged = stopped = False
    with progress(total=max_epochs, enabled=progress_bar, desc=desc) as bar:
        for epoch in range(max_epochs):
            lr = sched.base_lr(epoch) * factor
            opt_state.hyperparams["learning_rate"] = np.asarray(
                lr, dtype=opt_state.hyperparams["learning_rate"].dtype
            )
            order = shuffle.permutation(n_train)[: n_steps * batch_size].astype(np.int32)
            params, state, opt_state, loss, metrics = run_epoch(
                params,
                state,
                opt_state,
                order.reshape(n_steps, batch_size),
                rng_key,
                np.uint32(epoch),
                train_data,
                hyper,
            )
            rec = {"loss": float(loss), "learning_rate": lr}
            rec.update({f"train_{m}": float(v) for m, v in metrics.items()})
            if evaluate is not None or validate is not None:
                if validate is not None:
                    vloss, vmetrics = validate(unravel(np.asarray(params)), state)
                else:
                    vloss, vmetrics = evaluate(params, state, val_data, v_hyper)
                rec["val_loss"] = float(vloss)
                rec.update({f"val_{m}": float(v) for m, v in vmetrics.items()})
            for name, value in rec.items():
                hist.setdefault(name, []).append(value)
            monitored = rec.get("val_loss", rec["loss"])
            if not np.isfinite(monitored) or not np.isfinite(rec["loss"]):
                diverged = True
                break
            bar.update(1)
            bar.set_postfix(
                loss=f"{rec['loss']:.5g}",
                val=f"{rec.get('val_loss', float('nan')):.5g}",
                lr=f"{lr:.2g}",
                refresh=False,
            )
            if monitored < best:
                best, best_epoch = monitored, epoch
                best_params, best_state = params, state
            # patience counts epochs since the last improvement by a relative `tol` over the
            # value at the previous such improvement (so a slow steady descent is progress)
            if monitored < ref - sched.tol * abs(ref) or not np.isfinite(ref):
                ref, since_best, since_plateau = monitored, 0, 0
                continue
            since_best += 1
            since_plateau += 1
            if since_plateau >= sched.plateau_patience:
                factor *= sched.plateau_factor
                since_plateau = 0
            if since_best >= sched.early_stopping_patience and epoch + 1 >= sched.min_epochs:
                stopped = True
                break

    return MinibatchResult(
        params=unravel(np.asarray(best_params)),  # host arrays
        state=best_state,
        history={k: np.asarray(v, dtype=np.float64) for k, v in hist.items()},
        best_epoch=best_epoch,
        n_epochs=len(hist["loss"]),
        stopped_early=stopped,
        diverged=diverged,
        n_compilations=_TRACES[0] - traces0,
        runtime_s=time.perf_counter() - t0,
    )
