"""Generic inference drivers (no model names here)."""

from .svi import SVIResult, run_svi

__all__ = ["SVIResult", "run_svi"]
