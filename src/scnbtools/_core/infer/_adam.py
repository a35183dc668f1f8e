"""Adam as the minibatch and Laplace drivers use it: optax's, with the learning rate injected
into its state (so changing it does not recompile), and its initial state built on the host."""

from __future__ import annotations

import jax
import numpy as np
import optax

__all__ = ["adam", "initial_state"]

#: Adam's hyperparameters besides the learning rate (optax's defaults, spelled out so that
#: :func:`initial_state` knows every value of the state)
_ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}


def adam(learning_rate: float):
    """``optax.inject_hyperparams(optax.adam)`` with optax's default hyperparameters."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, **_ADAM)


def initial_state(params, learning_rate: float):
    """``adam(learning_rate).init(params)``, built on the host: zero moments and counts and
    the hyperparameters (eager ``init`` compiles a small kernel per operation)."""
    shapes = jax.eval_shape(adam(learning_rate).init, params)
    hyper = {"learning_rate": learning_rate, **_ADAM}
    state = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    hp = {k: np.asarray(hyper[k], v.dtype) for k, v in state.hyperparams.items()}
    return jax.device_put(state._replace(hyperparams=hp))
