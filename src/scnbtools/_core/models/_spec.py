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
    "positive": {"lognormal": ("loc", "scale"), "gamma": ("shape", "rate")},
}


@dataclass(frozen=True)
class LatentSite:
    """One latent variable of a model.

    ``plate`` is ``"global"`` (a scalar) or ``"gene"`` (one value per gene);
    ``support`` is ``"unit"`` (0, 1) or ``"positive"`` (0, ∞).
    """

    name: str
    plate: str
    support: str
    description: str = ""


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
        must_be_positive = names if family != "lognormal" else ("scale",)
        for hname, h in zip(names, hyper_t, strict=True):
            if hname in must_be_positive and h <= 0:
                raise ValueError(
                    f"`priors[{name!r}]` = {value!r}: the {family} {hname} must be > 0."
                )
        out[name] = (family, hyper_t)
    return out


def prior_dist(family: str, hyper: tuple[float, ...]) -> dist.Distribution:
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


def hist_loglik(spec: ModelSpec, values: Mapping[str, Any], hist: Mapping[str, Any]):
    """Exact full-data log-likelihood from per-gene count histograms.

    ``hist`` holds ``value``, ``gene``, ``weight`` (non-zero entries) and ``n_zeros``.
    Cost: one log-pmf per distinct (gene, count) pair plus one per gene.
    """
    per_entry = gather_values(spec, values, hist["gene"])
    zero = jnp.zeros(())
    if "surv_gene" in hist and spec.rising_site is not None:
        r = values[spec.rising_site][..., hist["surv_gene"]]
        j = hist["surv_j"]
        # Σ_j S(j) [log(r + j) - log(j + 1)] = Σ_c lgamma(x + r) - lgamma(r) - lgamma(x + 1),
        # one log1p per grid point (log r at j = 0): subtracting Σ lgamma(x + 1) as a separate
        # float32 sum cancelled two ~1e8 totals (errors ~10 nats on deep genes)
        rise = jnp.where(j == 0, jnp.log(r), jnp.log1p((r - 1.0) / (j + 1.0)))
        ll_rise = jnp.sum(hist["surv_count"] * rise)
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
def build_model(spec: ModelSpec, priors: Mapping[str, tuple[str, tuple]], n_genes: int):
    """NumPyro model for a gene-level spec.

    The returned callable takes ``data`` (histogram arrays) and optionally ``batch``
    (a dict with a dense ``x`` block of cells and the ``scale`` ``n_cells / batch_size``).
    With ``batch`` the likelihood is the correctly scaled minibatch estimate; otherwise it
    is the exact full-data histogram likelihood.
    """

    def model(data=None, batch=None):
        values = {}
        for s in spec.sites:
            d = prior_dist(*priors[s.name])
            if s.plate == "gene":
                with numpyro.plate("genes", n_genes):
                    values[s.name] = numpyro.sample(s.name, d)
            else:
                values[s.name] = numpyro.sample(s.name, d)
        if batch is None:
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
    """(parent site, param name) pairs whose deviation shifts ``site`` (hierarchical guide)."""
    if site.plate != "gene":
        return []
    parents = [g.name for g in _global_sites(spec)]
    for g in _gene_sites(spec):
        if g.name == site.name:
            break
        parents.append(g.name)
    return [(par, f"{site.name}_on_{par}") for par in parents]


def _beta_family(kind: str, site: LatentSite) -> bool:
    return kind == "mean_field_beta" and site.support == "unit"


def guide_param_names(spec: ModelSpec, kind: str) -> dict[str, tuple[str, ...]]:
    """Names of the variational parameters of each site."""
    out = {}
    for s in spec.sites:
        if kind == "map":
            out[s.name] = (f"{s.name}_map",)
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
        elif _beta_family(kind, s):
            out[f"{s.name}_alpha"] = v * _INIT_CONCENTRATION
            out[f"{s.name}_beta"] = (1.0 - v) * _INIT_CONCENTRATION
        else:
            loc = jnp.log(v) - jnp.log1p(-v) if s.support == "unit" else jnp.log(v)
            out[f"{s.name}_loc"] = loc - _offset(spec, kind, s, init, None)
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
        return dist.Delta(params[f"{site.name}_map"])
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


def _offset(spec: ModelSpec, kind: str, site: LatentSite, values: Mapping[str, Any], params=None):
    """Shift of a site's unconstrained location given the values drawn before it.

    Hierarchical guide: a fixed link (e.g. ``log r = log mu - logit p``) plus learnable
    per-gene couplings times the parents' deviations from their own guide locations.
    """
    if kind != "hierarchical":
        return 0.0
    off = spec.guide_links[site.name](values) if site.name in spec.guide_links else 0.0
    if params is None:
        return off
    for par, pname in _coupling_names(spec, site):
        if par not in values:
            continue
        psite = spec.site(par)
        dev = _unconstrained(psite, values[par]) - (
            params[f"{par}_loc"] + _offset(spec, kind, psite, values, params)
        )
        off = off + params[pname] * dev
    return off


def build_guide(spec: ModelSpec, kind: str, init: Mapping[str, Any], n_genes: int):
    """Mean-field or MAP (Delta) guide for a gene-level spec (see ``GUIDE_KINDS``)."""
    if kind not in GUIDE_KINDS:
        raise ValueError(f"unknown guide kind {kind!r}")
    init_params = initial_guide_params(spec, kind, init)

    def guide(data=None, batch=None):
        params, values = {}, {}
        for s in spec.sites:
            for pname in guide_param_names(spec, kind)[s.name]:
                if pname.endswith("_loc") or "_on_" in pname:
                    c = constraints.real
                elif pname.endswith("_map"):
                    c = constraints.unit_interval if s.support == "unit" else constraints.positive
                else:
                    c = constraints.positive
                params[pname] = numpyro.param(pname, init_params[pname], constraint=c)
            d = guide_dist(s, kind, params, _offset(spec, kind, s, values, params))
            if s.plate == "gene":
                with numpyro.plate("genes", n_genes):
                    values[s.name] = numpyro.sample(s.name, d)
            else:
                values[s.name] = numpyro.sample(s.name, d)

    return guide


def sample_guide(spec: ModelSpec, kind: str, params: Mapping[str, Any], key, n: int) -> dict:
    """``n`` draws of every site from the fitted guide (leading axis of size ``n``)."""
    keys = jax.random.split(key, len(spec.sites))
    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    out = {}
    for k, s in zip(keys, spec.sites, strict=True):
        # globals drawn so far have shape [n]; broadcast them against the gene axis
        prev = {
            name: (v[:, None] if spec.site(name).plate == "global" else v)
            for name, v in out.items()
        }
        off = _offset(spec, kind, s, prev, jparams)
        if jnp.ndim(off) > 0 and jnp.shape(off)[0] == n and s.plate == "gene":
            out[s.name] = guide_dist(s, kind, jparams, off).sample(k)
        else:
            out[s.name] = guide_dist(s, kind, jparams, off).sample(k, (n,))
    return out
