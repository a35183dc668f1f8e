"""Reduce-on-plateau learning rate and convergence, shared by the optax drivers.

The host loop feeds it one smoothed loss per chunk of jitted steps. When the loss has not
improved by a relative ``tol`` for ``patience`` chunks, the learning rate is multiplied by
``lr_factor``; after ``max_lr_reductions`` reductions a further plateau means convergence.
The learning rate lives in an ``optax.inject_hyperparams`` state, so changing it does not
recompile the step.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["Plateau"]


class Plateau:
    def __init__(
        self,
        learning_rate: float,
        *,
        tol: float,
        patience: int,
        lr_factor: float,
        max_lr_reductions: int,
        min_steps: int,
    ):
        self.lr = float(learning_rate)
        self.tol, self.patience, self.lr_factor = tol, patience, lr_factor
        self.max_lr_reductions, self.min_steps = max_lr_reductions, min_steps
        self.best, self.bad, self.n_reductions = float("inf"), 0, 0

    def update(self, loss: float, done: int, opt_state) -> bool:
        """Record one chunk's mean ``loss`` after ``done`` steps; ``True`` once converged.

        Lowers the learning rate in ``opt_state`` (an ``inject_hyperparams`` state) in place.
        """
        best = self.best
        if best == float("inf") or loss < best - self.tol * abs(best):
            self.best, self.bad = loss, 0
            return False
        self.bad += 1
        if self.bad < self.patience or done < self.min_steps:
            return False
        if self.n_reductions >= self.max_lr_reductions:
            return True
        self.n_reductions += 1
        self.bad = 0
        self.lr *= self.lr_factor
        old = jnp.asarray(opt_state.hyperparams["learning_rate"])
        opt_state.hyperparams["learning_rate"] = jnp.asarray(self.lr, dtype=old.dtype)
        return False
