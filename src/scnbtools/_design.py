"""Design matrices from formulas against ``adata.obs`` (formulaic), storable and rebuildable.

Rules
-----
* A formula is one-sided (``"~ x1 + x2"``; the leading ``~`` may be omitted). It is
  parsed by `formulaic <https://matthewwardrop.github.io/formulaic/>`_: interactions
  (``a:b``, ``a*b``), ``C(x, ...)``, numeric transforms (``np.log(x)``, ``center(x)``),
  splines (``bs(x, df=4)``), ``- 1`` / ``+ 0`` to drop the intercept, and ``~ .`` for
  every column of ``obs``.
* **Reference level.** Categorical variables use treatment (dummy) coding against a
  reference level, which is the first category of a pandas ``Categorical`` (its
  ``.cat.categories`` order), otherwise the smallest value in sorted order (strings
  alphabetically; booleans enter as numbers, so ``False`` is the reference). Choose
  another with ``C(x, contr.treatment("B"))`` or reorder with ``C(x, levels=[...])``.
  Without an intercept (``- 1``) the first categorical term gets one column per level.
* Missing values in a used column, unknown columns and rank-deficient designs are
  errors (the message names the columns).
* The fitted design's state — the expanded formula, the levels of every categorical
  variable and the state of stateful transforms (spline knots, centering constants) —
  is stored as a JSON string, so new ``obs`` tables are encoded exactly like the
  training table, also after ``write_h5ad`` / ``read_h5ad``; a level that was not seen
  at fit time is an error.
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._core.models.glm import GLMFamily, get_family
from ._validate import get_matrix

__all__ = [
    "Design",
    "build_design",
    "clean_column",
    "coef_table",
    "designs_for",
    "fit_family",
    "fit_record",
    "glm_stats_key",
    "glm_varm_key",
    "glm_vcov_key",
    "layer_arg",
    "linear_predictors",
    "log_library",
    "natural_params",
    "obs_of",
    "offset_from",
    "rebuild_design",
    "resolve_offset",
]


@dataclass
class Design:
    """A design matrix with everything needed to rebuild it for new data."""

    param: str
    formula: str
    matrix: np.ndarray
    columns: list[str]
    spec_json: str
    categories: dict[str, list[str]] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)

    def to_uns(self) -> dict[str, Any]:
        """Plain-typed record for ``adata.uns`` (h5ad / zarr safe)."""
        return {
            "formula": self.formula,
            "expanded": json.loads(self.spec_json)["formula"],
            "columns": np.asarray(self.columns, dtype=object),
            "categories": {
                _key(k): np.asarray(v, dtype=object) for k, v in self.categories.items()
            },
            "reference": {_key(k): str(v) for k, v in self.reference.items()},
            "spec": self.spec_json,
        }


def _key(name: str) -> str:
    return name.replace("/", "÷")


def clean_column(name: str) -> str:
    """Design column name as stored (``/`` is not allowed in zarr keys)."""
    return str(name).replace("/", "÷")


def _plain(o):
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.ndarray):
        return _plain(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    raise TypeError(f"cannot store design state of type {type(o).__name__}")


def _check_formula(formula, param: str) -> str:
    if not isinstance(formula, str):
        raise TypeError(
            f"`{param}` must be a formula string such as '~ x1 + x2', got {type(formula).__name__}."
        )
    f = formula.strip()
    if not f:
        raise ValueError(f"`{param}` is an empty formula; use e.g. '~ 1' for an intercept only.")
    if f.count("~") > 1 or (("~" in f) and not f.startswith("~")):
        raise ValueError(
            f"`{param}`={formula!r} must be one-sided (e.g. '~ x1 + x2'); the response is "
            "always the counts."
        )
    return f if f.startswith("~") else "~ " + f


def _required_columns(formula: str, obs: pd.DataFrame, param: str) -> None:
    from formulaic import Formula
    from formulaic.errors import FormulaParsingError, FormulaSyntaxError

    try:
        names = {str(v) for v in Formula(formula).required_variables}
    except (FormulaSyntaxError, FormulaParsingError) as e:
        if "`.` operator" in str(e):
            return  # `~ .` : every column of obs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"`{param}`={formula!r} is not a valid formula: {first}") from None
    missing = sorted(names - set(map(str, obs.columns)))
    if missing:
        avail = ", ".join(map(repr, list(map(str, obs.columns))[:20])) or "none"
        raise KeyError(
            f"`{param}`={formula!r} uses column(s) {', '.join(map(repr, missing))} that are not "
            f"in `adata.obs` (available: {avail}). Add them to `adata.obs` or fix the formula."
        )


def _materialize(formula: str, obs: pd.DataFrame, param: str, spec=None):
    from formulaic import model_matrix
    from formulaic.errors import FormulaicError
    from formulaic.transforms.contrasts import DataMismatchWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            if spec is None:
                return model_matrix(formula, obs, na_action="raise", output="pandas")
            return spec.get_model_matrix(obs)
        except DataMismatchWarning as e:
            msg = str(e)
            levels = msg[msg.find("{") : msg.find("}") + 1] if "{" in msg else msg
            raise ValueError(
                f"the `{param}` design meets categorical level(s) {levels} that were not seen "
                "when the model was fitted; predictions need a coefficient for every level. "
                "Drop those cells or refit with them included."
            ) from None
        except (FormulaicError, ValueError) as e:
            text = str(e)
            if "null values" in text or "contains null" in text:
                raise ValueError(
                    f"the `{param}` formula {formula!r} has missing (NaN) values ({text}). Fill "
                    "or drop those cells, or fix a transform that is undefined for some cells."
                ) from None
            if "not present in the dataset" in text:
                raise KeyError(
                    f"the `{param}` formula {formula!r} needs a column that is not in the obs "
                    f"table ({text}). Add it or fix the formula."
                ) from None
            raise ValueError(
                f"the `{param}` formula {formula!r} could not be evaluated: {text}"
            ) from None


def _check_rank(M: np.ndarray, columns: list[str], param: str, formula: str) -> None:
    if M.shape[1] == 0:
        raise ValueError(
            f"the `{param}` formula {formula!r} gives a design with no columns; use '~ 1' for "
            "an intercept only."
        )
    if not np.all(np.isfinite(M)):
        bad = [c for c, ok in zip(columns, np.all(np.isfinite(M), axis=0), strict=True) if not ok]
        raise ValueError(
            f"the `{param}` design has non-finite values in column(s) {', '.join(map(repr, bad))} "
            f"(formula {formula!r}); check transforms such as np.log of zeros."
        )
    if M.shape[0] < M.shape[1]:
        raise ValueError(
            f"the `{param}` design has {M.shape[1]} columns but only {M.shape[0]} cells."
        )
    scale = np.maximum(np.linalg.norm(M, axis=0), 1e-300)
    Ms = M / scale
    redundant = []
    basis = np.zeros((M.shape[0], 0))
    for j in range(M.shape[1]):
        v = Ms[:, j]
        if basis.shape[1]:
            v = v - basis @ (basis.T @ v)
            v = v - basis @ (basis.T @ v)
        nv = np.linalg.norm(v)
        if nv < 1e-8 or np.linalg.norm(M[:, j]) == 0:
            redundant.append(columns[j])
        else:
            basis = np.column_stack([basis, v / nv])
    if redundant:
        raise ValueError(
            f"the `{param}` design (formula {formula!r}) is rank deficient: column(s) "
            f"{', '.join(map(repr, redundant))} are linear combinations of the columns before "
            "them (e.g. two obs columns that encode the same grouping, or a level with no "
            f"cells). Columns: {', '.join(map(repr, columns))}. Remove the redundant terms."
        )


def _spec_json(spec) -> tuple[str, dict[str, list[str]], dict[str, str], list[str]]:
    enc, categories, reference = {}, {}, {}
    for name, (kind, state) in spec.encoder_state.items():
        kind_v = getattr(kind, "value", str(kind))
        if "categories" in state:
            cats = _plain(list(state["categories"]))
            enc[name] = [kind_v, {"categories": cats}]
            categories[name] = [str(c) for c in cats]
            contrasts = getattr(state.get("contrasts"), "contrasts", None)
            base = getattr(contrasts, "base", None)
            if type(contrasts).__name__ == "TreatmentContrasts" and cats:
                unset = (
                    base is None
                    or type(base).__name__ in ("_UnsetType", "UnsetType")
                    or repr(base) == "UNSET"
                )
                reference[name] = str(cats[0] if unset else base)
        else:
            enc[name] = [kind_v, {}]
    terms = [str(t) for t in spec.formula]
    formula = str(spec.formula)
    if "1" not in terms:  # no intercept: say so, or re-parsing would add one
        formula = "0 + " + formula
    payload = {
        "formula": formula,
        "encoder_state": enc,
        "transform_state": _plain(spec.transform_state),
    }
    return json.dumps(payload), categories, reference, [str(c) for c in spec.column_names]


def build_design(formula, obs: pd.DataFrame, *, param: str) -> Design:
    """Parse ``formula`` against ``obs`` and check the result (full column rank, finite)."""
    f = _check_formula(formula, param)
    _required_columns(f, obs, param)
    mm = _materialize(f, obs, param)
    spec = mm.model_spec
    spec_json, categories, reference, names = _spec_json(spec)
    M = np.asarray(mm, dtype=np.float64)
    columns = [clean_column(c) for c in names]
    _check_rank(M, columns, param, f)
    # a treatment reference only exists when a column was dropped for it
    reference = {k: v for k, v in reference.items() if any(c.startswith(f"{k}[T.") for c in names)}
    return Design(param, f, M, columns, spec_json, categories, reference)


def rebuild_design(spec_json: str, obs: pd.DataFrame, *, param: str, columns=None) -> np.ndarray:
    """The stored design evaluated on a new ``obs`` table (same columns, same encoding)."""
    from formulaic import ModelSpec
    from formulaic.parser.types import Factor

    d = json.loads(str(spec_json))
    enc = {k: (Factor.Kind(v[0]), dict(v[1])) for k, v in d["encoder_state"].items()}
    spec = ModelSpec(
        formula=d["formula"],
        encoder_state=enc,
        transform_state=d["transform_state"],
        na_action="raise",
        output="pandas",
    )
    _required_columns("~ " + d["formula"], obs, param)
    mm = _materialize(d["formula"], obs, param, spec=spec)
    M = np.asarray(mm, dtype=np.float64)
    if columns is not None:
        got = [clean_column(c) for c in mm.model_spec.column_names]
        if list(got) != [str(c) for c in columns]:
            raise ValueError(
                f"the `{param}` design rebuilt for the new obs has columns {got}, but the fit "
                f"has {list(columns)}; the obs table is not compatible with the fit."
            )
    return M


# --------------------------------------------------------------------------- AnnData keys
def glm_varm_key(key: str, param: str, stat: str) -> str:
    """``adata.varm`` key of a GLM coefficient table, e.g. ``glm_mean_coef``."""
    return f"{key}_{param}_{stat}"


def glm_stats_key(key: str) -> str:
    """``adata.varm`` key of the per-gene fit statistics (log-likelihood, AIC, convergence)."""
    return f"{key}_stats"


def glm_vcov_key(key: str) -> str:
    """``adata.varm`` key of the flattened per-gene coefficient covariance matrices."""
    return f"{key}_vcov"


# --------------------------------------------------------------------------- fitted-GLM records
_LINKS = {"log": np.exp, "logit": lambda x: 1.0 / (1.0 + np.exp(-x))}


def log_library(X, name: str) -> np.ndarray:
    lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    if np.any(lib <= 0):
        raise ValueError(
            f"{int(np.sum(lib <= 0))} cell(s) have zero total counts in {name}, so "
            "`offset='log_library'` is undefined for them. Remove them first "
            "(`sc.pp.filter_cells(adata, min_counts=1)`) or pass another `offset`."
        )
    return np.log(lib)


def offset_from(value, obs: pd.DataFrame, what: str) -> np.ndarray:
    """A log-scale offset vector from an obs column name, a number or an array."""
    n = obs.shape[0]
    if isinstance(value, str):
        if value not in obs.columns:
            raise KeyError(
                f"`{what}`={value!r} is not a column of `obs` (nor 'log_library'); pass a "
                "column holding log-scale offsets, 'log_library', a number or an array."
            )
        arr = obs[value].to_numpy()
        label = f"obs[{value!r}]"
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        arr = np.full(n, float(value))
        label = "a number"
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"`{what}` must be None, 'log_library', an obs column name, a number or an array, "
                f"got {type(value).__name__}."
            ) from None
        label = "the array"
    arr = np.asarray(arr, dtype=np.float64).ravel() if arr.dtype.kind in "biuf" else None
    if arr is None:
        raise TypeError(f"`{what}` ({label}) must be numeric (log-scale offsets).")
    if arr.shape[0] != n:
        raise ValueError(f"`{what}` ({label}) has {arr.shape[0]} values but there are {n} cells.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"`{what}` ({label}) has NaN or infinite (non-finite) values; offsets are log-scale "
            "and finite."
        )
    return arr


def fit_record(adata: AnnData, key: str) -> dict:
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData object, got {type(adata).__name__}.")
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, got {type(key).__name__}.")
    rec = adata.uns.get(key)
    if not isinstance(rec, Mapping) or "design" not in rec or "family" not in rec:
        fits = [
            k
            for k, v in adata.uns.items()
            if isinstance(v, Mapping) and "design" in v and "family" in v
        ]
        raise KeyError(
            f"no GLM fit under key {key!r} in `adata.uns` (GLM fits found: "
            f"{', '.join(map(repr, fits)) or 'none'}). Run `snb.tl.fit_glm(adata, key_added={key!r})` first."
        )
    return rec


def fit_family(rec: Mapping, param: str | None = None) -> GLMFamily:
    """The family of a fit record; with ``param``, check that the family has it."""
    fam = get_family(str(rec["family"]))
    if param is not None and param not in fam.params:
        raise ValueError(
            f"`param`={param!r} is not a parameter of this {fam.name} fit; choose one of "
            f"{', '.join(map(repr, fam.params))}."
        )
    return fam


def coef_table(adata: AnnData, key: str, param: str, stat: str = "coef") -> pd.DataFrame:
    k = glm_varm_key(key, param, stat)
    if k not in adata.varm:
        raise KeyError(
            f"`adata.varm[{k!r}]` is missing; refit with `snb.tl.fit_glm(..., key_added={key!r})`."
        )
    df = adata.varm[k]
    return (
        df if isinstance(df, pd.DataFrame) else pd.DataFrame(np.asarray(df), index=adata.var_names)
    )


def obs_of(obs, adata: AnnData) -> tuple[pd.DataFrame, AnnData | None]:
    if obs is None:
        return adata.obs, adata
    if isinstance(obs, AnnData):
        return obs.obs, obs
    if isinstance(obs, pd.DataFrame):
        if obs.shape[0] == 0:
            raise ValueError("`obs` has no rows; pass at least one cell.")
        return obs, None
    raise TypeError(
        f"`obs` must be None, a pandas DataFrame or an AnnData, got {type(obs).__name__}."
    )


def resolve_offset(
    rec: Mapping, obs_df: pd.DataFrame, source: AnnData | None, offset
) -> np.ndarray:
    """Log-scale mean offsets for the cells of ``obs_df`` (see :func:`predict`)."""
    info = rec["offset"]
    kind = str(info["kind"])
    center = float(info.get("center", 0.0))
    if offset is not None:
        if isinstance(offset, str) and offset == "log_library":
            if source is None:
                raise ValueError(
                    "`offset='log_library'` needs an AnnData with counts, not a DataFrame."
                )
            X, name = get_matrix(source, layer_arg(rec))
            return log_library(X, name) - center
        return offset_from(offset, obs_df, "offset")
    n = obs_df.shape[0]
    if kind == "none":
        return np.zeros(n)
    if kind == "column":
        return offset_from(str(info["column"]), obs_df, "offset")
    if kind == "log_library" and source is not None:
        X, name = get_matrix(source, layer_arg(rec))
        return log_library(X, name) - center
    values = np.asarray(info.get("values", []), dtype=np.float64)
    if source is not None and values.shape[0] == n:
        return values
    raise ValueError(
        f"the fit used an offset ({kind!r}) that cannot be derived for this obs table; pass "
        "`offset=` (log scale; e.g. `offset=0.0` for a cell with the typical library size "
        "of the fit, whose offsets were centred)."
    )


def layer_arg(rec: Mapping):
    layer = str(rec["params"]["layer"])
    return None if layer == "X" else layer


def designs_for(rec: Mapping, obs_df: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for p, d in rec["design"].items():
        out[p] = rebuild_design(str(d["spec"]), obs_df, param=p, columns=list(d["columns"]))
    return out


def linear_predictors(adata, rec, key, obs_df, off) -> dict[str, np.ndarray]:
    designs = designs_for(rec, obs_df)
    etas = {}
    for p, M in designs.items():
        B = coef_table(adata, key, p).to_numpy(dtype=np.float64)
        eta = M @ B.T
        if p == "mean":
            eta = eta + off[:, None]
        etas[p] = eta
    return etas


def natural_params(family: GLMFamily, etas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for p, link in zip(family.params, family.links, strict=True):
        e = etas[p]
        if link == "log":
            e = np.clip(e, -700.0, 700.0)
        with np.errstate(over="ignore"):
            out[p] = _LINKS[link](e)
    return out
