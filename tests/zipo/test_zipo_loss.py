"""The ZiPo loss: equal to the `_core` log-pmfs (checked here against scipy), finite at
extremes, penalties as documented, and the scale invariance of the sparsity penalty."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

from scnbtools._core.data import CountData
from scnbtools._core.models import zipo

G, B = 7, 5


def _scipy_loglik(x, log_rate, likelihood, gate_logits=None, log_r=None):
    """Per-entry log-pmf in float64 with scipy."""
    m = np.exp(log_rate)
    if likelihood in ("nb", "zinb"):
        r = np.exp(log_r)
        base = stats.nbinom.logpmf(x, r, r / (r + m))
        base0 = stats.nbinom.logpmf(0, r, r / (r + m))
    else:
        base = stats.poisson.logpmf(x, m)
        base0 = stats.poisson.logpmf(0, m)
    if likelihood in ("poisson", "nb"):
        return base
    pi = expit(gate_logits)
    return np.where(x == 0, np.log(pi + (1 - pi) * np.exp(base0)), np.log1p(-pi) + base)


def _network(likelihood, seed=0):
    cfg = zipo.ZipoConfig(n_genes=G, encoder_dims=(6, 4), n_latent=3, likelihood=likelihood)
    rs = np.random.default_rng(seed)
    params, state = zipo.init(
        jax.random.PRNGKey(seed),
        cfg,
        log_fractions=np.log(rs.dirichlet(np.ones(G))),
        mean_log_library=np.log(50.0),
        gate_logit=-1.0,
        log_r=0.7,
    )
    # move the heads off their small initial weights so the test covers real outputs
    params["zi"]["W"] = jnp.asarray(rs.normal(0, 1, (3, G)), jnp.float32)
    params["dec"]["W"] = jnp.asarray(rs.normal(0, 1, (3, G)), jnp.float32)
    params["disp"]["log_r"] = jnp.asarray(rs.normal(0, 1, G), jnp.float32)
    x = rs.poisson(rs.gamma(1.0, 8.0, (B, G))).astype(np.float32)
    x[0, :3] = 0
    batch = {k: jnp.asarray(v) for k, v in zipo.cell_arrays(CountData(x)).items()}
    return cfg, params, state, x, batch


@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
def test_entry_loglik_equals_scipy(likelihood):
    rs = np.random.default_rng(2)
    x = rs.poisson(rs.gamma(1.0, 8.0, (B, G))).astype(np.float32)
    x[0, :3] = 0
    out = {
        "log_rate": rs.normal(1.0, 1.5, (B, G)),
        "gate_logits": rs.normal(-1.0, 1.5, (B, G)),
        "log_r": rs.normal(0.5, 1.0, G),
    }
    ll = zipo.entry_loglik(
        jnp.asarray(x), {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}, likelihood
    )
    expected = _scipy_loglik(x, out["log_rate"], likelihood, out["gate_logits"], out["log_r"])
    np.testing.assert_allclose(np.asarray(ll), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("form", ["survival", "pairs"])
@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
def test_dense_plus_count_loglik_equals_scipy_summed_over_genes(likelihood, form, monkeypatch):
    """The training loss's split form (the dense part per cell, the count part from a
    summary of the counts, in either of its two forms) equals the scipy log-pmf summed over
    every gene, zeros included: per cell (the summary of that cell alone), as a mean over the
    cells (the summary of all of them), and on the host in float64 (``mean_loglik``)."""
    max_bins = 1 << 22 if form == "survival" else 0
    rs = np.random.default_rng(3)
    x = rs.poisson(rs.gamma(0.3, 6.0, (B, G))).astype(np.float32)  # mostly zeros
    x[1] = 0.0  # a cell with no counts at all
    x[2, 0] = 250.0  # a large count
    out = {
        "log_rate": rs.normal(1.0, 1.5, (B, G)),
        "gate_logits": rs.normal(-1.0, 1.5, (B, G)),
        "log_r": rs.normal(0.5, 1.0, G),
    }
    o32 = {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}
    arrays = zipo.cell_arrays(CountData(x))
    expected = _scipy_loglik(x, out["log_rate"], likelihood, out["gate_logits"], out["log_r"])
    dense = np.asarray(zipo.dense_loglik(jnp.asarray(x), o32, likelihood))

    def terms(idx=None):
        t = zipo.count_terms(arrays, idx, max_bins=max_bins)
        if t["w"].any():  # (cells without counts have nothing to hold)
            assert ("j" in t) == (form == "survival") and ("k" in t) == (form == "pairs")
        return {k: jnp.asarray(v) for k, v in t.items()}

    for c in range(B):
        ll = dense[c] + float(zipo.count_loglik(terms([c]), o32, likelihood))
        np.testing.assert_allclose(ll, expected[c].sum(), rtol=2e-5, atol=2e-3)
    mean = dense.mean() + float(zipo.count_loglik(terms(), o32, likelihood))
    np.testing.assert_allclose(mean, expected.sum(1).mean(), rtol=2e-5)
    if form == "pairs":  # mean_loglik picks its form itself: force this one
        monkeypatch.setattr(zipo, "count_terms", functools.partial(zipo.count_terms, max_bins=0))
    for sub in (np.arange(B), np.array([0, 2, 4])):
        host = zipo.mean_loglik(dense, arrays, sub, out["log_r"], likelihood)
        np.testing.assert_allclose(host, expected[sub].sum(1).mean(), rtol=2e-6)


def test_count_terms_survival_bins_match_a_brute_force_count():
    """Survival form: one bin per gene and count level j < max count, weighted by the
    fraction of cells whose count exceeds j; the constant is -mean_c sum_g log(x!)."""
    from scipy.special import gammaln

    rs = np.random.default_rng(8)
    x = rs.poisson(rs.gamma(0.5, 3.0, (25, 9))).astype(np.float32)
    x[:, 4] = 0.0  # a gene without counts has no bins
    arrays = zipo.cell_arrays(CountData(x))
    t = zipo.count_terms(arrays)
    n_bins = int(x.max(0).sum())
    assert t["g"].size % zipo.COUNT_BUCKET == 0 and t["g"].size >= n_bins
    expected = [(g, j, np.mean(x[:, g] > j)) for g in range(9) for j in range(int(x[:, g].max()))]
    np.testing.assert_array_equal(t["g"][:n_bins], [e[0] for e in expected])
    np.testing.assert_array_equal(t["j"][:n_bins], [e[1] for e in expected])
    np.testing.assert_allclose(t["w"][:n_bins], [e[2] for e in expected], rtol=1e-6)
    assert not t["w"][n_bins:].any()
    assert float(t["const"]) == pytest.approx(-gammaln(x + 1.0).sum(1).mean(), rel=1e-6)
    # more bins than allowed: the distinct-pairs form of the same data
    p = zipo.count_terms(arrays, max_bins=n_bins - 1)
    assert "k" in p and "j" not in p and float(p["const"]) == float(t["const"])


@pytest.mark.parametrize("path", ["bincount", "sort"])
def test_count_terms_pairs_match_a_brute_force_count(path, monkeypatch):
    """Pairs form: distinct non-zero (gene, count) pairs of the chosen cells with their
    multiplicity per cell, sorted by gene then count, padded with weight 0 to a multiple of
    the bucket; by both histogram paths of ``CountData``."""
    from scipy.special import gammaln

    if path == "sort":
        monkeypatch.setattr(CountData, "count_histograms", lambda self, max_bins=0: None)
    rs = np.random.default_rng(5)
    x = rs.poisson(rs.gamma(0.5, 4.0, (40, 30))).astype(np.float32)
    x[3, 7] = 10_000.0
    arrays = zipo.cell_arrays(CountData(x))
    idx = np.array([0, 3, 3, 9, 17, 39])  # a repeated cell counts twice
    pairs = zipo.count_terms(arrays, idx, max_bins=0)
    size = pairs["g"].size
    assert size % zipo.COUNT_BUCKET == 0 and size > 0
    sub = x[idx]
    g, c = np.nonzero(sub.T)
    keys, cnt = np.unique(np.stack([g, sub.T[g, c]]), axis=1, return_counts=True)
    n = keys.shape[1]
    np.testing.assert_array_equal(pairs["g"][:n], keys[0])
    np.testing.assert_array_equal(pairs["k"][:n], keys[1])
    np.testing.assert_allclose(pairs["w"][:n], cnt / idx.size, rtol=1e-7)
    assert np.all(pairs["w"][n:] == 0) and np.all(pairs["k"][n:] == 1)
    assert pairs["g"].dtype == np.int32 and pairs["w"].dtype == np.float32
    assert float(pairs["const"]) == pytest.approx(-gammaln(sub + 1.0).sum(1).mean(), rel=1e-6)
    # cells without counts give padding only
    zero = zipo.count_terms(zipo.cell_arrays(CountData(np.zeros((3, 4), np.float32))))
    assert zero["w"].size == zipo.COUNT_BUCKET and not zero["w"].any()


def test_loss_is_nll_plus_penalties_and_masks_padding():
    """The network's loss: mean NLL of the scipy log-pmf plus the three penalties as
    documented; padding cells (mask 0) do not enter it."""
    cfg, params, state, x, batch = _network("zinb")
    mask = jnp.ones(B)
    arrays = zipo.cell_arrays(CountData(x))
    weights = zipo.penalties(alpha_z=0.3, alpha_w=0.2, alpha_theta=0.05)
    hyper = {**weights, "counts": zipo.count_terms(arrays)}
    # jitted: one compilation is cheaper than dispatching every primitive eagerly
    loss_fn = jax.jit(zipo.bound_loss(cfg), static_argnums=5)
    loss, (_, metrics) = loss_fn(params, state, batch, mask, None, False, hyper)
    out, _ = jax.jit(zipo.apply, static_argnames=("config", "train"))(
        params, state, jnp.asarray(x), batch["cov"], batch["log_lib"], config=cfg, train=False
    )
    o = {k: np.asarray(v, np.float64) for k, v in out.items()}
    nll = -_scipy_loglik(x, o["log_rate"], "zinb", o["gate_logits"], o["log_r"]).mean()
    np.testing.assert_allclose(float(metrics["nll"]), nll, rtol=2e-5)
    W = np.asarray(params["enc_0"]["W"], np.float64)
    expected = (
        nll
        + 0.2 * np.mean(np.abs(W).mean(0) / np.sqrt((W**2).mean(0)))
        + 0.3 * np.mean(expit(o["gate_logits"]) ** 2)
        + 0.05 * np.mean(np.exp(-2 * o["log_r"]))
    )
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    # mask [1, 1, 1, 0, 0] gives the loss of the first three cells alone
    # (the count part is that of the data set the batch comes from: here the three cells)
    hyper3 = {**weights, "counts": zipo.count_terms(arrays, np.arange(3))}
    part_mask = jnp.asarray([1, 1, 1, 0, 0], jnp.float32)
    full, (_, m_full) = loss_fn(params, state, batch, part_mask, None, False, hyper3)
    sub = {k: v[:3] for k, v in batch.items()}
    part, _ = loss_fn(params, state, sub, jnp.ones(3), None, False, hyper3)
    np.testing.assert_allclose(float(full), float(part), rtol=1e-6)
    nll3 = -_scipy_loglik(x[:3], o["log_rate"][:3], "zinb", o["gate_logits"][:3], o["log_r"])
    np.testing.assert_allclose(float(m_full["nll"]), nll3.mean(), rtol=2e-5)


@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
def test_loglik_finite_at_extremes(likelihood):
    x = jnp.asarray([[0.0, 1.0, 1e5, 0.0, 3.0, 1e5]] * 4)
    log_rate = jnp.asarray([[-30.0], [0.0], [12.0], [-5.0]]) * jnp.ones((1, 6))
    out = {
        "log_rate": log_rate,
        "gate_logits": jnp.asarray([[-30.0], [30.0], [0.0], [-8.0]]) * jnp.ones((1, 6)),
        "log_r": jnp.asarray([-10.0, -3.0, 0.0, 5.0, 10.0, 15.0]),
    }

    arrays = zipo.cell_arrays(CountData(np.asarray(x)))
    forms = [zipo.count_terms(arrays), zipo.count_terms(arrays, max_bins=0)]
    assert "j" in forms[0] and "k" in forms[1]

    def total(o):
        return jnp.sum(zipo.entry_loglik(x, o, likelihood))

    def split(o, terms):  # the training loss's form
        return jnp.sum(zipo.dense_loglik(x, o, likelihood)) + zipo.count_loglik(
            terms, o, likelihood
        )

    for f in (
        total,
        functools.partial(split, terms=forms[0]),
        functools.partial(split, terms=forms[1]),
    ):
        value, grads = jax.value_and_grad(f)(out)
        assert np.isfinite(float(value))
        for g in jax.tree_util.tree_leaves(grads):
            assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.isfinite(np.asarray(zipo.entry_loglik(x, out, likelihood))))


def test_sparsity_penalty_is_scale_invariant_per_neuron():
    rs = np.random.default_rng(1)
    W = rs.normal(size=(50, 6)).astype(np.float32)
    base = float(zipo.sparsity_penalty(jnp.asarray(W)))
    for col, c in [(0, 1e-3), (2, 1e3), (5, -7.0)]:
        V = W.copy()
        V[:, col] *= c
        assert float(zipo.sparsity_penalty(jnp.asarray(V))) == pytest.approx(base, rel=1e-5)
    # it does reward sparsity: one non-zero weight gives 1/sqrt(G), equal weights give 1
    one_hot = np.zeros((50, 1), np.float32)
    one_hot[3] = 2.5
    assert float(zipo.sparsity_penalty(jnp.asarray(one_hot))) == pytest.approx(
        1 / np.sqrt(50), rel=1e-5
    )
    assert float(zipo.sparsity_penalty(jnp.ones((50, 1)))) == pytest.approx(1.0, rel=1e-6)


def test_eval_mode_is_independent_of_the_batch():
    """With stored batch-norm statistics a cell's outputs do not depend on its batch mates;
    in training mode they do."""
    cfg, params, state, x, batch = _network("zip")
    state = jax.tree_util.tree_map(lambda a: a * 0.5 + 0.1, state)
    xs = jnp.asarray(x)
    full, _ = zipo.apply(params, state, xs, batch["cov"], batch["log_lib"], config=cfg, train=False)
    one, _ = zipo.apply(
        params, state, xs[:1], batch["cov"][:1], batch["log_lib"][:1], config=cfg, train=False
    )
    np.testing.assert_allclose(
        np.asarray(full["latent"][:1]), np.asarray(one["latent"]), rtol=1e-5, atol=1e-6
    )
    tr_full, _ = zipo.apply(
        params, state, xs, batch["cov"], batch["log_lib"], config=cfg, train=True
    )
    tr_two, _ = zipo.apply(
        params, state, xs[:2], batch["cov"][:2], batch["log_lib"][:2], config=cfg, train=True
    )
    assert not np.allclose(np.asarray(tr_full["latent"][:1]), np.asarray(tr_two["latent"][:1]))


def test_prune_first_layer_normalises_per_neuron():
    W = np.array([[1.0, -0.001], [0.5, 0.01], [0.0005, -0.002]], np.float32)
    pruned, frac = zipo.prune_first_layer(W, 0.01)
    # neuron 0: max 1 -> 0.0005 is pruned; neuron 1: max 0.01 -> 0.001 (0.1) kept
    np.testing.assert_array_equal(
        pruned, np.array([[1.0, -0.001], [0.5, 0.01], [0.0, -0.002]], np.float32)
    )
    assert frac == pytest.approx(1 / 6)


@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
@pytest.mark.parametrize("library", ["matched", "observed", "predicted"])
def test_library_in_use(likelihood, library):
    """``matched``: each cell's expected total count, dropout included, equals its observed
    total (without zero inflation the library is that total); ``observed``: the total;
    ``predicted``: the head's output. ``log_rate`` always uses the library in use."""
    import dataclasses

    cfg, params, state, x, batch = _network(likelihood)
    cfg = dataclasses.replace(cfg, library=library)
    xd = zipo.densify(batch["cols"], batch["vals"], G)
    out, _ = zipo.apply(params, state, xd, batch["cov"], batch["log_lib"], config=cfg, train=False)
    log_l = np.asarray(out["log_l"], np.float64)
    np.testing.assert_allclose(
        np.asarray(out["log_rate"]),
        log_l[:, None] + np.asarray(out["log_mu"]),
        rtol=1e-5,
        atol=1e-5,
    )
    total = x.sum(1)
    _, stats = zipo.apply(params, state, xd, batch["cov"], batch["log_lib"], config=cfg, train=True)
    moved = not np.allclose(np.asarray(stats["lib_0"]["mean"]), np.asarray(state["lib_0"]["mean"]))
    assert moved == (library == "predicted")  # an unused head keeps its statistics
    if library == "predicted":  # the library head, by hand (evaluation-mode batch-norm)
        h = np.asarray(out["latent"], np.float64)
        for i in range(len(cfg.library_dims)):
            p, s = params[f"lib_{i}"], state[f"lib_{i}"]
            h = expit(h @ np.asarray(p["W"]) + np.asarray(p["b"]))
            h = (h - np.asarray(s["mean"])) / np.sqrt(np.asarray(s["var"]) + zipo.BN_EPS)
            h = h * np.asarray(p["gamma"]) + np.asarray(p["beta"])
        head = h @ np.asarray(params["lib_out"]["W"]) + np.asarray(params["lib_out"]["b"])
        np.testing.assert_allclose(log_l, head[:, 0], rtol=1e-5, atol=1e-5)
        return
    rate = np.exp(np.asarray(out["log_rate"], np.float64))
    keep = expit(-np.asarray(out["gate_logits"], np.float64)) if cfg.zero_inflated else 1.0
    if library == "observed":
        np.testing.assert_allclose(np.exp(log_l), total, rtol=1e-5)
        return
    np.testing.assert_allclose((keep * rate).sum(1), total, rtol=1e-5)
    if cfg.zero_inflated:  # the dropout the model expects lifts the library above the total
        assert np.all(np.exp(log_l) > total)


