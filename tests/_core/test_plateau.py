"""The reduce-on-plateau rule shared by the optax drivers (``_core/infer/_plateau.py``)."""

from __future__ import annotations

import numpy as np
import optax

from scnbtools._core.infer._plateau import Plateau


def _run(losses, noise=0.0, **kw):
    """Feed chunk losses (one per 10 steps, with standard error ``noise``); return the steps
    at convergence (or None) and the learning rates seen."""
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)
    state = opt.init({"w": np.zeros(1, np.float32)})
    p = Plateau(1.0, tol=1e-3, patience=2, lr_factor=0.5, max_lr_reductions=3, min_steps=0, **kw)
    lrs = []
    for i, loss in enumerate(losses):
        if p.update(loss, 10 * (i + 1), state, noise):
            return 10 * (i + 1), lrs
        lrs.append(float(state.hyperparams["learning_rate"]))
    return None, lrs


FLAT = [10.0, 5.0, 2.0] + [1.0] * 20  # improves, then a plateau that never ends


def test_plateau_reduces_the_rate_max_lr_reductions_times_then_converges():
    done, lrs = _run(FLAT)
    # the loss stops improving after chunk 4: plateaus of 2 chunks end at chunks 6, 8, 10
    # (reductions) and 12 (convergence)
    assert done == 120
    assert sorted(set(lrs), reverse=True) == [1.0, 0.5, 0.25, 0.125]


def test_futile_reduction_stops_at_the_next_plateau():
    """With ``stop_if_futile``, a reduction after which the loss never improved by ``tol``
    ends the fit at the next plateau instead of reducing again."""
    done, lrs = _run(FLAT, stop_if_futile=True)
    assert done == 80  # reduced at chunk 6, stopped at chunk 8
    assert sorted(set(lrs), reverse=True) == [1.0, 0.5]


def test_a_reduction_that_helps_is_not_futile():
    # reduced at chunk 5; the loss then drops (chunk 6), so the plateau of chunks 7-8
    # brings a second reduction, not the end; that one is futile (stop at chunk 10)
    losses = [10.0, 5.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0] + [1.0] * 10
    done, lrs = _run(losses, stop_if_futile=True)
    assert lrs[4] == 0.5 and lrs[7] == 0.25
    assert done == 100


def test_noise_aware_plateau_ignores_improvements_within_the_noise():
    """Minibatch chunk means that keep edging lower by less than their noise (0.01 against
    a standard error of 0.05, the running minimum of a noisy sequence) reset the plain
    rule's plateau forever; the noise-aware rule sees a plateau and reduces the rate."""
    losses = [10.0, 5.0, 2.0] + [1.0 - 0.01 * j for j in range(20)]
    done, lrs = _run(losses, noise=0.05)
    assert done is None and set(lrs) == {1.0}
    done, lrs = _run(losses, noise=0.05, noise_aware=True, stop_if_futile=True)
    assert lrs[5] == 0.5 and done == 80  # reduced at chunk 6, futile by chunk 8
    # without noise the same rule accepts every improvement above tol
    done, lrs = _run(losses, noise=0.0, noise_aware=True)
    assert done is None and set(lrs) == {1.0}
