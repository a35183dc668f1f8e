"""A tqdm progress bar that is a no-op when disabled."""

from __future__ import annotations

import contextlib


class _NullBar:
    total = 0

    def update(self, n=1):
        pass

    def refresh(self):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def progress(*, total: int, enabled: bool, desc: str):
    if not enabled:
        yield _NullBar()
        return
    try:  # widgets in Jupyter only when ipywidgets is there (else tqdm.auto warns)
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
