"""Read fitted NB-family results back as tidy tables and arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._core.models import get_model, spec_from_config
from .._core.summaries import STATS
from .._validate import check_positive_int, resolve_rng

__all__ = ["fit_result", "posterior_df", "posterior_samples"]


def fit_result(adata: AnnData, *, key: str) -> dict:
    """Everything a fit (NB family or log-normal) stored in ``adata.uns[key]``.

    Parameters
    ----------
    adata
        AnnData fitted by e.g. :func:`scnbtools.tl.fit_zinb`.
    key
        The fit's ``key_added``.

    Returns
    -------
    The ``adata.uns[key]`` dict (``params``, ``global``, ``loss``, ``learning_rate``,
    ``converged``, ``n_steps_run``, ``runtime_s``, ``n_cells``, ``variational_params``; a
    log-normal fit has ``laplace`` instead of ``variational_params``), not a copy. A ``KeyError`` listing the fits present is raised if there is none.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(
            f"`adata` must be an AnnData object, got {type(adata).__name__}. "
            "Pass the AnnData you fitted with `snb.tl.fit_*`."
        )
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string (a fit's `key_added`), got {key!r}.")
    res = adata.uns.get(_keys.uns_key(key))

    def is_fit(v):
        return (
            isinstance(v, dict) and "params" in v and ("variational_params" in v or "laplace" in v)
        )

    if not is_fit(res):
        fits = [k for k, v in adata.uns.items() if is_fit(v)]
        raise KeyError(
            f"`key`={key!r}: no scnbtools fit under this key in `adata.uns` (fits found: "
            f"{', '.join(map(repr, fits)) or 'none'}). Pass one of those as `key=`, or run e.g. "
            f"`snb.tl.fit_zinb(adata, key_added={key!r})` first."
        )
    return res


def component_names(res: dict, n_components: int | None = None) -> list[str]:
    """Component names of a stored NB-family fit, in component order (``uns[key]
    ["components"]`` is ``{"0": name, ...}``); ``component_<k>`` when absent."""
    comps = res.get("components")
    if isinstance(comps, dict):
        return [str(comps[k]) for k in sorted(comps, key=int)]
    if comps is not None:
        return [str(c) for c in np.asarray(comps).ravel().tolist()]
    return [f"component_{k}" for k in range(int(n_components or 0))]


def _require_posterior(res: dict, key: str, fn: str) -> None:
    if "variational_params" not in res:
        raise ValueError(
            f"`{fn}` reads an NB-family posterior, but {key!r} is a "
            f"{res['params'].get('model')!r} Laplace fit with point estimates of its globals: "
            f"read them from `adata.varm['{key}_mean']` / `['{key}_W']`, or use "
            "`snb.get.correlation` / `snb.get.W_compositional`."
        )


def fit_spec(res: dict):
    """The model spec of a stored fit (its configuration is stored with it)."""
    params = res["params"]
    if "config" in params:
        return spec_from_config(params["config"])
    return get_model(str(params["model"]))


def posterior_df(adata: AnnData, *, key: str, param: str) -> pd.DataFrame:
    """Posterior summaries of one parameter as a DataFrame.

    Parameters
    ----------
    adata
        AnnData fitted by e.g. :func:`scnbtools.tl.fit_zinb`.
    key
        The fit's ``key_added``.
    param
        A per-gene parameter (``r``, ``gate`` for zero-inflated models, ``mu``, ``rho``;
        ``r_0``, ``r_1``, ... for mixtures), a per-cell one (``nu``, ``eta`` for capture
        models) or a global one (``p``, ``phi``, ``mixing_weights_0``, ...).

    Returns
    -------
    Columns ``mean, sd, q05, q50, q95``; one row per gene (indexed by ``var_names``) for a
    per-gene parameter, one per cell (``obs_names``) for a per-cell one, a single row
    (indexed by the parameter name) for a global one.
    """
    res = fit_result(adata, key=key)
    _require_posterior(res, key, "posterior_df")
    glob = res.get("global", {})
    if not isinstance(param, str):
        raise TypeError(f"`param` must be a string, got {param!r}.")
    if param in glob:
        g = glob[param]
        return pd.DataFrame(
            {s: [float(g[s])] for s in STATS}, index=pd.Index([param], name="param")
        )
    for slot, store, names, index in (
        ("varm", adata.varm, _keys.gene_key, adata.var_names),
        ("obsm", adata.obsm, _keys.cell_key, adata.obs_names),
    ):
        first = store.get(names(key, "mean"))
        if isinstance(first, pd.DataFrame) and param in first.columns:
            cols = {}
            for stat in STATS:
                k = names(key, stat)
                if k not in store:
                    raise KeyError(
                        f"`adata.{slot}[{k!r}]` is missing (removed or subset away?); refit with "
                        f"`key_added={key!r}`."
                    )
                cols[stat] = np.asarray(store[k][param], dtype=np.float64)
            return pd.DataFrame(cols, index=index.copy())
    valid = list(glob.keys())
    for store, names in ((adata.varm, _keys.gene_key), (adata.obsm, _keys.cell_key)):
        first = store.get(names(key, "mean"))
        if isinstance(first, pd.DataFrame):
            valid += list(first.columns)
    if _keys.gene_key(key, "mean") not in adata.varm:
        raise KeyError(
            f"`adata.varm[{_keys.gene_key(key, 'mean')!r}]` is missing (removed or subset "
            f"away?); refit with `key_added={key!r}`."
        )
    raise KeyError(
        f"`param`={param!r} is not a parameter of this {res['params'].get('spec', res['params']['model'])} "
        f"fit; choose one of {', '.join(map(repr, valid))}."
    )


def posterior_samples(
    adata: AnnData, *, key: str, n_samples: int = 100, rng: int | np.random.Generator = 0
) -> dict[str, np.ndarray]:
    """Fresh draws from the stored posterior.

    Works after ``write_h5ad`` / ``read_h5ad`` and ``write_zarr`` / ``read_zarr``
    (everything needed is in ``adata.uns[key]['variational_params']``).

    Parameters
    ----------
    adata
        AnnData fitted by e.g. :func:`scnbtools.tl.fit_zinb`.
    key
        The fit's ``key_added``.
    n_samples
        Number of draws (a MAP fit gives identical draws, the point estimate).
    rng
        Seed (int) or ``numpy.random.Generator``; the same seed gives identical draws.

    Returns
    -------
    ``{param: array}`` for every latent and derived parameter: per-gene ones are
    ``[n_samples, n_genes]``, global ones ``[n_samples]``.
    """
    from ..tl._nb_write import redraw

    res = fit_result(adata, key=key)
    _require_posterior(res, key, "posterior_samples")
    spec = fit_spec(res)
    n = check_positive_int(n_samples, "n_samples")
    seed = resolve_rng(rng)
    return redraw(spec, res, n, seed)
