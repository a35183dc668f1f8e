"""Input validation shared by the AnnData front ends; everything fails before any JAX work."""

from __future__ import annotations

import numbers

import numpy as np
from anndata import AnnData

from ._core.data import CountData

__all__ = [
    "check_adata",
    "check_bool",
    "check_key",
    "check_positive_float",
    "check_positive_int",
    "counts_from",
    "resolve_rng",
]


def check_adata(adata, *, allow_view: bool = False) -> AnnData:
    """``adata`` if it is a non-empty AnnData (and not a view unless ``allow_view``)."""
    if not isinstance(adata, AnnData):
        raise TypeError(
            f"`adata` must be an AnnData object, got {type(adata).__name__}. "
            "Wrap a matrix with `anndata.AnnData(X)`."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"`adata` is empty ({adata.n_obs} cells × {adata.n_vars} genes); need at least "
            "one cell and one gene."
        )
    if adata.is_view and not allow_view:
        # a view would be silently turned into a copy when we write results
        raise ValueError(
            "`adata` is a view; results cannot be written into it. Call `.copy()` first, "
            "e.g. `adata = adata[mask].copy()`."
        )
    return adata


def get_matrix(adata: AnnData, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "`adata.X` is None; pass the layer that holds raw counts via `layer=`."
            )
        return adata.X, "adata.X"
    if not isinstance(layer, str):
        raise TypeError(
            f"`layer` must be the name of a layer (a string) or None for `X`, got {layer!r}."
        )
    if layer not in adata.layers:
        avail = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise KeyError(f"`layer`={layer!r} is not in `adata.layers` (available: {avail}).")
    return adata.layers[layer], f"adata.layers[{layer!r}]"


def counts_from(
    adata: AnnData, layer: str | None, *, allow_empty_genes=False, allow_empty_cells=True
):
    """Validated :class:`CountData` from ``adata`` (``X`` or ``layer``)."""
    X, name = get_matrix(adata, layer)
    try:
        counts = CountData(X, name=name)
    except TypeError as e:
        raise TypeError(f"{e} Raw counts must be a numpy array or scipy sparse matrix.") from None
    if not allow_empty_genes:
        zg = counts.zero_genes()
        if zg.size:
            names = ", ".join(map(str, adata.var_names[zg[:5]]))
            raise ValueError(
                f"{zg.size} gene(s) have zero counts in every cell (e.g. {names}); their "
                "parameters are not identifiable. Remove them first with "
                "`snb.pp.filter_empty(adata)` or `sc.pp.filter_genes(adata, min_counts=1)`."
            )
    if not allow_empty_cells:
        zc = counts.zero_cells()
        if zc.size:
            names = ", ".join(map(str, adata.obs_names[zc[:5]]))
            raise ValueError(
                f"{zc.size} cell(s) have zero counts in every gene (e.g. {names}). Remove them "
                "first with `snb.pp.filter_empty(adata)` or `sc.pp.filter_cells(adata, min_counts=1)`."
            )
    return counts


def check_key(key, name: str = "key_added") -> str:
    if not isinstance(key, str):
        raise TypeError(f"`{name}` must be a string, got {key!r} ({type(key).__name__}).")
    if not key or not key.replace("_", "").replace("-", "").isalnum():
        raise ValueError(
            f"`{name}` must be a non-empty string of letters, digits, '_' or '-', got {key!r}."
        )
    return key


def check_bool(value, name: str, *, allow_none: bool = False) -> bool | None:
    """``value`` if it is ``True`` / ``False`` (or ``None`` when allowed), else a TypeError."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool | np.bool_):
        allowed = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"`{name}` must be {allowed}, got {value!r}.")
    return bool(value)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return float(value)


def resolve_rng(rng) -> int:
    """Seed from ``rng``: an int, or a ``numpy.random.Generator`` (one integer drawn from it)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**31 - 1))
    if isinstance(rng, bool) or not isinstance(rng, numbers.Integral):
        raise TypeError(
            f"`rng` must be an int seed or a numpy.random.Generator, got {rng!r} "
            f"({type(rng).__name__}); e.g. `rng=0` or `rng=np.random.default_rng(0)`."
        )
    if not 0 <= int(rng) < 2**32:
        raise ValueError(f"`rng` must be in [0, 2**32), got {rng}.")
    return int(rng)


def resolve_progress(progress_bar) -> bool:
    from ._settings import settings

    if progress_bar is None:
        return bool(settings.progress_bar)
    return check_bool(progress_bar, "progress_bar", allow_none=True)
