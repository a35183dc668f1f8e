"""Model specifications as data, and the generic NumPyro model / guide built from them.

A :class:`ModelSpec` names the latent sites (with their plate and support), the default
priors, the observation log-pmf and a few helpers. Everything else — the NumPyro model,
the mean-field and MAP guides, the histogram likelihood — is built here from that data,
so adding a gene-level model is one module under ``_core/models`` plus one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "GUIDE_KINDS",
    "PRIOR_FAMILIES",
    "LatentSite",
    "ModelSpec",
    "build_guide",
    "build_model",
    "hist_loglik",
    "parse_priors",
]

#: prior families allowed for each support, with the number of hyperparameters and their names
PRIOR_FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "unit": {"beta": ("alpha", "beta")},
    "positive": {
        "lognormal": ("loc", "scale"),
        "gamma": ("shape", "rate"),
        # normal truncated to [0, ∞): the capture prior on η_c = log(M_c / L_c)
        "truncnormal": ("loc", "scale"),
    },
    "simplex": {"dirichlet": ("concentration",)},
}

#: families whose first hyperparameter is a location (any sign)
_LOCATION_FAMILIES = ("lognormal", "truncnormal")


@dataclass(frozen=True)
class LatentSite:
    """One latent variable of a model.

    ``plate`` is ``"global"`` (a scalar), ``"gene"`` (one value per gene) or ``"cell"``
    (one value per cell; subsampled with cell minibatches); ``support`` is ``"unit"``
    (0, 1), ``"positive"`` (0, ∞) or ``"simplex"`` (mixture weights, a global of length
    ``K``). ``components=True`` gives the site a leading mixture-component axis:
    ``[K]`` for a global, ``[K, G]`` for a gene-level site.
    """

    name: str
    plate: str
    support: str
    description: str = ""
    components: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its sites, priors and observation model, as data."""

    name: str
    description: str
    sites: tuple[LatentSite, ...]
    default_priors: Mapping[str, tuple[str, tuple[float, ...]]]
    #: elementwise log-pmf ``logpmf(x, values)``; ``values`` broadcast against ``x``
    logpmf: Callable[[Any, Mapping[str, Any]], Any]
    #: NumPyro distribution of one count given ``values`` (for predictive sampling)
    obs_dist: Callable[[Mapping[str, Any]], dist.Distribution]
    #: derived per-gene quantities from a dict of (possibly batched) draws, gene axis last
    derived: Callable[[Mapping[str, Any]], dict[str, Any]]
    #: constrained starting values from per-gene moments ``(mean, var)``
    init_values: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    #: names of the per-gene quantities written to ``varm`` (sites and derived), in order
    gene_outputs: tuple[str, ...] = ()
    #: for the default guide: site -> function of the already-drawn values giving a shift of
    #: the site's unconstrained location (e.g. ``log r = log mu - logit p``), so the guide is
    #: mean-field in better-conditioned coordinates while the model is unchanged
    guide_links: Mapping[str, Callable[[Mapping[str, Any]], Any]] = field(default_factory=dict)
    #: optional closed-form structure: ``logpmf(x, v) == log_rising_factorial_ratio(x, v[rising_site])
    #: + logpmf_rest(x, v)`` for every ``x``. The histogram likelihood then evaluates the rising
    #: part from per-gene survival counts (one ``log`` per grid point, no ``betaln``).
    rising_site: str | None = None
    logpmf_rest: Callable[[Any, Mapping[str, Any]], Any] | None = None
    references: tuple[str, ...] = field(default_factory=tuple)
    #: number of mixture components (sites with ``components=True`` have this leading axis)
    n_components: int = 1
    #: custom log-likelihood ``loglik(values, data, batch)`` (unscaled); when set it replaces
    #: the histogram / dense paths (capture models, mixtures)
    loglik: Callable[..., Any] | None = None
    #: starting values from a context dict (``counts``, ``mean``, ``var``, ``lib``, ``seed``,
    #: ``labels``); when set it replaces ``init_values``
    init_fn: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    #: how the model is built, for storage and for rebuilding the spec from a stored fit
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    def site(self, name: str) -> LatentSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)


