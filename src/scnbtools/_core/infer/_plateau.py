"""Reduce-on-plateau learning rate, convergence and the chunked host loop, shared by the
optax drivers.

The host loop feeds it one smoothed loss per chunk of jitted steps. When the loss has not
improved by a relative ``tol`` for ``patience`` chunks, the learning rate is multiplied by
``lr_factor``; after ``max_lr_reductions`` reductions a further plateau means convergence.
With ``stop_if_futile``, a plateau that follows a reduction without any improvement since
it also means convergence: a smaller step did not find a lower loss, so the optimum is
reached within ``tol`` (smaller steps still would only polish digits below it).
With ``noise_aware`` (minibatch losses), an improvement must also exceed twice the standard
error of the chunk mean, estimated from the differences of consecutive step losses (the
minibatch sampling noise, free of the trend): otherwise a lucky minibatch draw keeps
resetting the plateau, and the learning rate stays high while its noise dominates.
The learning rate lives in an ``optax.inject_hyperparams`` state, so changing it does not
recompile the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .._progress import progress

__all__ = ["ChunkRun", "Plateau", "drive_chunks"]


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
        stop_if_futile: bool = False,
        noise_aware: bool = False,
    ):
        self.lr = float(learning_rate)
        self.tol, self.patience, self.lr_factor = tol, patience, lr_factor
        self.max_lr_reductions, self.min_steps = max_lr_reductions, min_steps
        self.stop_if_futile, self.noise_aware = stop_if_futile, noise_aware
        self.best, self.bad, self.n_reductions = float("inf"), 0, 0
        self.improved = False  # the loss improved (by ``tol``) since the last reduction

    def update(self, loss: float, done: int, opt_state, noise: float = 0.0) -> bool:
        """Record one chunk's mean ``loss`` after ``done`` steps; ``True`` once converged.

        ``noise``: standard error of that mean (used when ``noise_aware``). Lowers the
        learning rate in ``opt_state`` (an ``inject_hyperparams`` state) in place.
        """
        best = self.best
        margin = self.tol * abs(best)
        if self.noise_aware:
            margin = max(margin, 2.0 * noise)
        if best == float("inf") or loss < best - margin:
            self.best, self.bad, self.improved = loss, 0, True
            return False
        self.bad += 1
        if self.bad < self.patience or done < self.min_steps:
            return False
        if self.n_reductions >= self.max_lr_reductions:
            return True
        if self.stop_if_futile and self.n_reductions > 0 and not self.improved:
            return True
        self.n_reductions += 1
        self.bad, self.improved = 0, False
        self.lr *= self.lr_factor
        old = opt_state.hyperparams["learning_rate"]
        opt_state.hyperparams["learning_rate"] = np.asarray(self.lr, dtype=old.dtype)
        return False


class ChunkRun(NamedTuple):
    state: Any
    losses: np.ndarray
    lr_trace: np.ndarray
    n_steps: int
    converged: bool
    diverged: bool


def drive_chunks(
    run_chunk: Callable[[Any, int], tuple[Any, Any]],
    state,
    *,
    n_steps: int,
    chunk: int,
    plateau: Plateau,
    opt_state_of: Callable[[Any], Any],
    progress_bar: bool,
    desc: str,
) -> ChunkRun:
    """The host loop shared by the optax drivers.

    ``run_chunk(state, n_active) -> (state, losses[chunk])`` runs one jitted chunk (steps
    past ``n_active`` are masked, so the last partial chunk reuses the compiled function).
    Stops at ``n_steps``, on a non-finite loss (divergence) or when ``plateau`` reports
    convergence; the progress bar is updated between chunks.
    """
    losses: list[np.ndarray] = []
    lrs: list[np.ndarray] = []
    done, converged, diverged = 0, False, False
    with progress(total=n_steps, enabled=progress_bar, desc=desc) as bar:
        while done < n_steps:
            n_active = min(chunk, n_steps - done)
            lr = plateau.lr
            state, chunk_losses = run_chunk(state, n_active)
            cl = np.asarray(chunk_losses)[:n_active]
            losses.append(cl)
            lrs.append(np.full(n_active, lr, dtype=np.float32))
            done += n_active
            if not np.all(np.isfinite(cl)):
                diverged = True
                break
            m = float(cl.mean())
            bar.update(n_active)
            bar.set_postfix(loss=f"{m:.6g}", lr=f"{lr:.2g}", refresh=False)
            # standard error of the chunk mean from the step-to-step differences
            se = float(np.sqrt(np.mean(np.diff(cl) ** 2) / 2.0 / n_active)) if n_active > 1 else 0.0
            if plateau.update(m, done, opt_state_of(state), se):
                converged = True
                bar.total = done  # a converged fit ends its bar at 100 %
                bar.refresh()
                break
    return ChunkRun(
        state,
        np.concatenate(losses) if losses else np.zeros(0),
        np.concatenate(lrs) if lrs else np.zeros(0),
        done,
        converged,
        diverged,
    )
