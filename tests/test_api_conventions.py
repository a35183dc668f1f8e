"""DESIGN.md §2–§4 as tests: the public namespace, signature rules and layering."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import scnbtools as snb

MODULES = {"pp": snb.pp, "tl": snb.tl, "pl": snb.pl, "get": snb.get}

#: public functions whose first parameter may have another name, and why
FIRST_PARAM_ALLOWED = {
    # no AnnData at all: a listing of the model registry
    "tl.available_models": None,
}
#: a function taking either an AnnData or its ``obs`` may call its first parameter so
ADATA_ALIASES = {"adata", "adata_or_obs"}

SRC = Path(snb.__file__).parent
CORE = SRC / "_core"
#: packages the pure-JAX core must never import (DESIGN.md §2)
CORE_FORBIDDEN = {"anndata", "pandas", "matplotlib", "scanpy", "seaborn"}


def _public_functions():
    for mod_name, mod in MODULES.items():
        assert len(set(mod.__all__)) == len(mod.__all__), f"duplicates in {mod_name}.__all__"
        for name in mod.__all__:
            obj = getattr(mod, name)  # AttributeError = a name in __all__ that does not exist
            if callable(obj):
                yield pytest.param(mod_name, name, obj, id=f"{mod_name}.{name}")


PUBLIC = list(_public_functions())


def test_top_level_namespace():
    assert sorted(snb.__all__) == sorted(
        ["pp", "tl", "pl", "get", "datasets", "settings", "__version__"]
    )
    assert isinstance(snb.__version__, str) and re.match(r"^\d+\.\d+", snb.__version__)


def test_there_are_public_functions_to_check():
    names = {p.id for p in PUBLIC}
    assert {"tl.fit", "tl.fit_zinb", "tl.fit_nbdm", "get.posterior_df", "pp.check_counts"} <= names


@pytest.mark.parametrize(("mod_name", "name", "fn"), PUBLIC)
def test_signature_adata_first_then_keyword_only(mod_name, name, fn):
    params = list(inspect.signature(fn).parameters.values())
    qual = f"{mod_name}.{name}"
    if qual in FIRST_PARAM_ALLOWED:
        rest = params
    else:
        assert params, f"{qual} takes no arguments"
        first, rest = params[0], params[1:]
        assert first.name in ADATA_ALIASES, f"{qual}: first parameter is {first.name!r}"
        assert first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, qual
        assert first.default is inspect.Parameter.empty, f"{qual}: `adata` has a default"
    for p in rest:
        assert p.kind is not inspect.Parameter.VAR_POSITIONAL, f"{qual}: *{p.name}"
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            # only plots may forward styling keywords to matplotlib
            assert mod_name == "pl", f"{qual}: **{p.name} hides the signature"
            continue
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{qual}: {p.name!r} is not keyword-only"


def _expect(fn, qual: str, name: str, default=inspect.Parameter.empty) -> None:
    params = inspect.signature(fn).parameters
    assert name in params, f"{qual} lacks `{name}`"
    assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, f"{qual}: `{name}`"
    if default is not inspect.Parameter.empty:
        assert params[name].default == default, (
            f"{qual}: `{name}` defaults to {params[name].default!r}"
        )


@pytest.mark.parametrize(
    ("mod_name", "name", "fn"), [p for p in PUBLIC if p.id.startswith("tl.fit")]
)
def test_fit_functions_share_the_contract(mod_name, name, fn):
    qual = f"{mod_name}.{name}"
    _expect(fn, qual, "layer", None)
    _expect(fn, qual, "key_added")
    _expect(fn, qual, "rng")
    _expect(fn, qual, "progress_bar", None)
    _expect(fn, qual, "copy", False)


@pytest.mark.parametrize(("mod_name", "name", "fn"), [p for p in PUBLIC if p.id.startswith("pl.")])
def test_plot_functions_share_the_contract(mod_name, name, fn):
    qual = f"{mod_name}.{name}"
    _expect(fn, qual, "ax", None)
    _expect(fn, qual, "show", None)
    _expect(fn, qual, "return_fig", False)


@pytest.mark.parametrize(("mod_name", "name", "fn"), PUBLIC)
def test_public_functions_have_numpy_docstrings(mod_name, name, fn):
    doc = inspect.getdoc(fn)
    qual = f"{mod_name}.{name}"
    assert doc and doc.strip(), f"{qual} has no docstring"
    params = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if params:
        assert re.search(r"^Parameters\n-{3,}$", doc, re.M), f"{qual}: no 'Parameters' section"
        for p in params:
            assert re.search(rf"^{re.escape(p)}\b", doc, re.M), f"{qual}: `{p}` is not documented"


# ----------------------------------------------------------------------------- layering
def _core_imports():
    """``(file, line, absolute module)`` of every import statement under ``_core``."""
    for path in sorted(CORE.rglob("*.py")):
        package = ["scnbtools", *path.relative_to(SRC).parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    yield path, node.lineno, node.module
                else:
                    base = package[: len(package) - (node.level - 1)]
                    yield path, node.lineno, ".".join([*base, *filter(None, [node.module])])


def test_core_never_imports_anndata_pandas_or_matplotlib():
    assert len(list(CORE.rglob("*.py"))) >= 5  # the scan really sees the core
    bad = [
        f"{path.relative_to(SRC)}:{line} imports {mod}"
        for path, line, mod in _core_imports()
        if mod.split(".")[0] in CORE_FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def test_core_imports_nothing_from_the_layers_above():
    bad = [
        f"{path.relative_to(SRC)}:{line} imports {mod}"
        for path, line, mod in _core_imports()
        if (mod == "scnbtools" or mod.startswith("scnbtools."))
        and not (mod == "scnbtools._core" or mod.startswith("scnbtools._core."))
    ]
    assert not bad, "\n".join(bad)