# ----------------------------------------------------------------------------- priors
def parse_priors(spec: ModelSpec, priors: Mapping[str, Any] | None) -> dict[str, tuple[str, tuple]]:
    """Merge user ``priors`` into the spec's defaults, validating everything.

    Each value is either a tuple of hyperparameters for the default family of that site
    (e.g. ``{"p": (2.0, 2.0)}``) or ``(family, (hyper, ...))`` (e.g.
    ``{"r": ("gamma", (2.0, 0.1))}``).
    """
    out = {k: (fam, tuple(float(x) for x in hp)) for k, (fam, hp) in spec.default_priors.items()}
    if priors is None:
        return out
    if not isinstance(priors, Mapping):
        raise TypeError(
            f"`priors` must be a dict mapping parameter names to hyperparameters, got {type(priors).__name__}."
        )
    valid = spec.site_names
    for name, value in priors.items():
        if name not in valid:
            raise ValueError(
                f"`priors` has an unknown parameter {name!r} for model {spec.name!r}; "
                f"valid names are {', '.join(map(repr, valid))}."
            )
        support = spec.site(name).support
        families = PRIOR_FAMILIES[support]
        if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], str):
            family, hyper = value[0].lower(), value[1]
        elif isinstance(value, str):
            raise ValueError(
                f"`priors[{name!r}]` = {value!r} gives a family but no hyperparameters; "
                f"use e.g. ({value!r}, (a, b))."
            )
        else:
            family, hyper = out[name][0], value
        if family not in families:
            raise ValueError(
                f"`priors[{name!r}]` uses family {family!r}, which is not allowed for a "
                f"{support} parameter; choose one of {', '.join(map(repr, families))}."
            )
        names = families[family]
        try:
            hyper_t = tuple(float(x) for x in np.atleast_1d(np.asarray(hyper, dtype=float)))
        except (TypeError, ValueError):
            raise ValueError(
                f"`priors[{name!r}]` = {value!r}: hyperparameters must be numbers "
                f"({', '.join(names)} for a {family} prior)."
            ) from None
        if len(hyper_t) != len(names):
            raise ValueError(
                f"`priors[{name!r}]` = {value!r}: a {family} prior takes {len(names)} "
                f"hyperparameters ({', '.join(names)}), got {len(hyper_t)}."
            )
        if not all(np.isfinite(hyper_t)):
            raise ValueError(f"`priors[{name!r}]` = {value!r}: hyperparameters must be finite.")
        must_be_positive = names if family not in _LOCATION_FAMILIES else ("scale",)
        for hname, h in zip(names, hyper_t, strict=True):
            if hname in must_be_positive and h <= 0:
                raise ValueError(
                    f"`priors[{name!r}]` = {value!r}: the {family} {hname} must be > 0."
                )
        out[name] = (family, hyper_t)
    return out


def prior_dist(family: str, hyper: tuple[float, ...], shift=None) -> dist.Distribution:
    """The prior distribution; ``shift`` moves the location of a ``truncnormal`` prior
    (per cell: the capture prior's ``log M0 - log L_c``)."""
    if family == "truncnormal":
        loc = hyper[0] if shift is None else hyper[0] + shift
        return dist.TruncatedNormal(loc, hyper[1], low=0.0)
    if family == "beta":
        return dist.Beta(*hyper)
    if family == "lognormal":
        return dist.LogNormal(*hyper)
    if family == "gamma":
        return dist.Gamma(*hyper)
    raise ValueError(f"unknown prior family {family!r}")


# ----------------------------------------------------------------------------- likelihood
def gather_values(spec: ModelSpec, values: Mapping[str, Any], gene_idx) -> dict[str, Any]:
    """Per-entry parameter values: gene-level sites indexed by ``gene_idx``."""
    out = {}
    for s in spec.sites:
        v = values[s.name]
        out[s.name] = v[..., gene_idx] if s.plate == "gene" else v
    return out


