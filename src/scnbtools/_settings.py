"""Package-wide settings: ``snb.settings``."""

from __future__ import annotations

import logging

__all__ = ["settings"]


class _Settings:
    """Settings for scnbtools.

    Attributes
    ----------
    progress_bar
        Show a tqdm progress bar during fits when a function's ``progress_bar=None``.
    verbosity
        0 errors, 1 warnings (default), 2 info, 3 debug; sets the level of the
        ``"scnbtools"`` logger (the root logger is never touched).
    """

    def __init__(self):
        self.progress_bar: bool = True
        self._verbosity = 1

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 3:
            raise ValueError(f"`verbosity` must be an integer 0–3, got {value!r}.")
        self._verbosity = value
        logging.getLogger("scnbtools").setLevel(
            {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}[value]
        )

    def __repr__(self) -> str:
        return f"scnbtools settings: progress_bar={self.progress_bar}, verbosity={self.verbosity}"


settings = _Settings()
