"""Preprocessing: count checks and simple filters."""

from ._counts import check_counts, filter_empty

__all__ = ["check_counts", "filter_empty"]
