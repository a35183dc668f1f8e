"""A tqdm progress bar that is a no-op when disabled."""

from __future__ import annotations

import contextlib


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def progress(*, total: int, enabled: bool, desc: str):
    if not enabled:
        yield _NullBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
