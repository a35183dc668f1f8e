"""AnnData front end of the ZiPo-style deep zero-inflated count autoencoder.

``tl.fit_zipo`` trains the network (``_core/models/zipo.py``) with the generic minibatch driver
(``_core/infer/minibatch.py``) and writes the latent embedding, library sizes,
per-gene summaries, the training history and every weight back into the AnnData;
``tl.zipo_transform`` applies a stored network to (new) cells, ``tl.zipo_prune`` sparsifies
its first layer, and ``tl.zipo_heldout_nll`` / ``tl.zipo_rate_mse`` are the diagnostics.
"""

from __future__ import annotations

import copy as _copy
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import _keys
from .._core.data import CountData
from .._core.infer.minibatch import ScheduleConfig
from .._core.models import zipo as _zipo
from .._logging import logger
from .._validate import (
    check_adata,
    check_bool,
    check_key,
    check_positive_float,
    check_positive_int,
    counts_from,
    get_matrix,
    resolve_progress,
    resolve_rng,
)
from ._fit import _versions

__all__ = ["fit_zipo", "zipo_heldout_nll", "zipo_prune", "zipo_rate_mse", "zipo_transform"]

MODEL_NAME = "zipo"
_LIBRARY = ("predicted", "observed", "matched")
#: fewest cells each side of the validation split
MIN_TRAIN_CELLS = 10
MIN_VAL_CELLS = 2
#: bins (log10 of the normalised first-layer weight magnitude) of the stored histograms
_HIST_EDGES = np.linspace(-8.0, 0.0, 33)
#: cells per dense chunk when a cells × genes result is compared or written
_CHUNK_CELLS = 2048


