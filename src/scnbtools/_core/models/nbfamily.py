"""The negative-binomial family as one configurable model: NBDM, ZINB, NBVCP, ZINBVCP, in
three parameterizations, with or without K mixture components.

Notation (NumPyro convention, ``NB(r, p)`` has mean ``r p / (1 - p)``):

* canonical: sample ``p`` (global) and ``r_g``;
* mean_prob: sample ``p`` and the NB mean ``mu_g``; ``r_g = mu_g (1 - p) / p``;
* mean_odds: sample ``phi`` and ``mu_g``; ``p = 1 / (1 + phi)``, ``r_g = mu_g phi``.

Capture (VCP) models give each cell a capture probability ``nu_c`` and use
``p̂_c = p nu_c / (1 - p (1 - nu_c))``, i.e. ``logit p̂_c = logit p + log nu_c``. With the
biology-informed prior the cell site is ``eta_c = log(M_c / L_c) >= 0`` (``nu_c = exp(-eta_c)``)
with a truncated-normal prior centred on ``log M0 - log L_c``.

Mixtures put the sites named in ``mixture_params`` on a component axis; each cell's
component is marginalised out (log-sum-exp), with Dirichlet mixing weights and an optional
per-cell annotation boost ``kappa`` on the log prior of the labelled component.

Likelihood paths (chosen in :func:`data_layout`), all exact:

``hist``
    no cell sites, one component: per-gene count histograms (cost O(distinct counts)).
``capture_hist``
    NBVCP with one component: ``Σ_gc log NB(x_gc | r_g, p̂_c) = Σ_g [rising part from the
    survival grid] + Σ_c U_c log p̂_c + (Σ_g r_g) Σ_c log(1 - p̂_c)`` with ``U_c`` the
    library size — O(grid + cells + genes) per step, no cells × genes work at all.
``rows``
    everything else: cells as padded sparse rows (all cells, or a minibatch). Zeros are
    handled in closed form: ``Σ_g log NB(0) = R_k log(1 - p̂)`` without a gate; with a gate
    the zero term is per (component, gene) — or per (cell, component, gene) for ZINBVCP,
    whose zeros are the only dense cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.nn import log_sigmoid
from jax.scipy.special import logsumexp

from ..likelihoods import log_rising_factorial_ratio
from ._spec import LatentSite, ModelSpec, grid_rise, hist_loglik
from .nb import NBDM, ZINB, _init_nb

__all__ = [
    "BASES",
    "PARAMETERIZATIONS",
    "canonical",
    "component_loglik",
    "data_layout",
    "make_nb_spec",
    "mixture_param_choices",
]

BASES = ("nbdm", "zinb", "nbvcp", "zinbvcp")
PARAMETERIZATIONS = ("canonical", "mean_prob", "mean_odds")
CAPTURE_PRIORS = ("beta", "truncnormal")
#: counts up to this value take their rising factorial from a per-step table (mixtures)
RISE_TABLE_J = 32

_DESCRIPTIONS = {
    "nbdm": "Negative binomial–Dirichlet multinomial: NB(r_g, p) with one shared p.",
    "zinb": "Zero-inflated NB: dropout gate π_g mixed with NB(r_g, p), one shared p.",
    "nbvcp": "NB with a per-cell capture probability ν_c: NB(r_g, p̂_c), p̂_c = pν_c/(1-p(1-ν_c)).",
    "zinbvcp": "Zero-inflated NB with per-cell capture probability ν_c and per-gene gate π_g.",
}

_GLOBAL_SITES = {
    "canonical": LatentSite("p", "global", "unit", "success probability"),
    "mean_prob": LatentSite("p", "global", "unit", "success probability"),
    "mean_odds": LatentSite("phi", "global", "positive", "odds (1 - p) / p"),
}
_GENE_SITES = {
    "canonical": LatentSite("r", "gene", "positive", "NB dispersion (total count) per gene"),
    "mean_prob": LatentSite("mu", "gene", "positive", "NB mean per gene"),
    "mean_odds": LatentSite("mu", "gene", "positive", "NB mean per gene"),
}
_GATE = LatentSite("gate", "gene", "unit", "dropout (zero-inflation) probability per gene")
_NU = LatentSite("nu", "cell", "unit", "capture probability per cell")
_ETA = LatentSite("eta", "cell", "positive", "log(M_c / L_c), capture offset per cell")
_WEIGHTS = LatentSite("mixing_weights", "global", "simplex", "mixture weights")

_DEFAULT_PRIORS = {
    "p": ("beta", (1.0, 1.0)),
    "phi": ("lognormal", (0.0, 2.0)),
    "r": ("lognormal", (0.0, 2.0)),
    "mu": ("lognormal", (0.0, 2.0)),
    "gate": ("beta", (1.0, 1.0)),
    "nu": ("beta", (1.0, 1.0)),
    "eta": ("truncnormal", (np.log(10_000.0), 1.0)),
    "mixing_weights": ("dirichlet", (1.0,)),
}


def mixture_param_choices(base: str, parameterization: str) -> tuple[str, ...]:
    """Site names that may be component-specific in a mixture."""
    names = [_GLOBAL_SITES[parameterization].name, _GENE_SITES[parameterization].name]
    if base in ("zinb", "zinbvcp"):
        names.append("gate")
    return tuple(names)


def default_mixture_params(base: str, parameterization: str) -> tuple[str, ...]:
    """Gene-level sites are component-specific by default; the global p (phi) is shared."""
    return tuple(n for n in mixture_param_choices(base, parameterization) if n not in ("p", "phi"))


# ----------------------------------------------------------------------------- parameters
def canonical(values: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``r`` ([K, G]), ``logit_p`` ([K]) and ``gate_logit`` ([K, G]) from one draw of the
    sampled sites (no leading draw axis), broadcast to the component axis."""
    K = int(cfg["n_components"])
    par = cfg["parameterization"]
    if par == "mean_odds":
        phi = jnp.asarray(values["phi"])
        logit_p = -jnp.log(phi)
    else:
        p = jnp.asarray(values["p"])
        logit_p = jnp.log(p) - jnp.log1p(-p)
    logit_p = jnp.broadcast_to(logit_p, (K,))
    if par == "canonical":
        r = jnp.asarray(values["r"])
    else:
        # r = mu (1 - p) / p = mu exp(-logit p), per component
        mu = jnp.asarray(values["mu"])
        r = (mu if mu.ndim == 2 else mu[None, :]) * jnp.exp(-logit_p[:, None])
    G = r.shape[-1]
    out = {"r": jnp.broadcast_to(r, (K, G)), "logit_p": logit_p}
    if "gate" in values:
        g = jnp.asarray(values["gate"])
        out["gate_logit"] = jnp.broadcast_to(jnp.log(g) - jnp.log1p(-g), (K, G))
    return out


