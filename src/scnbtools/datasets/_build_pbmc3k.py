"""Rebuild the bundled ``datasets/data/pbmc3k_hvg2000.h5ad`` (maintainers only).

Run from the repository root::

    python -m scnbtools.datasets._build_pbmc3k /work/shared/data/pbmc3k_desc.h5ad

The input is ``pbmc3k_desc.h5ad`` from the project's shared data folder: the complete
10x Genomics "3k PBMCs from a healthy donor" filtered matrix (Cell Ranger 1.1.0, hg19; 2,700
barcodes × 32,738 genes of UMI counts) as shipped in the ``desc`` 2.1.1 wheel on PyPI (file
``desc/datasets/pbmc.h5ad``, MIT licence), with cell labels derived by the shared recipe
(``shared/data/recipes/make_h5ads.py``: Seurat-tutorial QC, Leiden clusters named by marker
z-scores; **not** published labels). The upstream 10x data set is, as far as we know,
distributed under CC BY 4.0.

Rule (deterministic, counts only):

1. keep the 2,638 ``qc_pass`` cells (200 ≤ detected genes < 2,500, mitochondrial UMIs < 5 %);
2. keep the genes detected (count > 0) in at least ``MIN_CELLS = 3`` of those cells;
3. rank those genes by the variance of their analytic Pearson residuals (Lause, Berens &
   Kobak 2021, Genome Biology 22:258): ``z = (x - μ) / sqrt(μ + μ² / θ)`` with
   ``μ_cg = n_c · f_g`` (``n_c`` the cell's total over the kept genes, ``f_g`` the gene's share
   of all counts), ``θ = 100`` and ``z`` clipped to ``±sqrt(n_cells)``;
4. keep the ``N_GENES = 2000`` top-ranked genes, in their original (genomic) order, with their
   rank stored in ``var["hvg_rank"]`` (0 = most variable).

The counts are stored untouched (CSR, float32 whole numbers) in a gzip-compressed h5ad.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

MIN_CELLS = 3
N_GENES = 2000
THETA = 100.0
OUT_NAME = "pbmc3k_hvg2000.h5ad"


def pearson_residual_variance(
    X: sp.csr_matrix, theta: float = THETA, chunk: int = 1000
) -> np.ndarray:
    """Variance over cells of each gene's clipped analytic Pearson residuals."""
    X = sp.csc_matrix(X, dtype=np.float64)
    n_cells = X.shape[0]
    cell_tot = np.asarray(X.sum(axis=1)).ravel()
    gene_tot = np.asarray(X.sum(axis=0)).ravel()
    frac = gene_tot / gene_tot.sum()
    clip = np.sqrt(n_cells)
    out = np.empty(X.shape[1])
    for s in range(0, X.shape[1], chunk):
        x = X[:, s : s + chunk].toarray()
        mu = cell_tot[:, None] * frac[None, s : s + chunk]
        z = np.clip((x - mu) / np.sqrt(mu + mu**2 / theta), -clip, clip)
        out[s : s + chunk] = z.var(axis=0)
    return out


def build(src: str | Path) -> ad.AnnData:
    """The bundled AnnData, built from ``pbmc3k_desc.h5ad`` by the rule in the module docstring."""
    full = ad.read_h5ad(src)
    cells = full[full.obs["qc_pass"].to_numpy()].copy()
    X = sp.csr_matrix(cells.X, dtype=np.float32)
    detected = np.asarray((X > 0).sum(axis=0)).ravel()
    keep = np.flatnonzero(detected >= MIN_CELLS)
    score = pearson_residual_variance(X[:, keep])
    order = np.argsort(-score, kind="stable")[:N_GENES]
    rank = np.empty(keep.size, dtype=np.int64)
    rank[np.argsort(-score, kind="stable")] = np.arange(keep.size)
    chosen = np.sort(keep[order])
    rank_of = dict(zip(keep, rank, strict=True))

    obs = pd.DataFrame(
        {
            "cell_type_derived": cells.obs["cell_type_derived"].cat.remove_unused_categories(),
            "cell_type_coarse": cells.obs["cell_type_coarse"].cat.remove_unused_categories(),
            "total_counts_all_genes": cells.obs["total_counts"].astype(np.float32),
            "pct_mito": cells.obs["pct_mito"].astype(np.float32),
        },
        index=cells.obs_names.copy(),
    )
    var = pd.DataFrame(
        {
            "gene_ids": cells.var["gene_ids"].iloc[chosen].astype(str).to_numpy(),
            "hvg_rank": np.array([rank_of[g] for g in chosen], dtype=np.int64),
        },
        index=cells.var_names[chosen].copy(),
    )
    Xs = sp.csr_matrix(X[:, chosen], dtype=np.float32)
    Xs.sort_indices()
    out = ad.AnnData(X=Xs, obs=obs, var=var)
    out.uns["source"] = {
        "data": "10x Genomics '3k PBMCs from a healthy donor' (Cell Ranger 1.1.0, hg19), CC BY 4.0 upstream",
        "via": "desc 2.1.1 wheel on PyPI (MIT), file desc/datasets/pbmc.h5ad",
        "labels": (
            "cell_type_derived / cell_type_coarse are NOT published labels: Leiden clusters of the "
            "QC-passing cells named by marker-gene z-scores (scnbtools shared recipe); "
            "cell_type_coarse merges CD4 T and CD8 T, whose split is the least reliable"
        ),
        "genes": (
            f"detected in >= {MIN_CELLS} cells, then the {N_GENES} with the largest analytic "
            f"Pearson residual variance (theta={THETA:g}); var['hvg_rank'] 0 = most variable"
        ),
        "builder": "scnbtools.datasets._build_pbmc3k",
    }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="path to pbmc3k_desc.h5ad")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / OUT_NAME))
    args = parser.parse_args(argv)
    adata = build(args.src)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(args.out, compression="gzip", compression_opts=9)
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out}: {adata.n_obs} cells × {adata.n_vars} genes, {size:.2f} MiB")


if __name__ == "__main__":
    main()