# ----------------------------------------------------------------------------- validation
def _check_nonneg(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return float(value)


def _check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}`={value!r} is not one of {', '.join(map(repr, choices))}.")
    return value


def _check_dims(value, name: str, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"`{name}` must be a tuple of layer widths, e.g. (256, 64); got {value!r}.")
    dims = tuple(value)
    if not allow_empty and not dims:
        raise ValueError(f"`{name}` must name at least one layer width, got {value!r}.")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise ValueError(f"`{name}` must hold positive integers, got {value!r}.")
    return tuple(int(d) for d in dims)


def _check_fraction(value, name: str, *, upper: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not 0.0 <= value < upper:
        raise ValueError(f"`{name}` must be in [0, {upper:g}), got {value!r}.")
    return float(value)


def _encode_covariates(obs: pd.DataFrame, keys, spec: list[dict] | None = None):
    """Numeric matrix of the covariates and the encoding spec (means, sds, categories).

    Numeric and boolean columns are standardised; pandas ``Categorical`` columns are one-hot
    encoded. With ``spec`` (from a fit) the stored encoding is reused, so new cells get the
    same columns.
    """
    if keys is None:
        keys = []
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, Sequence) or not all(isinstance(k, str) for k in keys):
        raise TypeError(
            f"`covariate_keys` must be a list of `adata.obs` column names, got {keys!r}."
        )
    n = obs.shape[0]
    cols: list[np.ndarray] = []
    out_spec: list[dict] = []
    for i, k in enumerate(keys):
        if k not in obs.columns:
            avail = ", ".join(map(repr, list(obs.columns)[:10])) or "none"
            raise KeyError(
                f"`covariate_keys` names {k!r}, which is not a column of `adata.obs` "
                f"(columns: {avail}). Add it to `adata.obs` or drop it from `covariate_keys`."
            )
        s = obs[k]
        stored = None if spec is None else spec[i]
        if isinstance(s.dtype, pd.CategoricalDtype):
            cats = list(s.cat.categories) if stored is None else list(stored["categories"])
            vals = s.astype(object).to_numpy()
            unknown = sorted({str(v) for v in vals if v not in cats and not pd.isna(v)})
            if s.isna().any() or unknown:
                bad = (
                    "missing values"
                    if s.isna().any()
                    else f"categories {unknown[:5]} not seen in the fit"
                )
                raise ValueError(
                    f"covariate `adata.obs[{k!r}]` has {bad}; fill them in or drop the cells."
                )
            onehot = (vals[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(np.float32)
            cols.append(onehot)
            out_spec.append(
                {"key": k, "kind": "categorical", "categories": np.asarray(cats, dtype=str)}
            )
            continue
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            raise TypeError(
                f"covariate `adata.obs[{k!r}]` has dtype {s.dtype}, which is not numeric. Convert "
                f"it with `adata.obs[{k!r}] = adata.obs[{k!r}].astype('category')` (one-hot "
                "encoded) or encode it as numbers."
            )
        v = s.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError(
                f"covariate `adata.obs[{k!r}]` has NaN or infinite values; fill them in."
            )
        if stored is None:
            mean, sd = float(v.mean()), float(v.std())
            sd = sd if sd > 0 else 1.0
        else:
            mean, sd = float(stored["mean"]), float(stored["sd"])
        cols.append(((v - mean) / sd).astype(np.float32)[:, None])
        out_spec.append({"key": k, "kind": "numeric", "mean": mean, "sd": sd})
    mat = np.concatenate(cols, axis=1) if cols else np.zeros((n, 0), np.float32)
    return mat, out_spec


def _validation_split(n_cells: int, fraction: float) -> int:
    n_val = round(fraction * n_cells)
    if fraction > 0 and (n_val < MIN_VAL_CELLS or n_cells - n_val < MIN_TRAIN_CELLS):
        raise ValueError(
            f"`validation_fraction`={fraction:g} of {n_cells} cells leaves {n_val} validation and "
            f"{n_cells - n_val} training cells; need at least {MIN_VAL_CELLS} and "
            f"{MIN_TRAIN_CELLS}. Use more cells, a larger `validation_fraction`, or "
            "`validation_fraction=0` (no early stopping on held-out cells)."
        )
    if n_cells - n_val < MIN_TRAIN_CELLS:
        raise ValueError(f"ZiPo needs at least {MIN_TRAIN_CELLS} cells to train, got {n_cells}.")
    return n_val


# ----------------------------------------------------------------------------- stored model
def _config_from(res: dict) -> _zipo.ZipoConfig:
    p = res["params"]
    return _zipo.ZipoConfig(
        n_genes=len(res["var_names"]),
        encoder_dims=tuple(int(d) for d in np.atleast_1d(p["encoder_dims"])),
        n_latent=int(p["n_latent"]),
        residuals=bool(p["residuals"]),
        n_covariates=int(res["n_covariate_columns"]),
        library_dims=tuple(int(d) for d in np.atleast_1d(p["library_dims"])),
        likelihood=str(p["likelihood"]),
        library=str(p["library"]),
    )


def fit_entry(adata: AnnData, key: str) -> dict:
    """``adata.uns[key]`` of any scnbtools fit (a dict with ``params``), else a KeyError
    listing the fits that are there."""
    check_key(key, "key")
    res = adata.uns.get(_keys.uns_key(key))
    if not isinstance(res, dict) or "params" not in res:
        fits = [k for k, v in adata.uns.items() if isinstance(v, dict) and "params" in v]
        raise KeyError(
            f"no scnbtools fit under key {key!r} in `adata.uns` (fits found: "
            f"{', '.join(map(repr, fits)) or 'none'}). Fit first, e.g. `snb.tl.fit_zipo(adata, "
            f"key_added={key!r})`, or pass the fitted AnnData as `reference=`."
        )
    return res


def zipo_result(adata: AnnData, key: str) -> dict:
    """``adata.uns[key]`` of a ZiPo fit; KeyError if absent, ValueError for another model."""
    res = fit_entry(adata, key)
    model = str(res["params"].get("model", "?"))
    if model != MODEL_NAME:
        raise ValueError(
            f"`adata.uns[{key!r}]` holds a {model!r} fit, not a ZiPo fit; pass the key of a "
            "`snb.tl.fit_zipo` result."
        )
    return res


def fit_genes(res: dict) -> pd.Index:
    """The genes of a fit, as a string Index (whatever string dtype the store gave back)."""
    return pd.Index([str(g) for g in np.asarray(res["var_names"]).tolist()], dtype=object)


