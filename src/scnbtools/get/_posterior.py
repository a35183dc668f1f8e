"""Read fitted NB-family results back as tidy tables and arrays."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._core.engine import posterior_draws
from .._core.models import get_model
from .._core.summaries import STATS
from .._validate import check_positive_int, resolve_rng

__all__ = ["fit_result", "posterior_df", "posterior_samples"]


def fit_result(adata: AnnData, key: str) -> dict:
    """``adata.uns[key]`` of an NB-family fit, with a clear error if it is missing."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData object, got {type(adata).__name__}.")
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, got {type(key).__name__}.")
    res = adata.uns.get(_keys.uns_key(key))
    if not isinstance(res, dict) or "params" not in res or "variational_params" not in res:
        fits = [k for k, v in adata.uns.items() if isinstance(v, dict) and "variational_params" in v]
        raise KeyError(
            f"no scnbtools fit under key {key!r} in `adata.uns` (fits found: "
            f"{', '.join(map(repr, fits)) or 'none'}). Run e.g. `snb.tl.fit_zinb(adata, key_added={key!r})` first."
        )
    return res


def posterior_df(adata: AnnData, key: str, param: str) -> pd.DataFrame:
    """Posterior summaries of one parameter as a DataFrame.

    Per-gene parameters (``r``, ``gate``, ``mu``, ``rho``) give one row per gene;
    global ones (``p``) a single row. Columns: ``mean, sd, q05, q50, q95``.
    """
    res = fit_result(adata, key)
    spec = get_model(str(res["params"]["model"]))
    glob = res.get("global", {})
    if param in glob:
        g = glob[param]
        return pd.DataFrame({s: [float(g[s])] for s in STATS}, index=pd.Index([param], name="param"))
    first = adata.varm.get(_keys.gene_key(key, "mean"))
    if first is None:
        raise KeyError(f"`adata.varm[{_keys.gene_key(key, 'mean')!r}]` is missing; refit with key_added={key!r}.")
    if param not in spec.gene_outputs:
        valid = [*glob.keys(), *spec.gene_outputs]
        raise KeyError(f"`param`={param!r} is not a parameter of this {spec.name} fit; choose one of {', '.join(map(repr, valid))}.")
    cols = {}
    for stat in STATS:
        df = adata.varm[_keys.gene_key(key, stat)]
        cols[stat] = np.asarray(df[param] if isinstance(df, pd.DataFrame) else df[:, spec.gene_outputs.index(param)])
    return pd.DataFrame(cols, index=adata.var_names.copy())


def posterior_samples(adata: AnnData, key: str, *, n_samples: int = 100, rng=0) -> dict[str, np.ndarray]:
    """Fresh draws from the stored posterior: ``{param: array [n_samples, ...]}``.

    Gene-level arrays are ``[n_samples, n_genes]``; global ones ``[n_samples]``. Works after
    ``write_h5ad`` / ``read_h5ad`` (everything needed is in ``adata.uns[key]``).
    """
    res = fit_result(adata, key)
    spec = get_model(str(res["params"]["model"]))
    n = check_positive_int(n_samples, "n_samples")
    seed = resolve_rng(rng)
    params = {k: np.asarray(v) for k, v in res["variational_params"].items()}
    return posterior_draws(spec, str(res["params"]["guide"]), params, jax.random.PRNGKey(seed), n)
