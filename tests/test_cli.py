"""The ``scnbtools`` command line: demo, fit, --version and the error paths."""

from __future__ import annotations

import re
import subprocess
import sys

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest

import scnbtools as snb
from scnbtools.cli import main


def _one_error_line(err: str) -> str:
    """The whole of stderr is one ``scnbtools[ subcommand]: error: ...`` line."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert re.match(r"^scnbtools( (fit|demo))?: error: ", lines[0]), err
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"scnbtools {snb.__version__}"


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    n_figs = len(plt.get_fignums())
    assert main(["demo", "--out", str(out), "--n-steps", "300", "--n-genes", "200", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # --quiet: no summary
    for name in ("result.h5ad", "loss.png", "ppc.png"):
        assert (out / name).stat().st_size > 0
    for name in ("loss.png", "ppc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plt.get_fignums()) == n_figs  # the figures were closed
    res = ad.read_h5ad(out / "result.h5ad")
    assert res.shape == (2638, 200)
    assert set(res.var["hvg_rank"]) == set(range(200))  # the 200 most variable genes
    assert res.uns["zinb"]["n_steps_run"] <= 300
    df = snb.get.posterior_df(res, key="zinb", param="gate")
    assert df.shape == (200, 5) and np.all(np.isfinite(df.to_numpy()))


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory, counts, make_adata):
    """The shared standard counts, written as .h5ad with an extra ``counts`` layer."""
    a = make_adata(counts)
    a.layers["counts"] = a.X.copy()
    path = tmp_path_factory.mktemp("cli") / "in.h5ad"
    a.write_h5ad(path)
    return path


def test_fit_round_trip(counts_file, tmp_path, capsys):
    dst = tmp_path / "out.h5ad"
    argv = [str(counts_file), "--model", "ZINB", "--layer", "counts", "--key-added", "k1"]
    assert main(["fit", *argv, "--n-steps", "200", "--seed", "3", "--out", str(dst)]) == 0
    summary = capsys.readouterr().out
    assert "zinb fit of 300 cells × 40 genes" in summary and str(dst) in summary
    res = ad.read_h5ad(dst)
    params = res.uns["k1"]["params"]
    assert params["model"] == "zinb" and params["layer"] == "counts" and params["rng"] == 3
    assert params["n_steps"] == 200
    assert "k1_mean" in res.varm and res.uns["k1"]["n_steps_run"] <= 200
    # the input is untouched and the fit is what the Python API gives
    again = ad.read_h5ad(counts_file)
    assert "k1" not in again.uns
    snb.tl.fit_zinb(again, layer="counts", key_added="k1", rng=3, n_steps=200, progress_bar=False)
    np.testing.assert_allclose(res.uns["k1"]["loss"], again.uns["k1"]["loss"], rtol=1e-6)


def test_fit_nbdm_quiet(counts_file, tmp_path, capsys):
    dst = tmp_path / "nbdm.h5ad"
    argv = [
        "fit",
        str(counts_file),
        "--model",
        "nbdm",
        "--n-steps",
        "200",
        "--quiet",
        "--out",
        str(dst),
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    assert "nbdm_mean" in ad.read_h5ad(dst).varm


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "{missing}", "--out", "{out}"], "does not exist"),
        (
            ["fit", "{src}", "--model", "poissonish", "--out", "{out}"],
            "'poissonish' is not a registered model",
        ),
        (["fit", "{src}", "--out", "{tmp}/out.csv"], "must end in .h5ad"),
        (
            ["fit", "{src}", "--out", "{tmp}/no/such/dir/out.h5ad"],
            "does not exist; create it first",
        ),
        (
            ["fit", "{src}", "--layer", "spliced", "--n-steps", "5", "--out", "{out}"],
            "`layer`='spliced'",
        ),
        (["fit", "{src}", "--n-steps", "-5", "--out", "{out}"], "expected a positive integer"),
        (["fit", "{src}"], "--out"),
        (["demo", "--n-genes", "5000", "--out", "{tmp}/d"], "--n-genes must be at most 2000"),
        (["demo", "--out", "{src}"], "exists and is not a folder"),
        (["frobnicate"], "invalid choice"),
        ([], "choose a command"),
    ],
)
def test_errors_exit_2_with_one_line(argv, message, counts_file, tmp_path, capsys):
    fill = {
        "missing": tmp_path / "nope.h5ad",
        "out": tmp_path / "o.h5ad",
        "src": counts_file,
        "tmp": tmp_path,
    }
    argv = [a.format(**fill) for a in argv]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line
    assert not (tmp_path / "o.h5ad").exists()


def test_console_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scnbtools.cli",
            "fit",
            str(tmp_path / "x.h5ad"),
            "--out",
            str(tmp_path / "y.h5ad"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "does not exist" in _one_error_line(proc.stderr)
