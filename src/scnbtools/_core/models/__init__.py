"""The model registry: one entry per model, registered as data.

NB-family models (``nbdm``, ``zinb``, ``nbvcp``, ``zinbvcp``) are registered by name; their
variants (parameterization, mixture components, capture prior) are built from the same
registry entry by :func:`resolve_spec`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._spec import LatentSite, ModelSpec
from .lognormal import NBLN, PLN, LaplaceModel
from .nb import NBDM, ZINB
from .nbfamily import BASES, make_nb_spec

__all__ = [
    "REGISTRY",
    "LaplaceModel",
    "LatentSite",
    "ModelSpec",
    "available_models",
    "get_model",
    "register",
    "resolve_spec",
    "spec_from_config",
]

REGISTRY: dict[str, ModelSpec | LaplaceModel] = {}


def register(spec: ModelSpec | LaplaceModel) -> ModelSpec | LaplaceModel:
    """Add a model to the registry (names are unique)."""
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec | LaplaceModel:
    """Look a model up by name, with an error listing the available ones."""
    if not isinstance(name, str):
        raise TypeError(f"`model` must be a string, got {type(name).__name__}.")
    key = name.lower()
    if key not in REGISTRY:
        from .nbfamily import _SPECS

        for spec in _SPECS.values():  # a variant built earlier in this process
            if spec.name == name:
                return spec
        raise ValueError(
            f"`model`={name!r} is not a registered model; choose one of "
            f"{', '.join(map(repr, sorted(REGISTRY)))}."
        )
    return REGISTRY[key]


def resolve_spec(
    model: str,
    *,
    parameterization: str = "canonical",
    n_components: int = 1,
    mixture_params: Sequence[str] | None = None,
    capture_prior: str = "beta",
) -> ModelSpec:
    """The spec of a registered model in a given configuration."""
    base = get_model(model)
    if base.name in BASES:
        return make_nb_spec(
            base.name,
            parameterization=parameterization,
            n_components=n_components,
            mixture_params=mixture_params,
            capture_prior=capture_prior,
        )
    return base


def spec_from_config(config) -> ModelSpec:
    """Rebuild a spec from the ``config`` stored with a fit (``uns[key]['params']['config']``)."""
    mp = config.get("mixture_params", ())
    if isinstance(mp, str):  # stored comma-joined (plain types only in uns)
        mp = [m for m in mp.split(",") if m]
    return resolve_spec(
        str(config["base"]),
        parameterization=str(config.get("parameterization", "canonical")),
        n_components=int(config.get("n_components", 1)),
        mixture_params=[str(m) for m in mp] if int(config.get("n_components", 1)) > 1 else None,
        capture_prior=str(config.get("capture_prior", "beta")),
    )


def available_models() -> dict[str, str]:
    """``{name: description}`` of every registered model."""
    return {k: v.description for k, v in sorted(REGISTRY.items())}


for _spec in (NBDM, ZINB, make_nb_spec("nbvcp"), make_nb_spec("zinbvcp"), PLN, NBLN):
    register(_spec)
