"""Fitting gene-level count models: the bridge between specs, data and the SVI driver.

No AnnData here: inputs are a :class:`~scnbtools._core.data.CountData` and a
:class:`~scnbtools._core.models.ModelSpec`; outputs are NumPy arrays.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .data import CountData, GeneHistograms, PaddedRows
from .infer.svi import run_svi
from .models._spec import ModelSpec, build_guide, build_model, sample_guide
from .summaries import summarize

__all__ = ["GeneFit", "fit_gene_model", "histogram_arrays", "make_row_batch_fn", "posterior_draws"]


@dataclass
class GeneFit:
    """Result of :func:`fit_gene_model` (plain NumPy)."""

    model: str
    inference: str
    guide: str
    params: dict[str, np.ndarray]
    losses: np.ndarray
    lr_trace: np.ndarray
    converged: bool
    n_steps: int
    n_compilations: int
    runtime_s: float
    gene_summaries: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    global_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per-cell summaries of cell-level sites (capture models), arrays of shape [N]
    cell_summaries: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: posterior component probabilities per cell [N, K] (mixtures)
    assignment: np.ndarray | None = None
    layout: str = "hist"
    batch_size: int | None = None
    n_posterior_samples: int = 0


class DivergenceError(RuntimeError):
    """The optimisation produced non-finite values."""


#: largest survival grid (points) used by the closed-form NB normaliser; beyond it (genes
#: with enormous maximum counts) the per-entry ``betaln`` path is used instead
MAX_SURVIVAL_GRID = 50_000_000


def histogram_arrays(hist: GeneHistograms, spec: ModelSpec | None = None) -> dict[str, jax.Array]:
    """Device arrays of the sufficient statistics (plus the survival grid when ``spec``
    has closed-form rising-factorial structure and the grid is not too large)."""
    out = {
        "value": jnp.asarray(hist.value),
        "gene": jnp.asarray(hist.gene),
        "weight": jnp.asarray(hist.weight),
        "n_zeros": jnp.asarray(hist.n_zeros),
    }
    if spec is not None and spec.rising_site is not None:
        grid_size = int(np.sum(_max_per_gene(hist)))
        if grid_size <= MAX_SURVIVAL_GRID:
            s = hist.survival()
            out.update(
                surv_gene=jnp.asarray(s.gene),
                surv_j=jnp.asarray(s.j),
                surv_count=jnp.asarray(s.count),
            )
    return _pad_entries(out)


def _bucket(n: int) -> int:
    """Next power of two (at least 1024): padded sizes let refits reuse compiled code."""
    return max(1024, 1 << max(int(n) - 1, 0).bit_length())


def _pad_entries(arrays: dict) -> dict:
    """Pad the per-entry and survival arrays to bucket sizes with zero weights (exact:
    padded entries contribute ``0 * finite``)."""
    out = dict(arrays)
    groups = [("value", "gene", "weight")]
    if "surv_gene" in arrays:
        groups.append(("surv_gene", "surv_j", "surv_count"))
    for names in groups:
        n = int(arrays[names[0]].shape[0])
        pad = _bucket(n) - n
        for name in names:
            out[name] = jnp.pad(arrays[name], (0, pad))
    return out


def _max_per_gene(hist: GeneHistograms) -> np.ndarray:
    mx = np.zeros(hist.n_genes, dtype=np.int64)
    np.maximum.at(mx, hist.gene, hist.value.astype(np.int64))
    return mx


def make_row_batch_fn(n_cells: int, n_genes: int, batch_size: int):
    """Batch sampler over padded sparse rows: uniform cells (with replacement), densified
    per batch only, scaled by ``n_cells / batch_size`` so the likelihood is unbiased."""
    scale = float(n_cells) / float(batch_size)

    def batch_fn(key, src):
        idx = jax.random.randint(key, (batch_size,), 0, n_cells)
        cols, vals = src["cols"][idx], src["vals"][idx]
        rows = jnp.broadcast_to(jnp.arange(batch_size)[:, None], cols.shape)
        x = jnp.zeros((batch_size, n_genes + 1), vals.dtype).at[rows, cols].add(vals)
        return {"x": x[:, :n_genes], "scale": jnp.asarray(scale, vals.dtype)}

    return batch_fn


def make_cell_batch_fn(n_cells: int, batch_size: int):
    """Batch sampler over padded sparse rows for models with a custom likelihood: uniform
    cells (with replacement) with their indices (for subsampled cell-level sites), rows,
    library sizes and per-cell prior shifts / annotation boosts."""
    scale = float(n_cells) / float(batch_size)

    def batch_fn(key, src):
        idx = jax.random.randint(key, (batch_size,), 0, n_cells)
        out = {k: v[idx] for k, v in src.items()}
        out["idx"] = idx
        out["scale"] = jnp.asarray(scale, src["vals"].dtype)
        return out

    return batch_fn


@functools.lru_cache(maxsize=32)
def _draws_fn(model_name: str, guide: str, n: int):
    from .models import get_model

    spec = get_model(model_name)

    def draw(params, key):
        draws = sample_guide(spec, guide, params, key, n)
        draws.update(spec.derived(draws))
        return draws

    return jax.jit(draw)


def posterior_draws(spec: ModelSpec, guide: str, params: Mapping[str, Any], key, n: int) -> dict:
    """Draws of every site and derived quantity (leading axis = draw); jitted and cached
    per (model, guide, n) so repeated calls (plots, ``get``) do not retrace."""
    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    draws = _draws_fn(spec.name, guide, int(n))(jparams, key)
    return {k: np.asarray(v) for k, v in draws.items()}


_RUNNERS: collections.OrderedDict = collections.OrderedDict()
_MAX_RUNNERS = 16


def _runner_cache(key) -> dict:
    """Per-configuration slot for the compiled SVI chunk runner (small LRU)."""
    if key in _RUNNERS:
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]
    slot: dict = {}
    _RUNNERS[key] = slot
    while len(_RUNNERS) > _MAX_RUNNERS:
        _RUNNERS.popitem(last=False)
    return slot


def cell_rows(counts: CountData, lib=None, prior_shift=None, ann=None) -> dict[str, np.ndarray]:
    """Host arrays of every cell as padded sparse rows, plus per-cell extras."""
    rows: PaddedRows = counts.padded_rows()
    lib = counts.cell_totals() if lib is None else lib
    out = {
        "cols": rows.cols,
        "vals": rows.vals,
        "lib": np.asarray(lib, dtype=np.float32),
        "prior_shift": (
            np.zeros(counts.n_cells, np.float32)
            if prior_shift is None
            else np.asarray(prior_shift, dtype=np.float32)
        ),
    }
    if ann is not None:
        out["ann"] = np.asarray(ann, dtype=np.float32)
    return out


def big_entry_rows(
    cols: np.ndarray, vals: np.ndarray, n_genes: int, J: int | None = None, width: int | None = None
):
    """The entries of padded rows with a count above ``J``, as their own padded rows
    (``width`` columns: at least the most such entries of any row; fixed by callers that
    process chunks of cells so that every chunk has the same shape)."""
    from .models.nbfamily import RISE_TABLE_J

    J = RISE_TABLE_J if J is None else J
    big = vals > J
    if width is None:
        width = max(int(big.sum(axis=1).max(initial=0)), 1)
    order = np.argsort(~big, axis=1, kind="stable")[:, :width]
    bc = np.take_along_axis(cols, order, axis=1)
    bv = np.take_along_axis(vals, order, axis=1)
    keep = np.take_along_axis(big, order, axis=1)
    return np.where(keep, bc, n_genes).astype(np.int32), np.where(keep, bv, 0.0).astype(np.float32)


def _model_data(spec: ModelSpec, counts: CountData, batch_size, extras: Mapping[str, Any]):
    """(data, batch_fn, batch_source, layout) for a spec and the data."""
    from .models.nb import NBDM
    from .models.nbfamily import data_layout

    if spec.loglik is None:
        if batch_size is None:
            return histogram_arrays(counts.gene_histograms(), spec), None, None, "hist"
        rows = counts.padded_rows()
        source = {"cols": jnp.asarray(rows.cols), "vals": jnp.asarray(rows.vals)}
        return (
            None,
            make_row_batch_fn(counts.n_cells, counts.n_genes, int(batch_size)),
            source,
            "dense",
        )
    layout = data_layout(spec.config)
    lib = counts.cell_totals()
    shift = extras.get("prior_shift")
    cell_extra = {"lib": jnp.asarray(lib, jnp.float32)}
    if shift is not None:
        cell_extra["prior_shift"] = jnp.asarray(shift, jnp.float32)
    grid = (
        histogram_arrays(counts.gene_histograms(), NBDM)
        if (layout in ("hist", "capture_hist") or spec.n_components == 1)
        else {}
    )
    if batch_size is None and layout == "hist":
        return grid, None, None, layout
    if batch_size is None and layout == "capture_hist" and "surv_gene" in grid:
        grid.update(cell_extra)
        return grid, None, None, layout
    host = cell_rows(counts, lib, shift, extras.get("ann"))
    if spec.n_components > 1:
        host["big_cols"], host["big_vals"] = big_entry_rows(
            host["cols"], host["vals"], counts.n_genes
        )
    src = {k: jnp.asarray(v) for k, v in host.items()}
    if "surv_gene" not in grid:
        grid = {}
    if batch_size is None:
        return {**grid, **src}, None, None, "rows"
    return (
        (grid or None),
        make_cell_batch_fn(counts.n_cells, int(batch_size)),
        src,
        "rows_minibatch",
    )


def fit_gene_model(
    spec: ModelSpec,
    counts: CountData,
    *,
    priors: Mapping[str, tuple[str, tuple]],
    inference: str = "svi",
    guide: str = "hierarchical",
    n_steps: int = 5000,
    learning_rate: float = 0.05,
    rng: int = 0,
    tol: float = 1e-6,
    patience: int = 2,
    chunk_size: int = 100,
    num_particles: int = 1,
    n_posterior_samples: int = 1000,
    batch_size: int | None = None,
    progress_bar: bool = False,
    extras: Mapping[str, Any] | None = None,
) -> GeneFit:
    """Fit a model by SVI or MAP.

    With ``batch_size=None`` every step uses the exact full-data likelihood (per-gene
    count histograms, the capture closed form, or all cells' sparse rows; see
    :mod:`~scnbtools._core.models.nbfamily`); otherwise steps use cell minibatches streamed
    from padded sparse rows. ``extras`` carries per-cell data a model needs:
    ``prior_shift`` (capture prior), ``ann`` (annotation log-boosts [N, K]),
    ``component_means`` / ``component_weights`` (mixture starting values).
    """
    extras = dict(extras or {})
    guide_kind = "map" if inference == "map" else guide
    cache_key = (
        spec.name,
        guide_kind,
        tuple(sorted((k, f, tuple(h)) for k, (f, h) in priors.items())),
        counts.n_genes,
        counts.n_cells if any(s.plate == "cell" for s in spec.sites) else None,
        "ann" in extras,
        int(chunk_size),
        int(num_particles),
        None if batch_size is None else (int(batch_size), counts.n_cells),
    )
    mean, var = counts.gene_moments()
    if spec.init_fn is not None:
        ctx = {
            "mean": mean,
            "var": var,
            "lib": counts.cell_totals(),
            "seed": int(rng),
            "priors": priors,
            **extras,
        }
        init = spec.init_fn(ctx)
    else:
        init = spec.init_values(mean, var)
    n_genes, n_cells = counts.n_genes, counts.n_cells
    model = build_model(spec, priors, n_genes, n_cells)
    guide_fn = build_guide(spec, guide_kind, init, n_genes, n_cells)

    key = jax.random.PRNGKey(int(rng))
    fit_key, draw_key = jax.random.split(key)
    data, batch_fn, source, layout = _model_data(spec, counts, batch_size, extras)
    cache_key = (*cache_key, layout)
    res = run_svi(
        model,
        guide_fn,
        data=data,
        learning_rate=learning_rate,
        rng_key=fit_key,
        n_steps=n_steps,
        chunk_size=chunk_size,
        tol=tol,
        patience=patience,
        num_particles=num_particles,
        batch_fn=batch_fn,
        batch_source=source,
        progress_bar=progress_bar,
        desc=f"{spec.name} {inference}",
        cache=_runner_cache(cache_key),
    )
    if res.diverged:
        raise DivergenceError(
            f"the {spec.name} fit diverged after {res.n_steps} steps (non-finite loss or "
            f"parameters). Try a smaller `learning_rate` (now {learning_rate:g}) or check "
            "the input for extreme counts."
        )
    n_draws = 1 if guide_kind == "map" else draw_count(spec, n_cells, n_posterior_samples)
    draws = posterior_draws(spec, guide_kind, res.params, draw_key, n_draws)
    gene_summaries, global_summaries, cell_summaries = summarize_draws(spec, draws, n_draws)
    for name, s in [*gene_summaries.items(), *global_summaries.items(), *cell_summaries.items()]:
        vals = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in s.values()])
        if not np.all(np.isfinite(vals)):
            raise DivergenceError(
                f"the {spec.name} fit produced non-finite posterior summaries for {name!r}; "
                f"try a smaller `learning_rate` (now {learning_rate:g})."
            )
    assignment = None
    if spec.n_components > 1:
        rows = cell_rows(counts, None, extras.get("prior_shift"), extras.get("ann"))
        assignment = cell_component_probs(spec, draws, rows, n_max=100)
    return GeneFit(
        model=spec.name,
        inference=inference,
        guide=guide_kind,
        params=res.params,
        losses=res.losses,
        lr_trace=res.lr_trace,
        converged=res.converged,
        n_steps=res.n_steps,
        n_compilations=res.n_compilations,
        runtime_s=res.runtime_s,
        gene_summaries=gene_summaries,
        global_summaries=global_summaries,
        cell_summaries=cell_summaries,
        assignment=assignment,
        layout=layout,
        batch_size=None if batch_size is None else int(batch_size),
        n_posterior_samples=n_draws,
    )


#: draws × cells kept in memory at once for the summaries of cell-level sites
_MAX_CELL_DRAW_ENTRIES = 40_000_000


def draw_count(spec: ModelSpec, n_cells: int, n_posterior_samples: int) -> int:
    """Posterior draws used for summaries: fewer for very many cells with cell-level sites
    (at least 100), so that draws × cells stays bounded."""
    n = int(n_posterior_samples)
    if any(s.plate == "cell" for s in spec.sites):
        n = min(n, max(100, _MAX_CELL_DRAW_ENTRIES // max(n_cells, 1)))
    return n


def summarize_draws(spec: ModelSpec, draws: Mapping[str, np.ndarray], n_draws: int):
    """(gene, global, cell) summaries from posterior draws (leading axis = draw)."""
    gene_summaries, global_summaries, cell_summaries = {}, {}, {}
    plates = {s.name: s.plate for s in spec.sites}
    if "nu" not in plates and "nu" in draws:
        plates["nu"] = "cell"
    if "p" not in plates and "p" in draws:
        plates["p"] = "global"
    for name, d in draws.items():
        s = summarize(d, axis=0) if n_draws > 1 else _point_summary(d[0])
        plate = plates.get(name, "gene")
        if plate == "global":
            global_summaries[name] = {
                k: (float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=float))
                for k, v in s.items()
            }
        elif plate == "cell":
            cell_summaries[name] = s
        else:
            gene_summaries[name] = s
    return gene_summaries, global_summaries, cell_summaries


_CELL_CHUNK = 1024


@functools.lru_cache(maxsize=16)
def _assign_fn(model_name: str, has_ann: bool):
    from .models import get_model
    from .models.nbfamily import RISE_TABLE_J, component_loglik

    spec = get_model(model_name)
    cell_sites = [s.name for s in spec.sites if s.plate == "cell"]

    def one(values, cols, vals, lib, ann, big):
        ll = component_loglik(
            values, spec.config, cols, vals, lib, ann if has_ann else None, big=big
        )
        return jax.nn.softmax(ll, axis=-1), jax.scipy.special.logsumexp(ll, axis=-1)

    def chunk(draws, idx, cols, vals, lib, ann, big_cols, big_vals):
        # counts up to J from the rising-factorial table, only larger ones through betaln
        big = {"big_cols": big_cols, "big_vals": big_vals, "J": RISE_TABLE_J}

        def per_draw(d):
            v = {k: (d[k][idx] if k in cell_sites else d[k]) for k in d}
            return one(v, cols, vals, lib, ann, big)

        probs, ll = jax.lax.map(per_draw, draws)
        return probs.mean(axis=0), ll

    return jax.jit(chunk)


def cell_component_probs(spec, draws, rows, n_max: int = 100) -> np.ndarray:
    """Posterior component probabilities ``P(z_c = k | x_c)`` per cell, averaged over
    (at most ``n_max``) posterior draws, in fixed-size cell chunks."""
    probs, _ = cell_logliks(spec, draws, rows, n_max=n_max)
    return probs


def cell_logliks(spec, draws, rows, n_max: int = 100):
    """(component probabilities [N, K], per-cell log-likelihood draws [S, N])."""
    site_names = {s.name for s in spec.sites}
    n_all = next(iter(draws.values())).shape[0]
    m = min(n_all, int(n_max))
    sub = {k: jnp.asarray(v[:m]) for k, v in draws.items() if k in site_names}
    fn = _assign_fn(spec.name, "ann" in rows)
    N = rows["cols"].shape[0]
    K = spec.n_components
    probs = np.zeros((N, K))
    lls = np.zeros((m, N))
    ann_all = rows.get("ann", np.zeros((N, K), np.float32))
    n_genes = next(int(sub[s.name].shape[-1]) for s in spec.sites if s.plate == "gene")
    big_cols, big_vals = big_entry_rows(rows["cols"], rows["vals"], n_genes)
    for start in range(0, N, _CELL_CHUNK):
        stop = min(start + _CELL_CHUNK, N)
        idx = np.arange(start, start + _CELL_CHUNK)
        idx = np.minimum(idx, N - 1)  # pad the last chunk by repeating the last cell
        p, ll = fn(
            sub,
            jnp.asarray(idx),
            jnp.asarray(rows["cols"][idx]),
            jnp.asarray(rows["vals"][idx]),
            jnp.asarray(rows["lib"][idx]),
            jnp.asarray(ann_all[idx]),
            jnp.asarray(big_cols[idx]),
            jnp.asarray(big_vals[idx]),
        )
        probs[start:stop] = np.asarray(p)[: stop - start]
        lls[:, start:stop] = np.asarray(ll)[:, : stop - start]
    return probs, lls


def _point_summary(x) -> dict[str, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": x, "sd": np.zeros_like(x), "q05": x, "q50": x, "q95": x}
