"""ZiPo-style deep zero-inflated count autoencoder, in pure JAX.

Network (Sharifitabar et al., "A deep neural network to de-noise single-cell RNA sequencing
data"; the ZiPo paper):

* **encoder**: the cell's counts enter as ``log1p(x)``; blocks ``dense -> sigmoid -> batch-norm``
  of widths ``encoder_dims``; the latent layer is one more such block whose dense part reads the
  output of *every* encoder block when ``residuals=True`` (a linear projection of each block,
  summed before the sigmoid), otherwise only the last one;
* known covariates (already numeric and standardised) are concatenated to the latent: ``V``;
* **library head**: ``log l = MLP(V)`` with blocks of widths ``library_dims`` (16 and 4) and a
  linear output;
* **zero-inflation head**: ``logit z = V A_z + b_z`` (one logit per cell and gene);
* **decoder**: ``log mu = log_softmax(V A_mu + b_mu)`` — expression fractions summing to 1;
* the rate of the count part is ``m = l mu``; for NB likelihoods a per-gene inverse
  dispersion ``r_g`` (variance ``m + m^2 / r``). The library ``l`` in use is the head's
  prediction (``library="predicted"``, the paper), the cell's total count ``T``
  (``"observed"``), or (``"matched"``, the default) ``l = T / sum_g (1 - pi_g) mu_g``, at which
  the cell's expected total count equals ``T`` (``pi``: zero-inflation probabilities; without
  zero inflation this is ``T``).

Loss (per entry, so the penalty weights do not depend on the number of genes)::

    -mean_{c,g} log p(x_cg) + alpha_z mean_{c,g} z_cg^2
        + alpha_w mean_i [mean_g |W_gi| / sqrt(mean_g W_gi^2)] + alpha_theta mean_g r_g^-2

with the ``_core.likelihoods`` log-pmfs (log-sigmoid forms, no epsilon logs). The ``alpha_w``
term is the paper's scale-invariant L1/L2 ratio of every first-layer neuron's weights: it
rewards sparse neurons without rewarding small ones (which batch-norm would undo). The
``alpha_theta`` term is an L2 penalty on the NB over-dispersion ``1 / r`` (it pulls towards
the Poisson limit, as ``alpha_z`` pulls towards no zero inflation).

Parameters are a nested ``dict[str, dict[str, array]]`` (``enc_0``, ..., ``latent``,
``lib_0``, ..., ``lib_out``, ``zi``, ``dec`` and ``disp``); batch-norm running statistics
are a separate ``state`` dict of the same shape. Both hold only plain arrays, so they store
as-is in ``AnnData.uns``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ..data import CountData, GeneHistograms, _lgamma1p
from ..likelihoods import (
    log_rising_factorial_ratio,
    nb_logpmf,
    poisson_logpmf,
    zinb_logpmf,
    zip_logpmf,
)

__all__ = [
    "LIKELIHOODS",
    "ZipoConfig",
    "apply",
    "cell_batches",
    "count_loglik",
    "count_terms",
    "dense_loglik",
    "densify",
    "device_batches",
    "entry_loglik",
    "gene_histograms",
    "host_count_loglik",
    "init",
    "loss_fn",
    "mean_loglik",
    "normalized_first_layer",
    "population_stats",
    "prune_first_layer",
    "sparsity_penalty",
    "validation_loss",
    "weight_penalty",
]

#: likelihood name -> (zero-inflated?, negative binomial?)
LIKELIHOODS: dict[str, tuple[bool, bool]] = {
    "zip": (True, False),
    "zinb": (True, True),
    "poisson": (False, False),
    "nb": (False, True),
}

#: :func:`count_terms` pads its arrays to a multiple of this (at least)
COUNT_BUCKET = 4096

BN_EPS = 1e-3
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class ZipoConfig:
    """Static architecture of a ZiPo network (hashable, so it can be a jit static argument).

    The penalty weights are not part of it: they enter the loss as traced values
    (:func:`penalties`), so fits that differ only in them share compiled code.
    """

    n_genes: int
    encoder_dims: tuple[int, ...] = (256, 64)
    n_latent: int = 32
    residuals: bool = True
    n_covariates: int = 0
    library_dims: tuple[int, ...] = (16, 4)
    likelihood: str = "zip"
    #: "predicted" (the library head), "observed" (the cell's total count) or "matched"
    #: (the library at which the cell's expected total count, zero inflation included,
    #: equals its observed total)
    library: str = "matched"

    @property
    def zero_inflated(self) -> bool:
        return LIKELIHOODS[self.likelihood][0]

    @property
    def negative_binomial(self) -> bool:
        return LIKELIHOODS[self.likelihood][1]

    @property
    def n_blocks(self) -> int:
        return len(self.encoder_dims)


# ----------------------------------------------------------------------------- init
def _dense(rs: np.random.Generator, n_in: int, n_out: int, scale: float = 1.0) -> dict:
    """PyTorch's default ``nn.Linear`` initialisation, ``U(-1/sqrt(n_in), 1/sqrt(n_in))``.

    Drawn on the host: ``jax.random`` would compile one small kernel per weight shape
    (about three seconds for a ZiPo network on CPU)."""
    bound = scale / np.sqrt(n_in)
    return {
        "W": rs.uniform(-bound, bound, (n_in, n_out)).astype(np.float32),
        "b": rs.uniform(-bound, bound, (n_out,)).astype(np.float32),
    }


def _block(rs: np.random.Generator, n_in: int, n_out: int) -> dict:
    p = _dense(rs, n_in, n_out)
    p["gamma"] = np.ones((n_out,), np.float32)
    p["beta"] = np.zeros((n_out,), np.float32)
    return p


def _bn_state(n: int) -> dict[str, jax.Array]:
    return {"mean": np.zeros((n,), np.float32), "var": np.ones((n,), np.float32)}


def init(
    key,
    config: ZipoConfig,
    *,
    log_fractions: Any,
    mean_log_library: float,
    gate_logit: float = -2.0,
    log_r: Any = 1.0,
) -> tuple[dict, dict]:
    """Initial ``(params, state)``.

    The heads start at sensible values: decoder bias at the genes' mean log fractions,
    library bias at the mean log library size, zero-inflation logits at ``gate_logit`` and
    log inverse dispersions at ``log_r``; their weights start small so training begins
    from the per-gene baseline model.
    """
    c = config
    # one host generator seeded by the key (the same key gives the same network)
    raw = key if jnp.issubdtype(key.dtype, jnp.unsignedinteger) else jax.random.key_data(key)
    rs = np.random.default_rng(np.asarray(raw).ravel().tolist())
    params: dict[str, dict[str, jax.Array]] = {}
    state: dict[str, dict[str, jax.Array]] = {}
    n_in = c.n_genes
    for i, d in enumerate(c.encoder_dims):
        params[f"enc_{i}"] = _block(rs, n_in, d)
        state[f"enc_{i}"] = _bn_state(d)
        n_in = d
    latent = _block(rs, n_in, c.n_latent)
    if c.residuals:
        # one projection per earlier block; the last block's projection is latent["W"]
        for i, d in enumerate(c.encoder_dims[:-1]):
            latent[f"R_{i}"] = _dense(rs, d, c.n_latent)["W"]
    params["latent"] = latent
    state["latent"] = _bn_state(c.n_latent)
    n_v = c.n_latent + c.n_covariates
    n_in = n_v
    for i, d in enumerate(c.library_dims):
        params[f"lib_{i}"] = _block(rs, n_in, d)
        state[f"lib_{i}"] = _bn_state(d)
        n_in = d
    lib_out = _dense(rs, n_in, 1, scale=0.1)
    lib_out["b"] = np.full((1,), mean_log_library, np.float32)
    params["lib_out"] = lib_out
    zi = _dense(rs, n_v, c.n_genes, scale=0.1)
    zi["b"] = np.full((c.n_genes,), gate_logit, np.float32)
    params["zi"] = zi
    dec = _dense(rs, n_v, c.n_genes, scale=0.1)
    dec["b"] = np.asarray(log_fractions, np.float32).reshape(c.n_genes)
    params["dec"] = dec
    params["disp"] = {"log_r": np.broadcast_to(np.asarray(log_r, np.float32), (c.n_genes,)).copy()}
    # one transfer of host arrays (jnp.asarray would build a small copy kernel per shape)
    return jax.device_put(params), jax.device_put(state)


# ----------------------------------------------------------------------------- forward
def _batch_norm(h, p, s, train):
    """Batch norm; in training uses (and returns) the batch moments, else the stored ones.

    ``train`` is a Python bool, or a traced boolean scalar that picks either at run time
    (one compiled program for both, see :func:`_runner`)."""
    if isinstance(train, bool):
        mean, var = (h.mean(axis=0), h.var(axis=0)) if train else (s["mean"], s["var"])
    else:
        mean = jnp.where(train, h.mean(axis=0), s["mean"])
        var = jnp.where(train, h.var(axis=0), s["var"])
    out = (h - mean) * jax.lax.rsqrt(var + BN_EPS) * p["gamma"] + p["beta"]
    return out, {"mean": mean, "var": var}


def _block_apply(h, p, s, train, extra=None):
    pre = h @ p["W"] + p["b"]
    if extra is not None:
        pre = pre + extra
    return _batch_norm(jax.nn.sigmoid(pre), p, s, train)


def densify(cols, vals, n_genes: int):
    """Dense ``[batch, n_genes]`` counts from padded sparse rows (padding column ``n_genes``)."""
    b = cols.shape[0]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], cols.shape)
    x = jnp.zeros((b, n_genes + 1), vals.dtype).at[rows, cols].add(vals)
    return x[:, :n_genes]


def apply(params, state, x, covariates, log_library_obs, *, config: ZipoConfig, train):
    """Forward pass of a batch of cells.

    Parameters
    ----------
    x
        Dense counts ``[batch, genes]``.
    covariates
        ``[batch, n_covariates]`` (standardised) or an array with zero columns.
    log_library_obs
        ``[batch]`` log observed library sizes (used when ``config.library == "observed"``).
    train
        Use batch statistics in batch-norm layers (and return them); otherwise the stored
        running statistics, so every cell's output is independent of its batch. A Python
        bool, or a traced boolean scalar (see :func:`_batch_norm`).

    Returns
    -------
    ``(out, batch_stats)``: ``out`` has ``latent`` ``[b, n_latent]``, ``log_l`` ``[b]``
    (the library in use, see ``ZipoConfig.library``; the library head runs only for
    ``"predicted"``), ``log_mu`` ``[b, g]`` (log fractions), ``log_rate``
    ``[b, g]`` (``log l + log mu`` with the library in use), ``gate_logits`` ``[b, g]``
    (zero-inflated likelihoods only) and ``log_r`` ``[g]`` (NB likelihoods only).
    """
    c = config
    stats = {}
    h = jnp.log1p(x)
    hidden = []
    for i in range(c.n_blocks):
        name = f"enc_{i}"
        h, stats[name] = _block_apply(h, params[name], state[name], train)
        hidden.append(h)
    lat = params["latent"]
    extra = None
    if c.residuals:
        for i, hi in enumerate(hidden[:-1]):
            term = hi @ lat[f"R_{i}"]
            extra = term if extra is None else extra + term
    z, stats["latent"] = _block_apply(h, lat, state["latent"], train, extra)
    v = jnp.concatenate([z, covariates], axis=1) if c.n_covariates else z
    log_mu = jax.nn.log_softmax(v @ params["dec"]["W"] + params["dec"]["b"], axis=-1)
    gate_logits = v @ params["zi"]["W"] + params["zi"]["b"] if c.zero_inflated else None
    if c.library == "predicted":
        g = v
        for i in range(len(c.library_dims)):
            name = f"lib_{i}"
            g, stats[name] = _block_apply(g, params[name], state[name], train)
        log_l = (g @ params["lib_out"]["W"] + params["lib_out"]["b"])[:, 0]
    else:
        # the library head is not used (its weights get no gradient): not computed, and
        # its batch-norm statistics stay as they are
        stats.update({f"lib_{i}": state[f"lib_{i}"] for i in range(len(c.library_dims))})
        if c.library == "observed":
            log_l = log_library_obs
        else:  # "matched": the expected total count of the cell equals its observed total
            # log(1 - pi) = log sigmoid(gate) - gate: the same log-sigmoid as the loss's
            kept = log_mu
            if gate_logits is not None:
                kept = log_mu + (-_softplus(-gate_logits) - gate_logits)
            log_l = log_library_obs - jax.scipy.special.logsumexp(kept, axis=1)
    out = {
        "latent": z,
        "log_l": log_l,
        "log_mu": log_mu,
        "log_rate": log_l[:, None] + log_mu,
    }
    if c.zero_inflated:
        out["gate_logits"] = gate_logits
    if c.negative_binomial:
        out["log_r"] = params["disp"]["log_r"]
    return out, stats


def entry_loglik(x, out, likelihood: str):
    """Elementwise log-likelihood ``[batch, genes]`` from the ``_core`` log-pmfs."""
    log_rate = out["log_rate"]
    if likelihood == "poisson":
        return poisson_logpmf(x, log_rate=log_rate)
    if likelihood == "zip":
        return zip_logpmf(x, log_rate=log_rate, gate_logits=out["gate_logits"])
    log_r = out["log_r"]
    r = jnp.exp(log_r)
    logits = log_rate - log_r  # NB(r, p) with mean r p / (1 - p) = exp(log_rate)
    if likelihood == "nb":
        return nb_logpmf(x, r, logits=logits)
    if likelihood == "zinb":
        return zinb_logpmf(x, r, logits=logits, gate_logits=out["gate_logits"])
    raise ValueError(f"unknown likelihood {likelihood!r}")


def _softplus(x):
    """``log(1 + e^x)`` as ``m + log1p(e^(x - 2m))``, ``m = max(x, 0)``: one ``exp`` that its
    derivative reuses (``jax.nn.softplus``'s derivative evaluates a second one), exact 1/2
    at 0 (``maximum`` splits the tie)."""
    m = jnp.maximum(x, 0.0)
    return m + jnp.log1p(jnp.exp(x - 2.0 * m))


def dense_loglik(x, out, likelihood: str):
    """Per-cell log-likelihood summed over genes ``[batch]``, *without* the count part.

    Every count log-pmf here splits into a *dense* part (log-sigmoids and ``x log p``: cheap,
    and all that the network's outputs enter elementwise) and a *count* part
    ``log Gamma(x + r) - log Gamma(r) - log Gamma(x + 1)`` (Poisson: ``-log Gamma(x + 1)``)
    that is zero at ``x = 0``, enters additively where ``x > 0`` (also for zero-inflated
    likelihoods), and depends on nothing but the count and the gene's ``r``. This function
    is the dense part; :func:`count_loglik` is the count part, summed over a summary of the
    data set's counts instead of over every entry (:func:`count_terms`).
    ``dense_loglik(x, ...) + count_loglik(count_terms(x), ...)`` is
    ``entry_loglik(x, ...).sum(axis=1)`` for a single cell; for a batch the count part is
    the data set's per-cell mean.
    """
    log_rate = out["log_rate"]
    if likelihood in ("nb", "zinb"):
        log_r = out["log_r"]
        logits = log_rate - log_r
        # log sigmoid(logits) = log sigmoid(-logits) + logits: one softplus per entry
        log_q = -_softplus(logits)
        base = jnp.where(x > 0, x * (log_q + logits), 0.0) + jnp.exp(log_r) * log_q
    elif likelihood in ("poisson", "zip"):
        base = jnp.where(x > 0, x * log_rate, 0.0) - jnp.exp(log_rate)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    if likelihood in ("zip", "zinb"):
        # log(pi + (1 - pi) p0) = log pi + softplus(log p0 - gate) and log(1 - pi) =
        # log pi - gate: two softplus per entry (a logaddexp of two log-sigmoids takes three)
        g = out["gate_logits"]
        log_gate = -_softplus(-g)
        base = log_gate + jnp.where(x == 0, _softplus(base - g), base - g)
    return base.sum(axis=1)


def gene_histograms(arrays: Mapping[str, np.ndarray], idx=None) -> GeneHistograms:
    """Per-gene count histograms of cells ``idx`` (all by default; a repeated index counts
    twice) from the padded sparse rows of :func:`cell_arrays`, by
    :meth:`CountData.gene_histograms <scnbtools._core.data.CountData.gene_histograms>`."""
    cols, vals = arrays["cols"], arrays["vals"]
    if idx is not None:
        cols, vals = cols[idx], vals[idx]
    nz = vals > 0  # drops the padding (value 0, column n_genes)
    # genes above the last one with counts would add no terms (at least one: CountData)
    n_genes = max(int(cols[nz].max(initial=-1)) + 1, 1)
    indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))])
    X = sp.csr_matrix((vals[nz], cols[nz], indptr), shape=(cols.shape[0], n_genes))
    return CountData(X).gene_histograms()


def count_terms(
    arrays: Mapping[str, np.ndarray], idx=None, dtype=np.float32, max_bins: int = 1 << 22
) -> dict:
    """The count part of the log-likelihood of cells ``idx`` (all by default), in the form
    that :func:`count_loglik` evaluates for any ``r``.

    Per cell, ``sum_g [log Gamma(x + r_g) - log Gamma(r_g) - log Gamma(x + 1)]``, averaged
    over the cells, is ``A(r) + const``: ``const`` (the ``log Gamma(x + 1)`` part, a
    number) and ``A(r) = mean_c sum_g [log Gamma(x + r_g) - log Gamma(r_g)]``, the only part
    that depends on ``r``. ``A`` is held in one of two forms, both from the cells'
    :func:`gene_histograms`:

    * **survival** (``g``, ``j``, ``w``): ``A(r) = sum w log(r_g + j)``, one bin per gene
      and count level ``j < max_g`` (:meth:`GeneHistograms.survival`), with ``w`` the
      fraction of cells whose count of gene ``g`` exceeds ``j``. No special functions, so it
      is cheap to run and to compile (its gradient is ``sum w / (r_g + j)``). Used when
      there are at most ``max_bins`` bins (``sum_g max_g``: 34,044 for 9,000 cells x 2,000
      genes, against 4.8 million non-zeros);
    * **pairs** (``g``, ``k``, ``w``): ``A(r) = sum w [log Gamma(k + r_g) - log Gamma(r_g)]``
      over the distinct ``(gene, count)`` pairs, ``w`` their multiplicity per cell, for data
      with larger counts.

    Arrays are padded with ``w = 0`` (see :func:`_bucket`).
    """
    h = gene_histograms(arrays, idx)
    n = max(h.n_cells, 1)
    # sorted by gene, then value: a gene's largest count is its last entry
    last = np.r_[h.gene[1:] != h.gene[:-1], True][: h.gene.size]
    if h.value[last].astype(np.int64).sum() > max_bins:
        const = -float(np.sum(h.weight * _lgamma1p(h.value))) / n
        w = (h.weight / n).astype(dtype)
        return {**_bucket(h.gene, k=h.value.astype(dtype), w=w), "const": dtype(const)}
    s = h.survival()
    w = (s.count.astype(np.float64) / n).astype(dtype)
    return {**_bucket(s.gene, j=s.j.astype(dtype), w=w), "const": dtype(-s.log_factorial_sum / n)}


def _bucket(g: np.ndarray, **arrays: np.ndarray) -> dict:
    """``g`` (int32) and ``arrays`` padded with zeros (``k`` with ones, a count that is valid
    in every formula) to a multiple of ``COUNT_BUCKET``, or above ``4 * COUNT_BUCKET`` of an
    eighth of the next power of two: few distinct sizes (so fits of similar data reuse their
    compiled code) for at most a quarter of padding."""
    step = max(COUNT_BUCKET, 1 << max(int(g.size).bit_length() - 3, 0))
    size = max(-(-g.size // step), 1) * step
    pad = size - g.size
    out = {"g": np.pad(g, (0, pad)).astype(np.int32)}
    for name, a in arrays.items():
        out[name] = np.pad(a, (0, pad), constant_values=1 if name == "k" else 0)
    return out


def _log_gamma_ratio(terms, r, xp):
    """``A(r)`` of :func:`count_terms` (``xp``: ``jnp`` or ``np`` with a float64 ``r``)."""
    rg = r[terms["g"]]
    if "j" in terms:
        return xp.sum(terms["w"] * xp.log(rg + terms["j"]))
    k = terms["k"]
    if xp is np:
        from scipy.special import betaln

        lrf = -np.log(k) - betaln(rg, k)
        return np.sum(terms["w"] * (lrf + _lgamma1p(k)))
    return jnp.sum(terms["w"] * (log_rising_factorial_ratio(k, rg) + jax.lax.lgamma(k + 1.0)))


def _count_part(terms, log_r, likelihood: str, xp):
    """``A(r) + const`` of :func:`count_terms` (``xp``: ``jnp``, or ``np`` in float64)."""
    if likelihood in ("nb", "zinb"):
        return _log_gamma_ratio(terms, xp.exp(log_r), xp) + terms["const"]
    if likelihood in ("poisson", "zip"):
        return terms["const"]
    raise ValueError(f"unknown likelihood {likelihood!r}")


def count_loglik(terms, out, likelihood: str):
    """The count part of the log-likelihood (see :func:`dense_loglik`), summed over genes
    and averaged over the cells that :func:`count_terms` made ``terms`` from (a scalar)."""
    return jnp.asarray(_count_part(terms, out.get("log_r"), likelihood, jnp))


def sparsity_penalty(W, xp=jnp):
    """Scale-invariant L1/L2 ratio, averaged over first-layer neurons (columns of ``W``).

    ``mean_i mean_g |W_gi| / sqrt(mean_g W_gi^2)``: 1 for a neuron with equal-magnitude
    weights, ``1/sqrt(G)`` for a neuron with one non-zero weight; multiplying a neuron's
    weights by any non-zero constant leaves it unchanged. ``xp``: ``jnp`` or ``np``.
    """
    l1 = xp.mean(xp.abs(W), axis=0)
    l2 = xp.sqrt(xp.mean(W * W, axis=0) + 1e-30)
    return xp.mean(l1 / l2)


def penalties(alpha_z: float = 0.1, alpha_w: float = 0.1, alpha_theta: float = 0.0) -> dict:
    """The penalty weights as the traced ``hyper`` argument of :func:`loss_fn`."""
    return {
        "alpha_z": np.float32(alpha_z),
        "alpha_w": np.float32(alpha_w),
        "alpha_theta": np.float32(alpha_theta),
    }


def weight_penalty(params, hyper, config: ZipoConfig, xp=jnp):
    """The penalties on the weights alone: ``alpha_w`` times :func:`sparsity_penalty` of the
    first layer, plus (NB likelihoods) ``alpha_theta`` times the mean ``r^-2``."""
    pen = hyper["alpha_w"] * sparsity_penalty(params["enc_0"]["W"], xp)
    if config.negative_binomial:
        pen = pen + hyper["alpha_theta"] * xp.mean(xp.exp(-2.0 * params["disp"]["log_r"]))
    return pen


def loss_fn(params, state, batch, mask, key, train: bool, hyper, *, config: ZipoConfig):
    """Penalised per-entry loss of a batch, in the minibatch driver's convention.

    ``batch`` holds ``cols``/``vals`` (padded sparse rows), ``cov`` and ``log_lib``;
    ``mask`` ``[batch]`` weights the cells (0 for padding); ``hyper`` holds the penalty
    weights (:func:`penalties`) and ``counts``, the :func:`count_terms` of the data set the
    batch is drawn from. Returns ``(loss, (new_state, metrics))``; in training the new state
    is the exponential moving average of batch-norm moments.

    The NLL is the batch's mean :func:`dense_loglik` plus the *data set's* mean
    :func:`count_loglik`. The count part depends on the parameters only through the
    per-gene ``r``, so this is the batch's NLL with its count part replaced by that part's
    expectation over batches: the expected loss and gradient of a random batch are
    unchanged (with less variance), and a step costs one term per entry of the summary
    (a logarithm per gene and count level) instead of special functions per non-zero
    entry of the batch. Averaged over every batch of the data set it is the exact NLL (the
    validation loss, :func:`validation_loss`, is computed that way).
    """
    del key  # deterministic network
    c = config
    x = densify(batch["cols"], batch["vals"], c.n_genes)
    out, stats = apply(params, state, x, batch["cov"], batch["log_lib"], config=c, train=train)
    w = mask / jnp.sum(mask)
    ll = jnp.sum(w * dense_loglik(x, out, c.likelihood))
    nll = -(ll + count_loglik(hyper["counts"], out, c.likelihood)) / c.n_genes
    loss = nll
    metrics = {"nll": nll}
    if c.zero_inflated:
        gate = jax.nn.sigmoid(out["gate_logits"])
        mean_gate = jnp.sum(w * gate.mean(axis=1))
        metrics["mean_gate"] = mean_gate
        loss = loss + hyper["alpha_z"] * jnp.sum(w * (gate * gate).mean(axis=1))
    loss = loss + weight_penalty(params, hyper, c)
    if train:
        new_state = jax.tree_util.tree_map(
            lambda s, b: (1.0 - BN_MOMENTUM) * s + BN_MOMENTUM * b, state, stats
        )
    else:
        new_state = state
    return loss, (new_state, metrics)


# ----------------------------------------------------------------------------- batch-norm
def population_stats(params, state, arrays: Mapping[str, np.ndarray], batches, *, config):
    """Batch-norm statistics recomputed with the final weights over whole training batches.

    ``batches`` ``[n_batches, batch_size]`` indexes the cells of ``arrays``. Each layer's
    running mean is the average of its batch means and its running variance the average
    unbiased batch variance (as PyTorch's ``update_bn``), so inference uses statistics of the
    network as trained rather than a moving average that lags behind the last updates.

    The batches go through the inference program of :func:`map_cells` with its batch-norm
    switch on (batch moments), so no program is compiled for this alone.
    """
    batches = np.asarray(batches)
    n_b, bs = batches.shape
    p, s = jax.device_put((params, state))
    run = _runner(config, cell_outputs)
    ones = np.ones(bs, np.float32)
    acc = None
    for idx in batches:
        x = _dense_batch(arrays, idx, config.n_genes)
        _, st = run(p, s, x, arrays["cov"][idx], arrays["log_lib"][idx], ones, np.True_)
        st = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), st)
        acc = st if acc is None else jax.tree_util.tree_map(np.add, acc, st)
    corr = bs / max(bs - 1, 1)
    layers = _batch_norm_layers(config)
    return {
        name: {
            "mean": (acc[name]["mean"] / n_b).astype(np.float32),
            "var": (acc[name]["var"] / n_b * corr).astype(np.float32),
        }
        if name in layers
        else state[name]  # a layer that does not run keeps its statistics
        for name in state
    }


def _batch_norm_layers(config: ZipoConfig) -> list[str]:
    """The batch-norm layers that run (the library head's only for ``library="predicted"``)."""
    names = [f"enc_{i}" for i in range(config.n_blocks)] + ["latent"]
    if config.library == "predicted":
        names += [f"lib_{i}" for i in range(len(config.library_dims))]
    return names


# ----------------------------------------------------------------------------- pruning
def normalized_first_layer(W: np.ndarray) -> np.ndarray:
    """``|W|`` divided, per first-layer neuron (column), by the neuron's largest ``|W|``."""
    a = np.abs(np.asarray(W, dtype=np.float64))
    top = a.max(axis=0, keepdims=True)
    return np.divide(a, top, out=np.zeros_like(a), where=top > 0)


def prune_first_layer(W: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    """Zero the first-layer weights whose normalised magnitude is below ``delta``.

    Returns the pruned copy and the fraction of weights that are zero afterwards.
    """
    W = np.asarray(W)
    keep = normalized_first_layer(W) >= delta
    out = np.where(keep, W, 0).astype(W.dtype)
    return out, float(1.0 - keep.mean())


# ----------------------------------------------------------------------------- data and fitting
_WIDTH_STEP = 64
#: cells per inference batch (fixed, so inference compiles once per network)
INFER_BATCH = 256


def cell_arrays(counts, covariates: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-cell arrays the network reads: padded sparse rows, covariates, log library.

    ``counts`` is a :class:`~scnbtools._core.data.CountData`; nothing is densified.
    """
    rows = counts.padded_rows()
    lib = counts.cell_totals()
    n = counts.n_cells
    cov = np.zeros((n, 0), np.float32) if covariates is None else np.asarray(covariates, np.float32)
    # round the padded width up so that data sets of similar density share compiled code
    width = rows.cols.shape[1]
    target = max(width, min(-(-width // _WIDTH_STEP) * _WIDTH_STEP, counts.n_genes))
    pad = target - width
    return {
        "cols": np.pad(rows.cols, ((0, 0), (0, pad)), constant_values=counts.n_genes),
        "vals": np.pad(rows.vals, ((0, 0), (0, pad))),
        "cov": cov,
        "log_lib": np.log(np.maximum(lib, 1.0)).astype(np.float32),
    }


def subset(arrays: Mapping[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def init_from_data(key, config: ZipoConfig, counts, train_idx, *, gate_logit: float = -2.0):
    """:func:`init` with the heads started at the training cells' per-gene baseline."""
    totals = np.asarray(counts.X[train_idx].sum(axis=0), dtype=np.float64).ravel()
    frac = (totals + 0.5) / (totals + 0.5).sum()
    lib = np.maximum(counts.cell_totals()[train_idx], 1.0)
    return init(
        key,
        config,
        log_fractions=np.log(frac),
        mean_log_library=float(np.log(lib).mean()),
        gate_logit=gate_logit,
        log_r=float(np.log(5.0)),
    )


@dataclass
class ZipoFit:
    params: dict
    state: dict
    history: dict[str, np.ndarray]
    train_idx: np.ndarray
    val_idx: np.ndarray
    best_epoch: int
    n_epochs: int
    stopped_early: bool
    n_compilations: int
    runtime_s: float
    batch_size: int
    arrays: dict = field(repr=False, default_factory=dict)  # every cell's arrays (cell_arrays)
    val_terms: dict | None = field(repr=False, default=None)  # count_terms of val_idx, float64


class ZipoDivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


@functools.lru_cache(maxsize=64)
def bound_loss(config: ZipoConfig):
    """``loss_fn`` with the config bound, in the minibatch driver's signature.

    Cached, so the same architecture gives the same function object and the driver's
    compiled epochs are reused across fits.
    """
    return functools.partial(loss_fn, config=config)


def fit(
    counts,
    config: ZipoConfig,
    *,
    covariates: np.ndarray | None = None,
    rng: int = 0,
    batch_size: int = 256,
    max_epochs: int = 200,
    n_val: int = 0,
    hyper: Mapping[str, float] | None = None,
    schedule=None,
    progress_bar: bool = False,
) -> ZipoFit:
    """Train a ZiPo network on ``counts`` (a ``CountData``); returns NumPy parameters.

    ``n_val`` random cells are held out to monitor (none: the training loss is monitored);
    ``hyper`` holds the penalty weights (keyword arguments of :func:`penalties`).
    """
    from ..infer.minibatch import run_minibatch

    n = counts.n_cells
    rs = np.random.default_rng(rng)
    perm = rs.permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    batch_size = min(batch_size, train_idx.size)
    arrays = cell_arrays(counts, covariates)
    # two raw keys from the seed on the host (eager JAX key splitting compiles kernels)
    k_init, k_train = np.random.SeedSequence(rng).generate_state(4).reshape(2, 2)
    params, state = init_from_data(k_init, config, counts, train_idx)
    to_dev = jax.device_put  # host arrays to the device without per-shape copy kernels
    train_data = to_dev(subset(arrays, train_idx))
    weights = penalties(**(hyper or {}))
    val_terms = validate = None
    if n_val:
        val_arrays = subset(arrays, val_idx)
        val_terms = count_terms(arrays, val_idx, dtype=np.float64)
        validate = functools.partial(
            validation_loss,
            arrays=val_arrays,
            terms=val_terms,
            weights=weights,
            config=config,
            batches=device_batches(val_arrays, config.n_genes),
        )
    res = run_minibatch(
        bound_loss(config),
        params,
        state,
        train_data,
        None,
        hyper=to_dev({**weights, "counts": count_terms(arrays, train_idx)}),
        validate=validate,
        rng_key=k_train,
        batch_size=batch_size,
        max_epochs=max_epochs,
        schedule=schedule,
        progress_bar=progress_bar,
        desc="ZiPo",
    )
    if res.diverged:
        raise ZipoDivergenceError(
            f"ZiPo training diverged (non-finite loss) in epoch {res.n_epochs}; lower "
            "`learning_rate` or `max_epochs`, or check the input counts."
        )
    # batch-norm statistics of the final network over whole training batches
    n_b = train_idx.size // batch_size
    order = rs.permutation(train_idx.size)[: n_b * batch_size]
    batches = train_idx[order].reshape(n_b, batch_size)
    state = population_stats(res.params, res.state, arrays, batches, config=config)
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
    return ZipoFit(
        params=to_np(res.params),
        state=to_np(state),
        history=res.history,
        train_idx=train_idx,
        val_idx=val_idx,
        best_epoch=res.best_epoch,
        n_epochs=res.n_epochs,
        stopped_early=res.stopped_early,
        n_compilations=res.n_compilations,
        runtime_s=res.runtime_s,
        batch_size=batch_size,
        arrays=arrays,
        val_terms=val_terms,
    )


# ----------------------------------------------------------------------------- inference
@functools.lru_cache(maxsize=64)
def _runner(config: ZipoConfig, fn):
    """Jitted ``run(p, s, x, cov, log_lib, mask, batch_stats) -> (fn(...), stats)``.

    ``batch_stats`` (a traced boolean) switches batch norm to the batch's own moments (and
    ``stats`` are those moments), as :func:`population_stats` needs; :func:`map_cells` runs
    with it off (stored statistics). One compiled program serves the outputs, the per-epoch
    validation (:func:`validation_loss`) and the batch-norm statistics of a fit."""

    @jax.jit
    def run(p, s, x, cov, log_lib, mask, batch_stats):
        out, stats = apply(p, s, x, cov, log_lib, config=config, train=batch_stats)
        return fn(out, x, mask, config=config), stats

    return run


def _dense_batch(arrays: Mapping[str, np.ndarray], idx: np.ndarray, n_genes: int) -> np.ndarray:
    """Dense float32 counts of the cells ``idx`` from padded sparse rows (host side)."""
    cols, vals = arrays["cols"][idx], arrays["vals"][idx]
    x = np.zeros((idx.size, n_genes + 1), np.float32)
    # (row, col) pairs are unique except on the padding column, which is dropped
    x[np.arange(idx.size)[:, None], cols] = vals
    return x[:, :n_genes]


def cell_batches(arrays: Mapping[str, np.ndarray], n_genes: int, batch_size: int = INFER_BATCH):
    """The cells of ``arrays`` as inference batches ``(m, (x, cov, log_lib, mask))``, in order.

    Every batch holds exactly ``batch_size`` rows (the last one padded by repeating the last
    cell, ``mask`` 0 there; ``m`` real cells), densified on the host one batch at a time."""
    n = int(arrays["cols"].shape[0])
    bs = int(batch_size)
    for start in range(0, n, bs):
        m = min(bs, n - start)
        idx = np.minimum(np.arange(start, start + bs), n - 1)
        mask = (np.arange(bs) < m).astype(np.float32)
        x = _dense_batch(arrays, idx, n_genes)
        yield m, (x, arrays["cov"][idx], arrays["log_lib"][idx], mask)


def device_batches(arrays: Mapping[str, np.ndarray], n_genes: int, max_bytes: int = 1 << 26):
    """``list(cell_batches(...))`` on the device if their dense counts take at most
    ``max_bytes`` (for cells evaluated again and again, as validation cells are every epoch),
    else ``None``."""
    n = int(arrays["cols"].shape[0])
    if -(-n // INFER_BATCH) * INFER_BATCH * n_genes * 4 > max_bytes:
        return None
    return [(m, jax.device_put(b)) for m, b in cell_batches(arrays, n_genes)]


def map_cells(
    params,
    state,
    arrays,
    *,
    config: ZipoConfig,
    fn,
    batch_size: int = INFER_BATCH,
    batches=None,
):
    """Apply ``fn(out, x, mask, config=config) -> dict`` to every cell in evaluation mode.

    ``fn`` is a module-level function (e.g. :func:`cell_outputs`); ``out`` is
    :func:`apply`'s output and ``x`` the dense counts of a batch; ``mask`` is 1 for real
    cells, 0 for padding. Outputs whose name starts with ``sum_`` must be sums over the batch
    (weighted by ``mask``) and are summed over batches; the others are per-cell
    ``[batch, ...]`` arrays, concatenated with the padding dropped. Cells go through in
    batches of exactly ``batch_size`` (the last one padded) densified one at a time on the
    host (:func:`cell_batches`; or ``batches``, the same of ``arrays`` prepared before, e.g.
    by :func:`device_batches`), so the jitted function compiles once per ``(config, fn)``
    whatever the number of cells or the sparsity of the data.
    """
    p, s = jax.device_put((params, state))  # one transfer, no per-leaf copy kernels
    run = _runner(config, fn)
    if batches is None:
        batches = cell_batches(arrays, config.n_genes, batch_size)
    sums: dict[str, np.ndarray] = {}
    pieces: dict[str, list[np.ndarray]] = {}
    for m, (x, cov, log_lib, mask) in batches:
        res, _ = run(p, s, x, cov, log_lib, mask, np.False_)
        for k, v in res.items():
            if k.startswith("sum_"):
                sums[k] = sums.get(k, 0.0) + np.asarray(v, dtype=np.float64)
            else:
                pieces.setdefault(k, []).append(np.asarray(v)[:m])
    return {**{k: np.concatenate(v) for k, v in pieces.items()}, **sums}


def cell_outputs(out, x, mask, *, config: ZipoConfig):
    """Per-cell latent, library and :func:`dense_loglik` (the log-likelihood summed over
    genes without its count part; :func:`mean_loglik` adds that), and per-gene sums (for
    means and sds over cells) of the zero-inflation probability ``gate``, the fraction
    ``rho`` and the NB mean ``mu``."""
    w = mask[:, None]
    res = {
        "latent": out["latent"],
        "log_library": out["log_l"],  # the library in use
        "ll_dense": dense_loglik(x, out, config.likelihood),
    }
    rho = jnp.exp(out["log_mu"])
    # mu = l rho (log_rate = log_l + log_mu): one exp per cell instead of one per entry
    per_gene = {"rho": rho, "mu": jnp.exp(out["log_l"])[:, None] * rho}
    if config.zero_inflated:
        per_gene["gate"] = jax.nn.sigmoid(out["gate_logits"])
    for name, a in per_gene.items():
        res[f"sum_{name}"] = (w * a).sum(0)
        res[f"sum_{name}2"] = (w * a * a).sum(0)
    res["sum_n"] = mask.sum()
    return res


def host_count_loglik(terms, log_r, likelihood: str) -> float:
    """:func:`count_loglik` on the host in float64 (``terms`` from :func:`count_terms` with
    ``dtype=np.float64``; ``log_r`` is ignored for Poisson likelihoods)."""
    log_r = None if log_r is None else np.asarray(log_r, np.float64)
    return float(_count_part(terms, log_r, likelihood, np))


def mean_loglik(
    ll_dense, arrays: Mapping[str, np.ndarray], idx, log_r, likelihood: str, terms=None
) -> float:
    """Mean log-likelihood per cell (summed over genes) of the cells ``idx``: the mean of
    their ``ll_dense`` (from :func:`cell_outputs`) plus their count part
    (:func:`count_terms`, or ``terms`` if it is theirs already), on the host in float64."""
    if terms is None:
        terms = count_terms(arrays, idx, dtype=np.float64)
    count = host_count_loglik(terms, log_r, likelihood)
    return float(np.mean(np.asarray(ll_dense, np.float64)[idx])) + count


def validation_loss(params, state, arrays, terms, weights, *, config: ZipoConfig, batches=None):
    """:func:`loss_fn`'s penalised loss and metrics over all the cells of ``arrays`` in
    evaluation mode, computed from :func:`cell_outputs` through :func:`map_cells` (the
    program the fit's outputs use, so validation compiles nothing of its own) with the
    count part and the penalties on the host in float64. ``terms`` is the cells'
    :func:`count_terms` (float64), ``weights`` the penalty weights (:func:`penalties`),
    ``batches`` optionally the cells' :func:`device_batches`."""
    c = config
    o = map_cells(params, state, arrays, config=c, fn=cell_outputs, batches=batches)
    log_r = params["disp"]["log_r"] if c.negative_binomial else None
    ll = float(np.mean(o["ll_dense"], dtype=np.float64)) + host_count_loglik(
        terms, log_r, c.likelihood
    )
    nll = -ll / c.n_genes
    loss = nll
    metrics = {"nll": nll}
    per_entry = float(o["sum_n"]) * c.n_genes
    if c.zero_inflated:
        metrics["mean_gate"] = float(np.sum(o["sum_gate"])) / per_entry
        loss += float(weights["alpha_z"]) * float(np.sum(o["sum_gate2"])) / per_entry
    # the penalised weights only, in float64
    p64 = {
        k: {n: np.asarray(a, np.float64) for n, a in params[k].items()}
        for k in ("enc_0", "disp")
        if k in params
    }
    w64 = {k: float(v) for k, v in weights.items()}
    return loss + float(weight_penalty(p64, w64, c, np)), metrics
