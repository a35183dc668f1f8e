"""Count GLMs with a linear predictor per parameter: NB, ZINB, Poisson, ZIP.

For gene ``g`` and cell ``i`` (design matrices shared by all genes, one per parameter)::

    log mu_ig    = o_i + X_i beta_g                 (mean; ``o`` = offset)
    log r_ig     = Z_i gamma_g                      (dispersion = NB size, Var = mu + mu^2 / r)
    logit pi_ig  = W_i zeta_g                       (zero-inflation probability)

Families are registered as data (:data:`FAMILIES`). Each one provides

* ``dense(y, *etas)`` — the log-pmf minus its *count term*, with its first and second
  derivatives with respect to the linear predictors, per cell (hand-derived, stable
  log-sigmoid forms; the tests check them against scipy, finite differences and the
  log-pmfs of :mod:`scnbtools._core.likelihoods`, which ``logpmf`` wraps);
* ``count(v, eta_r)`` — the count term ``lgamma(v + r) - lgamma(r)`` (NB; nothing for
  the Poisson), which is **zero at v = 0** and depends on the
  cell only through ``(v, r)``. It is summed over a per-gene list of
  ``(dispersion-design row, count value, multiplicity)`` triplets of the non-zero
  counts: with ``dispersion="~ 1"`` that is the gene's count histogram, so the
  special functions cost ``O(#distinct counts)`` instead of ``O(#cells)``.

The per-gene objective (negative log-likelihood plus an optional ridge) and its exact
gradient and Hessian are assembled from these per-cell derivatives with the design
matrices (``X' d`` and ``(X ⊙ X)' h`` products, i.e. GEMMs across genes once vmapped)
and minimised by :func:`scnbtools._core.infer.newton.newton_minimize`.

Float32 fits do the per-cell work in float32 and accumulate the sums over cells in
float64. Genes are processed in blocks (sparse input is densified one block at a time);
every block is padded to one shape so one compiled solver serves the whole fit, and
genes still unfinished after a few iterations are regrouped, so a slow gene does not keep
its whole block iterating.

Nothing here imports AnnData or pandas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.special as sps
import scipy.stats as st
from jax.nn import softplus

from ..data import CountData
from ..infer.newton import STATUS, compile_effort, newton_minimize
from ..likelihoods import nb_logpmf, poisson_logpmf, zinb_logpmf, zip_logpmf

__all__ = [
    "FAMILIES",
    "GLM_STATUS",
    "GLMFamily",
    "GLMFit",
    "fit_glm_counts",
    "get_family",
    "marginal_cdf",
    "marginal_ppf",
    "sample_counts",
]

#: Per-gene status codes of a GLM fit (the Newton codes plus ``all_zero``).
GLM_STATUS: tuple[str, ...] = (*STATUS, "all_zero")
_ALL_ZERO = len(STATUS)
_MAX_ITER = STATUS.index("max_iter")
#: evaluations per block before the unfinished genes are regrouped (see fit_glm_counts):
#: from the IRLS start most genes converge after two or three Newton steps (plus the
#: evaluation of the start), so a longer first phase mostly re-evaluates finished genes
_PHASE1_EVALS = 4
#: IRLS steps for the mean coefficients in the starting values
_IRLS_START_STEPS = 2

# --------------------------------------------------------------------------- special functions
_SHIFT = 8  # recurrence steps before the asymptotic series (argument >= 8)


def _shifted(r):
    return r + _SHIFT, [r + j for j in range(_SHIFT)]


def log_rising(v, r):
    """``lgamma(v + r) - lgamma(r)`` for ``v >= 0``, accurate for every ``r > 0``.

    Eight recurrence steps then Stirling's series written as differences, so nothing
    cancels catastrophically when ``r`` is huge (float32 included).
    """
    x, rs = _shifted(r)
    y = x + v
    q = v / x
    lx = jnp.log1p(q)

    def phi(z):
        iz = 1.0 / z
        iz2 = iz * iz
        return iz * (1.0 / 12.0 - iz2 * (1.0 / 360.0 - iz2 * (1.0 / 1260.0 - iz2 / 1680.0)))

    stir = (x - 0.5) * lx + v * jnp.log(y) - v + (phi(y) - phi(x))
    rec = sum(jnp.log1p(v / rj) for rj in rs)
    return stir - rec


def digamma_diff(v, r):
    """``digamma(v + r) - digamma(r)`` (>= 0), accurate for every ``r > 0``."""
    x, rs = _shifted(r)
    y = x + v
    ix, iy = 1.0 / x, 1.0 / y
    ix2, iy2 = ix * ix, iy * iy
    asym = (
        jnp.log1p(v * ix)
        + 0.5 * v * ix * iy
        + (ix2 - iy2) / 12.0
        - (ix2 * ix2 - iy2 * iy2) / 120.0
        + (ix2 * ix2 * ix2 - iy2 * iy2 * iy2) / 252.0
        - (ix2 * ix2 * ix2 * ix2 - iy2 * iy2 * iy2 * iy2) / 240.0
    )
    rec = sum(v / (rj * (rj + v)) for rj in rs)
    return asym + rec


def trigamma_diff(v, r):
    """``trigamma(v + r) - trigamma(r)`` (<= 0)."""
    x, rs = _shifted(r)
    y = x + v
    ix, iy = 1.0 / x, 1.0 / y

    def tail(iz):
        iz2 = iz * iz
        inner = 1.0 / 42.0 - iz2 * (1.0 / 30.0 - iz2 * 5.0 / 66.0)
        return iz2 * (0.5 + iz * (1.0 / 6.0 - iz2 * (1.0 / 30.0 - iz2 * inner)))

    asym = -v * ix * iy + (tail(iy) - tail(ix))
    rec = sum(1.0 / (rj * rj) - 1.0 / ((rj + v) * (rj + v)) for rj in rs)
    return asym - rec


# --------------------------------------------------------------------------- per-cell terms
def _sig_parts(t):
    """``softplus(t)`` and ``sigmoid(t)`` from one exp and one log1p."""
    e = jnp.exp(-jnp.abs(t))
    spl = jnp.maximum(t, 0.0) + jnp.log1p(e)
    inv = 1.0 / (1.0 + e)
    s = jnp.where(t >= 0, inv, e * inv)
    return spl, s


def _nb_dense(y, m, b):
    """NB log-pmf minus its count term, with derivatives in (log mu, log r).

    With ``t = m - b`` and ``s = sigmoid(t) = mu / (mu + r)``:
    ``l = y log s + r log(1 - s)``.
    """
    t = m - b
    r = jnp.exp(b)
    spl, s = _sig_parts(t)
    yr = y + r
    lt = y - yr * s
    ltt = -yr * s * (1.0 - s)
    rsp = r * spl
    val = y * (t - spl) - rsp
    d = (lt, -lt - rsp)
    h = {(0, 0): ltt, (0, 1): -ltt - r * s, (1, 1): ltt + 2.0 * r * s - rsp}
    return val, d, h


def _poisson_dense(y, m):
    mu = jnp.exp(m)
    return y * m - mu, (y - mu,), {(0, 0): -mu}


def _zero_inflated(base_dense, n_base):
    """Wrap a base ``dense`` term with a zero-inflation probability ``sigmoid(z)``."""

    def dense(y, *etas):
        z = etas[n_base]
        l0, d0, h0 = base_dense(y, *etas[:n_base])
        spz, pi = _sig_parts(z)  # softplus(z), sigmoid(z)
        log_pi = z - spz
        log_keep = -spz
        b = log_keep + l0
        lz = jnp.logaddexp(log_pi, b)
        w = jnp.exp(b - lz)  # P(NB zero | y = 0)
        pos = y > 0
        one_m_w = 1.0 - w
        ww = w * one_m_w
        val = jnp.where(pos, b, lz)
        d = (*tuple(jnp.where(pos, dk, w * dk) for dk in d0), jnp.where(pos, -pi, 1.0 - pi - w))
        h = {}
        for (k, j), hk in h0.items():
            h[(k, j)] = jnp.where(pos, hk, w * hk + ww * d0[k] * d0[j])
        for k in range(n_base):
            h[(k, n_base)] = jnp.where(pos, 0.0, -ww * d0[k])
        h[(n_base, n_base)] = -pi * (1.0 - pi) + jnp.where(pos, 0.0, ww)
        return val, d, h

    return dense


def _nb_count(v, b):
    """Count term of the NB and its first two derivatives in ``b = log r``.

    The constant ``-lgamma(v + 1)`` of every count family is left out here: it does not
    depend on the parameters and is added to the log-likelihood on the host in float64
    (:func:`_log_factorials`).
    """
    r = jnp.exp(b)
    D = digamma_diff(v, r)
    T = trigamma_diff(v, r)
    return log_rising(v, r), r * D, r * D + r * r * T


def _poisson_count(v, b=None):
    return jnp.zeros_like(v), None, None


# --------------------------------------------------------------------------- families
@dataclass(frozen=True)
class GLMFamily:
    """One count family of the GLM (registered in :data:`FAMILIES`)."""

    name: str
    description: str
    params: tuple[str, ...]
    links: tuple[str, ...]
    dense: Callable = field(repr=False)
    count: Callable = field(repr=False)
    logpmf: Callable = field(repr=False)  # reference log-pmf from likelihoods.py

    @property
    def n_params(self) -> int:
        return len(self.params)

    @property
    def count_index(self) -> int | None:
        """Index of the parameter the count term depends on (the dispersion), if any."""
        return self.params.index("dispersion") if "dispersion" in self.params else None

    @property
    def zero_inflated(self) -> bool:
        return "zero_inflation" in self.params


def _nb_ref(y, m, b):
    return nb_logpmf(y, jnp.exp(b), logits=m - b)


def _zinb_ref(y, m, b, z):
    return zinb_logpmf(y, jnp.exp(b), logits=m - b, gate_logits=z)


def _pois_ref(y, m):
    return poisson_logpmf(y, log_rate=m)


def _zip_ref(y, m, z):
    return zip_logpmf(y, log_rate=m, gate_logits=z)


FAMILIES: dict[str, GLMFamily] = {
    f.name: f
    for f in (
        GLMFamily(
            "nb",
            "negative binomial: log mean and log dispersion (size r, Var = mu + mu^2/r)",
            ("mean", "dispersion"),
            ("log", "log"),
            _nb_dense,
            _nb_count,
            _nb_ref,
        ),
        GLMFamily(
            "zinb",
            "zero-inflated negative binomial: log mean, log dispersion, logit zero inflation",
            ("mean", "dispersion", "zero_inflation"),
            ("log", "log", "logit"),
            _zero_inflated(_nb_dense, 2),
            _nb_count,
            _zinb_ref,
        ),
        GLMFamily(
            "poisson",
            "Poisson: log mean",
            ("mean",),
            ("log",),
            _poisson_dense,
            _poisson_count,
            _pois_ref,
        ),
        GLMFamily(
            "zip",
            "zero-inflated Poisson: log mean, logit zero inflation",
            ("mean", "zero_inflation"),
            ("log", "logit"),
            _zero_inflated(_poisson_dense, 1),
            _poisson_count,
            _zip_ref,
        ),
    )
}


def get_family(name) -> GLMFamily:
    """Look a family up by name, with an error listing the available ones."""
    if not isinstance(name, str):
        raise TypeError(f"`family` must be a string, got {type(name).__name__}.")
    if name.lower() not in FAMILIES:
        raise ValueError(
            f"`family`={name!r} is not a GLM family; choose one of {', '.join(map(repr, FAMILIES))}."
        )
    return FAMILIES[name.lower()]


# --------------------------------------------------------------------------- objective
def _pair_index(K: int) -> list[tuple[int, int]]:
    return [(k, j) for k in range(K) for j in range(k, K)]


_TRACES = [0]  # how often the objective was traced (i.e. a solver compiled)
#: designs with at most this many columns get their linear predictor as a sum of columns
_SUM_COLUMNS = 32


def _linear(X, b):
    """The linear predictor ``X @ b`` of one gene (vmapped over genes outside).

    For a few columns it is written as a sum of scaled columns: that fuses with the
    elementwise work that follows, whereas the vmapped product becomes a matrix product
    with an inner dimension of a few columns, which cost the CPU about 1 ms per 8 genes
    × 50,000 cells against 0.3 ms for the fused sum (with its exp).
    """
    if X.shape[1] > _SUM_COLUMNS:
        return X @ b
    out = X[:, 0] * b[0]
    for j in range(1, X.shape[1]):
        out = out + X[:, j] * b[j]
    return out


def _glm_fgh(family: GLMFamily, theta, data, shared):
    """Negative log-likelihood (+ ridge) of one gene term by term, its gradient and Hessian.

    Per-cell work runs in ``theta``'s dtype; the sums over cells (the products with the
    design matrices) accumulate in the dtype of ``shared["Xacc"]`` (float64 for float32
    fits: an f32 sum over 5e4 cells would carry ~1e-1 absolute error in the gradient).
    """
    _TRACES[0] += 1  # Python side effect: runs at trace time only
    X = shared["X"]
    Xa = shared["Xacc"]
    acc, cdt = Xa[0].dtype, theta.dtype
    K = len(X)
    sizes = [x.shape[1] for x in X]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    th = [theta[starts[k] : starts[k + 1]] for k in range(K)]
    etas = [shared["off"][k] + _linear(X[k], th[k]) for k in range(K)]
    y = data["y"]
    val, d, h = family.dense(y, *etas)
    # per-cell arrays even where a one-row predictor made a term the same for every cell
    val = jnp.broadcast_to(val, y.shape)
    d = [jnp.broadcast_to(v, y.shape) for v in d]
    h = {key: jnp.broadcast_to(v, y.shape) for key, v in h.items()}
    g = [-(Xa[k].T @ d[k].astype(acc)) for k in range(K)]
    Hb = {}
    for idx, (k, j) in enumerate(_pair_index(K)):
        Hb[(k, j)] = -(shared["XX"][idx].T @ h[(k, j)].astype(acc)).reshape(sizes[k], sizes[j])

    ci = family.count_index
    a, da, d2a = family.count(data["v"], None if ci is None else (shared["ZU"] @ th[ci])[data["u"]])
    w = data["w"]
    if ci is not None:
        U = shared["ZU"].shape[0]
        gU = jax.ops.segment_sum((w * da).astype(acc), data["u"], num_segments=U)
        hU = jax.ops.segment_sum((w * d2a).astype(acc), data["u"], num_segments=U)
        g[ci] = g[ci] - shared["ZUacc"].T @ gU
        Hb[(ci, ci)] = Hb[(ci, ci)] - (shared["ZZU"].T @ hU).reshape(sizes[ci], sizes[ci])

    rows = []
    for k in range(K):
        rows.append(
            jnp.concatenate([Hb[(k, j)] if j >= k else Hb[(j, k)].T for j in range(K)], axis=1)
        )
    H = jnp.concatenate(rows, axis=0).astype(cdt)
    gg = jnp.concatenate(g).astype(cdt)
    lam = shared["ridge"]
    gg = gg + lam * theta
    H = H + jnp.diag(lam)
    terms = jnp.concatenate([-val, -(w * a), 0.5 * lam * theta * theta])
    return terms, gg, H


def _glm_init(family: GLMFamily, data, shared):
    """Starting values of a block of genes (computed inside the compiled solver)."""
    start = partial(_start_values, params=family.params)
    return jax.vmap(start, in_axes=(0, None))(data["y"], shared["start"])


_FGH_CACHE: dict[str, tuple[Callable, Callable]] = {}


def _fgh_for(family: GLMFamily) -> tuple[Callable, Callable]:
    """One stable ``(fgh, init)`` pair per family, so jit caches across fits."""
    if family.name not in _FGH_CACHE:
        _FGH_CACHE[family.name] = (partial(_glm_fgh, family), partial(_glm_init, family))
    return _FGH_CACHE[family.name]


# --------------------------------------------------------------------------- starting values
def _const_coef(X: np.ndarray) -> tuple[np.ndarray, bool]:
    """Coefficients ``c`` with ``X c = 1`` (if the constant is in the column span)."""
    c, *_ = np.linalg.lstsq(X, np.ones(X.shape[0]), rcond=None)
    ok = bool(np.max(np.abs(X @ c - 1.0)) < 1e-6)
    return c, ok


def _moment_phi(y, mu):
    """Moment estimate of the NB over-dispersion ``1 / r`` given the means, clipped."""
    phi = jnp.sum((y - mu) ** 2 - mu) / jnp.maximum(jnp.sum(mu * mu), 1e-12)
    return jnp.clip(phi, 1e-3, 1e3)


def _start_values(y, sh, *, params):
    """Per-gene starting values (vmapped over genes outside): moments and least squares."""
    out = []
    off = sh["off"][0]
    ly = jnp.log(y + 0.5) - off
    beta = sh["pinv"][0] @ ly
    eta = off + _linear(sh["X"][0], beta)
    tot = jnp.maximum(jnp.sum(y), 0.1)
    shift = jnp.log(tot) - jax.nn.logsumexp(jnp.clip(eta, -50.0, 50.0))
    beta = beta + sh["has_c"][0] * shift * sh["c"][0]
    # Two iteratively reweighted least-squares (Fisher scoring) steps for the mean with the
    # moment dispersion, as R's glm starts: far cheaper than a full Newton evaluation (no
    # special functions) and it saves about one of them per gene.
    X0 = sh["X"][0]
    p0 = X0.shape[1]
    for _ in range(_IRLS_START_STEPS):
        eta0 = _linear(X0, beta)
        mu = jnp.exp(jnp.clip(off + eta0, -30.0, 30.0))
        phi = _moment_phi(y, mu) if "dispersion" in params else 0.0
        wt = mu / (1.0 + phi * mu)
        z = eta0 + (y - mu) / jnp.maximum(mu, 1e-12)
        A = (sh["XX0"].T @ wt).reshape(p0, p0)
        A = A + (1e-8 * jnp.trace(A) / p0 + 1e-30) * jnp.eye(p0, dtype=A.dtype)
        new = jnp.linalg.solve(A, X0.T @ (wt * z))
        beta = jnp.where(jnp.all(jnp.isfinite(new)), new, beta)
    mu = jnp.exp(jnp.clip(off + _linear(X0, beta), -30.0, 30.0))
    out.append(beta)
    log_r = jnp.asarray(0.0, y.dtype)
    for k, name in enumerate(params):
        if k == 0:
            continue
        if name == "dispersion":
            log_r = -jnp.log(_moment_phi(y, mu))
            target = log_r
        else:  # zero_inflation: excess zeros over the count model's P(0)
            r = jnp.exp(log_r) if "dispersion" in params else None
            p0 = jnp.exp(-mu) if r is None else jnp.exp(-r * softplus(jnp.log(mu) - log_r))
            f0 = jnp.mean(y == 0)
            pbar = jnp.mean(p0)
            pi0 = jnp.clip((f0 - pbar) / jnp.maximum(1.0 - pbar, 1e-6), 0.02, 0.9)
            target = jnp.log(pi0) - jnp.log1p(-pi0)
        coef = jnp.where(
            sh["has_c"][k], target * sh["c"][k], sh["pinv"][k] @ jnp.full(y.shape, target)
        )
        out.append(coef)
    return jnp.concatenate(out)


# --------------------------------------------------------------------------- count lists
def _count_triplets(Yt: np.ndarray, group: np.ndarray | None, n_groups: int):
    """Per-gene ``(gene, group, value, multiplicity)`` of the non-zero counts, gene-major.

    ``Yt`` is a dense genes × cells block. ``group=None`` keeps one triplet per non-zero
    cell (the group of a cell is the cell); otherwise cells with the same dispersion-design
    row are pooled, so ``dispersion="~ 1"`` gives each gene's count histogram (for which
    :func:`fit_glm_counts` reads :meth:`CountData.count_histograms` instead, and comes here
    only when those would need too many bins).
    """
    Gb = Yt.shape[0]
    gi, ci = np.nonzero(Yt)
    vals = Yt[gi, ci].astype(np.int64)
    if group is None:
        return gi, ci, vals, np.ones(gi.shape[0], np.int64)
    V = int(vals.max(initial=0)) + 1
    key = (gi.astype(np.int64) * n_groups + group[ci]) * V + vals
    space = Gb * n_groups * V
    if space <= max(4 * key.shape[0], 1 << 20):
        cnt = np.bincount(key, minlength=space)
        uk = np.flatnonzero(cnt)
        w = cnt[uk]
    else:
        uk, w = np.unique(key, return_counts=True)
    rest = uk // V
    return rest // n_groups, rest % n_groups, uk % V, w


def _log_factorials(triplets, Gb: int) -> np.ndarray:
    """``sum_i lgamma(y_i + 1)`` per gene of a block, in float64 (from its count triplets)."""
    gene, _, v, w = triplets
    return np.bincount(gene, weights=w * sps.gammaln(v + 1.0), minlength=Gb)


def _list_length(triplets, Gb: int, n_cells: int, per_cell: bool) -> int:
    """Padded list length: the next power of two (>= 128) of the longest gene's list.

    Coarse buckets let fits of similar data share one compiled solver."""
    L = int(np.bincount(triplets[0], minlength=Gb).max(initial=1))
    L = max(128, 1 << int(np.ceil(np.log2(max(L, 1)))))
    return min(L, n_cells) if per_cell else L


def _pad_triplets(triplets, Gb: int, L: int):
    """``(value, group, multiplicity)`` arrays ``[Gb, L]``; padding has multiplicity 0."""
    gene, grp, v, w = triplets
    per_gene = np.bincount(gene, minlength=Gb)
    start = np.concatenate([[0], np.cumsum(per_gene)[:-1]])
    pos = np.arange(gene.shape[0]) - start[gene]
    V_ = np.ones((Gb, L))
    U_ = np.zeros((Gb, L), np.int32)
    W_ = np.zeros((Gb, L))
    V_[gene, pos] = v
    U_[gene, pos] = grp
    W_[gene, pos] = w
    return V_, U_, W_


# --------------------------------------------------------------------------- block driver
@dataclass
class GLMFit:
    """Result of :func:`fit_glm_counts` (plain NumPy, float64)."""

    family: str
    coef: np.ndarray  # [G, P]
    se: np.ndarray  # [G, P]
    vcov: np.ndarray  # [G, P, P]
    loglik: np.ndarray  # [G]
    n_iter: np.ndarray  # [G]
    status: np.ndarray  # [G] str
    n_traces: int  # traces of the objective in this fit (2 per compiled solver, 0 if cached)
    runtime_s: float
    sizes: tuple[int, ...] = ()

    @property
    def converged(self) -> np.ndarray:
        return self.status == "converged"


def _auto_block(n_cells: int, n_genes: int, budget: int = 1 << 18) -> int:
    """Genes per block: about ``budget`` cells x genes (the per-cell arrays of a block stay
    in cache, and a slow gene holds few others back), but at least 8 genes (per-block
    overheads) and at most all of them."""
    return int(max(1, min(n_genes, max(8, budget // max(n_cells, 1)))))


def _gene_blocks(counts: CountData, block: int, genes: np.ndarray | None = None, dtype=np.float64):
    """Yield ``(genes of the block, dense genes × cells block of ``dtype``)``.

    Genes in order (``genes=None``) or the given ones; sparse input is densified one block
    at a time. Validated counts are integers, exact in float32 below 2^24.
    """
    X = counts.X
    if sp.issparse(X):
        X = X.tocsc()
    genes = np.arange(counts.n_genes) if genes is None else np.asarray(genes)
    for a in range(0, genes.shape[0], block):
        idx = genes[a : a + block]
        contiguous = idx.shape[0] > 0 and idx[-1] - idx[0] == idx.shape[0] - 1
        sub = X[:, idx[0] : idx[-1] + 1] if contiguous else X[:, idx]
        Yt = sub.T.toarray() if sp.issparse(sub) else np.asarray(sub).T
        yield idx, np.asarray(Yt, dtype=dtype)


def _covariance(H: np.ndarray) -> np.ndarray:
    """Inverse of each (symmetrised) Hessian, eigenvalues floored: finite even when singular.

    A direction the data do not determine (e.g. the dispersion of an all-zero gene) gets a
    huge but finite variance instead of inf/NaN.
    """
    H = 0.5 * (H + np.swapaxes(H, -1, -2))
    diag = np.abs(np.diagonal(H, axis1=-2, axis2=-1))
    ok = diag > 1e-200
    d = np.where(ok, 1.0 / np.sqrt(np.where(ok, diag, 1.0)), 1.0)
    Hs = H * d[..., :, None] * d[..., None, :]
    e, V = np.linalg.eigh(Hs)
    floor = np.maximum(1e-12 * np.max(np.abs(e), axis=-1, keepdims=True), 1e-200)
    inv = (V / np.maximum(e, floor)[..., None, :]) @ np.swapaxes(V, -1, -2)
    cov = inv * d[..., :, None] * d[..., None, :]
    return np.clip(np.nan_to_num(cov, nan=0.0, posinf=1e300, neginf=-1e300), -1e300, 1e300)


def fit_glm_counts(
    counts: CountData,
    designs: Sequence[np.ndarray],
    family: GLMFamily,
    *,
    offset: np.ndarray | None = None,
    ridge: Sequence[np.ndarray] | None = None,
    dtype: str = "float32",
    max_iter: int = 100,
    tol: float = 1e-8,
    block_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> GLMFit:
    """Fit one count GLM per gene by batched Newton, genes processed in blocks.

    Parameters
    ----------
    counts
        Validated cells × genes counts (dense or sparse; sparse is densified one gene
        block at a time).
    designs
        One design matrix ``[n_cells, p_k]`` per family parameter (full column rank).
    family
        A :class:`GLMFamily`.
    offset
        Log-scale offset of the mean's linear predictor ``[n_cells]`` (default 0).
    ridge
        Per-parameter arrays of ridge precisions ``[p_k]`` (0 = plain MLE).
    dtype
        ``"float32"`` or ``"float64"`` (float64 runs under a scoped ``jax.enable_x64``).
    max_iter, tol
        Newton iteration cap and convergence tolerance (half squared Newton decrement,
        log-likelihood units).
    block_size
        Genes per block (default: about a quarter of a million cells × genes per block,
        at least 8 genes; see :func:`_auto_block`).
    progress
        Called with the number of genes finished after each block.
    """
    t0 = time.perf_counter()
    traces0 = _TRACES[0]
    n, G = counts.shape
    K = family.n_params
    if len(designs) != K:
        raise ValueError(f"family {family.name!r} needs {K} design matrices, got {len(designs)}")
    designs = [np.asarray(D, dtype=np.float64) for D in designs]
    sizes = tuple(int(D.shape[1]) for D in designs)
    P = int(sum(sizes))
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64)
    lam = np.zeros(P) if ridge is None else np.concatenate([np.asarray(r, float) for r in ridge])
    block = _auto_block(n, G) if block_size is None else int(block_size)

    ci = family.count_index
    if ci is not None:
        ZU, group = np.unique(designs[ci], axis=0, return_inverse=True)
        group = group.ravel().astype(np.int64)
        if ZU.shape[0] > n // 2:
            ZU, group = designs[ci], None
    else:
        ZU, group = np.ones((1, 1)), np.zeros(n, np.int64)
    n_groups = ZU.shape[0]

    cs = [_const_coef(D) for D in designs]
    # coefficient step cap: 5 units of linear predictor per coefficient
    col_scale = np.concatenate([np.max(np.abs(D), axis=0) for D in designs])
    max_step = 5.0 / np.maximum(col_scale, 1e-12)

    # float64 is enabled (scoped) in both modes: float32 fits do their per-cell work in
    # float32 and accumulate sums over cells in float64.
    with jax.enable_x64(True):
        jdt = jnp.float64 if dtype == "float64" else jnp.float32

        def arr(x, dt=None):
            # cast on the host: a device-side cast would compile one tiny kernel per shape
            return jax.device_put(host(x, dt))

        def host(x, dt=None):
            return np.asarray(x, dtype=jdt if dt is None else dt)

        offs = [off] + [np.zeros(n)] * (K - 1)
        # A parameter whose linear predictor is the same for every cell (all design rows
        # equal, no per-cell offset: e.g. ``dispersion="~ 1"``) gets one row: broadcasting
        # then evaluates its per-cell functions once per gene (the NB size exp(b), the
        # zero-inflation sigmoid) instead of once per cell.
        one_row = [
            n > 1 and bool(np.all(D == D[:1]) and np.all(o == o[0]))
            for D, o in zip(designs, offs, strict=True)
        ]
        XX = [
            (designs[k][:, :, None] * designs[j][:, None, :]).reshape(n, -1)
            for (k, j) in _pair_index(K)
        ]
        shared = {
            "X": tuple(arr(D[:1] if c else D) for D, c in zip(designs, one_row, strict=True)),
            "Xacc": tuple(arr(D, jnp.float64) for D in designs),
            "off": tuple(arr(o[:1] if c else o) for o, c in zip(offs, one_row, strict=True)),
            "XX": tuple(arr(x, jnp.float64) for x in XX),
            "ZU": arr(ZU),
            "ZUacc": arr(ZU, jnp.float64),
            "ZZU": arr((ZU[:, :, None] * ZU[:, None, :]).reshape(ZU.shape[0], -1), jnp.float64),
            "ridge": arr(lam),
        }
        shared["start"] = {  # per-cell rows: the starting values sum over cells
            "X": (arr(designs[0]) if one_row[0] else shared["X"][0],),
            "off": (arr(off) if one_row[0] else shared["off"][0],),
            "pinv": tuple(arr(np.linalg.pinv(D)) for D in designs),
            "c": tuple(arr(c) for c, _ in cs),
            "has_c": tuple(jax.device_put(np.asarray(ok)) for _, ok in cs),
            "XX0": arr(XX[0]),
        }
        fgh, init = _fgh_for(family)

        coef = np.zeros((G, P))
        hess = np.zeros((G, P, P))
        value = np.zeros(G)
        n_iter = np.zeros(G, np.int64)
        status = np.zeros(G, np.int64)
        zero = np.zeros(G, bool)
        logfact = np.zeros(G)
        # One padded list length for every block (so one compiled solver). With one
        # dispersion row (or none) a gene's list is its count histogram: every gene's is
        # read in one pass over the matrix in its own layout. Otherwise a first pass over
        # the blocks finds the longest list, and short lists are kept for the second pass.
        L, kept, kept_size = 128, {}, 0
        hdt = np.float64 if dtype == "float64" else np.float32  # host blocks, as on device
        hist = counts.count_histograms() if group is not None and n_groups == 1 else None
        if hist is not None:
            L = max(L, _list_length(hist, G, n, False))
            hist_ptr = np.searchsorted(hist[0], np.arange(G + 1))
        else:
            for idx, Yt in _gene_blocks(counts, block, dtype=hdt):
                trip = _count_triplets(Yt, group, n_groups)
                L = max(L, _list_length(trip, Yt.shape[0], n, group is None))
                kept_size += trip[0].shape[0]
                if kept_size <= 1 << 22:
                    kept[int(idx[0])] = trip

        def triplets(idx, Yt):
            """The count triplets of a block of genes (gene numbered within the block)."""
            if hist is None:
                return kept.pop(int(idx[0]), None) or _count_triplets(Yt, group, n_groups)
            first, lens = hist_ptr[idx], hist_ptr[idx + 1] - hist_ptr[idx]
            pos = np.repeat(first - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
            gene = np.repeat(np.arange(idx.shape[0]), lens)
            return gene, np.zeros(gene.shape[0], np.int64), hist[1][pos], hist[2][pos]

        # one solver for the whole fit, built with the effort the whole fit is worth
        effort = compile_effort(n * G)

        def solve(idx, Yt, trip, theta_init, iters):
            nb = idx.shape[0]
            if nb < block:  # pad with copies of the last gene: one compiled shape
                Yt = np.concatenate([Yt, np.repeat(Yt[-1:], block - nb, axis=0)])
            V_, U_, W_ = _pad_triplets(trip, block, L)
            if nb < block:
                V_[nb:], U_[nb:], W_[nb:] = V_[nb - 1], U_[nb - 1], W_[nb - 1]
            if theta_init is None:  # computed by `init` inside the solver
                theta0 = np.zeros((block, P), jdt)
            else:
                theta0 = np.concatenate([theta_init, np.repeat(theta_init[-1:], block - nb, 0)])
            # host arrays go to the solver as they are: the jitted call copies them to the
            # device itself, at less cost than one device_put each
            data = {"y": host(Yt), "v": host(V_), "u": U_, "w": host(W_)}
            pending = newton_minimize(
                fgh,
                host(theta0),
                data,
                shared,
                max_iter=iters,
                tol=tol,
                max_step=max_step,
                asynchronous=True,
                effort=effort,
                init=init,
                use_init=theta_init is None,
                n_terms=n + L + P,
            )

            def collect():
                res = pending()
                coef[idx] = res.theta[:nb]
                hess[idx] = res.hess[:nb]
                value[idx] = res.value[:nb]
                n_iter[idx] += res.n_iter[:nb]
                status[idx] = res.status[:nb]
                if progress is not None and theta_init is None:
                    progress(int(np.sum(status[idx] != _MAX_ITER)))

            return collect

        def run_blocks(blocks):
            """Solve block after block; each block's host work overlaps the previous solve."""
            waiting = None
            for collect in blocks:
                if waiting is not None:
                    waiting()
                waiting = collect
            if waiting is not None:
                waiting()

        # Phase 1: every block for at most `first` evaluations, so one slow gene does not
        # keep its whole block iterating; phase 2: the unfinished genes, regrouped into
        # full blocks, continue from where they stopped (same compiled solver).
        first = min(max_iter, _PHASE1_EVALS)

        def phase1():
            for idx, Yt in _gene_blocks(counts, block, dtype=hdt):
                trip = triplets(idx, Yt)
                # the triplets list every non-zero count: a gene without any is all zero
                zero[idx] = np.bincount(trip[0], minlength=idx.shape[0]) == 0
                logfact[idx] = _log_factorials(trip, block)[: idx.shape[0]]
                yield solve(idx, Yt, trip, None, first)

        run_blocks(phase1())
        rest = np.flatnonzero(status == _MAX_ITER)
        if rest.size and max_iter > first:
            run_blocks(
                solve(idx, Yt, triplets(idx, Yt), coef[idx], max_iter - first)
                for idx, Yt in _gene_blocks(counts, block, rest, dtype=hdt)
            )
        if progress is not None and rest.size:
            progress(int(rest.size))

    status[zero] = _ALL_ZERO
    vcov = _covariance(hess)
    se = np.sqrt(np.maximum(np.diagonal(vcov, axis1=1, axis2=2), 0.0))
    loglik = -(value - 0.5 * np.sum(lam * coef * coef, axis=1)) - logfact
    return GLMFit(
        family=family.name,
        coef=coef,
        se=se,
        vcov=vcov,
        loglik=loglik,
        n_iter=n_iter,
        status=np.asarray(GLM_STATUS, dtype=object)[status].astype(str),
        n_traces=_TRACES[0] - traces0,
        runtime_s=time.perf_counter() - t0,
        sizes=sizes,
    )


