"""Every AnnData key scnbtools writes is built here."""

from __future__ import annotations

from ._core.summaries import STATS

__all__ = [
    "STATS",
    "assignment_key",
    "cell_key",
    "factor_key",
    "gene_key",
    "gene_keys",
    "latent_key",
    "loadings_key",
    "newton_key",
    "uns_key",
]


def gene_key(key: str, stat: str) -> str:
    """``adata.varm`` key of a per-gene summary, e.g. ``zinb_mean``."""
    if stat not in STATS:
        raise ValueError(f"`stat`={stat!r} is not one of {', '.join(STATS)}.")
    return f"{key}_{stat}"


def gene_keys(key: str) -> list[str]:
    return [gene_key(key, s) for s in STATS]


def cell_key(key: str, stat: str) -> str:
    """``adata.obsm`` key of a per-cell summary."""
    return f"{key}_{stat}"


def uns_key(key: str) -> str:
    return key


def assignment_key(key: str) -> str:
    """``adata.obsm`` key of a mixture's per-cell component probabilities."""
    return f"{key}_assignment"


def loadings_key(key: str, *, perp: bool = False) -> str:
    """``adata.varm`` key of a log-normal fit's loadings ``W`` (or ``W⊥`` with ``perp``)."""
    return f"{key}_W_perp" if perp else f"{key}_W"


def latent_key(key: str) -> str:
    """``adata.obsm`` key of a log-normal fit's MAP latent log-rates ``x̂_c``."""
    return f"{key}_x"


def factor_key(key: str) -> str:
    """``adata.obsm`` key of a log-normal fit's factor scores ``E[z_c | x̂_c]``."""
    return f"{key}_z"


def newton_key(key: str) -> str:
    """``adata.obsm`` key of a log-normal fit's per-cell Newton diagnostics."""
    return f"{key}_newton"
