"""Benchmark of ``snb.tl.fit_glm`` against glmGamPoi (R) and scdesigner (PyTorch), one run.

Same simulated matrices for every tool:

* **NB**, ``log mu = b0 + b1 x1 + b2 x2`` with one dispersion per gene, at 10,000 × 2,000 and
  50,000 × 2,000 (dense counts): scnbtools vs glmGamPoi (``glm_gp(design = ~ x1 + x2,
  size_factors = FALSE, overdispersion = TRUE)``, its defaults otherwise, i.e. Cox–Reid
  adjusted dispersions) vs scdesigner (``NegBin({"mean": "~ x1 + x2", "dispersion": "~ 1"})``,
  its defaults: AdamW, minibatches of 1,024 cells, early stopping on a 10 % validation split,
  with an epoch cap so the run stays bounded — the cap is reported).
* **ZINB**, the seed notebook's experiment: n = 50,000, g = 20, two covariates per parameter
  and no intercepts: scnbtools vs scdesigner (``ZeroInflatedNegBin``) vs an independent
  float64 reference MLE (scipy L-BFGS-B per gene, started at the truth).

Every timed fit runs in a fresh process (empty JIT caches: scnbtools times include
compilation); our NB fits run three times, each in a fresh process, and the run with the
median CPU time is reported (all three are listed). Errors are mean absolute differences from the simulation truth: all mean
coefficients, and ``log r`` (NB size; glmGamPoi's overdispersion is ``1/r``).

Usage (repository root)::

    python benchmarks/bench_glm.py            # full run (~15 min on 2 busy cores), writes the section
    python benchmarks/bench_glm.py --quick    # small smoke run, writes nothing
    python benchmarks/bench_glm.py --json out.json --no-write

glmGamPoi is installed with ``apt-get install -y r-bioc-glmgampoi`` and scdesigner into a
virtual environment (``--scd-python``, default ``$SCD_PYTHON`` or ``.venv-scd/bin/python``:
``pip install torch==2.13.0 && pip install scdesigner``); a tool that is missing is skipped
and the section says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_ROOT,
    Stopwatch,
    fmt,
    machine_info,
    markdown_table,
    run_worker,
    worker_result,
    write_section,
)

SECTION = "GLM (issue 4)"
ZINB_PARAMS = ("mean", "dispersion", "zero_inflation")
_TAG = "@@BENCH_RESULT@@"


# ----------------------------------------------------------------------------- data
def make_nb(n: int, g: int, seed: int, path: Path) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    X = np.c_[np.ones(n), x]
    B = np.c_[rng.normal(0.0, 1.0, g), rng.normal(0.0, 0.3, (g, 2))]  # genes x 3
    log_r = rng.normal(1.0, 1.0, g)
    mu, r = np.exp(X @ B.T), np.exp(log_r)[None]
    Y = rng.negative_binomial(r, r / (r + mu)).astype(np.float32)
    np.savez(path, Y=Y, x=x, B=B, log_r=log_r)


def make_zinb(n: int, g: int, seed: int, path: Path) -> None:
    from scipy.special import expit

    rng = np.random.default_rng(seed)
    X1, X2, X3 = (rng.normal(size=(n, 2)) for _ in range(3))
    B, D, Z = (rng.normal(size=(2, g)) for _ in range(3))
    mu, r, pi = np.exp(X1 @ B), np.exp(X2 @ D), expit(X3 @ Z)
    Y = (rng.negative_binomial(r, r / (r + mu)) * (rng.random((n, g)) >= pi)).astype(np.float32)
    np.savez(path, Y=Y, X1=X1, X2=X2, X3=X3, B=B, D=D, Z=Z)


# ----------------------------------------------------------------------------- workers
def _obs(d, kind):
    import pandas as pd

    n = d["x"].shape[0] if kind == "nb" else d["X1"].shape[0]
    idx = [f"c{i}" for i in range(n)]
    if kind == "nb":
        return pd.DataFrame({"x1": d["x"][:, 0], "x2": d["x"][:, 1]}, index=idx)
    cols = {
        f"{p}_dim{j}": d[f"X{k + 1}"][:, j] for k, p in enumerate(ZINB_PARAMS) for j in range(2)
    }
    return pd.DataFrame(cols, index=idx)


ZINB_FORMULAS = {p: f"~ {p}_dim0 + {p}_dim1 - 1" for p in ZINB_PARAMS}


def worker_ours(data: str, kind: str, dtype: str) -> None:
    import anndata as ad

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from _common import CompileTimer, peak_rss_mb

    import scnbtools as snb

    d = dict(np.load(data))  # each NpzFile access would read the array again
    a = ad.AnnData(X=d["Y"], obs=_obs(d, kind))
    kw = (
        {"mean": "~ x1 + x2", "dispersion": "~ 1"}
        if kind == "nb"
        else {"family": "zinb", **ZINB_FORMULAS}
    )
    with CompileTimer() as ct, Stopwatch() as sw:
        snb.tl.fit_glm(a, dtype=dtype, progress_bar=False, **kw)
    with Stopwatch() as warm:  # the same fit again: compiled solvers are reused
        snb.tl.fit_glm(a, dtype=dtype, progress_bar=False, key_added="again", **kw)
    out = {
        "wall_s": sw.seconds,
        "cpu_s": sw.cpu_seconds,
        "compile_s": ct.total,
        "warm_wall_s": warm.seconds,
        "warm_cpu_s": warm.cpu_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "converged": int(snb.get.glm_stats(a)["converged"].sum()),
        "n_genes": a.n_vars,
        "n_iter_max": int(snb.get.glm_stats(a)["n_iter"].max()),
    }
    params = ("mean", "dispersion") if kind == "nb" else ZINB_PARAMS
    for p in params:
        out[p] = snb.get.glm_coef(a, param=p).to_numpy()
    worker_result(out)


def worker_scdesigner(data: str, kind: str, max_epochs: int) -> None:
    import anndata as ad
    import torch

    d = dict(np.load(data))
    a = ad.AnnData(X=d["Y"], obs=_obs(d, kind))
    if kind == "nb":
        from scdesigner.distributions import NegBin

        sim = NegBin(formula={"mean": "~ x1 + x2", "dispersion": "~ 1"})
        names = ("mean", "dispersion")
    else:
        from scdesigner.distributions import ZeroInflatedNegBin

        sim = ZeroInflatedNegBin(formula=dict(ZINB_FORMULAS))
        names = ZINB_PARAMS
    with Stopwatch() as sw:
        sim.setup_data(a)
        sim.fit(max_epochs=max_epochs, verbose=False)
    P = sim.parameters
    out = {
        "wall_s": sw.seconds,
        "cpu_s": sw.cpu_seconds,
        "epochs": len(sim.fit_history),
        "early_stopped": sim.stopped_epoch is not None,
        "max_epochs": max_epochs,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for p in names:
        out[p] = np.asarray(P[p], dtype=float)
    worker_result(out)


def worker_reference(data: str) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests" / "glm"))
    from glm_reference import fit_reference

    d = np.load(data)
    Y = d["Y"]
    designs = [d["X1"], d["X2"], d["X3"]]
    truth = [d["B"], d["D"], d["Z"]]
    with Stopwatch() as sw:
        est = np.array(
            [
                fit_reference(
                    Y[:, j],
                    designs,
                    np.zeros(Y.shape[0]),
                    "zinb",
                    np.concatenate([t[:, j] for t in truth]),
                )[0]
                for j in range(Y.shape[1])
            ]
        )
    out = {"wall_s": sw.seconds, "cpu_s": sw.cpu_seconds}
    for k, p in enumerate(ZINB_PARAMS):
        out[p] = est[:, 2 * k : 2 * k + 2].T
    worker_result(out)


R_SCRIPT = r"""
suppressMessages(library(glmGamPoi))
args <- commandArgs(trailingOnly = TRUE)
n <- as.integer(args[1]); G <- as.integer(args[2])
Y <- matrix(readBin(args[3], "double", n * G), nrow = G, ncol = n)
x <- matrix(readBin(args[4], "double", n * 2), nrow = n, ncol = 2, byrow = TRUE)
df <- data.frame(x1 = x[, 1], x2 = x[, 2])
t <- system.time(fit <- glm_gp(Y, design = ~ x1 + x2, col_data = df, size_factors = FALSE,
                                overdispersion = TRUE, verbose = FALSE))
