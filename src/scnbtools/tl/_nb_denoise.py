"""Posterior-mean normalisation and denoising of NB-family fits: ``tl.normalize`` and the
NB-family branch of ``tl.denoise``.

The Gamma–Poisson view of the fitted models (NumPyro convention, ``NB(r, p)`` has mean
``r p / (1 - p)``): ``NB(r, p) = Poisson(λ)`` with ``λ ~ Gamma(shape r, rate β)``,
``β = (1 - p) / p``. With capture, ``x_gc ~ Poisson(ν_c λ_gc)``; zero-inflated models put
``x = 0`` with probability ``π_g`` regardless of ``λ``. For one posterior draw and
component ``k``:

* given ``x_gc`` (no zero inflation, or ``x > 0``): ``λ_gc | x_gc ~ Gamma(r + x, β + ν_c)``,
  so ``E[λ | x] = (r + x) / (β + ν_c)``;
* zero-inflated and ``x = 0``: with ``w = π / (π + (1 - π) (1 - p̂_c)^r)`` (the probability
  that the zero is a dropout; ``1 - p̂_c = β / (β + ν_c)``),
  ``E[λ | 0] = w r / β + (1 - w) r / (β + ν_c)``;
* no zero inflation: every gene of a cell shares the rate, so
  ``λ_c / Σ_g λ_gc | x ~ Dirichlet(r + x_c)`` and the posterior mean fraction is exactly
  ``(r_g + x_gc) / (Σ_g r_g + U_c)`` (``U_c`` the library size) — the Dirichlet–multinomial
  view. Zero-inflated models use the ratio of posterior means
  ``E[λ_g | x] / Σ_g E[λ_g | x]`` (equal to the former without zero inflation);
* mixtures: per-component quantities are averaged with that draw's ``P(k | x_c)``
  (softmax over ``k`` of :func:`~scnbtools._core.models.nbfamily.component_loglik`).

Finally everything is averaged over posterior draws (in float64).

Implementation: every quantity is ``Σ_{s,k} a_skc (r_skg + x_cg + [x_cg = 0] h_skcg)`` with
``h = E[λ | 0] (β + ν) - r = w r ν / β`` (0 without zero inflation) and a per-(draw,
component, cell) weight ``a``, so apart from ZINBVCP (whose ``h`` depends on the cell) the
average over draws is a few matrix products per chunk of cells: no loop over draws, cells
or genes, and only one chunk of cells is dense at a time.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._core.engine import big_entry_rows
from .._core.models.nbfamily import RISE_TABLE_J
from .._validate import (
    check_adata,
    check_bool,
    check_key,
    check_positive_int,
    counts_from,
    resolve_rng,
)
from ._nb_options import annotation_boost

__all__ = ["NB_DENOISE_KINDS", "NB_MODELS", "check_target", "nb_denoised", "normalize"]

#: ``uns[key]["params"]["model"]`` of the fits handled here
NB_MODELS = ("nbdm", "zinb", "nbvcp", "zinbvcp")
#: ``kind`` values of ``tl.denoise`` for NB-family fits
NB_DENOISE_KINDS = ("fractions", "counts", "true_counts")

#: cells × genes (× components) float64 entries of one chunk's temporaries
_CHUNK_ENTRIES = 1 << 21


def check_target(value, name: str) -> float | None:
    """``None`` or a finite float > 0 (``TypeError`` / ``ValueError`` naming ``name``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number or None, got {value!r}.")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return float(value)


def normalize(
    adata: AnnData,
    *,
    key: str,
    layer: str | None = None,
    layer_added: str | None = None,
    log: bool = False,
    target_sum: float | None = None,
    n_samples: int = 100,
    rng: int | np.random.Generator = 0,
    copy: bool = False,
) -> AnnData | None:
    """Posterior-mean transcript fractions of an NB-family fit, written as a layer.

    A model-based counterpart of ``sc.pp.normalize_total`` (+ ``sc.pp.log1p``) for fits of
    :func:`scnbtools.tl.fit` (``nbdm``, ``zinb``, ``nbvcp``, ``zinbvcp``, mixtures too).

    The Gamma–Poisson view (NumPyro convention, ``NB(r, p)`` has mean ``r p / (1 - p)``):
    ``NB(r, p) = Poisson(λ)`` with ``λ ~ Gamma(shape r, rate β)``, ``β = (1 - p) / p``.
    With capture, ``x_gc ~ Poisson(ν_c λ_gc)``; zero-inflated models put ``x = 0`` with
    probability ``π_g`` regardless of ``λ``. For one posterior draw and component ``k``:

    * given ``x_gc`` (no zero inflation, or ``x > 0``): ``λ_gc | x_gc ~ Gamma(r + x,
      β + ν_c)``, so ``E[λ | x] = (r + x) / (β + ν_c)``;
    * zero-inflated and ``x = 0``: with ``w = π / (π + (1 - π) (1 - p̂_c)^r)`` (the
      probability that the zero is a dropout),
      ``E[λ | 0] = w r / β + (1 - w) r / (β + ν_c)``;
    * no zero inflation: every gene of a cell shares the rate, so
      ``λ_c / Σ_g λ_gc | x ~ Dirichlet(r + x_c)`` and the posterior mean fraction is
      exactly ``(r_g + x_gc) / (Σ_g r_g + U_c)`` (``U_c`` the cell's library size) — the
      Dirichlet–multinomial view;
    * zero-inflated models: the ratio of posterior means
      ``E[λ_g | x] / Σ_g E[λ_g | x]`` (equal to the former without zero inflation);
    * mixtures: the per-component fractions averaged with that draw's ``P(k | x_c)``.

    The fractions are then averaged over ``n_samples`` posterior draws (float64). Capture
    cancels out of the fractions of models without zero inflation.

    Parameters
    ----------
    adata
        AnnData with an NB-family fit under ``key`` and the raw counts it was fitted on
        (same genes; for capture models and mixtures also the same cells, in the same
        order).
    key
        The fit's ``key_added``.
    layer
        Layer with the raw counts; ``None`` uses the layer of the fit.
    layer_added
        Name of the layer written (overwritten if present); default ``f"{key}_fractions"``.
    log
        Write ``log1p(target_sum * fractions)`` (ready for ``sc.pp.pca``); ``target_sum``
        defaults to ``1e4`` then.
    target_sum
        Multiply the fractions by this number (a denoised ``normalize_total(target_sum=)``);
        ``None``: plain fractions (or ``1e4`` with ``log=True``).
    n_samples
        Number of posterior draws averaged (a MAP fit uses its single point estimate).
    rng
        Seed (int) or ``numpy.random.Generator`` of the draws; the same seed gives the same
        layer, and the same draws as ``snb.get.posterior_samples(adata, key=key,
        n_samples=n_samples, rng=rng)``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or the copy. Writes a dense float32 ``adata.layers[layer_added]`` (cells ×
    genes, ``4 * n_obs * n_vars`` bytes) whose rows sum to 1 (``target_sum``); nothing else
    is changed.
    """
    from ..get._posterior import fit_result

    check_adata(adata)
    key = check_key(key, "key")
    res = fit_result(adata, key=key)
    model = str(res["params"].get("model", "?"))
    if model not in NB_MODELS:
        raise ValueError(
            f"`adata.uns[{key!r}]` holds a {model!r} fit; `normalize` needs an NB-family fit "
            f"({', '.join(map(repr, NB_MODELS))}) from `snb.tl.fit`. For other fits use "
            f"`snb.tl.denoise(adata, key={key!r}, kind='fractions')`."
        )
    log = check_bool(log, "log")
    target_sum = check_target(target_sum, "target_sum")
    if log and target_sum is None:
        target_sum = 1e4
    n_samples = check_positive_int(n_samples, "n_samples")
    seed = resolve_rng(rng)
    name = f"{key}_fractions" if layer_added is None else check_key(layer_added, "layer_added")
    copy = check_bool(copy, "copy")
    values = nb_denoised(
        adata, res, "fractions", target_sum, layer, n_samples=n_samples, rng=seed, key=key
    )
    if log:
        np.log1p(values, out=values)
    target = adata.copy() if copy else adata
    target.layers[name] = values
    return target if copy else None


# ----------------------------------------------------------------------------- computation
def _n_fit_genes(draws) -> int:
    return int(np.shape(draws["r"])[-1])


def nb_denoised(
    adata: AnnData,
    res: dict,
    kind: str,
    target_library: float | None,
    layer: str | None,
    *,
    n_samples: int = 100,
    rng: int = 0,
    key: str = "?",
) -> np.ndarray:
    """Dense ``[n_obs, n_vars]`` float32 posterior means of an NB-family fit.

    ``kind``: ``"fractions"`` (rows sum to 1, or ``target_library``), ``"counts"``
    (``E[ν_c λ_gc | x_c]``) or ``"true_counts"`` (``E[λ_gc | x_c]``); for the count kinds
    ``target_library`` rescales every row to that total after averaging over draws.
    """
    from ..get._posterior import fit_spec
    from ._nb_write import redraw

    if kind not in NB_DENOISE_KINDS:
        raise ValueError(
            f"`kind`={kind!r} is not one of {', '.join(map(repr, NB_DENOISE_KINDS))} "
            "(the kinds of NB-family fits)."
        )
    spec = fit_spec(res)
    cfg = spec.config
    K = int(cfg["n_components"])
    capture, zi = bool(cfg["capture"]), bool(cfg["zero_inflated"])
    if layer is None:
        stored = str(res["params"].get("layer", "X"))
        layer = None if stored == "X" else stored
    counts = counts_from(adata, layer, allow_empty_genes=True)
    per_cell = capture or K > 1
    n_cells_fit = int(res.get("n_cells", adata.n_obs))
    if per_cell and adata.n_obs != n_cells_fit:
        what = "capture probabilities" if capture else "mixture component probabilities"
        raise ValueError(
            f"`adata` has {adata.n_obs} cells but the {res['params'].get('spec', spec.name)} fit "
            f"under {key!r} was fitted on {n_cells_fit}; its per-cell posterior ({what}) needs "
            "the same cells in the same order. Use the fitted AnnData, or refit on this one."
        )
    n = 1 if str(res["params"].get("guide")) == "map" else int(n_samples)
    draws = redraw(spec, res, n, int(rng))
    G = _n_fit_genes(draws)
    if G != adata.n_vars:
        raise ValueError(
            f"`adata` has {adata.n_vars} genes but the fit under {key!r} has {G}; a layer "
            "needs a value for every gene the fit knows. Use the fitted genes (the same "
            f"genes, in the same order), or refit with `key_added={key!r}`."
        )
    S = next(iter(draws.values())).shape[0]
    r = np.asarray(draws["r"], np.float64).reshape(S, K, G)
    p = np.broadcast_to(np.asarray(draws["p"], np.float64).reshape(S, -1), (S, K))
    beta = (1.0 - p) / p
    gate_logit = None
    if zi:
        gate = np.broadcast_to(np.asarray(draws["gate"], np.float64).reshape(S, -1, G), (S, K, G))
        gate_logit = np.log(gate) - np.log1p(-gate)
    nu = np.asarray(draws["nu"], np.float64) if capture else None  # [S, N]

    X = counts.X
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()
    N = adata.n_obs
    chunk = int(max(1, min(N, _CHUNK_ENTRIES // (G * (K if zi and capture else 1)))))
    mix = _MixtureProbs(spec, res, adata, draws, X, chunk) if K > 1 else None
    out = np.empty((N, G), dtype=np.float32)
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        xc = X[start:stop]
        x = np.asarray(xc.toarray() if sp.issparse(xc) else xc, dtype=np.float64)
        probs = mix(start, stop, x) if mix is not None else np.ones((S, K, stop - start))
        vals = _chunk_means(
            x, r, beta, gate_logit, None if nu is None else nu[:, start:stop], probs, kind
        )
        if target_library is not None:
            if kind == "fractions":
                vals *= target_library
            else:
                vals *= target_library / vals.sum(axis=1, keepdims=True)
        if not np.all(np.isfinite(vals)):
            raise RuntimeError(
                f"non-finite denoised values for cells {start}–{stop - 1} of the fit under "
                f"{key!r} (extreme posterior draws?); check the fit (`adata.uns[{key!r}]"
                "['converged']`) or refit."
            )
        out[start:stop] = vals
    return out


def _chunk_means(x, r, beta, gate_logit, nu, probs, kind) -> np.ndarray:
    """Average over draws of ``Σ_k P_skc · q_skcg`` for one chunk of cells (float64).

    ``x`` [B, G]; ``r`` [S, K, G]; ``beta`` [S, K]; ``gate_logit`` [S, K, G] or None;
    ``nu`` [S, B] or None (no capture: ``ν = 1``); ``probs`` [S, K, B].
    Every kind is ``Σ_sk a_skc (r_skg + x_cg + [x_cg = 0] h_skcg)`` with
    ``h = E[λ | 0] (β + ν) - r = w r ν / β``.
    """
    S, K, G = r.shape
    B = x.shape[0]
    U = x.sum(axis=1)  # [B]
    nu_b = np.ones((S, B)) if nu is None else nu
    d = beta[:, :, None] + nu_b[:, None, :]  # [S, K, B]: the posterior rate β + ν_c
    R = r.sum(axis=-1)  # [S, K]
    nu_k = nu_b[:, None, :]  # [S, 1, B]

    def flat(a):  # [S, K, B] -> [B, S K]
        return a.reshape(S * K, B).T

    if gate_logit is None:
        a = _weight(kind, probs, d, nu_k, R[:, :, None] + U)
        total = flat(a) @ r.reshape(S * K, G) + x * a.sum(axis=(0, 1))[:, None]
        return total / S
    z = (x == 0).astype(np.float64)
    log_beta = np.log(beta)
    if nu is None:
        # (1 - p̂)^r with ν = 1: log(1 - p̂) = log β - log(β + 1), per draw and component
        log_q = r * (log_beta - np.log1p(beta))[:, :, None]  # [S, K, G]
        w = _expit(gate_logit - log_q)
        h = w * r / beta[:, :, None]  # [S, K, G]
        H = np.einsum("bg,skg->skb", z, h)
        a = _weight(kind, probs, d, nu_k, R[:, :, None] + U + H)
        A = flat(a)
        total = A @ r.reshape(S * K, G) + x * a.sum(axis=(0, 1))[:, None]
        total += z * (A @ h.reshape(S * K, G))
        return total / S
    # ZINBVCP: h depends on the cell through ν_c; one draw at a time ([K, B, G])
    total = np.zeros((B, G))
    for s in range(S):
        log_1m_ph = log_beta[s][:, None] - np.log(d[s])  # [K, B]
        w = _expit(gate_logit[s][:, None, :] - r[s][:, None, :] * log_1m_ph[:, :, None])
        h = w * r[s][:, None, :] * (nu_b[s][None, :, None] / beta[s][:, None, None])
        H = np.einsum("bg,kbg->kb", z, h)
        a = _weight(kind, probs[s], d[s], nu_b[s][None, :], R[s][:, None] + U + H)  # [K, B]
        total += a.T @ r[s] + x * a.sum(axis=0)[:, None] + z * np.einsum("kb,kbg->bg", a, h)
    return total / S


def _weight(kind, probs, d, nu, frac_denom):
    """``a`` of :func:`_chunk_means`: ``P / (β + ν)`` (true counts), ``P ν / (β + ν)``
    (counts) or ``P / (R + U + H)`` (fractions: the common ``1 / (β + ν)`` cancels)."""
    if kind == "true_counts":
        return probs / d
    if kind == "counts":
        return probs * nu / d
    return probs / frac_denom


def _expit(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


# ----------------------------------------------------------------------------- mixtures
@functools.lru_cache(maxsize=16)
def _probs_fn(spec_name: str, has_ann: bool):
    """Jitted per-draw ``P(k | x_c)`` for a chunk of cells: ``[S, B, K]``."""
    from .._core.models import get_model
    from .._core.models.nbfamily import component_loglik

    spec = get_model(spec_name)

    def chunk(draws, cols, vals, lib, ann, big_cols, big_vals):
        # counts up to J from the rising-factorial table, only larger ones through betaln
        big = {"big_cols": big_cols, "big_vals": big_vals, "J": RISE_TABLE_J}

        def per_draw(d):
            ll = component_loglik(
                d, spec.config, cols, vals, lib, ann if has_ann else None, big=big
            )
            return jax.nn.softmax(ll, axis=-1)

        return jax.lax.map(per_draw, draws)

    return jax.jit(chunk)


class _MixtureProbs:
    """Per-draw component probabilities of chunks of cells, as padded sparse rows of fixed
    shape (one compilation per call)."""

    def __init__(self, spec, res, adata, draws, X, chunk):
        self.spec = spec
        site_names = {s.name for s in spec.sites}
        self.cell_sites = {s.name for s in spec.sites if s.plate == "cell"}
        self.draws = {k: np.asarray(v, np.float32) for k, v in draws.items() if k in site_names}
        J = RISE_TABLE_J
        if sp.issparse(X):
            Xr = X.tocsr()
            nnz = np.diff(Xr.indptr)
            rows = np.repeat(np.arange(Xr.shape[0]), nnz)
            n_big = np.bincount(rows[Xr.data > J], minlength=Xr.shape[0])
        else:
            blocks = [X[i : i + 4096] for i in range(0, X.shape[0], 4096)]
            nnz = np.concatenate([np.count_nonzero(b, axis=1) for b in blocks])
            n_big = np.concatenate([np.count_nonzero(np.asarray(b) > J, axis=1) for b in blocks])
        self.width = max(int(nnz.max(initial=0)), 1)
        # a fixed width of the large-count rows: one compilation for every chunk
        self.big_width = max(int(n_big.max(initial=0)), 1)
        self.chunk = int(chunk)
        self.G = int(X.shape[1])
        self.ann = annotation_boost(res, adata, spec.n_components)
        self.fn = _probs_fn(spec.name, self.ann is not None)

    def __call__(self, start: int, stop: int, x: np.ndarray) -> np.ndarray:
        B, m = self.chunk, stop - start
        idx = np.minimum(np.arange(start, start + B), stop - 1)  # pad by repeating the last cell
        xb = x[idx - start]
        order = np.argsort(xb == 0, axis=1, kind="stable")[:, : self.width]  # non-zeros first
        vals = np.take_along_axis(xb, order, axis=1)
        cols = np.where(vals > 0, order, self.G).astype(np.int32)
        draws = {
            k: jnp.asarray(v[:, idx] if k in self.cell_sites else v) for k, v in self.draws.items()
        }
        ann = self.ann[idx] if self.ann is not None else np.zeros((B, self.spec.n_components))
        big_cols, big_vals = big_entry_rows(cols, vals, self.G, width=self.big_width)
        probs = self.fn(
            draws,
            jnp.asarray(cols),
            jnp.asarray(vals, jnp.float32),
            jnp.asarray(xb.sum(axis=1), jnp.float32),
            jnp.asarray(ann, jnp.float32),
            jnp.asarray(big_cols),
            jnp.asarray(big_vals),
        )
        return np.transpose(np.asarray(probs, np.float64)[:, :m], (0, 2, 1))  # [S, K, m]
