"""``snb.settings``: validation, the progress-bar default, and logging hygiene."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import scnbtools as snb

#: the short test fits are deliberately not converged; that warning is tested in test_settings
pytestmark = pytest.mark.filterwarnings(r"ignore:the \w+ fit did not converge:UserWarning")


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (4, ValueError),
        (-1, ValueError),
        ("2", TypeError),
        (True, TypeError),
        (1.0, TypeError),
        (None, TypeError),
    ],
)
def test_verbosity_is_validated(value, exc, restore_settings):
    restore_settings.verbosity = 3
    with pytest.raises(exc, match=r"`settings\.verbosity` must be .*0.*3"):
        restore_settings.verbosity = value
    assert restore_settings.verbosity == 3  # unchanged


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_progress_bar_setting_is_validated(value, restore_settings):
    with pytest.raises(TypeError, match=r"`settings\.progress_bar` must be True or False"):
        restore_settings.progress_bar = value


def test_verbosity_sets_the_package_logger_level_only(restore_settings):
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    pkg = logging.getLogger("scnbtools")
    for v, level in [
        (0, logging.ERROR),
        (1, logging.WARNING),
        (2, logging.INFO),
        (3, logging.DEBUG),
    ]:
        restore_settings.verbosity = v
        assert pkg.level == level
    assert root.level == root_level and root.handlers == root_handlers
    assert all(isinstance(h, logging.NullHandler) for h in pkg.handlers)


def test_import_leaves_the_root_logger_alone():
    code = (
        "import logging; root = logging.getLogger(); before = (root.level, list(root.handlers)); "
        "import scnbtools as snb; "
        "assert (root.level, list(root.handlers)) == before, (root.level, root.handlers); "
        "assert logging.getLogger('scnbtools').getEffectiveLevel() == logging.WARNING; "
        "assert snb.settings.verbosity == 1 and snb.settings.progress_bar is True"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_fit_logs_to_the_package_logger(adata, fit_kw, caplog, restore_settings):
    root_handlers = list(logging.getLogger().handlers)
    restore_settings.verbosity = 2
    # 100 steps (the same compiled chunk as FIT_KW) are too few to converge
    kw = {**fit_kw, "n_steps": 100}
    with caplog.at_level(logging.NOTSET), pytest.warns(UserWarning) as caught:
        snb.tl.fit_zinb(adata, key_added="logged", **kw)
    records = [r for r in caplog.records if r.name.startswith("scnbtools")]
    assert any(r.levelno == logging.INFO and "fitting zinb" in r.getMessage() for r in records)
    assert list(logging.getLogger().handlers) == root_handlers

    # non-convergence is a UserWarning naming the fix and pointing at the caller's line
    (warning,) = [w for w in caught if "did not converge" in str(w.message)]
    assert "increase `n_steps`" in str(warning.message)
    assert warning.filename == __file__
    assert adata.uns["logged"]["converged"] is False

    caplog.clear()
    restore_settings.verbosity = 0
    with caplog.at_level(logging.NOTSET), pytest.warns(UserWarning) as caught:
        snb.tl.fit(adata, model="zinb", key_added="quiet", **kw)
    assert [w.filename for w in caught if "did not converge" in str(w.message)] == [__file__]
    assert not [r for r in caplog.records if r.name.startswith("scnbtools")]


@pytest.mark.parametrize(
    ("setting", "argument", "shown"),
    [(False, None, False), (True, None, True), (True, False, False)],
)
def test_progress_bar_follows_settings_unless_given(
    setting, argument, shown, adata, fit_kw, capsys, restore_settings
):
    restore_settings.progress_bar = setting
    kw = {**fit_kw, "progress_bar": argument}
    snb.tl.fit_zinb(adata, **kw)
    err = capsys.readouterr().err
    assert ("zinb svi" in err) is shown, err[-500:]