def _tree(d) -> dict:
    """Nested ``uns`` dict -> nested dict of float32 arrays."""
    return {k: _tree(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in d.items()}


def _cell_arrays(adata: AnnData, res: dict, layer: str | None, cells=None) -> dict[str, np.ndarray]:
    """The network's per-cell inputs for ``adata`` (genes aligned to the fit's genes)."""
    if layer is None:
        stored = str(res["params"]["layer"])
        layer = None if stored == "X" else stored
    X, name = get_matrix(adata, layer)
    genes = fit_genes(res)
    if not genes.equals(adata.var_names):
        idx = adata.var_names.get_indexer(genes)
        if (idx < 0).any():
            missing = list(genes[idx < 0][:5])
            raise KeyError(
                f"`adata` lacks {int((idx < 0).sum())} of the fit's {len(genes)} genes (e.g. "
                f"{missing}); ZiPo needs the same genes it was trained on."
            )
        X = X[:, idx]
    obs = adata.obs
    if cells is not None:
        X, obs = X[cells], obs.iloc[cells]
    counts = CountData(X, name=name)
    cov_store = res.get("covariates", {})
    cov_spec = [
        dict(cov_store[k]) for k in sorted(cov_store, key=int)
    ]  # keys "0", "1", ... in order
    keys = [c["key"] for c in cov_spec]
    cov, _ = _encode_covariates(obs, keys, cov_spec if keys else None)
    return _zipo.cell_arrays(counts, cov)


def _outputs(res: dict, arrays, fn):
    cfg = _config_from(res)
    return _zipo.map_cells(
        _tree(res["weights"]),
        _tree(res["bn_state"]),
        arrays,
        config=cfg,
        fn=fn,
    )


def _write_cell_outputs(target: AnnData, key: str, res: dict, arrays) -> np.ndarray:
    """obsm latent, obs library and varm per-gene means / sds over the cells; returns each
    cell's log-likelihood without its count part (``_core.models.zipo.dense_loglik``)."""
    cfg = _config_from(res)
    o = _outputs(res, arrays, _zipo.cell_outputs)
    target.obsm[key] = np.asarray(o["latent"], dtype=np.float32)
    target.obs[_keys.cell_key(key, "library")] = np.exp(o["log_library"].astype(np.float64))
    n = float(o["sum_n"])
    names = (["r"] if cfg.negative_binomial else []) + (["gate"] if cfg.zero_inflated else [])
    names += ["mu", "rho"]
    mean, sd = {}, {}
    for name in names:
        if name == "r":
            r = np.exp(np.asarray(res["weights"]["disp"]["log_r"], dtype=np.float64))
            mean[name], sd[name] = r, np.zeros_like(r)
            continue
        m = o[f"sum_{name}"] / n
        mean[name] = m
        sd[name] = np.sqrt(np.maximum(o[f"sum_{name}2"] / n - m * m, 0.0))
    for stat, vals in (("mean", mean), ("sd", sd)):
        target.varm[_keys.gene_key(key, stat)] = pd.DataFrame(vals, index=target.var_names.copy())
    return o["ll_dense"]


def _heldout_cells(adata: AnnData, key: str, cells) -> np.ndarray:
    n = adata.n_obs
    if isinstance(cells, str) and cells == "all":
        return np.arange(n)
    if cells is None:
        col = _keys.cell_key(key, "validation")
        if col not in adata.obs.columns or not adata.obs[col].any():
            raise ValueError(
                f"`adata.obs[{col!r}]` marks no validation cells (fit with "
                "`validation_fraction > 0`, or pass `cells=` explicitly, e.g. `cells='all'`)."
            )
        return np.flatnonzero(adata.obs[col].to_numpy(dtype=bool))
    a = np.asarray(cells)
    if a.dtype == bool:
        if a.shape != (n,):
            raise ValueError(f"boolean `cells` must have length n_obs={n}, got shape {a.shape}.")
        return np.flatnonzero(a)
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1 or a.size == 0:
        raise TypeError(
            "`cells` must be None (validation cells), 'all', a boolean mask or integer indices; "
            f"got {cells!r}."
        )
    if a.min() < -n or a.max() >= n:
        raise IndexError(f"`cells` indices must lie in [0, {n}), got min {a.min()}, max {a.max()}.")
    return a % n


def _mean_nll(res: dict, ll_dense: np.ndarray, arrays, idx=None, terms=None) -> float:
    """Held-out NLL per entry of the cells ``idx`` (all) from their dense log-likelihood
    (``terms``: their count summary, if already at hand)."""
    idx = np.arange(ll_dense.shape[0]) if idx is None else idx
    log_r = res["weights"]["disp"]["log_r"] if "disp" in res["weights"] else None
    lik = res["params"]["likelihood"]
    ll = _zipo.mean_loglik(ll_dense, arrays, idx, log_r, lik, terms)
    return float(-ll / len(res["var_names"]))


def _heldout_nll(res: dict, arrays) -> float:
    o = _outputs(res, arrays, _zipo.cell_outputs)
    return _mean_nll(res, o["ll_dense"], arrays)


# ----------------------------------------------------------------------------- fit
def fit_zipo(
    adata: AnnData,
    *,
    likelihood: str = "zip",
    encoder_dims: Sequence[int] = (256, 64),
    n_latent: int = 32,
    residuals: bool = True,
    covariate_keys: Sequence[str] | None = None,
    alpha_z: float = 0.1,
    alpha_w: float = 0.1,
    alpha_theta: float = 0.01,
    library: str = "matched",
    library_dims: Sequence[int] = (16, 4),
    max_epochs: int = 200,
    batch_size: int = 256,
    learning_rate: float = 0.02,
    lr_decay: float = 0.9,
    lr_floor: float = 1e-3,
    lr_patience: int = 10,
    lr_factor: float = 0.5,
    early_stopping_patience: int = 20,
    tol: float = 1e-3,
    validation_fraction: float = 0.1,
    layer: str | None = None,
    key_added: str = "zipo",
    rng: int | np.random.Generator = 0,
    progress_bar: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit a ZiPo-style deep zero-inflated count autoencoder.

    An encoder of ``dense -> sigmoid -> batch-norm`` blocks reads each cell's ``log1p``
    counts; the latent layer reads every encoder block (``residuals=True``); known
    covariates are appended to the latent. Parallel heads give a log library size (a small
    sub-network), a zero-inflation logit per gene and log expression fractions (linear
    layer + log-softmax). Trained by Adam on minibatches of cells in jitted ``lax.scan``
    epochs; sparse input is densified one batch at a time only.

    Parameters
    ----------
    adata
        Cells × genes AnnData of raw counts (dense, CSR or CSC).
    likelihood
        ``"zip"`` (zero-inflated Poisson, the paper's default), ``"zinb"``, ``"nb"`` or
        ``"poisson"``. NB likelihoods learn one inverse dispersion ``r`` per gene.
    encoder_dims
        Widths of the encoder blocks before the latent layer; the first block's weights are
        the sparse, interpretable "gene program" layer.
    n_latent
        Width of the latent layer (the embedding written to ``obsm[key_added]``).
    residuals
        Feed every encoder block (not only the last) into the latent layer.
    covariate_keys
        ``adata.obs`` columns appended to the latent: numeric / boolean columns are
        standardised, ``Categorical`` columns one-hot encoded; strings must be converted first.
    alpha_z
        Weight of the L2 penalty ``mean z²`` on the zero-inflation probabilities. ``0``
        lets the zero inflation overshoot (and the rates with it).
    alpha_w
        Weight of the scale-invariant L1/L2 penalty on the first layer's weights
        (``mean_i mean_g |W_gi| / sqrt(mean_g W_gi²)``), which makes them sparse.
    alpha_theta
        Weight of an L2 penalty on the NB over-dispersion ``1 / r`` (NB likelihoods only).
    library
        The library size ``l`` of a cell (its rate is ``l · fraction``).
        ``"matched"`` (default): ``l = T / Σ_g (1 - π_g) fraction_g`` with ``T`` the cell's
        total count and ``π`` its zero-inflation probabilities, so the cell's expected total
        count equals ``T``; without zero inflation this is ``T`` itself.
        ``"predicted"``: the library head's prediction from the latent (the paper).
        ``"observed"``: ``T`` (for zero-inflated likelihoods this ignores the zeros the
        model attributes to dropout, so the rates come out too low by that fraction).
        On the benchmark's simulations (10,000 × 2,000, 6 epochs) ``"matched"`` halved the
        rate MSE of ``"predicted"`` and lowered the held-out NLL; the head's predictions
        were about 17 % off the true library per cell, ``"matched"`` 6–10 %.
    library_dims
        Hidden widths of the library head.
    max_epochs
        Most passes over the training cells.
    batch_size
        Cells per Adam step (at least 2, for batch-norm).
    learning_rate
        Initial learning rate (high, to move quickly from the per-gene baseline).
    lr_decay
        Factor applied to the learning rate after every epoch until it reaches ``lr_floor``.
    lr_floor
        Floor of the geometric decay (plateau reductions can go below it).
    lr_patience
        Reduce on plateau: after this many epochs without a relative improvement of ``tol``
        in the validation loss, the learning rate is multiplied by ``lr_factor``.
    lr_factor
        Factor of each plateau reduction.
    tol
        Relative improvement of the validation loss that counts as progress.
    early_stopping_patience
        Stop after this many epochs without improvement; the best epoch's weights are kept.
    validation_fraction
        Fraction of cells held out (at random) to monitor; ``0`` monitors the training loss.
    layer
        Layer of raw counts; ``None`` uses ``X``.
    key_added
        Key of every output.
    rng
        Seed (int) or ``numpy.random.Generator``.
    progress_bar
        tqdm bar over epochs; ``None`` follows ``snb.settings.progress_bar``.
    copy
        Return a fitted copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the fitted copy if ``copy=True``. Writes

    * ``obsm[key]``: the latent embedding (batch-norm in inference mode, so a cell's
      embedding does not depend on the other cells), usable as
      ``sc.pp.neighbors(adata, use_rep=key)``;
    * ``obs[f"{key}_library"]``: the library size in use (see ``library``); ``obs[f"{key}_validation"]``:
      the held-out cells;
    * ``varm[f"{key}_mean"]``, ``varm[f"{key}_sd"]``: per-gene mean and sd over cells of
      ``gate`` (zero-inflation probability), ``mu`` (NB / Poisson mean ``l · fraction``)
      and ``rho`` (expression fraction), and ``r`` (inverse dispersion, NB likelihoods);
    * ``uns[key]``: ``params`` (every argument, versions, seed), per-epoch ``loss``,
      ``val_loss``, ``learning_rate`` and ``history`` (NLL and mean gate), ``best_epoch``,
      ``heldout_nll``, ``weights`` and ``bn_state`` (plain NumPy, so the network reloads
      from h5ad / zarr and applies to new cells with :func:`zipo_transform`).
    """
    check_adata(adata)
    key = check_key(key_added)
    likelihood = _check_choice(likelihood, "likelihood", tuple(_zipo.LIKELIHOODS))
    library = _check_choice(library, "library", _LIBRARY)
    encoder_dims = _check_dims(encoder_dims, "encoder_dims", allow_empty=False)
    library_dims = _check_dims(library_dims, "library_dims", allow_empty=True)
    n_latent = check_positive_int(n_latent, "n_latent")
    residuals = check_bool(residuals, "residuals")
    alpha_z = _check_nonneg(alpha_z, "alpha_z")
    alpha_w = _check_nonneg(alpha_w, "alpha_w")
    alpha_theta = _check_nonneg(alpha_theta, "alpha_theta")
    max_epochs = check_positive_int(max_epochs, "max_epochs")
    batch_size = check_positive_int(batch_size, "batch_size", 2)
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    lr_floor = check_positive_float(lr_floor, "lr_floor")
    lr_decay = check_positive_float(lr_decay, "lr_decay")
    if lr_decay > 1:
        raise ValueError(f"`lr_decay` must be in (0, 1], got {lr_decay}.")
    lr_factor = check_positive_float(lr_factor, "lr_factor")
    if lr_factor > 1:
        raise ValueError(f"`lr_factor` must be in (0, 1], got {lr_factor}.")
    lr_patience = check_positive_int(lr_patience, "lr_patience")
    early_stopping_patience = check_positive_int(early_stopping_patience, "early_stopping_patience")
    tol = _check_nonneg(tol, "tol")
    validation_fraction = _check_fraction(validation_fraction, "validation_fraction")
    seed = resolve_rng(rng)
    show = resolve_progress(progress_bar)
    copy = check_bool(copy, "copy")
    n_val = _validation_split(adata.n_obs, validation_fraction)
    cov, cov_spec = _encode_covariates(adata.obs, covariate_keys)
    counts = counts_from(adata, layer, allow_empty_genes=True)

    config = _zipo.ZipoConfig(
        n_genes=counts.n_genes,
        encoder_dims=encoder_dims,
        n_latent=n_latent,
        residuals=residuals,
        n_covariates=int(cov.shape[1]),
        library_dims=library_dims,
        likelihood=likelihood,
        library=library,
    )
    schedule = ScheduleConfig(
        learning_rate=learning_rate,
        lr_decay=lr_decay,
        lr_floor=lr_floor,
        plateau_patience=lr_patience,
        plateau_factor=lr_factor,
        tol=tol,
        early_stopping_patience=early_stopping_patience,
    )
    logger.info("fitting ZiPo (%s) to %d cells × %d genes", likelihood, *counts.shape)
    try:
        fit = _zipo.fit(
            counts,
            config,
            covariates=cov,
            rng=seed,
            batch_size=batch_size,
            max_epochs=max_epochs,
            n_val=n_val,
            hyper={"alpha_z": alpha_z, "alpha_w": alpha_w, "alpha_theta": alpha_theta},
            schedule=schedule,
            progress_bar=show,
        )
    except _zipo.ZipoDivergenceError as e:
        raise RuntimeError(str(e)) from None
    if not fit.stopped_early:
        logger.warning(
            "ZiPo ran all %d epochs without early stopping; the validation loss may still be "
            "improving (increase `max_epochs`).",
            max_epochs,
        )

    target = adata.copy() if copy else adata
    hist = fit.history
    res: dict[str, Any] = {
        "params": {
            "model": MODEL_NAME,
            "likelihood": likelihood,
            "encoder_dims": np.asarray(encoder_dims, dtype=np.int64),
            "n_latent": n_latent,
            "residuals": residuals,
            "covariate_keys": np.asarray([c["key"] for c in cov_spec], dtype=str),
            "alpha_z": alpha_z,
            "alpha_w": alpha_w,
            "alpha_theta": alpha_theta,
            "library": library,
            "library_dims": np.asarray(library_dims, dtype=np.int64),
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "lr_decay": lr_decay,
            "lr_floor": lr_floor,
            "lr_patience": lr_patience,
            "lr_factor": lr_factor,
            "early_stopping_patience": early_stopping_patience,
            "tol": tol,
            "validation_fraction": validation_fraction,
            "layer": "X" if layer is None else layer,
            "key_added": key,
            "rng": seed,
            "versions": _versions(),
        },
        "var_names": np.asarray(target.var_names, dtype=str),
        "covariates": {str(i): c for i, c in enumerate(cov_spec)},
        "n_covariate_columns": int(cov.shape[1]),
        "weights": fit.params,
        "bn_state": fit.state,
        "loss": hist["loss"],
        "val_loss": hist.get("val_loss", np.zeros(0)),
        "learning_rate": hist["learning_rate"],
        "history": {
            k: v for k, v in hist.items() if k not in ("loss", "val_loss", "learning_rate")
        },
        "best_epoch": int(fit.best_epoch),
        "n_epochs_run": int(fit.n_epochs),
        "stopped_early": bool(fit.stopped_early),
        "converged": bool(fit.stopped_early),
        "runtime_s": float(fit.runtime_s),
        "n_cells": int(counts.n_cells),
        "batch_size_used": int(fit.batch_size),
    }
    ll_dense = _write_cell_outputs(target, key, res, fit.arrays)
    is_val = np.zeros(target.n_obs, dtype=bool)
    is_val[fit.val_idx] = True
    target.obs[_keys.cell_key(key, "validation")] = is_val
    if fit.val_idx.size:
        res["heldout_nll"] = _mean_nll(res, ll_dense, fit.arrays, fit.val_idx, fit.val_terms)
    target.uns[_keys.uns_key(key)] = res
    return target if copy else None


# ----------------------------------------------------------------------------- apply / prune
def zipo_transform(
    adata: AnnData,
    *,
    key: str = "zipo",
    reference: AnnData | None = None,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Apply a stored ZiPo network to the cells of ``adata``.

    Writes the same per-cell and per-gene outputs as :func:`fit_zipo` (``obsm[key]``,
    ``obs[f"{key}_library"]``, ``varm[f"{key}_mean"]`` / ``varm[f"{key}_sd"]`` over these
    cells). Batch-norm layers use the stored population statistics, so a cell's embedding
    is the same whatever other cells are passed with it.

    Parameters
    ----------
    adata
        Cells to embed, with raw counts for (at least) the fit's genes.
    key
        Key of the fit.
    reference
        AnnData holding the fit in ``uns[key]`` (e.g. read back with ``anndata.read_h5ad``);
        ``None`` uses ``adata.uns[key]``. The fit is copied into ``adata.uns[key]``.
    layer
        Layer of raw counts; ``None`` uses the layer the fit was trained on.
    copy
        Return a copy instead of writing into ``adata``.
    """
    check_adata(adata)
    if reference is not None:
        check_adata(reference, allow_view=True)
    res = zipo_result(adata if reference is None else reference, key)
    copy = check_bool(copy, "copy")
    arrays = _cell_arrays(adata, res, layer)
    target = adata.copy() if copy else adata
    if reference is not None:
        target.uns[_keys.uns_key(key)] = _copy.deepcopy(res)
    _write_cell_outputs(target, key, res, arrays)
    return target if copy else None


def _log10_hist(W: np.ndarray) -> np.ndarray:
    a = _zipo.normalized_first_layer(W).ravel()
    a = np.log10(a[a > 0])
    return np.histogram(np.clip(a, _HIST_EDGES[0], 0.0), bins=_HIST_EDGES)[0].astype(np.int64)


def zipo_prune(
    adata: AnnData,
    *,
    key: str = "zipo",
    delta: float = 1e-4,
    cells=None,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Prune the first-layer weights of a ZiPo fit.

    Each first-layer neuron's weights are divided by the neuron's largest magnitude; those
    below ``delta`` are set to zero. The held-out NLL per entry is computed before and after,
    the embedding, library and per-gene outputs are rewritten with the pruned network, and
    ``uns[key]["pruning"]`` records ``delta``, ``fraction_pruned`` (fraction of first-layer
    weights that are zero afterwards), ``heldout_nll_before`` / ``heldout_nll_after`` and
    histograms of ``log10`` normalised weight magnitudes before and after (for
    :func:`scnbtools.pl.zipo_sparsity`). Batch-norm statistics are kept as fitted.

    Parameters
    ----------
    adata
        AnnData with a ZiPo fit under ``key``.
    key
        Key of the fit.
    delta
        Threshold on the normalised weight magnitude, in ``(0, 1)``.
    cells
        Cells to score: ``None`` (the fit's validation cells), ``"all"``, a boolean mask or
        integer indices.
    layer
        Layer of raw counts; ``None`` uses the layer the fit was trained on.
    copy
        Return a pruned copy instead of changing ``adata``.
    """
    check_adata(adata)
    res = zipo_result(adata, key)
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1:
        raise ValueError(f"`delta` must be a number in (0, 1), got {delta!r}.")
    copy = check_bool(copy, "copy")
    idx = _heldout_cells(adata, key, cells)
    held = _cell_arrays(adata, res, layer, cells=idx)
    W = np.asarray(res["weights"]["enc_0"]["W"])
    nll_before = _heldout_nll(res, held)
    W_pruned, frac = _zipo.prune_first_layer(W, float(delta))
    new = dict(res)
    new["weights"] = {**res["weights"], "enc_0": {**res["weights"]["enc_0"], "W": W_pruned}}
    nll_after = _heldout_nll(new, held)
    new["pruning"] = {
        "delta": float(delta),
        "fraction_pruned": frac,
        "heldout_nll_before": nll_before,
        "heldout_nll_after": nll_after,
        "n_cells_scored": int(idx.size),
        "hist_edges": _HIST_EDGES.copy(),
        "hist_before": _log10_hist(W),
        "hist_after": _log10_hist(W_pruned),
        "n_weights": int(W.size),
    }
    logger.info(
        "ZiPo pruning at delta=%g: %.1f%% of first-layer weights are zero; held-out NLL per "
        "entry %.6g -> %.6g",
        delta,
        100 * frac,
        nll_before,
        nll_after,
    )
    target = adata.copy() if copy else adata
    target.uns[_keys.uns_key(key)] = new
    _write_cell_outputs(target, key, new, _cell_arrays(target, new, layer))
    return target if copy else None


# ----------------------------------------------------------------------------- diagnostics
def zipo_heldout_nll(
    adata: AnnData, *, key: str = "zipo", cells=None, layer: str | None = None
) -> float:
    """Negative log-likelihood per matrix entry of a ZiPo fit on held-out cells.

    The cells' counts go through the encoder (inference mode) and the NLL of the same
    counts under the predicted distribution is averaged over cells and genes.

    Parameters
    ----------
    adata
        AnnData with a ZiPo fit under ``key`` and raw counts.
    key
        Key of the fit.
    cells
        ``None`` (the fit's validation cells, ``obs[f"{key}_validation"]``), ``"all"``, a
        boolean mask or integer indices.
    layer
        Layer of raw counts; ``None`` uses the layer the fit was trained on.
    """
    check_adata(adata, allow_view=True)
    res = zipo_result(adata, key)
    idx = _heldout_cells(adata, key, cells)
    return _heldout_nll(res, _cell_arrays(adata, res, layer, cells=idx))


def zipo_rate_mse(
    adata: AnnData,
    *,
    true_rates,
    key: str = "zipo",
    cells=None,
    layer: str | None = None,
) -> float:
    """Mean squared error of the fitted rates ``l · fraction`` against known true rates.

    The rate of an entry is the mean of the count model without dropout (the NB / Poisson
    mean). Use it on simulated data where the truth is known.

    Parameters
    ----------
    adata
        AnnData with a ZiPo fit under ``key`` and raw counts.
    true_rates
        ``[n_obs, n_vars]`` array (dense or sparse) of true rates, or the name of a layer
        holding them.
    key
        Key of the fit.
    cells
        ``None`` (validation cells), ``"all"``, a boolean mask or integer indices.
    layer
        Layer of raw counts; ``None`` uses the layer the fit was trained on.

    Returns
    -------
    The mean over the cells and genes of ``(l_c mu_cg - true_cg)^2``.
    """
    check_adata(adata, allow_view=True)
    res = zipo_result(adata, key)
    if isinstance(true_rates, str):
        true_rates, _ = get_matrix(adata, true_rates)
    shape = getattr(true_rates, "shape", None)
    if shape != adata.shape:
        raise ValueError(
            f"`true_rates` must have shape {adata.shape} (cells × genes), got {shape}."
        )
    idx = _heldout_cells(adata, key, cells)
    arrays = _cell_arrays(adata, res, layer, cells=idx)
    genes = adata.var_names.get_indexer(fit_genes(res))
    sse = 0.0
    for start in range(0, idx.size, _CHUNK_CELLS):  # one dense chunk of cells at a time
        sel = slice(start, start + _CHUNK_CELLS)
        o = _outputs(res, _zipo.subset(arrays, sel), _dense_fn)
        pred = np.exp(o["log_mu"] + o["log_l"][:, None])
        truth = true_rates[idx[sel]]
        truth = truth.toarray() if sp.issparse(truth) else np.asarray(truth)
        sse += float(np.sum((pred.astype(np.float64) - truth[:, genes].astype(np.float64)) ** 2))
    return sse / (idx.size * genes.size)


# ----------------------------------------------------------------------------- denoising
DENOISE_KINDS = {
    "fractions": "expression fractions mu_cg (each cell sums to 1), times `target_library` if given",
    "counts": "expected observed counts (1 - z_cg) * l_c * mu_cg, dropout included",
    "counts_without_dropout": "rates l_c * mu_cg: the count model's mean with no dropout",
}


def _dense_fn(out, x, mask, *, config):
    """Per-cell log fractions, log library in use and (zero-inflated) keep probabilities
    (module level: its inference program compiles once per network)."""
    del x, mask
    res = {"log_mu": out["log_mu"], "log_l": out["log_rate"][:, 0] - out["log_mu"][:, 0]}
    if config.zero_inflated:
        res["keep"] = jax.nn.sigmoid(-out["gate_logits"])
    return res


def zipo_denoised(
    adata: AnnData, res: dict, kind: str, target_library: float | None, layer: str | None
) -> np.ndarray:
    """Dense ``[n_obs, n_genes]`` float32 denoised matrix of a ZiPo fit (see
    :data:`DENOISE_KINDS`), computed one chunk of cells at a time."""
    arrays = _cell_arrays(adata, res, layer)
    n, g = adata.n_obs, len(res["var_names"])
    out = np.empty((n, g), dtype=np.float32)
    for start in range(0, n, _CHUNK_CELLS):
        sel = slice(start, min(start + _CHUNK_CELLS, n))
        o = _outputs(res, _zipo.subset(arrays, sel), _dense_fn)
        log_l = o["log_l"][:, None] if target_library is None else np.log(target_library)
        if kind == "fractions":
            vals = np.exp(o["log_mu"]) * (1.0 if target_library is None else target_library)
        else:
            vals = np.exp(o["log_mu"] + log_l)
            if kind == "counts" and "keep" in o:
                vals = vals * o["keep"]
        out[sel] = vals
    return out