writeBin(as.vector(fit$Beta), args[5])
writeBin(as.vector(fit$overdispersions), args[6])
cat(sprintf("@@GGP@@ %f %f %f %s\n", t[["elapsed"]], t[["user.self"]] + t[["sys.self"]],
            t[["user.child"]] + t[["sys.child"]], as.character(packageVersion("glmGamPoi"))))
"""


def run_glmgampoi(data: Path, workdir: Path, timeout: float) -> dict:
    if shutil.which("Rscript") is None:
        return {"skipped": "Rscript not found (apt-get install -y r-bioc-glmgampoi)"}
    check = subprocess.run(
        ["Rscript", "-e", "suppressMessages(library(glmGamPoi))"], capture_output=True, text=True
    )
    if check.returncode != 0:
        return {
            "skipped": "R package glmGamPoi not installed (apt-get install -y r-bioc-glmgampoi)"
        }
    d = np.load(data)
    Y, x = d["Y"], d["x"]
    n, G = Y.shape
    ybin, xbin = workdir / "ggp_Y.bin", workdir / "ggp_x.bin"
    # cells x genes row-major = genes x cells column-major, as R reads it
    np.asarray(Y, dtype=np.float64).tofile(ybin)
    np.asarray(x, dtype=np.float64).tofile(xbin)
    script = workdir / "ggp.R"
    script.write_text(R_SCRIPT)
    beta, od = workdir / "ggp_beta.bin", workdir / "ggp_od.bin"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["Rscript", str(script), str(n), str(G), str(ybin), str(xbin), str(beta), str(od)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    total = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@GGP@@")), None)
    if proc.returncode != 0 or line is None:
        return {"skipped": f"glmGamPoi failed: {proc.stderr[-500:]}"}
    elapsed, cpu, cpu_child, version = line.split()[1:]
    B = np.fromfile(beta).reshape(3, G).T  # Beta is genes x 3, column-major
    overdisp = np.fromfile(od)
    for f in (ybin, xbin, beta, od):
        f.unlink()
    return {
        "wall_s": float(elapsed),
        "cpu_s": float(cpu) + float(cpu_child),
        "process_wall_s": total,
        "version": version,
        "mean": B.T,
        "dispersion": -np.log(np.maximum(overdisp, 1e-10))[None, :],
    }


def run_external(python: str, args: list[str], timeout: float) -> dict:
    """``run_worker`` with another interpreter (scdesigner lives in its own environment)."""
    proc = subprocess.run(
        [python, __file__, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "benchmarks")},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"worker failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}"
        )
    return json.loads(line[len(_TAG) :])


# ----------------------------------------------------------------------------- scoring
def _errors(res: dict, truth: dict) -> dict:
    out = {}
    for p, t in truth.items():
        if p in res:
            est = np.asarray(res[p], dtype=float)
            ok = np.isfinite(est)
            # MAE over the finite estimates; non-finite ones are counted separately
            out[f"err_{p}"] = float(np.mean(np.abs(est - t)[ok])) if ok.any() else None
            out[f"nan_{p}"] = int(np.sum(~ok))
    return out


def _strip(res: dict) -> dict:
    """The result without its coefficient arrays (the lists of run times are kept)."""
    keep = ("cpu_runs", "wall_runs")
    return {k: v for k, v in res.items() if k in keep or not isinstance(v, (list, np.ndarray))}


def _scdesigner(have_scd, python, path, kind, epochs, truth, args) -> dict:
    if not have_scd:
        return {"skipped": f"scdesigner not importable with {python}"}
    cmd = ["--worker", "scdesigner", "--data", str(path), "--kind", kind, "--epochs", str(epochs)]
    try:
        scd = run_external(python, cmd, timeout=args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {"skipped": f"failed: {str(e)[-300:]}"}
    return {**_strip(scd), **_errors(scd, truth)}


def _ours_median(me: str, path: Path, repeats: int) -> dict:
    """Our NB fit in ``repeats`` fresh processes; the run with the median CPU time.

    Our fit takes seconds, so one load spike on the shared machine moves it by tens of per
    cent; the peers' fits take minutes and average such spikes out within one run."""
    runs = [
        run_worker(me, ["--worker", "ours", "--data", path, "--kind", "nb", "--dtype", "float32"])
        for _ in range(max(1, repeats))
    ]
    runs.sort(key=lambda r: r["cpu_s"])
    out = dict(runs[len(runs) // 2])
    out["cpu_runs"] = [r["cpu_s"] for r in runs]
    out["wall_runs"] = sorted(r["wall_s"] for r in runs)
    return out


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_glm_"))
    sizes = [(2000, 200), (5000, 200)] if args.quick else [(10_000, 2000), (50_000, 2000)]
    zinb_n = 5000 if args.quick else 50_000
    scd_python = (
        args.scd_python or os.environ.get("SCD_PYTHON") or str(REPO_ROOT / ".venv-scd/bin/python")
    )
    have_scd = (
        Path(scd_python).exists()
        and subprocess.run([scd_python, "-c", "import scdesigner"], capture_output=True).returncode
        == 0
    )
    results: dict = {
        "machine": machine_info(("scnbtools", "jax", "jaxlib", "formulaic", "anndata")),
        "nb": [],
        "zinb": {},
    }
    results["machine"]["gpu"] = "none available in this run (CPU only)"
    me = str(Path(__file__).resolve())
    try:
        for (n, g), epochs in zip(sizes, args.scd_epochs, strict=True):
            path = work / f"nb_{n}x{g}.npz"
            make_nb(n, g, seed=n + g, path=path)
            d = np.load(path)
            truth = {"mean": d["B"].T, "dispersion": d["log_r"][None, :]}
            row = {"n": n, "g": g}
            print(f"== NB {n} x {g}", flush=True)
            ours = _ours_median(me, path, args.ours_repeats)
            row["ours"] = {**_strip(ours), **_errors(ours, truth)}
            print("   ours", row["ours"], flush=True)
            ggp = run_glmgampoi(path, work, timeout=args.timeout)
            row["glmgampoi"] = {**_strip(ggp), **_errors(ggp, truth)}
            print("   glmGamPoi", row["glmgampoi"], flush=True)
            row["scdesigner"] = _scdesigner(have_scd, scd_python, path, "nb", epochs, truth, args)
            print("   scdesigner", row["scdesigner"], flush=True)
            results["nb"].append(row)
            path.unlink()

        path = work / "zinb.npz"
        make_zinb(zinb_n, 20, seed=4, path=path)
        d = np.load(path)
        truth = {"mean": d["B"], "dispersion": d["D"], "zero_inflation": d["Z"]}
        z = {"n": zinb_n, "g": 20}
        print(f"== ZINB {zinb_n} x 20", flush=True)
        for dtype in ("float32", "float64"):
            ours = run_worker(
                me, ["--worker", "ours", "--data", path, "--kind", "zinb", "--dtype", dtype]
            )
            z[f"ours_{dtype}"] = {**_strip(ours), **_errors(ours, truth)}
        ref = run_worker(me, ["--worker", "reference", "--data", path])
        z["reference"] = {**_strip(ref), **_errors(ref, truth)}
        z["scdesigner"] = _scdesigner(
            have_scd, scd_python, path, "zinb", args.scd_epochs_zinb, truth, args
        )
        results["zinb"] = z
        print("   ", json.dumps(z, default=str)[:2000], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# ----------------------------------------------------------------------------- report
def _ratio(a, b):
    try:
        return float(a) / float(b)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _mean_err(v: dict):
    """Mean of the three ZINB parameter errors (None if any is missing)."""
    errs = [v.get(f"err_{p}") for p in ZINB_PARAMS]
    return None if any(e is None for e in errs) else float(np.mean(errs))


def render(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"Run of `python benchmarks/bench_glm.py` on {m.get('cores')} cores ({m.get('cpu')}, "
        f"{m.get('memory_gib')} GiB), load average {m.get('load_avg_1_5_15')} at the start (a "
        f"shared machine: compare the CPU-time ratios), {m.get('gpu')}; scnbtools "
        f"{m.get('scnbtools')}, jax {m.get('jax')}. Every fit ran in a fresh process; scnbtools "
        "times include JAX compilation (the warm column is the same fit again in that process); "
        "our NB fits ran three times, each in a fresh process, and the median-CPU run is shown.",
        "",
        "### NB, `mean = ~ x1 + x2`, one dispersion per gene (dense counts)",
        "",
    ]
    rows = []
    for r in res["nb"]:
        o, g, s = r["ours"], r["glmgampoi"], r["scdesigner"]
        size = f"{r['n']:,} × {r['g']:,}"
        rows.append(
            [
                size,
                "scnbtools (float32)",
                o["wall_s"],
                o["cpu_s"],
                o.get("warm_cpu_s"),
                o["err_mean"],
                o["err_dispersion"],
                f"{o['converged']}/{o['n_genes']} converged"
                + (
                    f"; median of {len(o['cpu_runs'])} fresh processes (CPU s: "
                    + ", ".join(f"{c:.2f}" for c in o["cpu_runs"])
                    + ")"
                    if len(o.get("cpu_runs", ())) > 1
                    else ""
                ),
            ]
        )
        if "skipped" in g:
            rows.append([size, "glmGamPoi", "–", "–", "–", "–", "–", g["skipped"]])
        else:
            rows.append(
                [
                    size,
                    f"glmGamPoi {g['version']}",
                    g["wall_s"],
                    g["cpu_s"],
                    "–",
                    g["err_mean"],
                    g["err_dispersion"],
                    "Cox–Reid adjusted dispersion (default)",
                ]
            )
        if "skipped" in s:
            rows.append([size, "scdesigner", "–", "–", "–", "–", "–", s["skipped"]])
        else:
            note = f"{s['epochs']} epochs" + (
                " (early stop)" if s["early_stopped"] else f" (capped at {s['max_epochs']})"
            )
            rows.append(
                [
                    size,
                    "scdesigner",
                    s["wall_s"],
                    s["cpu_s"],
                    "–",
                    s["err_mean"],
                    s["err_dispersion"],
                    note,
                ]
            )
    lines.append(
        markdown_table(
            [
                "cells × genes",
                "tool",
                "wall s",
                "CPU s",
                "warm CPU s",
                "MAE mean coef",
                "MAE log r",
                "notes",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Ratios (CPU time of the peer / CPU time of scnbtools, including its compilation):",
        "",
    ]
    ratio_rows = []
    for r in res["nb"]:
        o, g, s = r["ours"], r["glmgampoi"], r["scdesigner"]
        ratio_rows.append(
            [
                f"{r['n']:,} × {r['g']:,}",
                _ratio(g.get("cpu_s"), o["cpu_s"]),
                _ratio(g.get("wall_s"), o["wall_s"]),
                _ratio(s.get("cpu_s"), o["cpu_s"]),
                _ratio(s.get("wall_s"), o["wall_s"]),
            ]
        )
    lines.append(
        markdown_table(
            [
                "cells × genes",
                "glmGamPoi / ours (CPU)",
                "glmGamPoi / ours (wall)",
                "scdesigner / ours (CPU)",
                "scdesigner / ours (wall)",
            ],
            ratio_rows,
        )
    )
    z = res["zinb"]
    lines += [
        "",
        f"### ZINB, seed notebook experiment: {z['n']:,} cells × {z['g']} genes, three formulas",
        "",
    ]
    zrows = []
    for key, label in [
        ("ours_float32", "scnbtools (float32)"),
        ("ours_float64", "scnbtools (float64)"),
        ("reference", "reference MLE (scipy, float64)"),
        ("scdesigner", "scdesigner"),
    ]:
        v = z.get(key, {})
        if "skipped" in v or not v:
            zrows.append([label, "–", "–", "–", "–", "–", "–", v.get("skipped", "not run")])
            continue
        nan = sum(v.get(f"nan_{p}", 0) for p in ZINB_PARAMS)
        note = f"NaN estimates: {nan} (MAE over the finite ones)" if nan else "no NaN"
        if "converged" in v:
            note += f"; {v['converged']}/{v['n_genes']} converged"
        if "epochs" in v:
            note += f"; {v['epochs']} epochs" + (
                " (early stop)" if v["early_stopped"] else f" (capped at {v['max_epochs']})"
            )
        zrows.append(
            [
                label,
                v["wall_s"],
                v["cpu_s"],
                v["err_mean"],
                v["err_dispersion"],
                v["err_zero_inflation"],
                _ratio(_mean_err(v), _mean_err(z.get("reference", {}))),
                note,
            ]
        )
    lines.append(
        markdown_table(
            [
                "tool",
                "wall s",
                "CPU s",
                "MAE mean",
                "MAE dispersion",
                "MAE zero infl.",
                "error / reference",
                "notes",
            ],
            zrows,
        )
    )
    lines += ["", "### Against the targets of issue 4", ""]
    lines += _targets(res)
    return "\n".join(lines)


def _targets(res: dict) -> list[str]:
    out = []
    for r in res["nb"]:
        o, g, s = r["ours"], r["glmgampoi"], r["scdesigner"]
        size = f"{r['n']:,} × {r['g']:,}"
        if "cpu_s" in g:
            ok = g["cpu_s"] >= 2 * o["cpu_s"] and o["err_mean"] <= g["err_mean"] * 1.0001
            out.append(
                f"- {size}, glmGamPoi: {fmt(g['cpu_s'] / o['cpu_s'])}× our CPU time "
                f"({fmt(g['wall_s'] / o['wall_s'])}× wall), mean-coefficient error "
                f"{fmt(o['err_mean'], 4)} (ours) vs {fmt(g['err_mean'], 4)}, log r error "
                f"{fmt(o['err_dispersion'], 3)} vs {fmt(g['err_dispersion'], 3)}: target "
                f"(≤ ½ its time at equal or lower error) {'met' if ok else 'NOT met'}."
            )
        if "cpu_s" in s:
            ratio = s["cpu_s"] / o["cpu_s"]
            lower = o["err_mean"] < s["err_mean"]
            text = (
                f"- {size}, scdesigner: {fmt(ratio)}× our CPU time "
                f"({fmt(s['wall_s'] / o['wall_s'])}× wall), its mean-coefficient error "
                f"{fmt(s['err_mean'], 4)} against our {fmt(o['err_mean'], 4)}"
            )
            if s["early_stopped"]:
                verdict = "met" if ratio >= 20 and lower else "not met"
                text += f" (its own early stopping ended the run): target (≥ 20× at lower error) {verdict}."
            else:
                per_epoch = s["cpu_s"] / max(s["epochs"], 1)
                ref_epochs = next(
                    (
                        q["scdesigner"]["epochs"]
                        for q in res["nb"]
                        if q["scdesigner"].get("early_stopped")
                    ),
                    None,
                )
                text += (
                    f"; the run was cut at its epoch cap ({s['max_epochs']}), before its early "
                    "stopping, so the ratio is a lower bound"
                )
                if ref_epochs:
                    text += (
                        f" (at the {ref_epochs} epochs its early stopping took on the smaller data it "
                        f"would need ≈ {fmt(per_epoch * ref_epochs)} CPU s, "
                        f"≈ {fmt(per_epoch * ref_epochs / o['cpu_s'])}× ours)"
                    )
                text += "."
            out.append(text)
    z = res["zinb"]
    ref = _mean_err(z.get("reference", {}))
    for key in ("ours_float32", "ours_float64"):
        v = z.get(key, {})
        if "err_mean" in v and ref:
            nan = sum(v.get(f"nan_{p}", 0) for p in ZINB_PARAMS)
            ratio = _mean_err(v) / ref
            ok = ratio <= 1.05 and nan == 0
            out.append(
                f"- ZINB {key.split('_')[1]}: error {ratio:.4f}× the reference MLE's, "
                f"{nan} NaN: target (within 1.05×, no NaN) {'met' if ok else 'NOT met'}."
            )
    out.append(
        "- GPU: no GPU was available to this run; the same code runs on one (JAX), but no GPU "
        "timings were taken."
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; writes nothing")
    ap.add_argument("--json", type=Path, help="also save the raw numbers here")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    ap.add_argument("--render", type=Path, help="re-render the section from a saved JSON")
    ap.add_argument("--scd-python", help="python of the environment with scdesigner")
    ap.add_argument(
        "--scd-epochs",
        type=int,
        nargs=2,
        default=[150, 40],
        help="scdesigner epoch caps for the two NB sizes (its default: 500, early stopping)",
    )
    ap.add_argument(
        "--scd-epochs-zinb", type=int, default=500, help="scdesigner epoch cap for ZINB"
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per external fit")
    ap.add_argument(
        "--ours-repeats",
        type=int,
        default=3,
        help="fresh-process runs of our NB fits (the median-CPU run is reported)",
    )
    # worker mode
    ap.add_argument("--worker", choices=["ours", "scdesigner", "reference"])
    ap.add_argument("--data")
    ap.add_argument("--kind", choices=["nb", "zinb"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--epochs", type=int, default=500)
    args = ap.parse_args()

    if args.worker == "ours":
        return worker_ours(args.data, args.kind, args.dtype)
    if args.worker == "scdesigner":
        return worker_scdesigner(args.data, args.kind, args.epochs)
    if args.worker == "reference":
        return worker_reference(args.data)
    if args.quick:
        args.scd_epochs, args.scd_epochs_zinb = [5, 5], 5
    if args.render:
        res = json.loads(args.render.read_text())
    else:
        res = run(args)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
    text = render(res)
    print(text)
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"wrote the '## {SECTION}' section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
