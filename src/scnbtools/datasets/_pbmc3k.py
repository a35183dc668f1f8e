"""The bundled 3k-PBMC raw counts."""

from __future__ import annotations

from importlib import resources

import anndata as ad
from anndata import AnnData

__all__ = ["pbmc3k"]

_FILE = "pbmc3k_hvg2000.h5ad"


def _path():
    return resources.files("scnbtools.datasets").joinpath("data", _FILE)


def pbmc3k() -> AnnData:
    """Raw UMI counts of 2,638 peripheral blood mononuclear cells × 2,000 variable genes.

    The 10x Genomics "3k PBMCs from a healthy donor" data set (Cell Ranger 1.1.0, hg19),
    bundled with the package (2.2 MB; no download). Each call reads the file again and
    returns a new AnnData, so changing it never affects later calls.

    Cells: the 2,638 barcodes passing the usual tutorial QC (200 ≤ detected genes < 2,500,
    mitochondrial UMIs < 5 %). Genes: those detected in ≥ 3 of these cells, of which the
    2,000 with the largest variance of analytic Pearson residuals (θ = 100; Lause, Berens &
    Kobak 2021) are kept, in genomic order. The rule uses the counts only and is implemented in
    ``scnbtools/datasets/_build_pbmc3k.py``, which rebuilds the file.

    Returns
    -------
    AnnData with

    * ``X``: raw UMI counts, CSR ``float32`` whole numbers (max 419, 21 % non-zero);
    * ``obs["cell_type_derived"]`` (CD4 T, CD8 T, CD14+ Mono, B, FCGR3A+ Mono, NK, DC,
      Megakaryocyte) and ``obs["cell_type_coarse"]`` (the two T-cell types merged);
      ``obs["total_counts_all_genes"]`` and ``obs["pct_mito"]`` computed over all
      32,738 genes of the original matrix;
    * ``var["gene_ids"]`` (Ensembl), ``var["hvg_rank"]`` (0 = most variable), gene symbols as
      ``var_names``;
    * ``uns["source"]``: provenance.

    Notes
    -----
    Source and licences: the counts are 10x Genomics' public data set (distributed, as far
    as we know, under CC BY 4.0), taken from the ``desc`` 2.1.1 wheel on PyPI (file
    ``desc/datasets/pbmc.h5ad``, MIT licence). The cell labels are **not** published labels:
    they were derived for scnbtools (Leiden clusters of the QC-passing cells named by
    marker-gene z-scores). The CD4/CD8 T split is the least reliable part (CD8 T is
    over-called), so prefer ``cell_type_coarse`` when label accuracy matters.

    Examples
    --------
    >>> import scnbtools as snb
    >>> adata = snb.datasets.pbmc3k()
    >>> adata.shape
    (2638, 2000)
    """
    with resources.as_file(_path()) as path:
        return ad.read_h5ad(path)
