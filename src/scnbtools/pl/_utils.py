"""The one shared plotting helper: axes from ``ax``, and scanpy's show / return_fig behaviour."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._validate import check_bool

__all__ = ["check_show", "finish", "make_axes"]


def check_show(show, return_fig) -> tuple[bool | None, bool]:
    """Validated ``show`` (True, False or None) and ``return_fig`` (True or False)."""
    return check_bool(show, "show", allow_none=True), check_bool(return_fig, "return_fig")


def make_axes(
    ax,
    n_panels: int,
    *,
    ncols: int = 1,
    panel_size: tuple[float, float] = (4.0, 3.2),
) -> tuple[Figure, list[Axes]]:
    """The axes to draw ``n_panels`` panels on.

    ``ax=None`` creates a new figure with a grid of ``ncols`` columns (unused cells
    removed); otherwise ``ax`` must be one Axes (``n_panels == 1``) or a sequence / array of
    exactly ``n_panels`` Axes, which are used as given (nothing new is created).
    Validate everything else before calling this, so an error never leaves a stray figure.
    """
    if ax is None:
        ncols = max(1, min(ncols, n_panels))
        nrows = -(-n_panels // ncols)
        fig, grid = plt.subplots(
            nrows,
            ncols,
            figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
            squeeze=False,
            layout="constrained",
        )
        flat = list(grid.ravel())
        for extra in flat[n_panels:]:
            extra.remove()
        return fig, flat[:n_panels]
    if isinstance(ax, Axes):
        axes = [ax]
    elif isinstance(ax, Sequence | np.ndarray) and not isinstance(ax, str):
        axes = list(np.asarray(ax, dtype=object).ravel())
        if not all(isinstance(a, Axes) for a in axes):
            raise TypeError("`ax` must be a matplotlib Axes or a sequence of Axes.")
    else:
        raise TypeError(
            f"`ax` must be a matplotlib Axes, a sequence of Axes or None, got {type(ax).__name__}."
        )
    if len(axes) != n_panels:
        raise ValueError(
            f"`ax` holds {len(axes)} Axes but this plot has {n_panels} panel(s); pass one Axes "
            "per panel, or `ax=None` to create a figure."
        )
    return axes[0].figure, axes


def finish(fig: Figure, axes: list[Axes], *, show: bool | None, return_fig: bool, single: bool):
    """Return what scanpy returns.

    ``return_fig=True`` gives the Figure (not shown). Otherwise ``show=None`` follows
    ``scanpy.settings.autoshow``; a shown plot returns ``None``, an unshown one its Axes
    (one Axes if ``single``, else the list).
    """
    if return_fig:
        return fig
    if show is None:
        import scanpy as sc

        show = bool(sc.settings.autoshow)
    if show:
        plt.show()
        return None
    return axes[0] if single else axes
