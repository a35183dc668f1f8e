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
    global_summaries: dict[str, dict[str, float]] = field(default_factory=dict)


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
) -> GeneFit:
    """Fit a gene-level model by SVI (mean-field) or MAP.

    With ``batch_size=None`` every step uses the exact full-data likelihood from the
    per-gene count histograms; otherwise steps use cell minibatches streamed from padded
    sparse rows.
    """
    guide_kind = "map" if inference == "map" else guide
    cache_key = (
        spec.name,
        guide_kind,
        tuple(sorted((k, f, tuple(h)) for k, (f, h) in priors.items())),
        counts.n_genes,
        int(chunk_size),
        int(num_particles),
        None if batch_size is None else (int(batch_size), counts.n_cells),
    )
    mean, var = counts.gene_moments()
    init = spec.init_values(mean, var)
    n_genes = counts.n_genes
    model = build_model(spec, priors, n_genes)
    guide_fn = build_guide(spec, guide_kind, init, n_genes)

    key = jax.random.PRNGKey(int(rng))
    fit_key, draw_key = jax.random.split(key)
    if batch_size is None:
        data, batch_fn, source = histogram_arrays(counts.gene_histograms(), spec), None, None
    else:
        rows: PaddedRows = counts.padded_rows()
        data = None
        source = {"cols": jnp.asarray(rows.cols), "vals": jnp.asarray(rows.vals)}
        batch_fn = make_row_batch_fn(counts.n_cells, n_genes, int(batch_size))

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

    n_draws = 1 if guide_kind == "map" else int(n_posterior_samples)
    draws = posterior_draws(spec, guide_kind, res.params, draw_key, n_draws)
    gene_summaries, global_summaries = {}, {}
    global_names = {s.name for s in spec.sites if s.plate == "global"}
    for name, d in draws.items():
        s = summarize(d, axis=0) if n_draws > 1 else _point_summary(d[0])
        if name in global_names:
            global_summaries[name] = {k: float(v) for k, v in s.items()}
        else:
            gene_summaries[name] = s
    for name, s in list(gene_summaries.items()) + list(global_summaries.items()):
        vals = np.asarray(list(s.values()), dtype=float)
        if not np.all(np.isfinite(vals)):
            raise DivergenceError(
                f"the {spec.name} fit produced non-finite posterior summaries for {name!r}; "
                f"try a smaller `learning_rate` (now {learning_rate:g})."
            )
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
    )


def _point_summary(x) -> dict[str, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": x, "sd": np.zeros_like(x), "q05": x, "q50": x, "q95": x}