# --------------------------------------------------------------------------- marginals (host)
def _nb_np(mu, r):
    r = np.asarray(r, dtype=np.float64)
    return r, r / (r + np.asarray(mu, dtype=np.float64))


def marginal_cdf(family: GLMFamily, y, params: dict[str, np.ndarray]) -> np.ndarray:
    """``P(Y <= y)`` of the fitted marginal (``params``: mean, dispersion, zero_inflation)."""
    mu = params["mean"]
    if "dispersion" in params:
        n_, p_ = _nb_np(mu, params["dispersion"])
        c = st.nbinom.cdf(y, n_, p_)
    else:
        c = st.poisson.cdf(y, mu)
    if "zero_inflation" in params:
        pi = params["zero_inflation"]
        c = np.where(np.asarray(y) >= 0, pi + (1.0 - pi) * c, 0.0)
    return c


def marginal_ppf(family: GLMFamily, u, params: dict[str, np.ndarray]) -> np.ndarray:
    """Quantile function of the fitted marginal (inverse of :func:`marginal_cdf`)."""
    u = np.asarray(u, dtype=np.float64)
    mu = params["mean"]
    if "zero_inflation" in params:
        pi = params["zero_inflation"]
        u = np.clip((u - pi) / np.maximum(1.0 - pi, 1e-300), 0.0, 1.0)
        zero = u <= 0.0
    else:
        zero = np.zeros(u.shape, bool)
    u = np.clip(u, 0.0, 1.0 - 1e-12)
    if "dispersion" in params:
        n_, p_ = _nb_np(mu, params["dispersion"])
        q = st.nbinom.ppf(u, n_, p_)
    else:
        q = st.poisson.ppf(u, mu)
    q = np.where(zero, 0.0, q)
    return np.nan_to_num(q, nan=0.0, posinf=0.0)


def sample_counts(
    family: GLMFamily, rng: np.random.Generator, params: dict[str, np.ndarray]
) -> np.ndarray:
    """Independent draws from the fitted marginals (same shape as ``params['mean']``)."""
    mu = np.asarray(params["mean"], dtype=np.float64)
    if "dispersion" in params:
        r = np.asarray(params["dispersion"], dtype=np.float64)
        lam = rng.gamma(r, mu / r)
        y = rng.poisson(lam)
    else:
        y = rng.poisson(mu)
    if "zero_inflation" in params:
        y = np.where(rng.random(mu.shape) < params["zero_inflation"], 0, y)
    return y
