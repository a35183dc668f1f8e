"""Plots of ZiPo fits: the training history and the first layer's sparsity."""

from __future__ import annotations

import numbers

import numpy as np
from anndata import AnnData

from .._core.models.zipo import normalized_first_layer
from .._validate import check_bool
from ..tl._zipo import _HIST_EDGES, zipo_result
from ._utils import finish, make_axes

__all__ = ["zipo_sparsity", "zipo_training"]

_TRAIN, _VAL, _LR, _AFTER = "tab:blue", "tab:orange", "tab:red", "tab:green"


def _flags(show, return_fig) -> tuple[bool | None, bool]:
    return check_bool(show, "show", allow_none=True), check_bool(return_fig, "return_fig")


def zipo_training(
    adata: AnnData,
    *,
    key: str = "zipo",
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Training and validation loss per epoch (left) and the learning rate (right).

    The loss is the penalised per-entry loss the optimiser saw; the best epoch (whose weights
    were kept) is marked. The learning rate starts high, decays geometrically to its floor
    and drops further on plateaus.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_zipo`.
    key
        The fit's ``key_added``.
    ax
        Two Axes (loss, learning rate), or ``None`` to create a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The list of two Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    res = zipo_result(adata, key)
    show, return_fig = _flags(show, return_fig)
    loss = np.asarray(res["loss"], dtype=np.float64)
    val = np.asarray(res.get("val_loss", []), dtype=np.float64)
    lr = np.asarray(res["learning_rate"], dtype=np.float64)
    fig, (a, b) = make_axes(ax, 2, ncols=2, panel_size=(4.2, 3.2))
    epochs = np.arange(1, loss.size + 1)
    a.plot(epochs, loss, color=_TRAIN, label="training")
    if val.size:
        a.plot(epochs[: val.size], val, color=_VAL, label="validation")
    best = int(res.get("best_epoch", -1))
    if best >= 0:
        a.axvline(best + 1, color="0.5", ls=":", lw=1, label=f"best epoch ({best + 1})")
    a.set_xlabel("epoch")
    a.set_ylabel("loss per entry (NLL + penalties)")
    a.legend(frameon=False, fontsize="small")
    b.plot(epochs[: lr.size], lr, color=_LR)
    b.set_yscale("log")
    b.set_xlabel("epoch")
    b.set_ylabel("learning rate")
    status = "early-stopped" if bool(res.get("stopped_early", False)) else "ran max_epochs"
    a.set_title(f"{key}: {loss.size} epochs, {status}", fontsize="medium")
    return finish(fig, [a, b], show=show, return_fig=return_fig, single=False)


def zipo_sparsity(
    adata: AnnData,
    *,
    key: str = "zipo",
    delta: float | None = None,
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Histogram of first-layer weight magnitudes, before and after pruning.

    Each weight's magnitude is divided by its neuron's largest one and shown on a
    ``log10`` axis. After :func:`scnbtools.tl.zipo_prune`, the stored histograms before
    and after pruning are drawn with the threshold ``delta`` and the change in held-out NLL;
    otherwise the current weights, with ``delta`` (if given) marking where pruning would cut.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`scnbtools.tl.fit_zipo`.
    key
        The fit's ``key_added``.
    delta
        Threshold to mark when the fit has not been pruned (ignored after pruning).
    ax
        Matplotlib Axes, or ``None`` to create a figure.
    show
        Show the plot; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    res = zipo_result(adata, key)
    if delta is not None and (
        isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1
    ):
        raise ValueError(f"`delta` must be a number in (0, 1) or None, got {delta!r}.")
    show, return_fig = _flags(show, return_fig)
    fig, (a,) = make_axes(ax, 1, panel_size=(5.0, 3.4))
    W = np.asarray(res["weights"]["enc_0"]["W"])
    pr = res.get("pruning")
    edges = np.asarray(pr["hist_edges"] if pr is not None else _HIST_EDGES, dtype=np.float64)
    width = np.diff(edges)
    if pr is not None:
        before = np.asarray(pr["hist_before"], dtype=np.float64)
        after = np.asarray(pr["hist_after"], dtype=np.float64)
        a.bar(edges[:-1], before, width=width, align="edge", color="0.7", label="before pruning")
        a.bar(
            edges[:-1],
            after,
            width=width,
            align="edge",
            color=_AFTER,
            alpha=0.7,
            label="after pruning",
        )
        delta = float(pr["delta"])
        note = (
            f"{100 * float(pr['fraction_pruned']):.1f}% of weights zero; held-out NLL "
            f"{float(pr['heldout_nll_before']):.4f} → {float(pr['heldout_nll_after']):.4f}"
        )
    else:
        rel = normalized_first_layer(W).ravel()
        logs = np.clip(np.log10(rel[rel > 0]), edges[0], 0.0)
        counts = np.histogram(logs, bins=edges)[0]
        a.bar(edges[:-1], counts, width=width, align="edge", color=_TRAIN, label="weights")
        note = f"{100 * float(np.mean(rel == 0)):.1f}% of weights zero"
        if delta is not None:
            note += f"; {100 * float(np.mean(rel < delta)):.1f}% below δ"
    if delta is not None:
        a.axvline(np.log10(delta), color=_LR, ls="--", lw=1, label=f"δ = {delta:g}")
    a.set_xlabel("log10 |weight| / neuron's max |weight|")
    a.set_ylabel("first-layer weights")
    a.set_title(note, fontsize="small")
    a.legend(frameon=False, fontsize="small", loc="upper left")
    return finish(fig, [a], show=show, return_fig=return_fig, single=True)
