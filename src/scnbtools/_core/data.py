"""Host-side count container: validation, per-gene histograms, sparse minibatches.

Nothing here imports AnnData: the container is built from a NumPy array or a SciPy
sparse matrix (cells in rows, genes in columns) and never densifies sparse input as
a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["CountData", "CountValidationError", "GeneHistograms", "PaddedRows", "SurvivalGrid"]

_CHUNK_ROWS = 4096
#: entries per chunk of a dense matrix in :meth:`CountData.count_histograms` (at least)
_HIST_CHUNK = 1 << 19


class CountValidationError(ValueError):
    """Raised when a matrix is not a valid matrix of raw counts."""


@dataclass(frozen=True)
class GeneHistograms:
    """Per-gene count histograms as flat arrays (sufficient statistics of gene-level models).

    For gene ``g`` the non-zero counts are the entries with ``gene == g``: count value
    ``value`` seen ``weight`` times. ``n_zeros[g]`` counts the cells with a zero. Any
    log-likelihood that depends on a cell only through its count for gene ``g`` equals
    ``sum(weight * f(value, gene)) + sum(n_zeros * f(0, arange(G)))``, at a cost of
    ``n_unique + n_genes`` evaluations however many cells there are.
    """

    value: np.ndarray  # float32 [U]
    gene: np.ndarray  # int32 [U]
    weight: np.ndarray  # float32 [U]
    n_zeros: np.ndarray  # float32 [G]
    n_cells: int

    @property
    def n_unique(self) -> int:
        return int(self.value.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.n_zeros.shape[0])

    def survival(self) -> SurvivalGrid:
        """Per-gene survival counts ``S_g(j) = #{cells: x_gc > j}`` for ``j < max_g``.

        They give the negative-binomial normaliser over all cells in closed form:
        ``Σ_c [lgamma(x_gc + r) - lgamma(r)] = Σ_j S_g(j) log(r + j)`` — one ``log`` per grid
        point instead of a ``betaln`` per distinct count. The grid has ``Σ_g max_g`` points.
        """
        value = self.value.astype(np.int64)
        gene = self.gene.astype(np.int64)
        n = value.shape[0]
        if n == 0:
            z = np.zeros(0)
            return SurvivalGrid(z.astype(np.int32), z.astype(np.float32), z.astype(np.float32), 0.0)
        start = np.ones(n, dtype=bool)
        start[1:] = gene[1:] != gene[:-1]
        prev = np.where(start, 0, np.roll(value, 1))
        step = value - prev  # > 0: entries are sorted by (gene, value) and unique
        # tail sums of weights within each gene (reverse cumulative sum per segment)
        w = self.weight.astype(np.float64)
        rev_cum = np.cumsum(w[::-1])[::-1]
        seg_id = np.cumsum(start) - 1
        seg_end = np.flatnonzero(np.r_[start[1:], True])  # last entry of each gene segment
        tail_of_next_seg = np.zeros(seg_end.shape[0])
        tail_of_next_seg[:-1] = rev_cum[seg_end[:-1] + 1]
        tail = rev_cum - tail_of_next_seg[seg_id]
        counts = np.repeat(tail, step)
        genes = np.repeat(gene, step)
        total = counts.shape[0]
        # j runs 0..max_g-1 within each gene
        gene_start = np.flatnonzero(np.r_[True, genes[1:] != genes[:-1]])
        first = np.zeros(total, dtype=np.int64)
        first[gene_start] = gene_start
        first = np.maximum.accumulate(first)
        j = np.arange(total, dtype=np.int64) - first
        log_fact = float(np.sum(w * _lgamma1p(value)))
        return SurvivalGrid(
            genes.astype(np.int32), j.astype(np.float32), counts.astype(np.float32), log_fact
        )

    def dense(self, gene: int, max_count: int | None = None) -> np.ndarray:
        """Histogram of one gene as a dense vector ``h[k] = #cells with count k``."""
        sel = self.gene == gene
        vals = self.value[sel].astype(np.int64)
        top = int(vals.max(initial=0)) if max_count is None else int(max_count)
        h = np.zeros(top + 1, dtype=np.float64)
        keep = vals <= top
        np.add.at(h, vals[keep], self.weight[sel][keep])
        h[0] += self.n_zeros[gene]
        return h


