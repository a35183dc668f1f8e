"""Bundled real data and seeded synthetic generators with ground truth."""

__all__: list[str] = []