def test_softplus_and_its_derivative():
    """The loss's softplus equals log(1 + e^x) and its derivative the logistic function,
    also at 0 (the tie of its max) and far out in both tails."""
    x = np.array([-1e4, -80.0, -20.0, -1.0, 0.0, 1e-6, 1.0, 20.0, 80.0, 1e4], np.float32)
    value = np.asarray(zipo._softplus(jnp.asarray(x)))
    np.testing.assert_allclose(value, np.logaddexp(x.astype(np.float64), 0.0), rtol=1e-6)
    grad = np.asarray(jax.vmap(jax.grad(zipo._softplus))(jnp.asarray(x)))
    np.testing.assert_allclose(grad, expit(x.astype(np.float64)), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("likelihood", ["zinb", "poisson"])
def test_validation_loss_is_the_loss_on_the_host(likelihood):
    """``validation_loss`` (the per-epoch validation: the inference program's outputs, with
    the count part and the penalties added on the host in float64) equals ``loss_fn`` in
    evaluation mode over the same cells, metrics included."""
    cfg, params, state, x, batch = _network(likelihood)
    arrays = zipo.cell_arrays(CountData(x))
    weights = zipo.penalties(alpha_z=0.3, alpha_w=0.2, alpha_theta=0.05)
    hyper = {**weights, "counts": zipo.count_terms(arrays)}
    loss_fn = jax.jit(zipo.bound_loss(cfg), static_argnums=5)
    ref, (_, ref_metrics) = loss_fn(params, state, batch, jnp.ones(B), None, False, hyper)
    host = jax.tree_util.tree_map(np.asarray, params)
    terms = zipo.count_terms(arrays, dtype=np.float64)
    loss, metrics = zipo.validation_loss(host, state, arrays, terms, weights, config=cfg)
    np.testing.assert_allclose(loss, float(ref), rtol=2e-5)
    assert set(metrics) == set(ref_metrics)
    for name, value in metrics.items():
        np.testing.assert_allclose(value, float(ref_metrics[name]), rtol=2e-5)


@pytest.mark.parametrize("library", ["matched", "predicted"])
def test_population_stats_average_the_batch_moments(library):
    """The stored batch-norm statistics are, per layer that runs, the mean of the batches'
    means and of their unbiased variances, each batch in training mode; a layer that does
    not run (the library head unless ``predicted``) keeps its statistics."""
    import dataclasses

    cfg, params, state, _, _ = _network("zinb")
    cfg = dataclasses.replace(cfg, library=library)
    rs = np.random.default_rng(3)
    x = rs.poisson(rs.gamma(1.0, 8.0, (12, G))).astype(np.float32)
    arrays = zipo.cell_arrays(CountData(x))
    batches = rs.permutation(12)[:8].reshape(2, 4)
    got = zipo.population_stats(params, state, arrays, batches, config=cfg)
    apply = jax.jit(zipo.apply, static_argnames=("config", "train"))
    moments = []
    for idx in batches:
        _, st = apply(
            params,
            state,
            jnp.asarray(x[idx]),
            arrays["cov"][idx],
            arrays["log_lib"][idx],
            config=cfg,
            train=True,
        )
        moments.append(st)
    runs = ["enc_0", "enc_1", "latent"] + (["lib_0", "lib_1"] if library == "predicted" else [])
    assert set(got) == set(state)
    for name in state:
        for stat in ("mean", "var"):
            if name in runs:
                expected = np.mean([np.asarray(m[name][stat], np.float64) for m in moments], 0)
                expected = expected * (4 / 3 if stat == "var" else 1.0)
            else:
                expected = np.asarray(state[name][stat])
            np.testing.assert_allclose(np.asarray(got[name][stat]), expected, rtol=1e-5)


def test_map_cells_over_prepared_device_batches_equals_host_batches():
    """Validation cells are densified once onto the device (within a size limit); mapping
    over those batches gives what mapping over batches densified on the fly gives."""
    cfg, params, state, _, _ = _network("zinb")
    rs = np.random.default_rng(4)
    x = rs.poisson(rs.gamma(1.0, 8.0, (300, G))).astype(np.float32)  # two batches, padded
    arrays = zipo.cell_arrays(CountData(x))
    prepared = zipo.device_batches(arrays, G)
    assert [m for m, _ in prepared] == [256, 44]
    a = zipo.map_cells(params, state, arrays, config=cfg, fn=zipo.cell_outputs)
    b = zipo.map_cells(params, state, arrays, config=cfg, fn=zipo.cell_outputs, batches=prepared)
    assert set(a) == set(b) and a["latent"].shape == (300, 3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert zipo.device_batches(arrays, G, max_bytes=2 * 256 * G * 4 - 1) is None