@dataclass(frozen=True)
class SurvivalGrid:
    """See :meth:`GeneHistograms.survival`; ``log_factorial_sum`` is ``Σ_gc lgamma(x_gc + 1)``."""

    gene: np.ndarray  # int32 [S]
    j: np.ndarray  # float32 [S]
    count: np.ndarray  # float32 [S]
    log_factorial_sum: float

    @property
    def size(self) -> int:
        return int(self.gene.shape[0])


def _lgamma1p(v: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(np.asarray(v, dtype=np.float64) + 1.0)


@dataclass(frozen=True)
class PaddedRows:
    """Cells stored as padded sparse rows (ELL format) for on-device minibatches.

    ``cols[c, j]`` / ``vals[c, j]`` hold the ``j``-th non-zero of cell ``c``; padding uses
    column ``n_genes`` (a dummy column dropped after scattering) and value 0.
    """

    cols: np.ndarray  # int32 [N, L]
    vals: np.ndarray  # float32 [N, L]
    n_genes: int


def _check_shape_dtype(shape: tuple[int, ...], dtype, name: str) -> None:
    if len(shape) != 2:
        raise CountValidationError(
            f"{name} must be a 2-D cells × genes matrix of raw counts, got shape {tuple(shape)}."
        )
    if not any(np.issubdtype(dtype, kind) for kind in (np.integer, np.floating, np.bool_)):
        raise CountValidationError(
            f"{name} has dtype {dtype}; raw counts must be integers or floats. "
            "Pass raw counts via `layer=`."
        )


def _is_integral(a: np.ndarray) -> bool:
    return bool(np.all(a == np.round(a)))


class CountData:
    """Validated raw counts (cells × genes), dense or sparse, never densified.

    Parameters
    ----------
    X
        ``numpy.ndarray`` or ``scipy.sparse`` matrix/array of raw counts.
    name
        How the matrix is named in error messages (e.g. ``"adata.layers['counts']"``).
    """

    def __init__(self, X, *, name: str = "X"):
        self.name = name
        if sp.issparse(X):
            _check_shape_dtype(X.shape, X.dtype, name)
            if X.format not in ("csr", "csc"):
                X = X.tocsr()
            if not X.has_canonical_format:
                # duplicate (row, column) entries are summed, as ``toarray`` would, and the
                # indices sorted; on a copy, so the caller's matrix is left as it is
                X = X.copy()
                X.sum_duplicates()
            self._X = X
        elif isinstance(X, np.ndarray) or hasattr(X, "__array__"):
            arr = np.asarray(X)
            _check_shape_dtype(arr.shape, arr.dtype, name)
            self._X = arr
        else:
            raise TypeError(
                f"{name} must be a numpy array or scipy sparse matrix, got {type(X).__name__}."
            )
        self.n_cells, self.n_genes = (int(s) for s in self._X.shape)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _value_chunks(self):
        """Yield the stored values (all of them) chunk by chunk."""
        if sp.issparse(self._X):
            data = self._X.data
            for s in range(0, data.shape[0], 1 << 22):
                yield data[s : s + (1 << 22)]
        else:
            for s in range(0, self.n_cells, _CHUNK_ROWS):
                yield self._X[s : s + _CHUNK_ROWS]

    def _validate(self) -> None:
        if self.n_cells == 0 or self.n_genes == 0:
            raise CountValidationError(
                f"{self.name} is empty (shape {self.n_cells} × {self.n_genes}); "
                "need at least one cell and one gene."
            )
        fix = "Pass raw counts (e.g. `layer='counts'`), not normalized or log-transformed values."
        for chunk in self._value_chunks():
            c = np.asarray(chunk)
            if c.dtype == bool:
                continue
            if not np.all(np.isfinite(c)):
                raise CountValidationError(f"{self.name} contains NaN or infinite values. {fix}")
            if np.any(c < 0):
                raise CountValidationError(
                    f"{self.name} contains negative values (min {float(c.min()):g}). {fix}"
                )
            if np.issubdtype(c.dtype, np.floating) and not _is_integral(c):
                bad = c[c != np.round(c)].ravel()[:3]
                raise CountValidationError(
                    f"{self.name} contains non-integer values (e.g. {', '.join(f'{v:g}' for v in bad)}). {fix}"
                )

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_cells, self.n_genes)

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self._X)

    @property
    def X(self):
        """The underlying matrix (not copied)."""
        return self._X

    # sums accumulate in float64 whatever the input dtype (float32 sums of counts lose
    # integers beyond 2^24 and made sparse and dense input disagree)
    def gene_totals(self) -> np.ndarray:
        return np.asarray(self._X.sum(axis=0, dtype=np.float64)).ravel()

    def cell_totals(self) -> np.ndarray:
        return np.asarray(self._X.sum(axis=1, dtype=np.float64)).ravel()

    def gene_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and (population) variance, without densifying (float64 sums)."""
        n = self.n_cells
        if self.is_sparse:
            s = np.zeros(self.n_genes)
            s2 = np.zeros(self.n_genes)
            for _, cols, vals in self._triplets(with_rows=False):
                v64 = np.asarray(vals, dtype=np.float64)
                s += np.bincount(cols, weights=v64, minlength=self.n_genes)
                s2 += np.bincount(cols, weights=v64 * v64, minlength=self.n_genes)
            mean, ex2 = s / n, s2 / n
        else:
            s = np.zeros(self.n_genes)
            s2 = np.zeros(self.n_genes)
            for c in self._value_chunks():
                c64 = np.asarray(c, dtype=np.float64)
                s += c64.sum(axis=0)
                s2 += (c64 * c64).sum(axis=0)
            mean, ex2 = s / n, s2 / n
        return mean, np.maximum(ex2 - mean**2, 0.0)

    def _triplets(self, with_rows: bool = True):
        """Yield (row, col, value) arrays of the non-zero entries, chunk by chunk.

        With ``with_rows=False`` the row array is ``None`` (saves an int64 array of size
        nnz for CSR input).
        """
        X = self._X
        if sp.issparse(X):
            if X.format == "csr":
                rows = (
                    np.repeat(np.arange(self.n_cells, dtype=np.int64), np.diff(X.indptr))
                    if with_rows
                    else None
                )
                cols = X.indices.astype(np.int64)
            else:
                cols = np.repeat(np.arange(self.n_genes, dtype=np.int64), np.diff(X.indptr))
                rows = X.indices.astype(np.int64) if with_rows else None
            vals = np.asarray(X.data)
            keep = vals != 0
            if keep.all():
                yield rows, cols, vals
            else:
                yield (None if rows is None else rows[keep]), cols[keep], vals[keep]
        else:
            for s in range(0, self.n_cells, _CHUNK_ROWS):
                block = X[s : s + _CHUNK_ROWS]
                r, c = np.nonzero(block)
                yield r + s, c, block[r, c]

    def zero_genes(self) -> np.ndarray:
        """Indices of genes with no counts in any cell."""
        return np.flatnonzero(self.gene_totals() == 0)

    def zero_cells(self) -> np.ndarray:
        """Indices of cells with no counts in any gene."""
        return np.flatnonzero(self.cell_totals() == 0)

    # ------------------------------------------------------------------ sufficient statistics
    def count_histograms(self, max_bins: int = 1 << 22):
        """Every gene's non-zero counts as int64 ``(gene, value, multiplicity)`` arrays.

        Sorted by gene, then value. One bin per possible ``(gene, value)`` pair
        (``sum_g (max_g + 1)`` bins), counted by ``bincount`` over the matrix in its own
        layout (row chunks of a dense matrix, the stored values of a sparse one), after a
        pass for each gene's largest count: no sort, no transpose. Returns ``None`` when
        there would be more than ``max_bins`` bins (very large counts);
        :meth:`gene_histograms` then sorts instead.
        """
        X = self._X
        G = self.n_genes
        if sp.issparse(X):
            # the stored values with their genes, listed once for both passes
            stored = [(c, np.asarray(v, np.int64)) for _, c, v in self._triplets(with_rows=False)]
            top = np.zeros(G, np.int64)
            for cols, vals in stored:
                np.maximum.at(top, cols, vals)
        else:
            top = X.max(axis=0)
        width = np.asarray(top).ravel().astype(np.int64) + 1
        total = int(width.sum())
        if total > max_bins:
            return None
        start = np.concatenate([[0], np.cumsum(width)[:-1]])
        if sp.issparse(X):
            cnt = np.zeros(total, np.int64)
            for cols, vals in stored:
                cnt += np.bincount(start[cols] + vals, minlength=total)
        else:
            # chunks of about max(total, _HIST_CHUNK) entries: each bincount costs its chunk
            # plus its bins; the key is the count plus its gene's first bin, added and cast
            # in one pass (float64 is exact for these integers)
            rows = max(1, -(-max(total, _HIST_CHUNK) // G))
            key = np.empty((min(rows, self.n_cells), G), np.int64)
            offset = start.astype(np.float64)
            cnt = np.zeros(total, np.int64)
            for s in range(0, self.n_cells, rows):
                block = X[s : s + rows]
                k = key[: block.shape[0]]
                np.add(block, offset, out=k, casting="unsafe")
                cnt += np.bincount(k.ravel(), minlength=total)
        cnt[start] = 0  # zeros are not listed
        bins = np.flatnonzero(cnt)
        gene = np.searchsorted(start, bins, side="right") - 1
        return gene, bins - start[gene], cnt[bins]

    def gene_histograms(self) -> GeneHistograms:
        """Per-gene count histograms in one pass over the matrix.

        By bincounts when the counts are small enough (:meth:`count_histograms`),
        otherwise by sorting the non-zeros (``O(nnz log nnz)`` time, ``O(nnz)``
        temporary memory); the result has one entry per distinct (gene, count) pair.
        """
        fast = self.count_histograms()
        if fast is not None:
            gene, value, mult = fast
            nnz = np.bincount(gene, weights=mult, minlength=self.n_genes)
            return GeneHistograms(
                value=value.astype(np.float32),
                gene=gene.astype(np.int32),
                weight=mult.astype(np.float32),
                n_zeros=(self.n_cells - nnz).astype(np.float32),
                n_cells=self.n_cells,
            )
        keys = []
        nnz_per_gene = np.zeros(self.n_genes, dtype=np.int64)
        for _, cols, vals in self._triplets(with_rows=False):
            v = np.asarray(vals, dtype=np.int64)
            keys.append(cols * (1 << 32) + v)
            nnz_per_gene += np.bincount(cols, minlength=self.n_genes)
        allkeys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        uniq, counts = np.unique(allkeys, return_counts=True)
        gene = (uniq >> 32).astype(np.int32)
        value = (uniq & ((1 << 32) - 1)).astype(np.float32)
        return GeneHistograms(
            value=value,
            gene=gene,
            weight=counts.astype(np.float32),
            n_zeros=(self.n_cells - nnz_per_gene).astype(np.float32),
            n_cells=self.n_cells,
        )

    def padded_rows(self) -> PaddedRows:
        """Cells as padded sparse rows, for streaming cell minibatches on device."""
        X = self._X
        if (
            sp.issparse(X)
            and X.format == "csr"
            and X.has_sorted_indices
            and not np.any(X.data == 0)
        ):
            # CSR order is row-major order of the padded layout: one boolean-mask write
            nnz_row = np.diff(X.indptr)
            width = max(int(nnz_row.max(initial=0)), 1)
            filled = np.arange(width)[None, :] < nnz_row[:, None]
            out_c = np.full((self.n_cells, width), self.n_genes, dtype=np.int32)
            out_v = np.zeros((self.n_cells, width), dtype=np.float32)
            out_c[filled] = X.indices
            out_v[filled] = X.data
            return PaddedRows(cols=out_c, vals=out_v, n_genes=self.n_genes)
        rows_l, cols_l, vals_l = [], [], []
        for r, c, v in self._triplets():
            rows_l.append(r)
            cols_l.append(c)
            vals_l.append(v)
        rows = np.concatenate(rows_l)
        cols = np.concatenate(cols_l)
        vals = np.concatenate(vals_l).astype(np.float32)
        # canonical (row, column) order; CSR with sorted indices and dense input arrive in
        # it already, so the sort (the costly step) is skipped for them
        key = rows * self.n_genes + cols
        if key.size and np.any(key[1:] <= key[:-1]):
            order = np.argsort(key, kind="stable")
            rows, cols, vals = rows[order], cols[order], vals[order]
        nnz_row = np.bincount(rows, minlength=self.n_cells)
        width = max(int(nnz_row.max(initial=0)), 1)
        start = np.concatenate([[0], np.cumsum(nnz_row)[:-1]])
        pos = np.arange(rows.shape[0]) - start[rows]
        out_c = np.full((self.n_cells, width), self.n_genes, dtype=np.int32)
        out_v = np.zeros((self.n_cells, width), dtype=np.float32)
        out_c[rows, pos] = cols
        out_v[rows, pos] = vals
        return PaddedRows(cols=out_c, vals=out_v, n_genes=self.n_genes)

    def dense_rows(self, idx) -> np.ndarray:
        """Dense float32 copy of the given cells (for small subsets only)."""
        X = self._X[np.asarray(idx)]
        return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
