"""Pointwise log-likelihood draws for model comparison (no AnnData).

* per cell: ``log p(x_c | θ)`` for every posterior draw, mixture components marginalised
  (see :func:`scnbtools._core.engine.cell_logliks`);
* per gene: ``Σ_c log p(x_gc | θ_g, ν_c)`` for single-component models — the natural unit
  when cells carry their own latent capture probability (leaving a cell out would leave
  its ``ν_c`` unidentified). Zeros are summed in closed form where one exists; ZINBVCP's
  zeros need a cells × genes pass per draw, done in cell chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import log_sigmoid

from .data import CountData
from .likelihoods import nb_logpmf, zero_inflate
from .models._spec import ModelSpec
from .models.nbfamily import _log_nu, canonical

__all__ = ["gene_loglik_draws"]

_CHUNK = 2048


def _entry_logpmf(x, r, logit_ph, gate_logit):
    lp = nb_logpmf(x, r, logits=logit_ph)
    return lp if gate_logit is None else zero_inflate(x, lp, gate_logits=gate_logit)


@functools.lru_cache(maxsize=16)
def _gene_fn(spec_name: str, n_genes: int, capture: bool, zi: bool):
    from .models import get_model

    cfg = get_model(spec_name).config

    def fn(values, value, gene, weight, n_zeros, rows, cols, vals, chunks):
        c = canonical(values, cfg)
        r, logit_p = c["r"][0], c["logit_p"][0]
        gl = c["gate_logit"][0] if zi else None
        if not capture:
            lp = _entry_logpmf(value, r[gene], logit_p, None if gl is None else gl[gene])
            ll = jax.ops.segment_sum(weight * lp, gene, num_segments=n_genes)
            return ll + n_zeros * _entry_logpmf(0.0, r, logit_p, gl)
        logit_ph = logit_p + _log_nu(values, cfg)  # [N]
        ph_e = logit_ph[rows]
        lp = _entry_logpmf(vals, r[cols], ph_e, None if gl is None else gl[cols])
        lp0 = _entry_logpmf(0.0, r[cols], ph_e, None if gl is None else gl[cols])
        ll = jax.ops.segment_sum(lp - lp0, cols, num_segments=n_genes)
        if not zi:
            return ll + r * jnp.sum(log_sigmoid(-logit_ph))

        def chunk_zero(idx):
            lph = logit_ph[idx][:, None]
            valid = (idx >= 0)[:, None]
            z = jnp.logaddexp(
                log_sigmoid(gl)[None, :], log_sigmoid(-gl)[None, :] + r[None, :] * log_sigmoid(-lph)
            )
            return jnp.sum(jnp.where(valid, z, 0.0), axis=0)

        return ll + jnp.sum(jax.lax.map(chunk_zero, chunks), axis=0)

    return jax.jit(fn)


def gene_loglik_draws(
    spec: ModelSpec, draws: Mapping[str, np.ndarray], counts: CountData
) -> np.ndarray:
    """``[S, G]`` per-gene log-likelihoods, one row per posterior draw (single-component
    models only)."""
    if spec.n_components != 1:
        raise ValueError(
            "per-gene log-likelihoods are not defined for mixtures (a cell's component couples "
            "all its genes); compare mixtures per cell (unit='cell')."
        )
    cfg = spec.config
    hist = counts.gene_histograms()
    site_names = [s.name for s in spec.sites]
    S = next(iter(draws.values())).shape[0]
    N, G = counts.n_cells, counts.n_genes
    capture, zi = bool(cfg["capture"]), bool(cfg["zero_inflated"])
    if capture:
        rows_l, cols_l, vals_l = [], [], []
        for r_, c_, v_ in counts._triplets():
            rows_l.append(r_)
            cols_l.append(c_)
            vals_l.append(v_)
        rows = jnp.asarray(np.concatenate(rows_l).astype(np.int32))
        cols = jnp.asarray(np.concatenate(cols_l).astype(np.int32))
        vals = jnp.asarray(np.concatenate(vals_l).astype(np.float32))
        n_chunks = -(-N // _CHUNK)
        ch = np.arange(n_chunks * _CHUNK)
        chunks = jnp.asarray(np.where(ch < N, ch, -1).reshape(n_chunks, _CHUNK).astype(np.int32))
    else:
        rows = cols = vals = chunks = jnp.zeros(1, jnp.int32)
    fn = _gene_fn(spec.name, G, capture, zi)
    out = np.zeros((S, G))
    args = (
        jnp.asarray(hist.value),
        jnp.asarray(hist.gene),
        jnp.asarray(hist.weight),
        jnp.asarray(hist.n_zeros),
        rows,
        cols,
        vals,
        chunks,
    )
    for s in range(S):
        values = {k: jnp.asarray(draws[k][s]) for k in site_names}
        out[s] = np.asarray(fn(values, *args), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("non-finite per-gene log-likelihood draws")
    return out
