"""The generic minibatch driver (``_core/infer/minibatch.py``) on a toy model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scnbtools._core.infer.minibatch import ScheduleConfig, run_minibatch


def _toy_loss(params, state, batch, mask, key, train, hyper):
    """Weighted least squares ``y ~ x w + b`` plus ``hyper['l2'] * |w|^2``; ``state`` counts
    training steps (a stand-in for batch-norm statistics)."""
    del key
    pred = batch["x"] @ params["w"] + params["b"]
    err = jnp.sum(mask * (pred - batch["y"]) ** 2) / jnp.sum(mask)
    loss = err + hyper["l2"] * jnp.sum(params["w"] ** 2)
    new_state = {"steps": state["steps"] + (1.0 if train else 0.0)}
    return loss, (new_state, {"mse": err})


def _data(n, seed=0):
    rs = np.random.default_rng(seed)
    x = rs.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rs.normal(size=n)).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
S0 = {"steps": jnp.zeros(())}


def _run(**kw):
    args = {
        "rng_key": jax.random.PRNGKey(0),
        "batch_size": 16,
        "max_epochs": 30,
        "hyper": {"l2": jnp.asarray(0.0)},
        "schedule": ScheduleConfig(learning_rate=0.1, lr_decay=0.8, lr_floor=0.01),
    }
    args.update(kw)
    return run_minibatch(_toy_loss, P0, S0, _data(200), _data(37, 1), **args)


def test_fits_schedule_and_state():
    res = _run()
    np.testing.assert_allclose(np.asarray(res.params["w"]), [1.0, -2.0, 0.5], atol=0.05)
    lr = res.history["learning_rate"]
    # geometric decay from 0.1 by 0.8 per epoch down to the floor 0.01 (no plateau here)
    expected = np.maximum(0.1 * 0.8 ** np.arange(lr.size), 0.01)
    np.testing.assert_allclose(lr[:10], expected[:10], rtol=1e-6)
    assert set(res.history) >= {"loss", "val_loss", "train_mse", "val_mse", "learning_rate"}
    # state advanced once per step: 200 // 16 = 12 steps per epoch (last partial batch dropped)
    assert float(res.state["steps"]) == 12 * (res.best_epoch + 1)
    # validation loss is evaluated on all 37 cells (padded batches masked)
    val = _data(37, 1)
    pred = np.asarray(val["x"] @ res.params["w"] + res.params["b"])
    mse = float(np.mean((pred - np.asarray(val["y"])) ** 2))
    assert res.history["val_mse"][res.best_epoch] == pytest.approx(mse, rel=1e-4)


def test_no_recompilation_and_hyper_is_traced():
    first = _run(max_epochs=3)
    again = _run(max_epochs=5, hyper={"l2": jnp.asarray(10.0)})
    assert first.n_compilations <= 2  # epoch + evaluator (0 if an earlier test compiled them)
    assert again.n_compilations == 0  # same shapes, other penalty: nothing recompiles
    assert np.abs(np.asarray(again.params["w"])).sum() < np.abs(np.asarray(first.params["w"])).sum()


def test_validation_batches_get_val_hyper():
    """``val_hyper`` reaches the validation calls only; training keeps ``hyper``."""
    base = _run(max_epochs=3)
    res = _run(max_epochs=3, val_hyper={"l2": jnp.asarray(5.0)})
    np.testing.assert_allclose(res.history["loss"], base.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(res.history["val_mse"], base.history["val_mse"], rtol=1e-6)
    w2 = float(np.sum(np.asarray(res.params["w"]) ** 2))
    assert w2 > 0.1
    # the validation loss is the validation MSE plus 5 |w|^2 of the epoch's parameters
    assert np.all(res.history["val_loss"] > res.history["val_mse"] + 0.5)


def test_plateau_and_early_stopping_keep_best():
    sched = ScheduleConfig(
        learning_rate=0.05,
        lr_decay=1.0,
        lr_floor=0.05,
        plateau_patience=2,
        plateau_factor=0.5,
        tol=0.5,
        early_stopping_patience=4,
    )
    res = _run(schedule=sched, max_epochs=50)
    assert res.stopped_early and res.n_epochs < 50
    lr = res.history["learning_rate"]
    assert lr.min() < 0.05 and np.all(np.diff(lr) <= 0)
    val = res.history["val_loss"]
    assert res.best_epoch == int(np.argmin(val))


def test_divergence_is_reported():
    bad = _data(200)
    bad["y"] = bad["y"].at[5].set(jnp.inf)
    res = run_minibatch(
        _toy_loss,
        P0,
        S0,
        bad,
        _data(37, 1),
        rng_key=jax.random.PRNGKey(0),
        batch_size=16,
        max_epochs=5,
        hyper={"l2": jnp.asarray(0.0)},
    )
    assert res.diverged and res.n_epochs == 1


def test_progress_bar_and_no_validation(capsys):
    res = run_minibatch(
        _toy_loss,
        P0,
        S0,
        _data(200),
        None,
        rng_key=jax.random.PRNGKey(0),
        batch_size=16,
        max_epochs=2,
        hyper={"l2": jnp.asarray(0.0)},
        progress_bar=True,
    )
    assert "val_loss" not in res.history and res.n_epochs == 2
    assert "2/2" in capsys.readouterr().err


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        _run(batch_size=500)


def test_host_ravel_and_unravel_match_ravel_pytree():
    """The driver's host-side raveling has ``ravel_pytree``'s layout, and its unravel gives
    the same leaves on a host vector and traced inside ``jit``."""
    from jax.flatten_util import ravel_pytree

    from scnbtools._core.infer import minibatch as mb

    rs = np.random.default_rng(0)
    params = {
        "b": {"W": rs.normal(size=(3, 4)).astype(np.float32), "v": np.float32(2.5)},
        "a": rs.normal(size=(5,)).astype(np.float32),
    }
    flat_ref, unravel_ref = ravel_pytree(params)
    flat = mb._ravel_host(params)
    np.testing.assert_array_equal(flat, np.asarray(flat_ref))
    unravel = mb._unravel_fn(mb._spec(params))
    for got in (unravel(flat), jax.jit(unravel)(jnp.asarray(flat))):
        want = unravel_ref(flat_ref)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for g, w in zip(
            jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True
        ):
            assert np.shape(g) == np.shape(w)
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert isinstance(unravel(flat)["a"], np.ndarray)  # host in, host out


def test_initial_optimizer_state_built_on_the_host_equals_optax_init():
    from scnbtools._core.infer import minibatch

    flat = jnp.arange(5.0)
    host = minibatch._initial_opt_state(flat, 0.03)
    ref = minibatch._optimizer(0.03).init(flat)
    assert jax.tree_util.tree_structure(host) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(host), jax.tree_util.tree_leaves(ref), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_host_validate_replaces_the_evaluator():
    """``validate(params, state)`` is called after every epoch with host parameters and its
    loss is monitored; passing it together with ``val_data`` is an error."""
    calls = []

    def validate(params, state):
        assert isinstance(params["w"], np.ndarray)
        calls.append(float(state["steps"]))
        return float(np.sum((params["w"] - np.array([1.0, -2.0, 0.5])) ** 2)), {"dist": 1.0}

    args = {
        "rng_key": jax.random.PRNGKey(0),
        "batch_size": 16,
        "max_epochs": 5,
        "hyper": {"l2": jnp.asarray(0.0)},
    }
    res = run_minibatch(_toy_loss, P0, S0, _data(200), None, validate=validate, **args)
    assert calls == [12.0 * (e + 1) for e in range(5)]  # state after each epoch's 12 steps
    assert np.all(np.diff(res.history["val_loss"]) < 0)  # the fit approaches the truth
    np.testing.assert_array_equal(res.history["val_dist"], 1.0)
    with pytest.raises(ValueError, match="either `val_data` or `validate`"):
        run_minibatch(_toy_loss, P0, S0, _data(200), _data(37, 1), validate=validate, **args)


def test_same_key_same_fit_other_key_other_shuffle():
    a, b = _run(max_epochs=3), _run(max_epochs=3)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    c = _run(max_epochs=3, rng_key=jax.random.PRNGKey(1))
    assert not np.array_equal(a.history["loss"], c.history["loss"])