def _log_nu(values: Mapping[str, Any], cfg: Mapping[str, Any]):
    if not cfg["capture"]:
        return None
    if cfg["capture_prior"] == "truncnormal":
        return -jnp.asarray(values["eta"])
    return jnp.log(jnp.asarray(values["nu"]))


def _log_mix_prior(values, cfg, ann):
    """``[B, K]`` (or ``[1, K]``) log prior of each cell's component."""
    K = int(cfg["n_components"])
    if K == 1:
        return jnp.zeros((1, 1))
    logw = jnp.log(jnp.asarray(values["mixing_weights"]))[None, :]
    if ann is None:
        return logw
    a = logw + ann
    return a - logsumexp(a, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- likelihoods
def rise_table(r, J: int):
    """``T[k, g, j] = lgamma(j + r_kg) - lgamma(r_kg) - lgamma(j + 1)`` for ``j = 0..J``
    (``[K, G, J + 1]``): per-gene cumulative sums of ``log((r + i) / (i + 1))``, so that the
    rising-factorial part of every count ``x <= J`` is a table lookup, not a ``betaln``."""
    i = jnp.arange(J, dtype=r.dtype)
    terms = jnp.where(i == 0, jnp.log(r)[..., None], jnp.log1p((r[..., None] - 1.0) / (i + 1.0)))
    cum = jnp.cumsum(terms, axis=-1)
    return jnp.concatenate([jnp.zeros((*r.shape, 1), r.dtype), cum], axis=-1)


def _rise_rows(r_pad, cols, vals, big_cols=None, big_vals=None, J=None):
    """``Σ_l rise(x_bl, r_k g_bl)`` per cell and component: ``[B, K]``.

    With ``big_cols`` / ``big_vals`` (the entries above ``J`` again, as their own padded
    rows) counts up to ``J`` are looked up in :func:`rise_table` and only the large ones
    use the exact ``betaln`` form; otherwise every entry uses ``betaln``.
    """
    if big_cols is None:
        r_e = r_pad[:, cols]  # [K, B, L]
        return jnp.sum(log_rising_factorial_ratio(vals[None], r_e), axis=-1).T
    T = rise_table(r_pad, J)  # [K, G + 1, J + 1]
    xi = jnp.minimum(vals, J).astype(jnp.int32)
    small = jnp.sum(T[:, cols, xi], axis=-1)  # [K, B]
    rb = r_pad[:, big_cols]
    big = log_rising_factorial_ratio(big_vals[None], rb) - T[:, big_cols, J]
    return (small + jnp.sum(big, axis=-1)).T


def component_loglik(values, cfg, cols, vals, lib, ann=None, rise=True, big=None):
    """Joint ``log p(x_c, z_c = k)`` for the cells of padded rows ``cols`` / ``vals``
    (``[B, L]``, padding column ``G`` with value 0) and library sizes ``lib`` ([B]).

    ``values`` holds one draw; cell-level sites must be those of these ``B`` cells.
    Returns ``[B, K]``.
    """
    c = canonical(values, cfg)
    r, logit_p = c["r"], c["logit_p"]  # [K, G], [K]
    K, _G = r.shape
    log_nu = _log_nu(values, cfg)
    # logit p̂ per cell and component: [B, K] (or [1, K] without capture)
    logit_ph = logit_p[None, :] if log_nu is None else logit_p[None, :] + log_nu[:, None]
    log_ph, log_1m_ph = log_sigmoid(logit_ph), log_sigmoid(-logit_ph)
    r_pad = jnp.concatenate([r, jnp.ones((K, 1), r.dtype)], axis=1)
    r_e = r_pad[:, cols]  # [K, B, L]
    ll = lib[:, None] * log_ph
    if rise:  # else added by the caller from the survival grid (one component only)
        if big is None:
            ll = ll + _rise_rows(r_pad, cols, vals)
        else:
            ll = ll + _rise_rows(r_pad, cols, vals, big["big_cols"], big["big_vals"], big["J"])
    R = jnp.sum(r, axis=1)  # [K]
    ll = ll + R[None, :] * log_1m_ph
    if "gate_logit" in c:
        # with a = log(1 - p̂): log P(0) = log(1 - π) + r a + softplus(logit π - r a) and
        # log P(x > 0) = log(1 - π) + [NB part], so the gate adds Σ_g log(1 - π_g) plus
        # softplus(logit π - r a) over the zeros = over all genes minus over the non-zeros
        gl = c["gate_logit"]
        ll = ll + jnp.sum(log_sigmoid(-gl), axis=1)[None, :]
        gl_pad = jnp.concatenate([gl, jnp.zeros((K, 1), r.dtype)], axis=1)
        a_kb = log_1m_ph.T[:, :, None]  # [K, B or 1, 1]
        nz = vals > 0
        sp_nz = jnp.where(nz[None], jax.nn.softplus(gl_pad[:, cols] - r_e * a_kb), 0.0)
        ll = ll - jnp.sum(sp_nz, axis=-1).T
        # all genes: [K, G] without capture, the one dense [K, B, G] term with it
        sp_all = jax.nn.softplus(gl[:, None, :] - r[:, None, :] * a_kb)
        ll = ll + jnp.sum(sp_all, axis=-1).T
    return ll + _log_mix_prior(values, cfg, ann)


def _rows_loglik(values, cfg, src, rise=True):
    big = None
    if "big_cols" in src:
        big = {"big_cols": src["big_cols"], "big_vals": src["big_vals"], "J": cfg["rise_J"]}
    ll = component_loglik(
        values, cfg, src["cols"], src["vals"], src["lib"], src.get("ann"), rise=rise, big=big
    )
    return jnp.sum(logsumexp(ll, axis=1))


def _capture_hist_loglik(values, cfg, data):
    """NBVCP, one component, all cells: O(grid + cells + genes)."""
    c = canonical(values, cfg)
    r, logit_p = c["r"][0], c["logit_p"][0]
    logit_ph = logit_p + _log_nu(values, cfg)
    return (
        grid_rise(r, data)
        + jnp.sum(data["lib"] * log_sigmoid(logit_ph))
        + jnp.sum(r) * jnp.sum(log_sigmoid(-logit_ph))
    )


def _hist_loglik(values, cfg, data):
    """No cell sites, one component: the histogram likelihood of the canonical form."""
    c = canonical(values, cfg)
    v = {"p": jax.nn.sigmoid(c["logit_p"][0]), "r": c["r"][0]}
    if "gate_logit" in c:
        v["gate"] = jax.nn.sigmoid(c["gate_logit"][0])
    base = ZINB if cfg["zero_inflated"] else NBDM
    return hist_loglik(base, v, data)


def data_layout(cfg: Mapping[str, Any]) -> str:
    """Which exact likelihood path a configuration uses (see the module docstring)."""
    if int(cfg["n_components"]) == 1 and not cfg["capture"]:
        return "hist"
    if int(cfg["n_components"]) == 1 and not cfg["zero_inflated"]:
        return "capture_hist"
    return "rows"


def _make_loglik(cfg):
    layout = data_layout(cfg)
    one = int(cfg["n_components"]) == 1

    def loglik(values, data, batch):
        """The log-likelihood, already scaled for a minibatch. With one component the
        gene-level rising-factorial part always comes exactly from the survival grid
        (when ``data`` has it), so a minibatch only estimates the cell-dependent rest."""
        if batch is None and layout == "hist":
            return _hist_loglik(values, cfg, data)
        if batch is None and layout == "capture_hist" and "cols" not in data:
            return _capture_hist_loglik(values, cfg, data)
        grid = one and data is not None and "surv_gene" in data
        src = data if batch is None else batch
        ll = _rows_loglik(values, cfg, src, rise=not grid)
        if batch is not None:
            ll = batch["scale"] * ll
        if grid:
            ll = ll + grid_rise(canonical(values, cfg)["r"][0], data)
        return ll

    return loglik


# ----------------------------------------------------------------------------- derived outputs
def _derived(cfg):
    K = int(cfg["n_components"])
    par = cfg["parameterization"]

    def derived(draws):
        """r, p, mu and rho (and nu / eta) from draws with a leading draw axis."""
        out = {}
        if par == "mean_odds":
            phi = jnp.asarray(draws["phi"])
            p = 1.0 / (1.0 + phi)
            out["p"] = p
        else:
            p = jnp.asarray(draws["p"])
        gname = "r" if par == "canonical" else "mu"
        g = jnp.asarray(draws[gname])
        if K > 1:
            g = g if g.ndim == 3 else jnp.broadcast_to(g[:, None, :], (g.shape[0], K, g.shape[-1]))
            pb = p[..., None] if p.ndim == 2 else p[:, None, None]
        else:
            pb = p[:, None]
        odds = pb / (1.0 - pb)
        if par == "canonical":
            r, mu = g, g * odds
        else:
            r, mu = g / odds, g
        out.update(r=r, mu=mu, rho=r / jnp.sum(r, axis=-1, keepdims=True))
        if "gate" in draws and K > 1 and jnp.ndim(draws["gate"]) == 2:
            out["gate"] = jnp.broadcast_to(draws["gate"][:, None, :], r.shape)
        if cfg["capture"] and cfg["capture_prior"] == "truncnormal":
            out["nu"] = jnp.exp(-jnp.asarray(draws["eta"]))
        return out

    return derived


# ----------------------------------------------------------------------------- init
def _init_fn(cfg):
    K = int(cfg["n_components"])
    par = cfg["parameterization"]
    mix = set(cfg["mixture_params"])

    def init(ctx):
        mean, var = np.asarray(ctx["mean"]), np.asarray(ctx["var"])
        lib = np.asarray(ctx["lib"], dtype=np.float64)
        out: dict[str, Any] = {}
        scale = 1.0
        if cfg["capture"]:
            nu = np.clip(lib / max(np.quantile(lib, 0.99), 1.0), 0.02, 0.98)
            if cfg["capture_prior"] == "truncnormal":
                log_m0 = float(ctx["priors"]["eta"][1][0])
                eta = np.maximum(log_m0 - np.log(np.maximum(lib, 1.0)), 0.05)
                nu = np.exp(-eta)
                out["eta"] = eta.astype(np.float32)
            else:
                out["nu"] = nu.astype(np.float32)
            scale = float(np.mean(nu))
        base = _init_nb(mean / scale, var / scale**2)
        p = float(base["p"])
        if K > 1:
            comp_means = np.asarray(ctx["component_means"], dtype=np.float64) / scale  # [K, G]
            weights = np.asarray(ctx["component_weights"], dtype=np.float64)
            out["mixing_weights"] = (weights / weights.sum()).astype(np.float32)
            gene_mean = np.maximum(comp_means, 1e-3)
        else:
            gene_mean = np.maximum(mean / scale, 1e-3)
        r_like = np.clip(gene_mean * (1 - p) / p, 1e-3, 1e4)
        gname = _GENE_SITES[par].name
        gval = r_like if par == "canonical" else gene_mean
        if K > 1 and gname not in mix:
            gval = np.exp(np.mean(np.log(gval), axis=0))
        out[gname] = gval.astype(np.float32)
        glob = _GLOBAL_SITES[par].name
        gv = p if glob == "p" else (1 - p) / p
        out[glob] = np.full((K,), gv, np.float32) if (K > 1 and glob in mix) else np.float32(gv)
        if cfg["zero_inflated"]:
            shape = (K, mean.shape[0]) if (K > 1 and "gate" in mix) else mean.shape
            out["gate"] = np.full(shape, 0.05, dtype=np.float32)
        return out

    return init


# ----------------------------------------------------------------------------- spec factory
_SPECS: dict[tuple, ModelSpec] = {}


def spec_name(base, parameterization, n_components, mixture_params, capture_prior) -> str:
    parts = []
    if parameterization != "canonical":
        parts.append(parameterization)
    if n_components > 1:
        parts.append(f"K={n_components}")
        if tuple(mixture_params) != default_mixture_params(base, parameterization):
            parts.append("mix=" + "+".join(mixture_params))
    if base in ("nbvcp", "zinbvcp") and capture_prior != "beta":
        parts.append(f"capture={capture_prior}")
    return base if not parts else f"{base}[{','.join(parts)}]"


def make_nb_spec(
    base: str,
    *,
    parameterization: str = "canonical",
    n_components: int = 1,
    mixture_params: Sequence[str] | None = None,
    capture_prior: str = "beta",
) -> ModelSpec:
    """The :class:`ModelSpec` of one NB-family configuration (cached; validated upstream)."""
    base = base.lower()
    if base not in BASES:
        raise ValueError(f"unknown NB-family model {base!r}; choose one of {', '.join(BASES)}.")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"`parameterization`={parameterization!r} is not one of "
            f"{', '.join(map(repr, PARAMETERIZATIONS))}."
        )
    K = int(n_components)
    mp = (
        tuple(
            default_mixture_params(base, parameterization)
            if mixture_params is None
            else mixture_params
        )
        if K > 1
        else ()
    )
    capture = base in ("nbvcp", "zinbvcp")
    cap = capture_prior if capture else "beta"
    key = (base, parameterization, K, mp, cap)
    if key in _SPECS:
        return _SPECS[key]
    zi = base in ("zinb", "zinbvcp")
    if not capture and K == 1 and parameterization == "canonical":
        spec = NBDM if base == "nbdm" else ZINB
        _SPECS[key] = spec
        return spec
    cfg = {
        "base": base,
        "parameterization": parameterization,
        "n_components": K,
        "mixture_params": mp,
        "capture": capture,
        "capture_prior": cap,
        "zero_inflated": zi,
        "rise_J": RISE_TABLE_J,
    }

    def with_comp(site: LatentSite) -> LatentSite:
        if site.name in mp:
            return LatentSite(site.name, site.plate, site.support, site.description, True)
        return site

    sites = [with_comp(_GLOBAL_SITES[parameterization])]
    if K > 1:
        sites.append(_WEIGHTS)
    sites.append(with_comp(_GENE_SITES[parameterization]))
    if zi:
        sites.append(with_comp(_GATE))
    if capture:
        sites.append(_ETA if cap == "truncnormal" else _NU)
    links = {}
    if parameterization == "canonical":
        links["r"] = lambda v: -(jnp.log(v["p"]) - jnp.log1p(-v["p"]))
    gene_outputs = ("r", "mu", "rho") if not zi else ("r", "gate", "mu", "rho")
    base_obs = NBDM if not zi else ZINB
    spec = ModelSpec(
        name=spec_name(base, parameterization, K, mp, cap),
        description=_DESCRIPTIONS[base],
        sites=tuple(sites),
        default_priors={s.name: _DEFAULT_PRIORS[s.name] for s in sites},
        logpmf=base_obs.logpmf,
        obs_dist=base_obs.obs_dist,
        derived=_derived(cfg),
        init_values=lambda mean, var: {},
        gene_outputs=gene_outputs,
        guide_links=links,
        n_components=K,
        loglik=_make_loglik(cfg),
        init_fn=_init_fn(cfg),
        config=cfg,
    )
    _SPECS[key] = spec
    return spec


def obs_distribution(r, logit_p_hat, gate=None) -> dist.Distribution:
    """Distribution of one count given canonical parameters (``logit p̂`` per cell)."""
    d = dist.NegativeBinomialLogits(r, logit_p_hat)
    return d if gate is None else dist.ZeroInflatedDistribution(d, gate=gate)
