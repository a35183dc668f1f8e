"""Gene-level negative-binomial models: NBDM and ZINB (SCRIBE-style).

NBDM
    ``p ~ Beta(α_p, β_p)`` shared by all genes, ``r_g ~ LogNormal`` (or Gamma),
    ``u_gc ~ NB(r_g, p)`` with mean ``r_g p / (1 - p)``. Because the total
    ``Σ_g u_gc ~ NB(Σ_g r_g, p)`` and, given it, the counts are
    Dirichlet-multinomial with concentrations ``r_g``, ``ρ_g = r_g / Σ_g r_g`` is
    the expected fraction of a cell's transcripts from gene ``g``.
ZINB
    Adds a per-gene dropout gate ``π_g ~ Beta(α_π, β_π)``:
    ``u_gc ~ π_g δ_0 + (1 - π_g) NB(r_g, p)``. If dropout is purely technical the
    composition is still governed by ``r``, so ``ρ_g`` keeps its meaning.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.nn import log_sigmoid

from ..likelihoods import nb_logpmf, zero_inflate, zinb_logpmf
from ._spec import LatentSite, ModelSpec

__all__ = ["NBDM", "ZINB"]

_P = LatentSite("p", "global", "unit", "success probability shared by all genes")
_R = LatentSite("r", "gene", "positive", "NB dispersion (total count) per gene")
_GATE = LatentSite("gate", "gene", "unit", "dropout (zero-inflation) probability per gene")

_DEFAULT_PRIORS = {
    "p": ("beta", (1.0, 1.0)),
    "r": ("lognormal", (0.0, 2.0)),
    "gate": ("beta", (1.0, 1.0)),
}


def _nb_logits(p):
    return jnp.log(p) - jnp.log1p(-p)


def _nb_rest(x, v):
    """NB log-pmf without its ``lgamma(x + r) - lgamma(r) - lgamma(x + 1)`` part."""
    logits = _nb_logits(v["p"])
    return x * log_sigmoid(logits) + v["r"] * log_sigmoid(-logits)


def _zinb_rest(x, v):
    # the rising part is exactly 0 at x = 0, so it factors out of the zero-inflated mixture
    return zero_inflate(x, _nb_rest(x, v), gate_logits=_nb_logits(v["gate"]))


def _derived(values):
    p = jnp.asarray(values["p"])[..., None]
    r = jnp.asarray(values["r"])
    mu = r * p / (1.0 - p)
    rho = r / jnp.sum(r, axis=-1, keepdims=True)
    return {"mu": mu, "rho": rho}


def _init_nb(mean: np.ndarray, var: np.ndarray) -> dict[str, np.ndarray]:
    """Method of moments with a shared p: var = mean / (1 - p), r = mean (1 - p) / p."""
    mean = np.maximum(mean, 1e-3)
    ratio = mean / np.maximum(var, mean * (1 + 1e-3))  # (1 - p) per gene, in (0, 1)
    w = mean / mean.sum()
    one_minus_p = float(np.clip(np.exp(np.sum(w * np.log(ratio))), 0.01, 0.99))
    p = 1.0 - one_minus_p
    r = np.clip(mean * one_minus_p / p, 1e-3, 1e4)
    return {"p": np.float32(p), "r": r.astype(np.float32)}


def _init_zinb(mean, var):
    out = _init_nb(mean, var)
    out["gate"] = np.full(mean.shape, 0.05, dtype=np.float32)
    return out


NBDM = ModelSpec(
    name="nbdm",
    config={
        "base": "nbdm",
        "parameterization": "canonical",
        "n_components": 1,
        "mixture_params": (),
        "capture": False,
        "capture_prior": "beta",
        "zero_inflated": False,
    },
    description="Negative binomial–Dirichlet multinomial: NB(r_g, p) with one shared p.",
    sites=(_P, _R),
    default_priors={k: _DEFAULT_PRIORS[k] for k in ("p", "r")},
    logpmf=lambda x, v: nb_logpmf(x, v["r"], logits=_nb_logits(v["p"])),
    obs_dist=lambda v: dist.NegativeBinomialProbs(v["r"], v["p"]),
    derived=_derived,
    init_values=_init_nb,
    gene_outputs=("r", "mu", "rho"),
    guide_links={"r": lambda v: -_nb_logits(v["p"])},
    rising_site="r",
    logpmf_rest=_nb_rest,
)

ZINB = ModelSpec(
    name="zinb",
    config={
        "base": "zinb",
        "parameterization": "canonical",
        "n_components": 1,
        "mixture_params": (),
        "capture": False,
        "capture_prior": "beta",
        "zero_inflated": True,
    },
    description="Zero-inflated NB: dropout gate π_g mixed with NB(r_g, p), one shared p.",
    sites=(_P, _R, _GATE),
    default_priors=dict(_DEFAULT_PRIORS),
    logpmf=lambda x, v: zinb_logpmf(
        x, v["r"], logits=_nb_logits(v["p"]), gate_logits=_nb_logits(v["gate"])
    ),
    obs_dist=lambda v: dist.ZeroInflatedDistribution(
        dist.NegativeBinomialProbs(v["r"], v["p"]), gate=v["gate"]
    ),
    derived=_derived,
    init_values=_init_zinb,
    gene_outputs=("r", "gate", "mu", "rho"),
    guide_links={"r": lambda v: -_nb_logits(v["p"])},
    rising_site="r",
    logpmf_rest=_zinb_rest,
)
