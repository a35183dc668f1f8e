"""Moments implied by NB-family fits, and the mean–variance plot of those fits.

Everything here uses NumPyro's convention: ``NB(r, p)`` has mean ``r p / (1 - p)``; a
capture model gives cell ``c`` the success probability ``p̂_c = p ν_c / (1 - p (1 - ν_c))``,
i.e. odds ``p̂_c / (1 - p̂_c) = ν_c p / (1 - p)``; zero inflation mixes in a point mass at 0
with probability ``π_g``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys, get
from .._validate import get_matrix
from ..get._posterior import (
    component_names,
    fit_spec,
)
from ._glm import _gene_stats
from ._utils import check_show, finish, make_axes

__all__ = [
    "NB_BASES",
    "FitKind",
    "NBPoint",
    "canonical_draws",
    "check_any_fit",
    "fit_kind",
    "implied_moments",
    "is_nb_fit",
    "nb_mean_variance",
    "nb_moments",
    "point_params",
]

#: ``uns[key]["params"]["model"]`` of the NB-family fits
NB_BASES = ("nbdm", "zinb", "nbvcp", "zinbvcp")
_REAL, _MODEL = "0.45", "tab:blue"


# ----------------------------------------------------------------------------- recognising fits
def is_nb_fit(adata: AnnData, key) -> bool:
    """Whether ``adata.uns[key]`` is an NB-family fit (``tl.fit`` and friends)."""
    if not isinstance(adata, AnnData) or not isinstance(key, str):
        return False
    rec = adata.uns.get(key)
    if not isinstance(rec, Mapping) or not isinstance(rec.get("params"), Mapping):
        return False
    return str(rec["params"].get("model", "")) in NB_BASES and "variational_params" in rec


def check_any_fit(adata: AnnData, key) -> None:
    """Raise a ``KeyError`` naming both kinds of fit when ``key`` is neither an NB-family nor
    a GLM fit (``pl.mean_variance`` plots both)."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData object, got {type(adata).__name__}.")
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string (a fit's `key_added`), got {key!r}.")
    rec = adata.uns.get(key)
    if is_nb_fit(adata, key) or (isinstance(rec, Mapping) and "design" in rec and "family" in rec):
        return
    nb = [k for k in adata.uns if is_nb_fit(adata, k)]
    glm = [
        k
        for k, v in adata.uns.items()
        if isinstance(v, Mapping) and "design" in v and "family" in v
    ]
    found = ", ".join(map(repr, nb + glm)) or "none"
    raise KeyError(
        f"`key`={key!r}: no NB-family or GLM fit under this key in `adata.uns` (fits found: "
        f"{found}). Pass one of those as `key=`, or fit first, e.g. "
        f"`snb.tl.fit(adata, model='nbvcp', key_added={key!r})` or "
        f"`snb.tl.fit_glm(adata, key_added={key!r})`."
    )


# ----------------------------------------------------------------------------- parameters
def canonical_draws(draws: Mapping[str, np.ndarray], n_components: int) -> dict[str, np.ndarray]:
    """Posterior draws of any NB-family fit in one canonical layout.

    ``draws`` is the output of :func:`scnbtools.get.posterior_samples` (any
    parameterization: ``r`` and ``p`` are always among its derived outputs). Returns
    ``r`` ``[S, K, G]``, ``p`` ``[S, K]``, ``gate`` ``[S, K, G]`` (zero-inflated fits), ``nu``
    ``[S, N]`` (capture fits) and ``mixing_weights`` ``[S, K]`` (mixtures); ``K = 1`` for a
    single-component fit.
    """
    K = int(n_components)
    r = np.asarray(draws["r"], dtype=np.float64)
    S, G = r.shape[0], r.shape[-1]
    r = np.broadcast_to(r.reshape(S, -1, G), (S, K, G))
    if "p" in draws:
        p = np.asarray(draws["p"], dtype=np.float64)
    else:  # mean_odds without the derived p
        p = 1.0 / (1.0 + np.asarray(draws["phi"], dtype=np.float64))
    out = {"r": r, "p": np.broadcast_to(p.reshape(S, -1), (S, K))}
    if "gate" in draws:
        gate = np.asarray(draws["gate"], dtype=np.float64)
        out["gate"] = np.broadcast_to(gate.reshape(S, -1, G), (S, K, G))
    if "nu" in draws:
        out["nu"] = np.asarray(draws["nu"], dtype=np.float64)
    elif "eta" in draws:
        out["nu"] = np.exp(-np.asarray(draws["eta"], dtype=np.float64))
    if "mixing_weights" in draws:
        out["mixing_weights"] = np.asarray(draws["mixing_weights"], dtype=np.float64)
    return out


@dataclass(frozen=True)
class FitKind:
    """What kind of NB-family fit a key holds."""

    base: str  # nbdm, zinb, nbvcp or zinbvcp
    name: str  # the spec's name, e.g. "zinbvcp[K=2]"
    n_components: int
    capture: bool
    zero_inflated: bool


def fit_kind(res: Mapping) -> FitKind:
    """The :class:`FitKind` of a stored NB-family fit (``get.fit_result``'s dict)."""
    spec = fit_spec(res)
    base = str(res["params"]["model"])
    return FitKind(
        base=base,
        name=str(res["params"].get("spec", spec.name)),
        n_components=int(spec.n_components),
        capture=base in ("nbvcp", "zinbvcp"),
        zero_inflated=base in ("zinb", "zinbvcp"),
    )


@dataclass(frozen=True)
class NBPoint:
    """Posterior means of an NB-family fit in the canonical layout (see :func:`point_params`)."""

    r: np.ndarray  # [K, G]
    p: np.ndarray  # [K]
    gate: np.ndarray | None  # [K, G]
    nu: np.ndarray | None  # [N]
    weights: np.ndarray | None  # [K]
    components: list[str]


def _refit(key: str) -> str:
    return f"refit with `key_added={key!r}`"


def point_params(adata: AnnData, key: str) -> NBPoint:
    """Posterior means of ``r``, ``p``, ``gate``, ``nu`` and the mixing weights, read from
    what the fit stored (``varm``, ``obsm``, ``uns[key]['global']``; no sampling)."""
    res = get.fit_result(adata, key=key)
    kind = fit_kind(res)
    K = kind.n_components
    gk = _keys.gene_key(key, "mean")
    if gk not in adata.varm:
        raise KeyError(f"`adata.varm[{gk!r}]` is missing (removed or subset away?); {_refit(key)}.")
    gm = adata.varm[gk]
    glob = res.get("global", {})

    def gene_param(name: str) -> np.ndarray | None:
        cols = [name] if K == 1 else [f"{name}_{k}" for k in range(K)]
        if not all(c in gm.columns for c in cols):
            return None
        return np.stack([np.asarray(gm[c], dtype=np.float64) for c in cols])

    def global_param(name: str) -> np.ndarray | None:
        if name in glob:
            return np.full(K, float(glob[name]["mean"]))
        cols = [f"{name}_{k}" for k in range(K)]
        if K > 1 and all(c in glob for c in cols):
            return np.array([float(glob[c]["mean"]) for c in cols])
        return None

    r = gene_param("r")
    if r is None:
        raise KeyError(f"`adata.varm[{gk!r}]` has no `r` column(s); {_refit(key)}.")
    p = global_param("p")
    if p is None:
        phi = global_param("phi")
        if phi is None:
            raise KeyError(
                f"`adata.uns[{key!r}]['global']` has neither `p` nor `phi`; {_refit(key)}."
            )
        p = 1.0 / (1.0 + phi)
    gate = gene_param("gate") if kind.zero_inflated else None
    if kind.zero_inflated and gate is None:
        raise KeyError(f"`adata.varm[{gk!r}]` has no `gate` column(s); {_refit(key)}.")
    nu = None
    if kind.capture:
        ck = _keys.cell_key(key, "mean")
        cm = adata.obsm.get(ck)
        if cm is None or "nu" not in getattr(cm, "columns", ()):
            raise KeyError(f"`adata.obsm[{ck!r}]` with column `nu` is missing; {_refit(key)}.")
        nu = np.asarray(cm["nu"], dtype=np.float64)
    weights = global_param("mixing_weights") if K > 1 else None
    if K > 1 and weights is None:
        raise KeyError(f"`adata.uns[{key!r}]['global']` has no mixing weights; {_refit(key)}.")
    comps = [str(c) for c in component_names(res, K)]
    return NBPoint(r, p, gate, nu, weights, comps)


# ----------------------------------------------------------------------------- moments
def nb_moments(r, p, gate=None, nu=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of one count ``x ~ π δ_0 + (1 - π) NB(r, p̂)``.

    ``p̂ = p ν / (1 - p (1 - ν))`` (``ν = 1`` without capture), so the NB part has mean
    ``m = r ν p / (1 - p)`` and variance ``m + m² / r``; with the gate ``π`` the mean is
    ``(1 - π) m`` and the variance ``(1 - π)(m + m²/r) + π (1 - π) m²``. All arguments
    broadcast elementwise.
    """
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    odds = p / (1.0 - p)
    if nu is not None:
        odds = odds * np.asarray(nu, dtype=np.float64)
    m = r * odds
    v = m * (1.0 + odds)  # = m + m² / r
    if gate is None:
        return m, v
    pi = np.asarray(gate, dtype=np.float64)
    return (1.0 - pi) * m, (1.0 - pi) * v + pi * (1.0 - pi) * m * m


def implied_moments(
    r,
    p,
    *,
    gate=None,
    nu=None,
    weights=None,
    block: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance of a count under a fitted NB-family model.

    Parameters
    ----------
    r
        ``[G]`` or ``[K, G]`` (a mixture's component dispersions).
    p
        A number or ``[K]``.
    gate
        ``None`` or the dropout probabilities, shaped like ``r``.
    nu
        ``None`` or the capture probabilities of the cells, ``[N]``.
    weights
        Mixture weights ``[K]`` (``None``: one component).
    block
        Cells per block (bounds memory at ``block × K × G``).

    Returns
    -------
    ``(mean, var)``, each ``[G]``. A mixture's moments per cell are ``m_c = Σ_k w_k m_ck`` and
    ``v_c = Σ_k w_k (v_ck + m_ck²) - m_c²``; over the cells of a capture model the law of
    total variance gives ``E[x] = mean_c m_c`` and ``Var[x] = mean_c v_c + var_c m_c``.
    """
    r = np.atleast_2d(np.asarray(r, dtype=np.float64))
    K, G = r.shape
    p = np.broadcast_to(np.asarray(p, dtype=np.float64).reshape(-1), (K,))[:, None]
    g = None if gate is None else np.broadcast_to(np.asarray(gate, dtype=np.float64), (K, G))
    w = np.ones(1) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != K:
        raise ValueError(f"`weights` has {w.size} entries but `r` has {K} components.")
    w = (w / w.sum())[:, None]
    nus = np.ones(1) if nu is None else np.asarray(nu, dtype=np.float64).reshape(-1)
    s_m, s_m2, s_v = np.zeros(G), np.zeros(G), np.zeros(G)
    for a in range(0, nus.size, block):
        nu_b = nus[a : a + block][:, None, None]  # [B, 1, 1]
        m, v = nb_moments(r[None], p[None], None if g is None else g[None], nu_b)  # [B, K, G]
        mc = np.sum(w[None] * m, axis=1)  # [B, G]
        vc = np.sum(w[None] * (v + m * m), axis=1) - mc * mc
        s_m += mc.sum(axis=0)
        s_m2 += (mc * mc).sum(axis=0)
        s_v += vc.sum(axis=0)
    n = nus.size
    mean = s_m / n
    return mean, s_v / n + np.maximum(s_m2 / n - mean * mean, 0.0)


# ----------------------------------------------------------------------------- plot
def nb_mean_variance(
    adata: AnnData,
    *,
    key: str,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Per-gene variance against mean: observed counts and the fitted NB-family model
    (called by :func:`scnbtools.pl.mean_variance` for NB-family fits)."""
    res = get.fit_result(adata, key=key)
    show, return_fig = check_show(show, return_fig)
    pt = point_params(adata, key)
    if pt.r.shape[1] != adata.n_vars:
        raise ValueError(
            f"the fit under key {key!r} has {pt.r.shape[1]} genes but `adata` has "
            f"{adata.n_vars}; plot on the AnnData that was fitted."
        )
    layer = str(res["params"].get("layer", "X"))
    X, _ = get_matrix(adata, None if layer == "X" else layer)
    obs = _gene_stats(X)
    m_mean, m_var = implied_moments(pt.r, pt.p, gate=pt.gate, nu=pt.nu, weights=pt.weights)
    keep = (obs["mean"] > 0) & (obs["var"] > 0) & (m_mean > 0) & (m_var > 0)
    if not np.any(keep):
        raise ValueError(f"no gene of `adata` has a positive mean and variance to plot ({key!r}).")
    fig, (a,) = make_axes(ax, 1, panel_size=(5.0, 4.0))
    a.scatter(
        obs["mean"][keep], obs["var"][keep], s=9, color=_REAL, alpha=0.6, lw=0, label="observed"
    )
    model = fit_kind(res).name
    a.scatter(
        m_mean[keep],
        m_var[keep],
        s=9,
        color=_MODEL,
        alpha=0.6,
        lw=0,
        label=f"{model} (posterior mean)",
    )
    lo = max(float(min(obs["mean"][keep].min(), m_mean[keep].min())), 1e-4)
    hi = float(max(obs["mean"][keep].max(), m_mean[keep].max()))
    a.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--", label="Poisson (var = mean)")
    err = np.median(np.abs(np.log10(m_var[keep] / obs["var"][keep])))
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("gene mean")
    a.set_ylabel("gene variance")
    a.set_title(
        f"{key}: mean–variance, {int(keep.sum())} genes\n"
        f"median |log10(model var / observed var)| = {err:.2f}",
        fontsize="medium",
    )
    a.legend(fontsize="small", frameon=False)
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)
