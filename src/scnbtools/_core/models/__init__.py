"""The model registry: one entry per model, registered as data."""

from __future__ import annotations

from ._spec import LatentSite, ModelSpec
from .nb import NBDM, ZINB

__all__ = ["REGISTRY", "LatentSite", "ModelSpec", "available_models", "get_model", "register"]

REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (names are unique)."""
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    """Look a model up by name, with an error listing the available ones."""
    if not isinstance(name, str):
        raise TypeError(f"`model` must be a string, got {type(name).__name__}.")
    key = name.lower()
    if key not in REGISTRY:
        raise ValueError(
            f"`model`={name!r} is not a registered model; choose one of "
            f"{', '.join(map(repr, sorted(REGISTRY)))}."
        )
    return REGISTRY[key]


def available_models() -> dict[str, str]:
    """``{name: description}`` of every registered model."""
    return {k: v.description for k, v in sorted(REGISTRY.items())}


for _spec in (NBDM, ZINB):
    register(_spec)
