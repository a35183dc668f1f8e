"""scnbtools: fast, correct count models of single-cell RNA-seq for AnnData / scanpy."""

from . import datasets, get, pl, pp, tl
from ._settings import settings
from ._version import __version__

__all__ = ["__version__", "datasets", "get", "pl", "pp", "settings", "tl"]
