"""ZiPo benchmark (issue 6): ``snb.tl.fit_zipo`` against scvi-tools' ``SCVI`` (zinb and nb).

What is compared, in one run on one machine
-------------------------------------------
* **data**: ``simulate_lowrank_zinb(10_000, 2_000, n_types=5, seed=s)`` (ZINB counts, rank-6
  structure, 5 cell types, known rates and gates). Cells are split at random: 9,000 to train
  (each method holds out 10 % of them for its own validation), 1,000 to score.
* **methods**: ``snb.tl.fit_zipo`` with ``likelihood="zinb"`` and ``"zip"`` (defaults
  otherwise: encoder 256-64, 32 latents, batch 256, learning rate 0.02 decaying to 1e-3,
  alpha_z = alpha_w = 0.1, ``library="matched"``), and ``scvi.model.SCVI`` with ``gene_likelihood="zinb"`` and
  ``"nb"`` (defaults: 1 hidden layer of 128, 10 latents, batch 128, Adam 1e-3). Every method
  runs exactly ``--epochs`` epochs (ZiPo's early stopping is switched off; it keeps the
  weights of its best validation epoch, SCVI its last).
* **longer run**: every method again on the first data seed for as many epochs as ZiPo's own
  training takes there (``--long-epochs auto``, the default: ``fit_zipo`` with every default,
  early stopping on, is run first and its number of epochs is used for every method; or a
  number), which compares the methods at a training length a user gets, and separates the
  fixed costs from the cost per epoch.
* **seeds**: every data seed is trained with the same seed; the first data set is also
  trained with further training seeds (``--train-seeds``: initialisation and minibatch
  order only), which gives each method's run-to-run spread with the data held fixed.
* **one yardstick**: each method's likelihood parameters for the 1,000 held-out cells (the
  cells encoded by the trained encoder: ZiPo's deterministic latent, SCVI's posterior mean
  ``qz.loc``) are scored by the same SciPy log-pmf in float64: **held-out NLL per entry**;
  **rate MSE**: mean squared error of the NB mean (``library * fraction``, no dropout) against
  the simulated rates of the held-out cells; **Leiden ARI**: ``sc.pp.neighbors`` (15
  exact neighbours) + ``sc.tl.leiden`` (igraph, resolution 0.3, seed 0) on the latent of all
  10,000 cells against the 5 types; **CPU seconds** (user + system) and wall seconds of the
  training call (``fit_zipo``, which also writes its outputs for the training cells;
  ``SCVI.train``), each in a fresh process, JAX compilation included.

Run with an interpreter that has scvi-tools (``pip install torch==2.13.0`` then
``pip install scvi-tools==1.4.2``) and igraph (``pip install igraph``)::

    python benchmarks/bench_zipo.py                    # rewrites the "ZiPo (issue 6)" section
    python benchmarks/bench_zipo.py --quick --no-write # smoke test

Without scvi-tools the SCVI rows are skipped (and say so); without igraph the clustering
falls back to k-means (k = 5) and the table says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Stopwatch,
    machine_info,
    markdown_table,
    run_worker,
    worker_result,
    write_section,
)

SECTION = "ZiPo (issue 6)"
N_CELLS, N_GENES, N_TRAIN, N_TYPES = 10_000, 2_000, 9_000, 5
METHODS = ("zipo_zinb", "zipo_zip", "scvi_zinb", "scvi_nb")
LEIDEN_RESOLUTION = 0.3


# ----------------------------------------------------------------------------- data
def simulate(seed: int, path: Path, n_cells: int, n_genes: int, n_train: int) -> None:
    from scnbtools._core.models.zipo_sim import simulate_lowrank_zinb

    sim = simulate_lowrank_zinb(n_cells, n_genes, n_types=N_TYPES, seed=seed)
    perm = np.random.default_rng(10_000 + seed).permutation(n_cells)
    X = sim.counts.tocsr()
    np.savez(
        path,
        data=X.data,
        indices=X.indices,
        indptr=X.indptr,
        shape=np.asarray(X.shape),
        rates=sim.rates,
        labels=sim.labels,
        gate=sim.gate,
        train=np.sort(perm[:n_train]),
        test=np.sort(perm[n_train:]),
    )


def load(path: str):
    z = np.load(path)
    X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    return X, {k: z[k] for k in ("rates", "labels", "gate", "train", "test")}


# ----------------------------------------------------------------------------- workers
def _train_seed(args) -> int:
    """The training seed (network initialisation, minibatches): the data seed unless given."""
    return args.seed if args.train_seed is None else args.train_seed


def worker_zipo(args) -> None:
    import anndata as ad

    import scnbtools as snb
    from scnbtools.tl import _zipo

    X, d = load(args.data)
    likelihood = args.method.split("_", 1)[1]
    tr = ad.AnnData(X[d["train"]])
    te = ad.AnnData(X[d["test"]])
    # --epochs 0: every default (early stopping on), the training length a user gets
    length = {} if args.epochs == 0 else {"max_epochs": args.epochs}
    if args.epochs:
        length["early_stopping_patience"] = args.epochs + 1
    with Stopwatch() as sw:
        snb.tl.fit_zipo(
            tr, likelihood=likelihood, rng=_train_seed(args), progress_bar=False, **length
        )
    snb.tl.zipo_transform(te, reference=tr)
    res = tr.uns["zipo"]
    o = _zipo._outputs(res, _zipo._cell_arrays(te, res, None), _zipo._dense_fn)
    params = {"log_rate": o["log_mu"] + o["log_l"][:, None]}
    if "keep" in o:
        params["gate"] = 1.0 - o["keep"]
    cfg = _zipo._config_from(res)
    if cfg.negative_binomial:
        params["r"] = np.exp(np.asarray(res["weights"]["disp"]["log_r"], np.float64))
    latent = np.zeros((X.shape[0], tr.obsm["zipo"].shape[1]), np.float32)
    latent[d["train"]], latent[d["test"]] = tr.obsm["zipo"], te.obsm["zipo"]
    np.savez(args.out, latent=latent, **params)
    worker_result(
        {
            "wall_s": sw.seconds,
            "cpu_s": sw.cpu_seconds,
            "epochs": int(res["n_epochs_run"]),
            "best_epoch": int(res["best_epoch"]) + 1,  # 1-based, as "epochs"
            "stopped_early": bool(res["stopped_early"]),
            "likelihood": likelihood,
        }
    )


def worker_scvi(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    import anndata as ad
    import scvi
    import torch

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    X, d = load(args.data)
    likelihood = args.method.split("_", 1)[1]
    scvi.settings.seed = _train_seed(args)
    tr = ad.AnnData(X[d["train"]].astype(np.float32))
    te = ad.AnnData(X[d["test"]].astype(np.float32))
    scvi.model.SCVI.setup_anndata(tr)
    model = scvi.model.SCVI(tr, gene_likelihood=likelihood)
    with Stopwatch() as sw:
        model.train(
            max_epochs=args.epochs,
            early_stopping=False,
            accelerator="cpu",
            enable_progress_bar=False,
        )
    mod = model.module
    te = model._validate_anndata(te)
    mu, theta, zi = [], [], []
    with torch.no_grad():
        for tensors in model._make_data_loader(adata=te, batch_size=500):
            inf = mod.inference(**mod._get_inference_input(tensors))
            inf["z"] = inf["qz"].loc  # posterior mean, as for the latent
            px = mod.generative(**mod._get_generative_input(tensors, inf))["px"]
            mu.append(px.mu.numpy())
            theta.append(np.broadcast_to(px.theta.numpy(), px.mu.shape))
            if likelihood == "zinb":
                zi.append(torch.sigmoid(px.zi_logits).numpy())
    params = {"log_rate": np.log(np.concatenate(mu).astype(np.float64))}
    params["r"] = np.concatenate(theta).astype(np.float64)
    if zi:
        params["gate"] = np.concatenate(zi).astype(np.float64)
    latent = np.zeros((X.shape[0], model.module.n_latent), np.float32)
    latent[d["train"]] = model.get_latent_representation(tr)
    latent[d["test"]] = model.get_latent_representation(te)
    np.savez(args.out, latent=latent, **params)
    worker_result(
        {
            "wall_s": sw.seconds,
            "cpu_s": sw.cpu_seconds,
            "epochs": int(model.history["elbo_train"].shape[0]),
            "likelihood": likelihood,
            "torch_threads": torch.get_num_threads(),
        }
    )


# ----------------------------------------------------------------------------- scoring
def heldout_nll(x: np.ndarray, p: dict) -> float:
    """Mean NLL per entry in float64 (SciPy), the same for every method."""
    from scipy import stats

    m = np.exp(p["log_rate"])
    if "r" in p:
        r = np.broadcast_to(p["r"], m.shape)
        base = stats.nbinom.logpmf(x, r, r / (r + m))
        base0 = stats.nbinom.logpmf(0, r, r / (r + m))
    else:
        base = stats.poisson.logpmf(x, m)
        base0 = -m
    if "gate" in p:
        pi = np.clip(p["gate"], 0.0, 1.0)
        ll = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(base0)), np.log1p(-pi) + base)
    else:
        ll = base
    return float(-ll.mean())


def cluster_ari(latent: np.ndarray, labels: np.ndarray) -> tuple[float, int, str]:
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    a = ad.AnnData(np.zeros((latent.shape[0], 1), np.float32))
    a.obsm["z"] = latent
    try:
        import igraph  # noqa: F401

        # exact kNN (sklearn): scanpy 1.11's default pynndescent path fails on scipy's
        # csr_array above 4,096 cells in this environment
        sc.pp.neighbors(a, use_rep="z", n_neighbors=15, transformer="sklearn", random_state=0)
        sc.tl.leiden(
            a, resolution=LEIDEN_RESOLUTION, flavor="igraph", n_iterations=2, random_state=0
        )
        pred, how = a.obs["leiden"].to_numpy(), "leiden"
    except ImportError:
        from sklearn.cluster import KMeans

        pred = KMeans(N_TYPES, n_init=10, random_state=0).fit_predict(latent)
        how = "kmeans"
    return float(adjusted_rand_score(labels, pred)), len(set(pred)), how


def score(data_path: Path, out_path: Path) -> dict:
    X, d = load(str(data_path))
    z = np.load(out_path)
    x = X[d["test"]].toarray().astype(np.float64)
    p = {k: z[k].astype(np.float64) for k in ("log_rate", "gate", "r") if k in z}
    mse = float(np.mean((np.exp(p["log_rate"]) - d["rates"][d["test"]]) ** 2))
    ari, n_clusters, how = cluster_ari(z["latent"], d["labels"])
    out = {"nll": heldout_nll(x, p), "rate_mse": mse, "ari": ari, "n_clusters": n_clusters}
    out["clustering"] = how
    if "gate" in p:
        out["mean_gate"] = float(p["gate"].mean())
    out["true_gate"] = float(d["gate"].mean())
    return out


# ----------------------------------------------------------------------------- main
def _scvi_available() -> str | None:
    try:
        import scvi  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _run_methods(methods, work, seed, train_seed, epochs, sizes, tag="") -> list[dict]:
    """Every method on data seed ``seed`` for ``epochs`` epochs, each in a fresh process."""
    data = work / f"data_{seed}.npz"
    if not data.exists():
        simulate(seed, data, *sizes)
    rows = []
    for method in methods:
        out = work / f"{method}_{seed}_{train_seed}{tag}.npz"
        print(
            f"data seed {seed}, training seed {train_seed}, {epochs} epochs: {method}", flush=True
        )
        cmd = ["--worker", method, "--data", data, "--out", out, "--epochs", epochs]
        cmd += ["--seed", seed, "--train-seed", train_seed]
        try:
            res = run_worker(__file__, cmd, echo=None)
        except RuntimeError as e:
            print(f"  failed: {e}", flush=True)
            rows.append(
                {
                    "seed": seed,
                    "train_seed": train_seed,
                    "method": method,
                    "error": str(e).splitlines()[0],
                }
            )
            continue
        res.update(score(data, out), seed=seed, train_seed=train_seed, method=method)
        keys = ("nll", "rate_mse", "ari", "cpu_s", "wall_s")
        print("  " + json.dumps({k: res[k] for k in keys}), flush=True)
        rows.append(res)
    return rows


def main(args) -> None:
    info = machine_info(
        packages=("scnbtools", "jax", "jaxlib", "optax", "torch", "scvi-tools", "scanpy", "igraph")
    )
    skip_scvi = _scvi_available()
    methods = [m for m in METHODS if not (m.startswith("scvi") and skip_scvi)]
    n_cells, n_genes, n_train = (2_000, 500, 1_800) if args.quick else (N_CELLS, N_GENES, N_TRAIN)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_zipo_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    # every data seed with its own training seed, then more training seeds on the first data
    # set: the run-to-run spread of each method with the data held fixed
    runs = [(seed, seed) for seed in args.seeds]
    runs += [(args.seeds[0], t) for t in args.train_seeds if t != args.seeds[0]]
    sizes = (n_cells, n_genes, n_train)
    for seed, train_seed in runs:
        rows += _run_methods(methods, work, seed, train_seed, args.epochs, sizes)
    long_rows: list[dict] = []
    default_row = None
    long_epochs = 0 if args.long_epochs == "auto" else int(args.long_epochs)
    seed = args.seeds[0]
    if args.long_epochs == "auto":
        # ZiPo with every default (early stopping on): its number of epochs is the length
        default_row = _run_methods(["zipo_zinb"], work, seed, seed, 0, sizes, tag="default")[0]
        long_epochs = int(default_row.get("epochs", 0))
    if long_epochs:
        long_rows = _run_methods(methods, work, seed, seed, long_epochs, sizes, tag="long")
    result = {
        "machine": info,
        "load_avg_end": machine_info(packages=())["load_avg_1_5_15"],
        "epochs": args.epochs,
        "seeds": list(args.seeds),
        "train_seeds": list(args.train_seeds),
        "shape": [n_cells, n_genes, n_train],
        "skip_scvi": skip_scvi,
        "rows": rows,
        "long_epochs": long_epochs,
        "long_rows": long_rows,
        "default_row": default_row,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    body = render(result)
    print(body)
    if not args.no_write and not args.quick:
        write_section(SECTION, body)


def _agg(rows, method, key):
    v = np.array([r[key] for r in rows if r["method"] == method and key in r], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), v.size


def _true_gates(result: dict) -> dict[int, float]:
    """Mean true gate per seed (recomputed from the seeded simulation if not stored)."""
    out = {r["seed"]: r["true_gate"] for r in result["rows"] if "true_gate" in r}
    missing = [s for s in result["seeds"] if s not in out]
    if missing:
        from scnbtools._core.models.zipo_sim import simulate_lowrank_zinb

        n_cells, n_genes, _ = result["shape"]
        for seed in missing:
            sim = simulate_lowrank_zinb(n_cells, n_genes, n_types=N_TYPES, seed=seed)
            out[seed] = float(sim.gate.mean())
    return out


def _main_rows(rows):
    """One run per data seed (trained with the data seed)."""
    return [r for r in rows if r.get("train_seed", r["seed"]) == r["seed"]]


def _repeat_rows(rows, result):
    """The runs on the first data seed, one per training seed."""
    return [r for r in rows if r["seed"] == result["seeds"][0]]


def render(result: dict) -> str:
    all_rows = [r for r in result["rows"] if "error" not in r]
    rows = _main_rows(all_rows)
    rep = _repeat_rows(all_rows, result)
    n_rep = len({r.get("train_seed", r["seed"]) for r in rep})
    gates = _true_gates(result)
    info = result["machine"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    n_cells, n_genes, n_train = result["shape"]
    lines = [
        "Produced by `python benchmarks/bench_zipo.py` (one run; every number below comes from it).",
        "",
        f"**Machine:** {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory_gib')} GiB RAM, "
        f"Python {info.get('python')}; scnbtools {info.get('scnbtools')}, jax {info.get('jax')}, "
        f"optax {info.get('optax')}, torch {info.get('torch')}, scvi-tools {info.get('scvi-tools')}; "
        f"JAX devices: {info.get('jax_devices')}. **No GPU was available to this run, so there are "
        f"no GPU timings.** Load average at the start {info.get('load_avg_1_5_15')}, at the end "
        f"{result.get('load_avg_end')} (shared machine: wall times are inflated; CPU time is the "
        "better number).",
        "",
        f"**Setup.** Seeded ZINB simulation, {n_cells:,} cells × {n_genes:,} genes, 5 cell types "
        f"(`simulate_lowrank_zinb`); train on {n_train:,} cells, score {n_cells - n_train:,} "
        f"held-out cells; every method runs exactly **{result['epochs']} epochs** "
        f"(seeds {', '.join(map(str, result['seeds']))}). Scoring is the same for all: SciPy "
        "log-pmf of each method's likelihood parameters for the held-out cells (NLL per entry), "
        "MSE of the NB mean against the true rates of the held-out cells, Leiden "
        f"(resolution {LEIDEN_RESOLUTION}) ARI on the latent of all cells. CPU / wall seconds "
        "are those of the training call in a fresh process, compilation included. See the "
        "script's docstring for every detail.",
    ]
    if result.get("skip_scvi"):
        lines += ["", f"**SCVI was not run** (scvi-tools not importable: {result['skip_scvi']})."]
    lines += [
        "",
        f"**Epochs.** {result['epochs']} epochs for every method (the issue asks for the same "
        "number of epochs for all), to keep one run of the benchmark (every method, every seed) "
        "short on this machine: both methods are compared early in training, not at "
        "convergence (a longer run of one seed follows the tables). CPU seconds per epoch, "
        "with every fixed cost (compilation, set-up) included: "
        + ", ".join(
            f"{m} {_agg(rows, m, 'cpu_s')[0] / result['epochs']:.2g}"
            for m in METHODS
            if any(r["method"] == m for r in rows)
        )
        + ".",
        "",
        f"**Seeds.** Each data seed is a different simulated data set, trained with the same "
        f"seed. In addition, the first data set (seed {result['seeds'][0]}) was trained with "
        f"{n_rep} training seeds ({', '.join(map(str, result.get('train_seeds', [])))}: "
        "network initialisation and minibatch order; same cells, same split): the spread over "
        "those is each method's own run-to-run variation, which the spread over data sets "
        "cannot show (there every method moves with the data).",
        "",
        "The true mean dropout probability of the simulations is "
        + ", ".join(f"{gates[s]:.3f} (seed {s})" for s in sorted(gates))
        + "; the *mean gate* column is each zero-inflated method's mean over held-out entries.",
    ]
    lines += ["", "### Mean ± sd over seeds", ""]
    table = []
    for m in methods:
        cells = [m]
        for key, digits in (("nll", 4), ("rate_mse", 3), ("ari", 3), ("cpu_s", 3), ("wall_s", 3)):
            mean, sd, n = _agg(rows, m, key)
            cells.append(f"{mean:.{digits}g} ± {sd:.2g}" if n > 1 else f"{mean:.{digits}g}")
        mg = _agg(rows, m, "mean_gate")
        cells.append(f"{mg[0]:.3f}" if mg[2] else "–")
        table.append(cells)
    lines.append(
        markdown_table(
            [
                "method",
                "held-out NLL / entry",
                "rate MSE",
                "Leiden ARI",
                "CPU s",
                "wall s",
                "mean gate",
            ],
            table,
        )
    )
    lines += [
        "",
        f"### Run-to-run spread: data seed {result['seeds'][0]}, {n_rep} training seeds",
        "",
    ]
    spread = []
    for m in methods:
        cells = [m]
        for key, digits in (("nll", 4), ("rate_mse", 3), ("ari", 3)):
            mean, sd, n = _agg(rep, m, key)
            cells.append(f"{mean:.{digits}g} ± {sd:.2g}" if n > 1 else f"{mean:.{digits}g}")
        spread.append(cells)
    lines.append(
        markdown_table(["method", "held-out NLL / entry", "rate MSE", "Leiden ARI"], spread)
    )
    lines += ["", "### Every run", ""]
    per = []
    for r in result["rows"]:
        ts = r.get("train_seed", r["seed"])
        if "error" in r:
            per.append([r["seed"], ts, r["method"], "failed", r["error"], "", "", "", "", ""])
            continue
        per.append(
            [
                r["seed"],
                ts,
                r["method"],
                r["nll"],
                r["rate_mse"],
                r["ari"],
                r["n_clusters"],
                r["clustering"],
                r["cpu_s"],
                r["wall_s"],
            ]
        )
    lines.append(
        markdown_table(
            [
                "data seed",
                "training seed",
                "method",
                "NLL / entry",
                "rate MSE",
                "ARI",
                "clusters",
                "clustering",
                "CPU s",
                "wall s",
            ],
            per,
        )
    )
    long_rows = [r for r in result.get("long_rows", []) if "error" not in r]
    if long_rows:
        lines += ["", _long_section(result, long_rows, rows)]
    lines += ["", _targets(rows, rep, methods, long_rows, result.get("long_epochs"))]
    lines += [
        "",
        "**Reading the numbers.** Each data seed is a different simulated data set, so the sd "
        "over data seeds mixes data-to-data variation (which dominates: every method moves "
        "together from data set to data set) with the methods' own run-to-run variation; the "
        "spread target is therefore judged on the training seeds of one data set. ZiPo's CPU "
        "time includes its JAX compilation, a fixed cost per network shape that does not grow "
        "with the number of epochs, while SCVI's cost is almost all per epoch (the longer run "
        "above shows both). Rate MSE is dominated by the few highly expressed genes of each "
        "data set.",
    ]
    return "\n".join(lines)


def _long_section(result: dict, long_rows: list[dict], rows: list[dict]) -> str:
    """The longer single-seed run, with CPU seconds per epoch and ratios to ZiPo zinb."""
    n_long, n_short = result["long_epochs"], result["epochs"]
    seed = result["seeds"][0]
    short = {r["method"]: r for r in rows if r["seed"] == seed}
    ours = next((r for r in long_rows if r["method"] == "zipo_zinb"), None)
    table = []
    for r in long_rows:
        # the marginal cost of an epoch: the difference to the short run of the same data
        base = short.get(r["method"])
        marginal = (
            (r["cpu_s"] - base["cpu_s"]) / (n_long - n_short)
            if base and n_long != n_short
            else float("nan")
        )
        ratio = r["cpu_s"] / ours["cpu_s"] if ours else float("nan")
        table.append(
            [
                r["method"],
                r["nll"],
                r["rate_mse"],
                r["ari"],
                r["cpu_s"],
                f"{marginal:.3g}",
                f"{ratio:.2f}",
            ]
        )
    d = result.get("default_row")
    if d and "error" not in d:
        how = (
            f"{n_long} epochs is the length of ZiPo's own training on this data: `fit_zipo` "
            f"with every default (zinb, early stopping on) ran {n_long} epochs "
            + ("and stopped early " if d.get("stopped_early") else "(all of `max_epochs`) ")
            + f"(best epoch {d.get('best_epoch', '?')}; held-out NLL {d['nll']:.4g}, rate MSE "
            f"{d['rate_mse']:.3g}, ARI {d['ari']:.3g}, {d['cpu_s']:.3g} CPU s). Every method "
            f"then trained exactly {n_long} epochs, in the same run."
        )
    else:
        how = f"Every method again, {n_long} epochs each, in the same run."
    head = [
        f"### Longer training: {n_long} epochs (data seed {seed}, training seed {seed})",
        "",
        f"{how} *Marginal CPU s / epoch* is the difference to the {n_short}-epoch run of the "
        f"same data and seed, divided by the {n_long - n_short} extra epochs: the cost of an "
        "epoch without the fixed costs (compilation, set-up, outputs). ZiPo's early stopping "
        "is off in these runs (it keeps its best validation epoch's weights, SCVI its last).",
        "",
    ]
    cols = [
        "method",
        "held-out NLL / entry",
        "rate MSE",
        "Leiden ARI",
        "CPU s",
        "marginal CPU s / epoch",
        "CPU / ZiPo zinb's",
    ]
    return "\n".join(head) + "\n" + markdown_table(cols, table)


def _cpu_cell(ours: float, best: float) -> str:
    """``'2.5× less (10 vs 25 CPU s)'`` or ``'1.3× more (...)'``."""
    ratio = f"{best / ours:.1f}× less" if best >= ours else f"{ours / best:.2f}× more"
    return f"{ratio} ({ours:.3g} vs {best:.3g} CPU s)"


def _targets(rows, rep, methods, long_rows=(), long_epochs=None) -> str:
    if not any(m.startswith("scvi") for m in methods):
        return "### Targets\n\nNot assessed: SCVI did not run."
    best_scvi = {
        k: min(_agg(rows, m, k)[0] for m in methods if m.startswith("scvi"))
        for k in ("nll", "rate_mse", "cpu_s")
    }
    out = ["### Targets (ZiPo zinb vs the better SCVI variant on each metric)", ""]
    z = {k: _agg(rows, "zipo_zinb", k) for k in ("nll", "rate_mse", "cpu_s", "ari")}
    out.append(
        markdown_table(
            ["target", "measured", "verdict"],
            [
                [
                    "held-out NLL ≤ SCVI's",
                    f"{z['nll'][0]:.4f} vs {best_scvi['nll']:.4f}",
                    "met" if z["nll"][0] <= best_scvi["nll"] else "missed",
                ],
                [
                    "rate MSE ≤ ½ SCVI's",
                    f"{z['rate_mse'][0]:.3g} vs {best_scvi['rate_mse']:.3g} "
                    f"(ratio {z['rate_mse'][0] / best_scvi['rate_mse']:.2f})",
                    "met" if z["rate_mse"][0] <= 0.5 * best_scvi["rate_mse"] else "missed",
                ],
                [
                    "≥ 3× less CPU time",
                    _cpu_cell(z["cpu_s"][0], best_scvi["cpu_s"]),
                    "met" if best_scvi["cpu_s"] >= 3 * z["cpu_s"][0] else "missed",
                ],
                *_long_target(long_rows, long_epochs),
                [
                    "smaller spread across seeds (sd of held-out NLL over training seeds; "
                    "over data seeds in brackets)",
                    ", ".join(
                        f"{m}: {_agg(rep, m, 'nll')[1]:.2g} ({_agg(rows, m, 'nll')[1]:.2g})"
                        for m in methods
                    ),
                    _spread_verdict(rep, methods),
                ],
            ],
        )
    )
    return "\n".join(out)


def _long_target(long_rows, long_epochs) -> list[list[str]]:
    cpu = {r["method"]: r["cpu_s"] for r in long_rows}
    scvi = [v for m, v in cpu.items() if m.startswith("scvi")]
    if "zipo_zinb" not in cpu or not scvi:
        return []
    ours, best = cpu["zipo_zinb"], min(scvi)
    verdict = "met" if best >= 3 * ours else "missed"
    return [
        [f"≥ 3× less CPU time, {long_epochs} epochs (one seed)", _cpu_cell(ours, best), verdict]
    ]


def _spread_verdict(rows, methods) -> str:
    sd = {m: _agg(rows, m, "nll")[1] for m in methods}
    if not np.isfinite(sd["zipo_zinb"]):
        return "not assessed (one training seed)"
    scvi_sd = [v for m, v in sd.items() if m.startswith("scvi") and np.isfinite(v)]
    return "met" if scvi_sd and sd["zipo_zinb"] <= min(scvi_sd) else "missed"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6, help="epochs for every method")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--long-epochs",
        default="auto",
        help="also run every method this many epochs on the first data seed (0: skip; "
        "'auto': as many as fit_zipo with its defaults and early stopping takes there)",
    )
    ap.add_argument("--quick", action="store_true", help="2,000 × 500 smoke test; writes nothing")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    ap.add_argument("--render", default=None, help="re-render the section from a saved JSON")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds run on the first data seed (run-to-run spread)",
    )
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--train-seed", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.method = a.worker
        (worker_zipo if a.worker.startswith("zipo") else worker_scvi)(a)
    elif a.render:
        body = render(json.loads(Path(a.render).read_text()))
        print(body)
        if not a.no_write:
            write_section(SECTION, body)
    else:
        main(a)
