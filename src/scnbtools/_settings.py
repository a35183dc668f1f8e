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
        self._progress_bar = True
        self._verbosity = 1
        self.verbosity = 1  # set the "scnbtools" logger's level from the start

    @property
    def progress_bar(self) -> bool:
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"`settings.progress_bar` must be True or False, got {value!r}.")
        self._progress_bar = value

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"`settings.verbosity` must be an integer 0–3 (0 errors, 1 warnings, 2 info, "
                f"3 debug), got {value!r}."
            )
        if not 0 <= value <= 3:
            raise ValueError(
                f"`settings.verbosity` must be 0 (errors), 1 (warnings), 2 (info) or 3 (debug), "
                f"got {value!r}."
            )
        self._verbosity = value
        logging.getLogger("scnbtools").setLevel(
            {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}[value]
        )

    def __repr__(self) -> str:
        return f"scnbtools settings: progress_bar={self.progress_bar}, verbosity={self.verbosity}"


settings = _Settings()
