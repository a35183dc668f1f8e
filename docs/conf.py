"""Sphinx configuration for the scnbtools documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).
The tutorial notebooks in ``tutorials/`` are committed with their outputs and are never
executed here; they are copied into ``docs/generated/tutorials/`` (git-ignored) before
the build so that Sphinx, which only reads files below ``docs/``, can render them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import scnbtools

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- copy the executed notebooks into the source tree -------------------------------------
_NB_OUT = HERE / "generated" / "tutorials"
_NB_OUT.mkdir(parents=True, exist_ok=True)
for _old in _NB_OUT.glob("*.ipynb"):
    if not (ROOT / "tutorials" / _old.name).exists():
        _old.unlink()
for _nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(_nb, _NB_OUT / _nb.name)

# -- project information -----------------------------------------------------------------
project = "scnbtools"
author = "scnbtools developers"
copyright = "scnbtools developers"
release = scnbtools.__version__
version = ".".join(release.split(".")[:2])

# -- general -----------------------------------------------------------------------------
extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks; includes myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}  # .rst first: autosummary stubs are rst
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# notebooks are committed already executed; never run them while building the docs
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- API reference -----------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
# scnbtools writes `Returns` sections as prose (scanpy style), not as `name : type` fields;
# a generic section keeps napoleon from splitting sentences at colons
napoleon_custom_sections = ["Returns"]
napoleon_use_ivar = True  # `Attributes` sections as field lists (snb.settings is an instance)

# -- HTML --------------------------------------------------------------------------------
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover - the docs extra installs furo
    html_theme = "alabaster"
html_title = f"scnbtools {release}"
html_static_path: list[str] = []
