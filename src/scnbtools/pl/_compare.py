"""Plots of a model comparison (``tl.compare_models``): elpd per model, and per gene."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from ._utils import check_show, finish, make_axes

__all__ = ["model_comparison"]

_DEFAULT_KEY = "model_comparison"
_KINDS = ("elpd", "per_gene")
#: |elpd difference| below which two models are hard to tell apart (loo FAQ rule of thumb)
_CLEAR = 4.0
_POINT, _DIFF, _BAD = "black", "0.55", "tab:red"


# ----------------------------------------------------------------------------- reading uns
def _rerun_hint(key: str) -> str:
    extra = "" if key == _DEFAULT_KEY else f" with `key_added={key!r}`"
    return f"Run `snb.tl.compare_models(adata, keys=[...])`{extra} first."


def _comparison_record(adata, key) -> Mapping:
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData object, got {type(adata).__name__}.")
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, got {key!r} ({type(key).__name__}).")
    rec = adata.uns.get(key)
    if not isinstance(rec, Mapping) or "table" not in rec:
        found = [
            k
            for k, v in adata.uns.items()
            if isinstance(v, Mapping) and "table" in v and "criterion" in v
        ]
        what = "no entry" if rec is None else "no model comparison"
        raise KeyError(
            f"{what} under `adata.uns[{key!r}]` (model comparisons found: "
            f"{', '.join(map(repr, found)) or 'none'}). {_rerun_hint(key)}"
        )
    return rec


def _table(rec: Mapping, key: str) -> pd.DataFrame:
    """The comparison table, best model first (a new object: the stored one is untouched)."""
    raw = rec["table"]
    if isinstance(raw, pd.DataFrame):
        tab = raw.copy()
    elif isinstance(raw, Mapping):
        tab = pd.DataFrame({k: np.asarray(v) for k, v in raw.items()})
    else:
        raise TypeError(
            f"`adata.uns[{key!r}]['table']` must be a DataFrame, got {type(raw).__name__}. "
            f"{_rerun_hint(key)}"
        )
    if "model" in tab.columns:
        tab = tab.set_index("model")
    missing = [c for c in ("elpd", "se") if c not in tab.columns]
    if missing or tab.shape[0] == 0:
        raise ValueError(
            f"`adata.uns[{key!r}]['table']` has no {' / '.join(missing) or 'rows'} "
            f"(columns: {', '.join(map(str, tab.columns))}). {_rerun_hint(key)}"
        )
    tab.index = tab.index.map(str)
    tab = tab.sort_values("elpd", ascending=False, kind="stable")
    best = float(tab["elpd"].iloc[0])
    if "elpd_diff" not in tab.columns:
        tab["elpd_diff"] = best - tab["elpd"].to_numpy(dtype=np.float64)
    if "se_diff" not in tab.columns:
        tab["se_diff"] = np.nan
    return tab


def _per_gene(rec: Mapping, key: str, models: list[str]) -> pd.DataFrame:
    pg = rec.get("per_gene")
    if not isinstance(pg, pd.DataFrame) or pg.shape[0] == 0:
        raise ValueError(
            f"`adata.uns[{key!r}]` holds no per-gene comparison (`'per_gene'` is missing; "
            f"the comparison was made per {rec.get('unit', 'cell')} without per-gene results). "
            "Run `snb.tl.compare_models(adata, keys=[...])` with per-gene output first, or use "
            "`kind='elpd'`."
        )
    if len(models) < 2:
        raise ValueError(
            f"`kind='per_gene'` compares models, but `adata.uns[{key!r}]` holds only "
            f"{models}; compare at least two models."
        )
    cols = [f"elpd_{m}" for m in models[:2]]
    missing = [c for c in cols if c not in pg.columns]
    if missing:
        raise ValueError(
            f"`adata.uns[{key!r}]['per_gene']` lacks column(s) {missing} (has "
            f"{', '.join(map(str, pg.columns))}). {_rerun_hint(key)}"
        )
    return pg


# ----------------------------------------------------------------------------- panels
def _draw_elpd(a: Axes, tab: pd.DataFrame, criterion: str, unit: str) -> None:
    n = tab.shape[0]
    ys = np.arange(n)[::-1].astype(np.float64)  # best on top
    elpd = tab["elpd"].to_numpy(dtype=np.float64)
    se = tab["se"].to_numpy(dtype=np.float64)
    diff = tab["elpd_diff"].to_numpy(dtype=np.float64)
    se_diff = tab["se_diff"].to_numpy(dtype=np.float64)
    a.axvline(elpd[0], color="0.6", lw=0.8, ls="--")
    a.errorbar(
        elpd,
        ys,
        xerr=se,
        fmt="o",
        color=_POINT,
        mfc="white",
        ms=6,
        capsize=3,
        lw=1.2,
        label="elpd ± se",
    )
    if n > 1:
        a.errorbar(
            elpd[1:],
            ys[1:] - 0.22,
            xerr=np.nan_to_num(se_diff[1:]),
            fmt="^",
            color=_DIFF,
            ms=5,
            capsize=3,
            lw=1.0,
            label="difference to best ± se_diff",
        )
    bad = tab["n_bad_k"].to_numpy() if "n_bad_k" in tab.columns else np.zeros(n, int)
    weight = tab["weight"].to_numpy(dtype=np.float64) if "weight" in tab.columns else None
    for i in range(n):
        if i == 0:
            txt = "best"
        elif np.isfinite(se_diff[i]):
            txt = f"Δ = {-diff[i]:.1f} ± {se_diff[i]:.1f}"
        else:
            txt = f"Δ = {-diff[i]:.1f}"
        if weight is not None:
            txt += f"   w = {weight[i]:.2f}"
        a.annotate(
            txt,
            (elpd[i], ys[i]),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="small",
        )
        if int(bad[i]) > 0:
            a.annotate(
                f"{int(bad[i])} {unit}(s) with k > 0.7",
                (elpd[i], ys[i]),
                xytext=(0, -9),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize="x-small",
                color=_BAD,
            )
    a.set_yticks(ys, list(tab.index))
    a.set_ylim(-0.8, n - 0.35)
    pad = np.nanmax(np.concatenate([se, np.nan_to_num(se_diff)])) if n else 0.0
    lo, hi = float(np.min(elpd)) - pad, float(np.max(elpd)) + pad
    span = max(hi - lo, 1e-9)
    a.set_xlim(lo - 0.25 * span, hi + 0.25 * span)
    a.set_xlabel(f"elpd ({criterion.upper()}; higher is better)")
    a.set_title(f"{criterion.upper()} model comparison over {unit}s", fontsize="medium")
    a.legend(fontsize="small", frameon=False, loc="best")


def _draw_per_gene(
    a: Axes, b: Axes, tab: pd.DataFrame, pg: pd.DataFrame, colors: dict[str, tuple]
) -> None:
    models = list(tab.index)
    first, second = models[0], models[1]
    if "preferred" in pg.columns:
        pref = pg["preferred"].astype(str).to_numpy()
    else:
        cols = [c for c in (f"elpd_{m}" for m in models) if c in pg.columns]
        E = pg[cols].to_numpy(dtype=np.float64)
        pref = np.asarray([c[len("elpd_") :] for c in cols], dtype=object)[np.argmax(E, axis=1)]
    if "elpd_margin" in pg.columns:
        margin = pg["elpd_margin"].to_numpy(dtype=np.float64)
    else:
        cols = [c for c in (f"elpd_{m}" for m in models) if c in pg.columns]
        E = -np.sort(-pg[cols].to_numpy(dtype=np.float64), axis=1)
        margin = E[:, 0] - E[:, 1]
    cats = models + sorted(set(pref) - set(models))
    ys = np.arange(len(cats))[::-1]
    clear = np.array([np.sum((pref == m) & (margin >= _CLEAR)) for m in cats])
    close = np.array([np.sum((pref == m) & (margin < _CLEAR)) for m in cats])
    cs = [colors.get(m, (0.5, 0.5, 0.5, 1.0)) for m in cats]
    a.barh(ys, clear, color=cs)
    a.barh(ys, close, left=clear, color=cs, alpha=0.35)
    for y, c1, c2 in zip(ys, clear, close, strict=True):
        a.annotate(
            f"{c1 + c2}",
            (c1 + c2, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
        )
    a.set_yticks(ys, cats)
    a.set_xlim(0, max(1, int((clear + close).max())) * 1.18)
    a.set_xlabel("genes preferring the model")
    a.set_title(f"best model per gene ({len(pref)} genes)", fontsize="medium")
    a.legend(
        handles=[
            Patch(color="0.35", label=f"margin ≥ {_CLEAR:g}"),
            Patch(color="0.35", alpha=0.35, label=f"margin < {_CLEAR:g}"),
        ],
        fontsize="small",
        frameon=False,
        loc="lower right",
    )

    d = pg[f"elpd_{first}"].to_numpy(dtype=np.float64) - pg[f"elpd_{second}"].to_numpy(
        dtype=np.float64
    )
    ok = np.isfinite(d)
    genes = np.asarray(pg.index.map(str))[ok]
    d = d[ok]
    order = np.argsort(-d, kind="stable")
    d_sorted, g_sorted = d[order], genes[order]
    rank = np.arange(1, d.size + 1)
    pos = d_sorted >= 0
    b.scatter(rank[pos], d_sorted[pos], s=8, lw=0, color=colors[first], label=f"favours {first}")
    b.scatter(
        rank[~pos], d_sorted[~pos], s=8, lw=0, color=colors[second], label=f"favours {second}"
    )
    b.axhline(0.0, color="0.4", lw=0.8)
    for t in (-_CLEAR, _CLEAR):
        b.axhline(t, color="0.6", lw=0.8, ls="--")
    if d.size and np.max(np.abs(d)) > 10 * _CLEAR:  # linear within ±4, log beyond
        b.set_yscale("symlog", linthresh=_CLEAR)
    n_lab = min(3, d.size // 2)
    for j in range(n_lab):  # the most extreme genes each way, stacked towards the middle
        top, bottom = j, d.size - 1 - j
        b.annotate(
            g_sorted[top],
            (rank[top], d_sorted[top]),
            xytext=(6, -9 * j - 2),
            textcoords="offset points",
            fontsize="x-small",
            va="center",
            ha="left",
        )
        b.annotate(
            g_sorted[bottom],
            (rank[bottom], d_sorted[bottom]),
            xytext=(-6, 9 * j + 2),
            textcoords="offset points",
            fontsize="x-small",
            va="center",
            ha="right",
        )
    b.set_xlabel("gene rank")
    b.set_ylabel(f"elpd({first}) − elpd({second})")
    n_first, n_second = int(np.sum(d > 0)), int(np.sum(d < 0))
    b.set_title(f"{first} vs {second}: {n_first} vs {n_second} genes", fontsize="medium")
    b.legend(fontsize="small", frameon=False, loc="upper right")


# ----------------------------------------------------------------------------- public
def model_comparison(
    adata: AnnData,
    *,
    key: str = _DEFAULT_KEY,
    kind: str = "elpd",
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Model comparison by expected log predictive density (PSIS-LOO or WAIC).

    ``kind="elpd"``: one panel with each model's elpd ± se (circles; best on top, its
    elpd dashed) and, for the other models, the paired standard error of the difference
    to the best (triangles, ``se_diff``). Each model is annotated with
    ``Δ = elpd_model - elpd_best ± se_diff`` and its pseudo-BMA weight; models with units
    whose Pareto k exceeds 0.7 are flagged in red (their LOO estimate is unreliable).
    A difference within about 2 × ``se_diff``, or below 4, is weak evidence.

    ``kind="per_gene"``: two panels. Left, how many genes each model predicts best, split
    by whether the margin over the runner-up is at least 4 (solid) or not (pale). Right,
    the per-gene elpd difference between the two best models overall, genes ranked from
    most in favour of the best to most in favour of the runner-up (symlog axis, ±4 dashed;
    the most extreme genes are named).

    Parameters
    ----------
    adata
        AnnData on which :func:`scnbtools.tl.compare_models` was run.
    key
        The comparison's key in ``adata.uns``.
    kind
        ``"elpd"`` or ``"per_gene"`` (needs the per-gene results of the comparison).
    ax
        One Axes (``"elpd"``) or two Axes (``"per_gene"``), or ``None`` to create a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``"elpd"``) or list of two Axes (``"per_gene"``) when ``show=False``, the
    Figure (``return_fig=True``) or ``None`` (shown).
    """
    rec = _comparison_record(adata, key)
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be 'elpd' or 'per_gene', got {kind!r}.")
    show, return_fig = check_show(show, return_fig)
    tab = _table(rec, key)
    criterion = str(rec.get("criterion", "loo"))
    unit = str(rec.get("unit", "cell"))
    if kind == "elpd":
        fig, (a,) = make_axes(ax, 1, panel_size=(5.5, 1.2 + 0.75 * tab.shape[0]))
        _draw_elpd(a, tab, criterion, unit)
        return finish(fig, [a], show=show, return_fig=return_fig, single=True)
    pg = _per_gene(rec, key, list(tab.index))
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(tab.index)}
    fig, axes = make_axes(ax, 2, ncols=2, panel_size=(4.6, 3.6))
    _draw_per_gene(axes[0], axes[1], tab, pg, colors)
    return finish(fig, axes, show=show, return_fig=return_fig, single=False)