def grid_rise(r, grid: Mapping[str, Any]):
    """``Σ_gc lgamma(x_gc + r_g) - lgamma(r_g) - lgamma(x_gc + 1)`` from the survival grid.

    ``Σ_j S(j) [log(r + j) - log(j + 1)]``: one log1p per grid point (log r at j = 0).
    Subtracting ``Σ lgamma(x + 1)`` as a separate float32 sum cancelled two ~1e8 totals
    (errors ~10 nats on deep genes).
    """
    rg = r[..., grid["surv_gene"]]
    j = grid["surv_j"]
    rise = jnp.where(j == 0, jnp.log(rg), jnp.log1p((rg - 1.0) / (j + 1.0)))
    return jnp.sum(grid["surv_count"] * rise)


def hist_loglik(spec: ModelSpec, values: Mapping[str, Any], hist: Mapping[str, Any]):
    """Exact full-data log-likelihood from per-gene count histograms.

    ``hist`` holds ``value``, ``gene``, ``weight`` (non-zero entries) and ``n_zeros``.
    Cost: one log-pmf per distinct (gene, count) pair plus one per gene.
    """
    per_entry = gather_values(spec, values, hist["gene"])
    zero = jnp.zeros(())
    if "surv_gene" in hist and spec.rising_site is not None:
        ll_rise = grid_rise(values[spec.rising_site], hist)
        ll_nz = jnp.sum(hist["weight"] * spec.logpmf_rest(hist["value"], per_entry))
        ll_zero = jnp.sum(hist["n_zeros"] * spec.logpmf_rest(zero, values))
        return ll_rise + ll_nz + ll_zero
    ll_nz = jnp.sum(hist["weight"] * spec.logpmf(hist["value"], per_entry))
    ll_zero = jnp.sum(hist["n_zeros"] * spec.logpmf(zero, values))
    return ll_nz + ll_zero


def dense_loglik(spec: ModelSpec, values: Mapping[str, Any], x):
    """Log-likelihood of a dense ``[cells, genes]`` block (gene-level sites broadcast)."""
    return jnp.sum(spec.logpmf(x, values))


# ----------------------------------------------------------------------------- model and guides
def _sample_site(
    s: LatentSite,
    d: dist.Distribution,
    n_genes: int,
    n_components: int,
    n_cells: int | None,
    idx=None,
):
    """Sample one latent site in its plate (cell sites subsampled by ``idx``)."""
    if s.support == "simplex":
        return numpyro.sample(s.name, d)
    if s.plate == "gene":
        if s.components:
            with (
                numpyro.plate("genes", n_genes, dim=-1),
                numpyro.plate("gene_components", n_components, dim=-2),
            ):
                return numpyro.sample(s.name, d.expand((n_components, n_genes)))
        with numpyro.plate("genes", n_genes):
            return numpyro.sample(s.name, d)
    if s.plate == "cell":
        if idx is None:
            with numpyro.plate("cells", n_cells):
                return numpyro.sample(s.name, d)
        # a cell minibatch: the batch's cells, their terms scaled by n_cells / batch size
        # (the same unbiased scaling as the likelihood's) in the model and the guide alike
        batch = idx.shape[0]
        with numpyro.plate("cells", batch), numpyro.handlers.scale(scale=n_cells / batch):
            return numpyro.sample(s.name, d)
    if s.components:
        return numpyro.sample(s.name, d.expand((n_components,)).to_event(1))
    return numpyro.sample(s.name, d)


def site_prior(s: LatentSite, priors, n_components: int, source=None) -> dist.Distribution:
    """Prior of one site; ``source`` (data or batch) supplies per-cell prior shifts."""
    family, hyper = priors[s.name]
    if s.support == "simplex":
        return dist.Dirichlet(jnp.full((n_components,), hyper[0]))
    shift = None
    if s.plate == "cell" and family == "truncnormal" and source is not None:
        shift = source["prior_shift"]
    return prior_dist(family, hyper, shift)


