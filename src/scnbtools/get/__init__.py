"""Read results back from an AnnData (the supported reading API)."""

from ._posterior import fit_result, posterior_df, posterior_samples

__all__ = ["fit_result", "posterior_df", "posterior_samples"]
