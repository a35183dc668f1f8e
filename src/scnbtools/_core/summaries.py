"""Posterior summaries of draws."""

from __future__ import annotations

import numpy as np

__all__ = ["STATS", "summarize"]

#: the summary statistics written for every parameter, in order
STATS: tuple[str, ...] = ("mean", "sd", "q05", "q50", "q95")


def summarize(draws, axis: int = 0) -> dict[str, np.ndarray]:
    """Mean, sd and 5 / 50 / 95 % quantiles of ``draws`` along ``axis``."""
    d = np.asarray(draws, dtype=np.float64)
    q05, q50, q95 = np.quantile(d, [0.05, 0.5, 0.95], axis=axis)
    return {
        "mean": d.mean(axis=axis),
        "sd": d.std(axis=axis, ddof=1) if d.shape[axis] > 1 else np.zeros_like(q50),
        "q05": q05,
        "q50": q50,
        "q95": q95,
    }