def build_model(
    spec: ModelSpec,
    priors: Mapping[str, tuple[str, tuple]],
    n_genes: int,
    n_cells: int | None = None,
):
    """NumPyro model for a spec.

    The returned callable takes ``data`` (full-data sufficient statistics) and optionally
    ``batch`` (a cell minibatch, with ``scale = n_cells / batch_size``). With ``batch`` the
    likelihood is the correctly scaled minibatch estimate (cell-level sites are sampled in
    a subsampled ``cells`` plate, whose prior terms NumPyro scales the same way); otherwise
    it is the exact full-data likelihood.
    """
    K = spec.n_components

    def model(data=None, batch=None):
        values = {}
        source = data if batch is None else batch
        idx = None if batch is None else batch.get("idx")
        for s in spec.sites:
            d = site_prior(s, priors, K, source)
            values[s.name] = _sample_site(s, d, n_genes, K, n_cells, idx)
        if spec.loglik is not None:  # scales minibatch terms itself
            numpyro.factor("loglik", spec.loglik(values, data, batch))
        elif batch is None:
            numpyro.factor("loglik", hist_loglik(spec, values, data))
        else:
            numpyro.factor("loglik", batch["scale"] * dense_loglik(spec, values, batch["x"]))

    return model


_INIT_CONCENTRATION = 200.0
_INIT_LOG_SCALE = 0.05


#: guide kinds: variational family of (0, 1) sites / (0, ∞) sites
GUIDE_KINDS = {
    "hierarchical": (
        "default: q(globals) ∏_g q(gene params_g | globals) — each gene's parameters are a "
        "correlated logit/log-normal whose location moves linearly with the globals (the "
        "model's own conditional-independence structure); O(genes) parameters"
    ),
    "mean_field": "fully factorized, logit-normal / log-normal families",
    "mean_field_beta": "mean-field q(p) q(r_g) q(gate_g) with Beta / log-normal families (SCRIBE)",
    "map": "point estimates (Delta)",
}


def _gene_sites(spec: ModelSpec) -> list[LatentSite]:
    return [s for s in spec.sites if s.plate == "gene"]


def _global_sites(spec: ModelSpec) -> list[LatentSite]:
    return [s for s in spec.sites if s.plate == "global"]


def _coupling_names(spec: ModelSpec, site: LatentSite) -> list[tuple[str, str]]:
    """(parent site, param name) pairs whose deviation shifts ``site`` (hierarchical guide).

    Gene-level sites couple to the globals and to the gene-level sites before them; cell
    sites couple to the scalar globals. A component-specific parent only couples to a
    component-specific child; mixture weights couple to nothing.
    """
    if site.plate == "global" or site.support == "simplex":
        return []
    parents = [g for g in _global_sites(spec) if g.support != "simplex"]
    if site.plate == "gene":
        for g in _gene_sites(spec):
            if g.name == site.name:
                break
            parents.append(g)
    else:
        parents = [g for g in parents if not g.components]
    parents = [g for g in parents if site.components or not g.components]
    return [(par.name, f"{site.name}_on_{par.name}") for par in parents]


def _beta_family(kind: str, site: LatentSite) -> bool:
    return kind == "mean_field_beta" and site.support == "unit"


def guide_param_names(spec: ModelSpec, kind: str) -> dict[str, tuple[str, ...]]:
    """Names of the variational parameters of each site."""
    out = {}
    for s in spec.sites:
        if kind == "map":
            out[s.name] = (f"{s.name}_map",)
        elif s.support == "simplex":
            out[s.name] = (f"{s.name}_concentration",)
        elif _beta_family(kind, s):
            out[s.name] = (f"{s.name}_alpha", f"{s.name}_beta")
        else:
            extra = [n for _, n in _coupling_names(spec, s)] if kind == "hierarchical" else []
            out[s.name] = (f"{s.name}_loc", f"{s.name}_scale", *extra)
    return out


