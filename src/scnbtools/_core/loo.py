"""Model comparison from pointwise log-likelihoods: WAIC and PSIS-LOO.

Everything here works on a matrix ``ll`` of shape ``(S draws, N units)`` (units are cells
or genes) holding ``log p(y_i | theta_s)`` and is pure NumPy: no AnnData, pandas or JAX.

* :func:`waic` -- widely applicable information criterion (Watanabe 2010), on the elpd
  scale of Vehtari, Gelman & Gabry (2017).
* :func:`psis_loo` -- Pareto-smoothed importance-sampling leave-one-out cross-validation
  (Vehtari, Gelman & Gabry 2017; Vehtari, Simpson, Gelman, Yao & Gabry 2024), with the
  Zhang & Stephens (2009) generalized-Pareto fit and the weakly informative prior on the
  shape used by the R package ``loo`` and by ArviZ. Vectorised over units.
* :func:`compare` -- the comparison table (as plain columns; the ``tl`` layer turns it into
  a DataFrame with ``pandas.DataFrame(out).set_index("model")``).
* :func:`preferred_per_unit` -- which model predicts each unit best, and by how much.

References
----------
Vehtari, A., Gelman, A. & Gabry, J. (2017). Practical Bayesian model evaluation using
leave-one-out cross-validation and WAIC. Statistics and Computing 27, 1413-1432.

Vehtari, A., Simpson, D., Gelman, A., Yao, Y. & Gabry, J. (2024). Pareto smoothed importance
sampling. Journal of Machine Learning Research 25(72), 1-58.

Zhang, J. & Stephens, M. A. (2009). A new and efficient estimation method for the
generalized Pareto distribution. Technometrics 51, 316-325.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["compare", "preferred_per_unit", "psis_loo", "waic"]

#: Pareto k above which PSIS estimates are unreliable whatever the number of draws
K_BAD = 0.7
#: log of the smallest positive normal double: the lowest cutoff of the tail (as loo / ArviZ)
_CUTOFF_MIN = float(np.log(np.finfo(np.float64).tiny))
#: elements of the (grid × tail × units) work array of the vectorised GPD fit per chunk
_CHUNK_ELEMS = 1 << 22
_CRITERIA = ("loo", "waic")


# ----------------------------------------------------------------------------- helpers
def _logsumexp(a: np.ndarray, axis: int = 0, keepdims: bool = False) -> np.ndarray:
    """``log(sum(exp(a)))`` along ``axis``, stable (much faster than scipy's for our sizes)."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


# ----------------------------------------------------------------------------- validation
def _check_ll(ll, name: str = "ll") -> np.ndarray:
    """``ll`` as a C-contiguous float64 ``(S, N)`` array with S >= 2, all finite."""
    try:
        arr = np.asarray(ll, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a numeric array of shape (draws, units), got {type(ll).__name__}."
        ) from None
    if arr.ndim != 2:
        hint = (
            " Stack chains and draws first, e.g. `ll.reshape(-1, ll.shape[-1])`."
            if arr.ndim == 3
            else ""
        )
        raise ValueError(
            f"`{name}` must be 2-D with shape (draws, units), got shape {arr.shape}.{hint}"
        )
    S, N = arr.shape
    if S < 2:
        raise ValueError(
            f"`{name}` has {S} posterior draw(s) (shape {arr.shape}); need at least 2 draws "
            "(rows) to estimate predictive accuracy. Rows are draws, columns are units; "
            "transpose if they are the other way round."
        )
    if N < 1:
        raise ValueError(f"`{name}` has no units (shape {arr.shape}); need at least one column.")
    bad = ~np.isfinite(arr)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        kind = "NaN" if np.isnan(arr).any() else "infinite values"
        raise ValueError(
            f"`{name}` contains {kind} in {cols.size} unit(s) (columns, e.g. "
            f"{', '.join(map(str, cols[:5]))}); every pointwise log-likelihood must be finite. "
            "A -inf means the observation is impossible under some draw; fix the model or "
            "drop those draws."
        )
    return np.ascontiguousarray(arr)


def _check_reff(reff) -> float:
    if isinstance(reff, bool) or not isinstance(reff, numbers.Real):
        raise TypeError(f"`reff` must be a positive number, got {reff!r}.")
    if not math.isfinite(reff) or reff <= 0:
        raise ValueError(
            f"`reff` must be a finite number > 0 (relative efficiency ESS / draws; 1.0 for "
            f"independent draws), got {reff!r}."
        )
    return float(reff)


# ----------------------------------------------------------------------------- WAIC
def waic(ll) -> dict:
    """Widely applicable information criterion on the elpd scale.

    ``elpd_waic = lppd - p_waic`` with, per unit ``i``,
    ``lppd_i = log(mean_s exp(ll[s, i]))`` (computed with logsumexp) and
    ``p_i = Var_s ll[s, i]`` (the sample variance, ``ddof=1``, as in Vehtari, Gelman &
    Gabry 2017, eq. 12 and the R package ``loo``; ArviZ uses ``ddof=0``, which differs by the
    factor ``(S - 1) / S``).

    Parameters
    ----------
    ll
        Pointwise log-likelihood, shape ``(S draws, N units)``, finite, ``S >= 2``.

    Returns
    -------
    dict
        ``criterion`` (``"waic"``), per unit ``elpd_i``, ``p_i`` and ``lppd_i`` (arrays of
        length N), totals ``elpd``, ``p_eff``, ``se`` (``sqrt(N * var(elpd_i))``, ``ddof=0``),
        ``n_high_var`` (units with ``p_i > 0.4``, where WAIC starts to fail and PSIS-LOO is
        preferable), ``n_draws`` and ``n_units``.
    """
    arr = _check_ll(ll)
    S, N = arr.shape
    lppd_i = _logsumexp(arr, axis=0) - math.log(S)
    p_i = arr.var(axis=0, ddof=1)
    elpd_i = lppd_i - p_i
    return {
        "criterion": "waic",
        "elpd_i": elpd_i,
        "p_i": p_i,
        "lppd_i": lppd_i,
        "elpd": float(elpd_i.sum()),
        "p_eff": float(p_i.sum()),
        "se": float(math.sqrt(N * elpd_i.var())),
        "n_high_var": int((p_i > 0.4).sum()),
        "n_draws": S,
        "n_units": N,
    }


# ----------------------------------------------------------------------------- GPD
def _gpdfit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zhang & Stephens (2009) empirical-Bayes fit of a generalized Pareto, column-wise.

    ``x`` holds, per column, positive exceedances sorted ascending (shape ``(M, n)`` or
    ``(M,)``). Returns the shape ``k`` (positive = heavy tail, already pulled towards 0.5
    by the weakly informative prior ``k <- (M k + 10 * 0.5) / (M + 10)`` of loo / ArviZ)
    and the scale ``sigma`` (from the unadjusted k), each of shape ``(n,)`` (or scalars).
    """
    vec = x.ndim == 1
    x2 = x[:, None] if vec else x
    M = x2.shape[0]
    m_est = 30 + int(math.sqrt(M))
    grid = 1.0 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=np.float64) - 0.5))
    quart = x2[int(M / 4 + 0.5) - 1]  # first quartile of the exceedances
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b = grid[:, None] / (3.0 * quart[None, :]) + 1.0 / x2[-1][None, :]  # (m_est, n)
        # profile k(b) = mean log(1 - b x) for every grid point (in the loo / ArviZ sign)
        k_b = np.log1p(-b[:, None, :] * x2[None, :, :]).mean(axis=1)
        log_lik = M * (np.log(-(b / k_b)) - k_b - 1.0)
        w = np.exp(log_lik - _logsumexp(log_lik, axis=0, keepdims=True))
        w = np.where(w >= 10.0 * np.finfo(np.float64).eps, w, 0.0)  # drop negligible weights
        w = w / w.sum(axis=0, keepdims=True)
        b_post = (b * w).sum(axis=0)
        k = np.log1p(-b_post[None, :] * x2).mean(axis=0)
        sigma = -k / b_post
    k = (M * k + 10.0 * 0.5) / (M + 10.0)
    if vec:
        return k[0], sigma[0]
    return k, sigma


def _gpinv(p: np.ndarray, k: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """GPD quantiles at probabilities ``p`` (shape ``(M,)``) for columns ``k, sigma`` (n,)."""
    p = p[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tiny = np.abs(k) < np.finfo(np.float64).eps
        k_safe = np.where(tiny, 1.0, k)
        q = np.where(tiny, -np.log1p(-p), np.expm1(-k_safe * np.log1p(-p)) / k_safe)
    return q * sigma


# ----------------------------------------------------------------------------- PSIS
def _tail_length(S: int, reff: float) -> int:
    return math.ceil(min(0.2 * S, 3.0 * math.sqrt(S / reff)))


def _smooth_sorted(x: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
    """PSIS on columns of log ratios sorted ascending whose top-M tail is clean.

    ``x`` (S, n) has the column maxima already subtracted (max 0); for every column the M
    largest values lie strictly above ``x[S-M-1]`` and that cutoff is >= the smallest
    normal double's log. Returns the smoothed, truncated (not yet normalised) log weights in
    the same sorted order, and k (inf where the fit is impossible or failed).
    """
    S, n = x.shape
    if M <= 4:  # too short a tail to fit
        return x, np.full(n, np.inf)
    cut = x[S - M - 1]
    exp_cut = np.exp(cut)
    tail = x[S - M :]
    k, sigma = _gpdfit(np.exp(tail) - exp_cut[None, :])
    ok = np.isfinite(k) & np.isfinite(sigma) & (sigma > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth = np.log(_gpinv((np.arange(M) + 0.5) / M, k, sigma) + exp_cut[None, :])
    smooth = np.minimum(smooth, 0.0)  # truncate at the largest raw log ratio
    out = x.copy()
    out[S - M :] = np.where(ok[None, :], smooth, tail)
    return out, np.where(ok, k, np.inf)


def _smooth_one(lr: np.ndarray, M: int) -> tuple[np.ndarray, float]:
    """PSIS for one unit whose tail is not the clean top M (ties at the cutoff, or a cutoff
    below the smallest normal double); ``lr`` sorted ascending with max 0."""
    S = lr.size
    cut = max(lr[S - M - 1], _CUTOFF_MIN)
    tail_idx = np.flatnonzero(lr > cut)  # contiguous at the end, since lr is sorted
    L = tail_idx.size
    if L <= 4:
        return lr, math.inf
    sub = lr[tail_idx]
    out, k = _smooth_sorted(np.concatenate([[cut], sub])[:, None], L)
    res = lr.copy()
    res[tail_idx] = out[1:, 0]
    return res, float(k[0])


def psis_loo(ll, *, reff: float = 1.0) -> dict:
    """Pareto-smoothed importance-sampling leave-one-out cross-validation (PSIS-LOO).

    For each unit ``i`` the raw importance ratios of the leave-one-out posterior are
    ``r_s = 1 / p(y_i | theta_s)`` (log ratios ``-ll[:, i]``). The ``M = ceil(min(0.2 S,
    3 sqrt(S / reff)))`` largest ratios are fitted by a generalized Pareto (Zhang & Stephens
    2009, with the weakly informative prior on k of loo / ArviZ) over the (M+1)-th largest,
    replaced by the fitted distribution's expected order statistics (quantiles at
    ``(z - 0.5) / M``), truncated at the largest raw ratio and self-normalised;
    ``elpd_i = log sum_s w_s p(y_i | theta_s)``. Units whose tail is too short (M <= 4)
    or whose fit fails get ``k = inf`` and plain importance sampling. This reproduces
    ``arviz.loo`` (0.23) to rounding error.

    Parameters
    ----------
    ll
        Pointwise log-likelihood, shape ``(S draws, N units)``, finite, ``S >= 2``. Draws of
        several chains are stacked along the first axis.
    reff
        Relative efficiency of the draws (effective sample size / S); 1.0 for independent
        draws, e.g. from a variational posterior. Only sets the tail length.

    Returns
    -------
    dict
        ``criterion`` (``"loo"``), per unit ``elpd_i``, ``p_i`` (``lppd_i - elpd_i``),
        ``lppd_i`` and ``pareto_k`` (arrays of length N), totals ``elpd``, ``p_eff``, ``se``
        (``sqrt(N * var(elpd_i))``, ``ddof=0``), ``n_bad_k`` (units with k > 0.7: their
        estimate is unreliable), ``k_threshold`` (``min(1 - 1 / log10(S), 0.7)``, the
        sample-size dependent bound of Vehtari et al. 2024) and ``n_above_threshold`` (units
        with k above it), ``n_draws``, ``n_units`` and ``reff``.
    """
    arr = _check_ll(ll)
    reff = _check_reff(reff)
    S, N = arr.shape
    M = _tail_length(S, reff)
    lppd_i = _logsumexp(arr, axis=0) - math.log(S)
    elpd_i = np.empty(N)
    k_hat = np.empty(N)
    m_est = 30 + int(math.sqrt(M))
    chunk = max(1, _CHUNK_ELEMS // (m_est * max(M, 1)))
    for a in range(0, N, chunk):
        b = min(a + chunk, N)
        lr = np.sort(-arr[:, a:b], axis=0)  # log ratios, ascending per unit
        lr -= lr[-1][None, :]
        cut = lr[S - M - 1]
        clean = (lr[S - M] > cut) & (cut >= _CUTOFF_MIN)
        lw = np.empty_like(lr)
        kk = np.empty(b - a)
        idx = np.flatnonzero(clean)
        if idx.size:
            lw[:, idx], kk[idx] = _smooth_sorted(lr[:, idx], M)
        for j in np.flatnonzero(~clean):
            lw[:, j], kk[j] = _smooth_one(lr[:, j], M)
        lw -= _logsumexp(lw, axis=0, keepdims=True)
        # ll in the same sorted order is -(lr + shift); the shift cancels after normalising
        shift = (-arr[:, a:b]).max(axis=0)
        elpd_i[a:b] = _logsumexp(lw - lr, axis=0) - shift
        k_hat[a:b] = kk
    k_thr = min(1.0 - 1.0 / math.log10(S), K_BAD) if S > 1 else K_BAD
    return {
        "criterion": "loo",
        "elpd_i": elpd_i,
        "p_i": lppd_i - elpd_i,
        "lppd_i": lppd_i,
        "pareto_k": k_hat,
        "elpd": float(elpd_i.sum()),
        "p_eff": float((lppd_i - elpd_i).sum()),
        "se": float(math.sqrt(N * elpd_i.var())),
        "n_bad_k": int((k_hat > K_BAD).sum()),
        "k_threshold": float(k_thr),
        "n_above_threshold": int((k_hat > k_thr).sum()),
        "n_draws": S,
        "n_units": N,
        "reff": reff,
    }


# ----------------------------------------------------------------------------- comparison
def _pointwise_of(name: str, value, criterion: str | None) -> tuple[np.ndarray, dict]:
    """Per-unit elpd vector of one model and its result dict (empty for a bare vector)."""
    if isinstance(value, Mapping):
        if "elpd_i" not in value:
            raise ValueError(
                f"model {name!r}: the result dict has no 'elpd_i' entry; pass the output of "
                "`waic(ll)` / `psis_loo(ll)` or a 1-D array of per-unit elpd."
            )
        got = value.get("criterion")
        if criterion is not None and got is not None and got != criterion:
            raise ValueError(
                f"model {name!r} holds a {got!r} result but `criterion`={criterion!r}; compare "
                "models with the same criterion (all `psis_loo` or all `waic`)."
            )
        res, vec = dict(value), value["elpd_i"]
    else:
        res, vec = {}, value
    try:
        arr = np.asarray(vec, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"model {name!r}: per-unit elpd must be numeric, got {type(vec).__name__}."
        ) from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"model {name!r}: per-unit elpd must be a non-empty 1-D array, got shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(
            f"model {name!r}: per-unit elpd has {bad.size} non-finite value(s) (NaN or inf; "
            f"units {', '.join(map(str, bad[:5]))}); recompute it from a finite log-likelihood."
        )
    return arr, res


def _collect(pointwise, criterion: str | None, min_models: int) -> tuple[list[str], list, list]:
    if not isinstance(pointwise, Mapping):
        raise TypeError(
            "`pointwise` must be a dict {model name: result of waic/psis_loo or 1-D per-unit "
            f"elpd array}}, got {type(pointwise).__name__}."
        )
    if len(pointwise) < min_models:
        raise ValueError(
            f"`pointwise` holds {len(pointwise)} model(s); need at least {min_models}."
        )
    names, vecs, results = [], [], []
    for name, value in pointwise.items():
        if not isinstance(name, str):
            raise TypeError(f"model names (keys of `pointwise`) must be strings, got {name!r}.")
        vec, res = _pointwise_of(name, value, criterion)
        names.append(name)
        vecs.append(vec)
        results.append(res)
    sizes = {n: v.size for n, v in zip(names, vecs, strict=True)}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            "all models must be evaluated on the same units, but the numbers of units differ: "
            + ", ".join(f"{n!r}: {s}" for n, s in sizes.items())
            + ". Compute every model's log-likelihood on the same cells and genes."
        )
    return names, vecs, results


def compare(pointwise: Mapping, *, criterion: str = "loo") -> dict[str, np.ndarray]:
    """Compare models by expected log predictive density (elpd), best first.

    Parameters
    ----------
    pointwise
        ``{model name: result}`` where each result is the dict returned by
        :func:`psis_loo` / :func:`waic` (preferred: it supplies ``p_eff`` and the Pareto k
        counts) or a bare 1-D array of per-unit elpd. All models must have the same units.
    criterion
        ``"loo"`` or ``"waic"``; result dicts of the other criterion are rejected.

    Returns
    -------
    dict
        Columns of the comparison table as arrays of equal length, one row per model, sorted
        by elpd (best first; ties keep the input order). ``pandas.DataFrame(out).set_index(
        "model")`` gives the table. Columns:

        ``model`` (names), ``rank`` (0 = best), ``elpd``, ``se`` (``sqrt(N var(elpd_i))``),
        ``p_eff`` (NaN for bare vectors), ``elpd_diff`` (``elpd_best - elpd_model``, so 0
        for the best and >= 0 for the others), ``se_diff``
        (``sqrt(N var(elpd_i_best - elpd_i_model))``, 0 for the best), ``n_bad_k`` (units
        with Pareto k > 0.7; 0 for WAIC and for bare vectors, which carry no k) and
        ``weight`` (pseudo-BMA weights ``exp(elpd - max elpd) / sum``, without the
        Bayesian-bootstrap regularisation and not stacking weights: with many units they
        put nearly all weight on the best model).
    """
    if criterion not in _CRITERIA:
        raise ValueError(f"`criterion` must be 'loo' or 'waic', got {criterion!r}.")
    names, vecs, results = _collect(pointwise, criterion, 1)
    E = np.stack(vecs)  # (models, N)
    N = E.shape[1]
    elpd = E.sum(axis=1)
    order = np.argsort(-elpd, kind="stable")
    best = order[0]
    diff_i = E[best][None, :] - E[order]
    p_eff = np.array([float(results[m].get("p_eff", np.nan)) for m in order])
    if criterion == "loo":
        n_bad = np.array(
            [
                int((np.asarray(results[m]["pareto_k"]) > K_BAD).sum())
                if "pareto_k" in results[m]
                else 0
                for m in order
            ],
            dtype=np.int64,
        )
    else:
        n_bad = np.zeros(len(order), dtype=np.int64)
    w = np.exp(elpd[order] - elpd[best])
    return {
        "model": np.array([names[m] for m in order], dtype=object),
        "rank": np.arange(len(order), dtype=np.int64),
        "elpd": elpd[order],
        "se": np.sqrt(N * E[order].var(axis=1)),
        "p_eff": p_eff,
        "elpd_diff": diff_i.sum(axis=1),
        "se_diff": np.sqrt(N * diff_i.var(axis=1)),
        "n_bad_k": n_bad,
        "weight": w / w.sum(),
    }


def preferred_per_unit(pointwise: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The model with the highest elpd on each unit, and its margin over the runner-up.

    Parameters
    ----------
    pointwise
        ``{model name: per-unit elpd}`` for at least two models with the same units; values
        are 1-D arrays or result dicts of :func:`psis_loo` / :func:`waic`.

    Returns
    -------
    preferred
        Object array of length N with the name of the best model per unit (ties go to the
        model listed first).
    margin
        Float array of length N, ``elpd_i(best) - elpd_i(second best) >= 0``.
    """
    names, vecs, _ = _collect(pointwise, None, 2)
    E = np.stack(vecs)
    best = np.argmax(E, axis=0)
    top2 = -np.partition(-E, 1, axis=0)[:2]  # the two largest per unit, descending
    return np.asarray(names, dtype=object)[best], top2[0] - top2[1]
