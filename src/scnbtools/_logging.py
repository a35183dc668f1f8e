"""The package logger (``logging.getLogger("scnbtools")``); the root logger is never configured."""

from __future__ import annotations

import logging

logger = logging.getLogger("scnbtools")
logger.addHandler(logging.NullHandler())