def initial_guide_params(spec: ModelSpec, kind: str, init: Mapping[str, Any]) -> dict[str, Any]:
    """Constrained initial variational parameters from constrained starting values."""
    out = {}
    for s in spec.sites:
        v = jnp.asarray(init[s.name], dtype=jnp.float32)
        if kind == "map":
            out[f"{s.name}_map"] = v
        elif s.support == "simplex":
            out[f"{s.name}_concentration"] = v * _INIT_CONCENTRATION * spec.n_components
        elif _beta_family(kind, s):
            out[f"{s.name}_alpha"] = v * _INIT_CONCENTRATION
            out[f"{s.name}_beta"] = (1.0 - v) * _INIT_CONCENTRATION
        else:
            out[f"{s.name}_loc"] = _unconstrained(s, v) - _offset(spec, kind, s, init, None)
            out[f"{s.name}_scale"] = jnp.full_like(v, _INIT_LOG_SCALE)
            if kind == "hierarchical":
                for _, n in _coupling_names(spec, s):
                    out[n] = jnp.zeros_like(v)
    return out


def guide_dist(
    site: LatentSite, kind: str, params: Mapping[str, Any], offset=0.0
) -> dist.Distribution:
    """The variational distribution of one site given (constrained) guide parameters.

    ``offset`` shifts the unconstrained location (linked coordinates of the default guide).
    """
    if kind == "map":
        return dist.Delta(
            params[f"{site.name}_map"], event_dim=1 if site.support == "simplex" else 0
        )
    if site.support == "simplex":
        return dist.Dirichlet(params[f"{site.name}_concentration"])
    if _beta_family(kind, site):
        return dist.Beta(params[f"{site.name}_alpha"], params[f"{site.name}_beta"])
    if site.support == "unit":
        return dist.TransformedDistribution(
            dist.Normal(params[f"{site.name}_loc"] + offset, params[f"{site.name}_scale"]),
            dist.transforms.SigmoidTransform(),
        )
    return dist.LogNormal(params[f"{site.name}_loc"] + offset, params[f"{site.name}_scale"])


def _unconstrained(site: LatentSite, value):
    return jnp.log(value) - jnp.log1p(-value) if site.support == "unit" else jnp.log(value)


def _event_ndim(site: LatentSite) -> int:
    """Number of non-sample axes of a site's value (``[K]``, ``[G]``, ``[K, G]``, ``[N]``)."""
    if site.support == "simplex":
        return 1
    if site.plate == "global":
        return 1 if site.components else 0
    return 2 if site.components else 1


def _align(value, parent: LatentSite, child: LatentSite):
    """Broadcast a parent's value against the child's axes (globals get trailing unit axes;
    gene-level parents already align on the trailing gene axis)."""
    value = jnp.asarray(value)
    if parent.plate != "global":
        if child.components and not parent.components:
            return value[..., None, :]  # a shared gene-level parent of a [K, G] child
        return value
    extra = _event_ndim(child) - _event_ndim(parent)
    return value.reshape(value.shape + (1,) * max(extra, 0))


def _offset(spec: ModelSpec, kind: str, site: LatentSite, values: Mapping[str, Any], params=None):
    """Shift of a site's unconstrained location given the values drawn before it.

    Hierarchical guide: a fixed link (e.g. ``log r = log mu - logit p``) plus learnable
    per-gene couplings times the parents' deviations from their own guide locations.
    """
    if kind != "hierarchical" or site.support == "simplex":
        return 0.0
    aligned = {
        name: _align(v, spec.site(name), site)
        for name, v in values.items()
        if name in spec.site_names
    }
    off = spec.guide_links[site.name](aligned) if site.name in spec.guide_links else 0.0
    if params is None:
        return off
    for par, pname in _coupling_names(spec, site):
        if par not in values:
            continue
        psite = spec.site(par)
        dev = _unconstrained(psite, values[par]) - (
            params[f"{par}_loc"] + _offset(spec, kind, psite, values, params)
        )
        off = off + params[pname] * _align(dev, psite, site)
    return off


