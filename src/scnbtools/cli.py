"""The ``scnbtools`` command: ``scnbtools demo``, ``scnbtools fit`` (thin wrappers over ``tl``).

Examples
--------
.. code-block:: console

    $ scnbtools demo --out scnbtools_demo
    $ scnbtools fit counts.h5ad --model zinb --layer counts --out fitted.h5ad
    $ scnbtools --version
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

_PROG = "scnbtools"
_DEMO_DIR = "scnbtools_demo"
_N_TOP_DROPOUT = 5


class CLIError(Exception):
    """A user error reported as one line on stderr (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------------------- helpers
def _int_at_least(minimum: int):
    """argparse ``type=`` for an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _read(path: Path):
    import anndata as ad

    if not path.exists():
        raise CLIError(f"input file {str(path)!r} does not exist")
    if path.suffix == ".zarr":
        return ad.read_zarr(path)
    if path.suffix != ".h5ad":
        raise CLIError(f"input {str(path)!r} must be an .h5ad file (or a .zarr store)")
    return ad.read_h5ad(path)


def _check_output(path: Path) -> None:
    if path.suffix not in (".h5ad", ".zarr"):
        raise CLIError(f"--out {str(path)!r} must end in .h5ad (or .zarr)")
    if not path.parent.exists():
        raise CLIError(f"the folder of --out {str(path)!r} does not exist; create it first")


def _write(adata, path: Path) -> None:
    if path.suffix == ".zarr":
        adata.write_zarr(path)
    else:
        adata.write_h5ad(path)


def _fmt_interval(row) -> str:
    return f"{row['mean']:.3g} (90% interval {row['q05']:.3g}–{row['q95']:.3g})"


# ----------------------------------------------------------------------------- commands
def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    from . import datasets, get, pl, tl

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is not a folder")
    adata = datasets.pbmc3k()
    if args.n_genes > adata.n_vars:
        raise CLIError(
            f"--n-genes must be at most {adata.n_vars} (the bundled genes), got {args.n_genes}"
        )
    if args.n_genes < adata.n_vars:  # the most variable ones; keep every cell
        adata = adata[:, adata.var["hvg_rank"].to_numpy() < args.n_genes].copy()
    out.mkdir(parents=True, exist_ok=True)

    say = (lambda *a, **k: None) if args.quiet else print
    say(f"fitting ZINB to the bundled 3k PBMCs: {adata.n_obs:,} cells × {adata.n_vars:,} genes")
    t0 = time.perf_counter()
    tl.fit_zinb(adata, n_steps=args.n_steps, rng=args.seed, progress_bar=not args.quiet)
    elapsed = time.perf_counter() - t0

    paths = {"result": out / "result.h5ad", "loss": out / "loss.png", "ppc": out / "ppc.png"}
    adata.write_h5ad(paths["result"])
    for name, plot in (("loss", pl.loss), ("ppc", pl.ppc)):
        fig = plot(adata, key="zinb", return_fig=True)
        fig.savefig(paths[name], dpi=120)
        plt.close(fig)

    res = get.fit_result(adata, key="zinb")
    p = get.posterior_df(adata, key="zinb", param="p").iloc[0]
    gate = get.posterior_df(adata, key="zinb", param="gate")
    top = gate.sort_values("q05", ascending=False).head(_N_TOP_DROPOUT)
    conv = (
        f"converged after {res['n_steps_run']:,} steps"
        if res["converged"]
        else f"NOT converged in {res['n_steps_run']:,} steps (raise --n-steps)"
    )
    say(f"done in {elapsed:.1f} s: {conv}")
    say(f"  p (shared NB success probability) = {_fmt_interval(p)}")
    say("  highest dropout (gate posterior mean, 90% interval; ranked by its lower end):")
    say("  (in a mix of cell types a high gate often marks a gene expressed by only some of them)")
    width = max(len(str(g)) for g in top.index)
    for g, row in top.iterrows():
        say(f"    {g!s:<{width}}  {row['mean']:.2f} ({row['q05']:.2f}–{row['q95']:.2f})")
    say("  files:")
    for path in paths.values():
        say(f"    {path}")
    say(
        f"  read back with: anndata.read_h5ad({str(paths['result'])!r}); snb.get.posterior_df(adata, key='zinb', param='gate')"
    )
    return 0


def _fit(args: argparse.Namespace) -> int:
    from . import tl
    from ._core.models import get_model

    spec = get_model(args.model)  # bad names fail before any file is read
    src, dst = Path(args.input), Path(args.out)
    _check_output(dst)
    adata = _read(src)
    kwargs = {} if args.n_steps is None else {"n_steps": args.n_steps}
    if args.n_components is not None:
        kwargs["n_components"] = args.n_components
    if args.annotation_key is not None:
        kwargs["annotation_key"] = args.annotation_key
    kwargs["parameterization"] = args.parameterization
    t0 = time.perf_counter()
    tl.fit(
        adata,
        model=spec.name,
        layer=args.layer,
        key_added=args.key_added,
        rng=args.seed,
        inference=args.inference,
        progress_bar=not args.quiet,
        **kwargs,
    )
    elapsed = time.perf_counter() - t0
    _write(adata, dst)
    if not args.quiet:
        key = args.key_added or spec.name
        res = adata.uns[key]
        state = "converged" if res["converged"] else "NOT converged (raise --n-steps)"
        print(
            f"{spec.name} fit of {adata.n_obs:,} cells × {adata.n_vars:,} genes: {state}, "
            f"{res['n_steps_run']:,} steps, {elapsed:.1f} s; results under key {key!r} in {dst}"
        )
    return 0


# ----------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(
        prog=_PROG,
        description="Fit count models of single-cell RNA-seq data to AnnData files.",
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="fit ZINB to the bundled 3k PBMCs and write the result and two plots",
        description=(
            "Fit the ZINB model to the bundled 3k-PBMC raw counts; write DIR/result.h5ad, "
            "DIR/loss.png (loss trace) and DIR/ppc.png (posterior-predictive check), and "
            "print a short summary."
        ),
    )
    demo.add_argument(
        "--out", default=_DEMO_DIR, metavar="DIR", help=f"output folder (default: {_DEMO_DIR})"
    )
    demo.add_argument(
        "--n-steps",
        type=_positive_int,
        default=20_000,
        metavar="N",
        help="maximum optimisation steps; the fit stops earlier once converged (default: 20000)",
    )
    demo.add_argument(
        "--n-genes",
        type=_positive_int,
        default=2000,
        metavar="G",
        help="fit the G most variable of the 2000 bundled genes (default: 2000)",
    )
    demo.add_argument(
        "--seed", type=_nonnegative_int, default=0, metavar="S", help="random seed (default: 0)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    demo.set_defaults(func=_demo)

    fit = sub.add_parser(
        "fit",
        help="fit a model to an .h5ad file and write the fitted AnnData",
        description="Fit a registered model to raw counts in IN.h5ad and write OUT.h5ad with the results.",
    )
    fit.add_argument("input", metavar="IN.h5ad", help="AnnData with raw counts (.h5ad or .zarr)")
    fit.add_argument(
        "--out", required=True, metavar="OUT.h5ad", help="where to write the fitted AnnData"
    )
    fit.add_argument(
        "--model",
        default="zinb",
        help="registered model name: nbdm, zinb, nbvcp, zinbvcp (default: zinb)",
    )
    fit.add_argument(
        "--layer", default=None, metavar="L", help="layer with raw counts (default: X)"
    )
    fit.add_argument(
        "--key-added",
        default=None,
        metavar="K",
        help="key prefix of the results (default: the model name)",
    )
    fit.add_argument(
        "--n-steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="maximum optimisation steps (default: the fit's default)",
    )
    fit.add_argument(
        "--seed", type=_nonnegative_int, default=0, metavar="S", help="random seed (default: 0)"
    )
    fit.add_argument(
        "--inference",
        default="svi",
        choices=("svi", "map", "mcmc"),
        help="svi (default), map, or mcmc (NUTS; small data)",
    )
    fit.add_argument(
        "--parameterization",
        default="canonical",
        choices=("canonical", "mean_prob", "mean_odds"),
        help="sampled parameters (default: canonical)",
    )
    fit.add_argument(
        "--n-components",
        type=_positive_int,
        default=None,
        metavar="K",
        help="mixture components (default: 1, or the categories of --annotation-key)",
    )
    fit.add_argument(
        "--annotation-key",
        default=None,
        metavar="COL",
        help="obs column of cell labels used as a soft prior on mixture components",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    fit.set_defaults(func=_fit)
    return parser


def _one_line(err: BaseException) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(msg).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``scnbtools`` command line; returns the exit status (0 ok, 2 user error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argparse's own errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        print(
            f"{_PROG}: error: choose a command: demo or fit (see `{_PROG} --help`)", file=sys.stderr
        )
        return 2
    try:
        return int(args.func(args))
    except (CLIError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        print(f"{_PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
