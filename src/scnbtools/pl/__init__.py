"""Plots that read only what ``tl`` wrote; they never fit and never mutate."""

__all__: list[str] = []