def _subset_cells(spec: ModelSpec, params: Mapping[str, Any], idx) -> dict[str, Any]:
    """Guide parameters with every cell-level array restricted to the cells ``idx``."""
    if idx is None:
        return dict(params)
    cell_params = {
        p for s in spec.sites if s.plate == "cell" for p in guide_param_names_all(spec, s)
    }
    return {k: (v[idx] if k in cell_params else v) for k, v in params.items()}


def guide_param_names_all(spec: ModelSpec, site: LatentSite) -> tuple[str, ...]:
    """Every variational parameter name a site can have, whatever the guide kind."""
    names = {
        f"{site.name}_{suf}" for suf in ("map", "loc", "scale", "alpha", "beta", "concentration")
    }
    names |= {n for _, n in _coupling_names(spec, site)}
    return tuple(sorted(names))


def _param_constraint(site: LatentSite, pname: str):
    if pname.endswith("_loc") or "_on_" in pname:
        return constraints.real
    if pname.endswith("_map"):
        if site.support == "unit":
            return constraints.unit_interval
        if site.support == "simplex":
            return constraints.simplex
        return constraints.positive
    return constraints.positive


def build_guide(
    spec: ModelSpec, kind: str, init: Mapping[str, Any], n_genes: int, n_cells: int | None = None
):
    """Variational guide for a spec (see ``GUIDE_KINDS``)."""
    if lowrank_rank(kind) is not None:
        return build_lowrank_guide(spec, lowrank_rank(kind), init, n_genes, n_cells)
    if kind not in GUIDE_KINDS:
        raise ValueError(f"unknown guide kind {kind!r}")
    init_params = initial_guide_params(spec, kind, init)
    names = guide_param_names(spec, kind)
    K = spec.n_components

    def guide(data=None, batch=None):
        idx = None if batch is None else batch.get("idx")
        params, values = {}, {}
        for s in spec.sites:
            for pname in names[s.name]:
                params[pname] = numpyro.param(
                    pname, init_params[pname], constraint=_param_constraint(s, pname)
                )
            sp = _subset_cells(spec, params, idx) if s.plate == "cell" else params
            d = guide_dist(s, kind, sp, _offset(spec, kind, s, values, sp))
            values[s.name] = _sample_site(s, d, n_genes, K, n_cells, idx)

    return guide


def sample_guide(spec: ModelSpec, kind: str, params: Mapping[str, Any], key, n: int) -> dict:
    """``n`` draws of every site from the fitted guide (leading axis of size ``n``)."""
    if lowrank_rank(kind) is not None:
        return sample_lowrank(spec, params, key, n)
    keys = jax.random.split(key, len(spec.sites))
    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    out = {}
    for k, s in zip(keys, spec.sites, strict=True):
        off = _offset(spec, kind, s, out, jparams)
        d = guide_dist(s, kind, jparams, off)
        # an offset built from earlier draws already carries the leading draw axis
        has_lead = jnp.ndim(off) == _event_ndim(s) + 1 and s.support != "simplex"
        out[s.name] = d.sample(k) if has_lead else d.sample(k, (n,))
    return out


# ----------------------------------------------------------------------------- low-rank guide
def lowrank_rank(kind: str) -> int | None:
    """Rank of a ``"low_rank_<k>"`` guide kind, else ``None``."""
    if isinstance(kind, str) and kind.startswith("low_rank_"):
        return int(kind[len("low_rank_") :])
    return None


def _lowrank_blocks(spec: ModelSpec, n_genes: int, n_cells: int | None):
    """(site, shape) of every site in the joint Gaussian (all but mixture weights)."""
    K = spec.n_components
    out = []
    for s in spec.sites:
        if s.support == "simplex":
            continue
        if s.plate == "global":
            shape = (K,) if s.components else ()
        elif s.plate == "gene":
            shape = (K, n_genes) if s.components else (n_genes,)
        else:
            shape = (int(n_cells),)
        out.append((s, shape))
    return out


def _to_constrained(site: LatentSite, u):
    """Constrained value and ``log |d value / d u|`` (elementwise)."""
    if site.support == "unit":
        return jax.nn.sigmoid(u), jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u)
    return jnp.exp(u), u


def _split(u, blocks):
    out, start = [], 0
    for s, shape in blocks:
        size = int(np.prod(shape)) if shape else 1
        out.append((s, shape, u[..., start : start + size].reshape(u.shape[:-1] + shape)))
        start += size
    return out


def build_lowrank_guide(spec, rank: int, init, n_genes: int, n_cells: int | None):
    """A joint Gaussian over all unconstrained parameters with covariance ``W Wᵀ + diag``
    (rank ``rank``); mixture weights keep their own Dirichlet."""
    blocks = _lowrank_blocks(spec, n_genes, n_cells)
    loc0 = jnp.concatenate(
        [jnp.ravel(_unconstrained(s, jnp.asarray(init[s.name], jnp.float32))) for s, _ in blocks]
    )
    D = int(loc0.shape[0])
    w0 = 0.01 * jax.random.normal(jax.random.PRNGKey(0), (D, rank), dtype=jnp.float32)
    simplex = [s for s in spec.sites if s.support == "simplex"]

    def guide(data=None, batch=None):
        if batch is not None and batch.get("idx") is not None:
            raise ValueError("the low-rank guide needs full-data steps (batch_size=None)")
        loc = numpyro.param("lowrank_loc", loc0)
        W = numpyro.param("lowrank_factor", w0)
        diag = numpyro.param(
            "lowrank_diag", jnp.full((D,), _INIT_LOG_SCALE**2), constraint=constraints.positive
        )
        numpyro.param("lowrank_genes", jnp.zeros((n_genes,)))
        numpyro.param("lowrank_cells", jnp.zeros((int(n_cells or 0),)))
        u = numpyro.sample(
            "_lowrank_latent",
            dist.LowRankMultivariateNormal(loc, W, diag),
            infer={"is_auxiliary": True},
        )
        for s, _shape, part in _split(u, blocks):
            value, logdet = _to_constrained(s, part)
            # the same plates / event shapes as the model's site
            _sample_site(
                s, dist.Delta(value, log_density=-logdet), n_genes, spec.n_components, n_cells
            )
        for s in simplex:
            conc = numpyro.param(
                f"{s.name}_concentration",
                jnp.asarray(init[s.name], jnp.float32) * _INIT_CONCENTRATION * spec.n_components,
                constraint=constraints.positive,
            )
            numpyro.sample(s.name, dist.Dirichlet(conc))

    return guide


def sample_lowrank(spec: ModelSpec, params: Mapping[str, Any], key, n: int) -> dict:
    """Draws from a fitted low-rank guide (sizes from the shapes of its parameters)."""
    n_genes = int(jnp.shape(params["lowrank_genes"])[0])
    n_cells = int(jnp.shape(params["lowrank_cells"])[0])
    blocks = _lowrank_blocks(spec, n_genes, n_cells)
    k1, k2 = jax.random.split(key)
    q = dist.LowRankMultivariateNormal(
        jnp.asarray(params["lowrank_loc"]),
        jnp.asarray(params["lowrank_factor"]),
        jnp.asarray(params["lowrank_diag"]),
    )
    u = q.sample(k1, (n,))
    out = {s.name: _to_constrained(s, part)[0] for s, _, part in _split(u, blocks)}
    for s in spec.sites:
        if s.support == "simplex":
            out[s.name] = dist.Dirichlet(jnp.asarray(params[f"{s.name}_concentration"])).sample(
                k2, (n,)
            )
    return out
