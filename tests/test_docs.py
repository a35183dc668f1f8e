"""The documentation stays in step with the code.

* ``docs/api.md`` has an autosummary entry for every public name (and no stale ones);
* every page under ``docs/`` and every tutorial notebook is in a toctree;
* the committed notebooks in ``tutorials/`` are valid nbformat v4, executed top to bottom
  with outputs where a cell should have them, and free of errors and warnings;
* the README's quick start is exactly two shell commands.

Nothing here executes a notebook or builds Sphinx (both too slow for the suite); the docs
build is ``sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

import scnbtools as snb

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = ROOT / "tutorials"
API_MD = DOCS / "api.md"

#: public modules whose every ``__all__`` name must be documented in ``docs/api.md``
MODULES = {
    "pp": snb.pp,
    "tl": snb.tl,
    "pl": snb.pl,
    "get": snb.get,
    "datasets": snb.datasets,
}

NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\{[^}]*\})?\s*([\w-]*)")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(info, body)`` of every fenced block of a Markdown text (MyST directives included:
    the info string of ```` ```{eval-rst} ```` is ``{eval-rst}``)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence = m.group(1)
        info = (m.group(2) or m.group(3) or "").strip()
        body, i = [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((info, "\n".join(body)))
        i += 1
    return blocks


def _autosummary_entries(md_text: str) -> list[str]:
    """The names listed under every ``.. autosummary::`` of the ``{eval-rst}`` blocks."""
    entries = []
    for info, body in _fenced_blocks(md_text):
        if info != "{eval-rst}":
            continue
        in_summary = False
        for line in body.splitlines():
            if line.startswith(".. autosummary::"):
                in_summary = True
                continue
            if in_summary:
                stripped = line.strip()
                if line and not line[0].isspace():  # next directive: the block ended
                    in_summary = line.startswith(".. autosummary::")
                    continue
                if stripped and not stripped.startswith(":"):
                    entries.append(stripped)
    return entries


def _toctree_entries(md_text: str) -> list[str]:
    entries = []
    for info, body in _fenced_blocks(md_text):
        if info == "{toctree}":
            entries += [
                ln.strip()
                for ln in body.splitlines()
                if ln.strip() and not ln.strip().startswith(":")
            ]
    return entries


# ----------------------------------------------------------------------------- helpers' own tests
def test_autosummary_parser_reads_entries_and_ignores_options():
    text = (
        "# t\n\n```{eval-rst}\n.. currentmodule:: scnbtools\n\n.. autosummary::\n"
        "   :toctree: generated\n\n   tl.fit\n   pp.check_counts\n\n.. note:: x\n\n   not.me\n```\n"
        "```python\n   tl.not_in_rst\n```\n"
    )
    assert _autosummary_entries(text) == ["tl.fit", "pp.check_counts"]


def test_fence_parser_finds_shell_blocks():
    text = "```bash\na\n```\n\n````{toctree}\nx\n````\n"
    assert _fenced_blocks(text) == [("bash", "a"), ("{toctree}", "x")]


# ----------------------------------------------------------------------------- (a) API reference
@pytest.mark.parametrize("mod_name", list(MODULES))
def test_api_md_lists_every_public_name(mod_name):
    listed = set(_autosummary_entries(API_MD.read_text(encoding="utf-8")))
    missing = [n for n in MODULES[mod_name].__all__ if f"{mod_name}.{n}" not in listed]
    assert not missing, (
        f"docs/api.md has no autosummary entry for {', '.join(f'{mod_name}.{n}' for n in missing)}; "
        f"add them under the `{mod_name}` section."
    )


def test_api_md_lists_settings():
    assert "settings" in _autosummary_entries(API_MD.read_text(encoding="utf-8"))
    text = API_MD.read_text(encoding="utf-8")
    # the attributes are documented in a table next to the entry
    for attr in ("progress_bar", "verbosity"):
        assert hasattr(snb.settings, attr)
        assert f"`{attr}`" in text, f"docs/api.md does not describe `settings.{attr}`"


def test_api_md_has_no_stale_entries():
    """An entry whose function was removed or renamed would break the Sphinx build."""
    stale = []
    for entry in _autosummary_entries(API_MD.read_text(encoding="utf-8")):
        head, _, name = entry.partition(".")
        if head == "settings" and not name:
            continue
        if head not in MODULES or name not in MODULES[head].__all__:
            stale.append(entry)
    assert not stale, f"docs/api.md lists names that are not public: {stale}"


# ----------------------------------------------------------------------------- toctrees
def test_every_docs_page_is_in_a_toctree():
    """Sphinx -W fails on a page that is in no toctree (e.g. a new docs/glm.md)."""
    listed = set()
    for page in DOCS.glob("*.md"):
        listed |= set(_toctree_entries(page.read_text(encoding="utf-8")))
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert pages - listed == set(), (
        f"docs pages missing from every toctree: {sorted(pages - listed)}"
    )


def test_every_tutorial_notebook_is_in_the_tutorials_toctree():
    listed = set(_toctree_entries((DOCS / "tutorials.md").read_text(encoding="utf-8")))
    assert NOTEBOOKS, "no notebooks in tutorials/"
    missing = [nb.stem for nb in NOTEBOOKS if f"generated/tutorials/{nb.stem}" not in listed]
    assert not missing, f"add generated/tutorials/<name> to docs/tutorials.md for {missing}"


# ----------------------------------------------------------------------------- (b) notebooks
def _needs_output(source: str) -> bool:
    """A code cell whose last statement is an expression displays something."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: be lenient, they are checked by nbformat/execution
        return False
    return bool(tree.body) and isinstance(tree.body[-1], ast.Expr)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_valid_executed_and_clean(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts), (
        f"{path.name}: unexecuted code cells (execution_count None); execute the notebook "
        "with `jupyter nbconvert --execute --to notebook --inplace` before committing"
    )
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: cells were not executed once, top to bottom, in a fresh kernel "
        f"(execution counts {counts})"
    )
    for i, cell in enumerate(code):
        where = f"{path.name}, code cell {i + 1} ({cell.source.splitlines()[0][:60]!r})"
        for out in cell.outputs:
            assert out.output_type != "error", f"{where}: error output {out.get('ename')}"
            if out.output_type == "stream" and out.name == "stderr":
                for bad in ("Traceback", "Error", "Warning"):
                    assert bad not in out.text, f"{where}: stderr contains {bad!r}:\n{out.text}"
        if _needs_output(cell.source):
            assert cell.outputs, f"{where}: ends in an expression but has no output"
    images = sum("image/png" in out.get("data", {}) for c in code for out in c.outputs)
    assert images > 0, f"{path.name}: no figures in the outputs"


def test_needs_output_rule():
    assert _needs_output("x = 1\nx")
    assert _needs_output("snb.pl.loss(adata)")
    assert not _needs_output("import numpy as np")
    assert not _needs_output("def f():\n    return 1")
    assert not _needs_output("%matplotlib inline")


# ----------------------------------------------------------------------------- (c) README
_SHELL = {"bash", "sh", "shell", "console", "zsh"}


def _quick_start(readme: str) -> str:
    m = re.search(r"^##\s+Quick start\s*$(.*?)(?=^##\s|\Z)", readme, flags=re.M | re.S | re.I)
    assert m, "README.md has no '## Quick start' section"
    return m.group(1)


def _commands(body: str) -> list[str]:
    """Shell commands of a block: backslash continuations joined, comments and blanks dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    cmds = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line and not line.startswith("#"):
            cmds.append(line)
    return cmds


def test_readme_quick_start_is_two_shell_commands():
    section = _quick_start((ROOT / "README.md").read_text(encoding="utf-8"))
    shell = [body for info, body in _fenced_blocks(section) if info.lower() in _SHELL]
    assert len(shell) == 2, f"README quick start has {len(shell)} shell blocks, expected 2"
    for body in shell:
        cmds = _commands(body)
        assert len(cmds) == 1, f"a quick-start block must hold one command, got {cmds}"


def test_quick_start_parsers():
    readme = "# x\n## Quick start\n```bash\na \\\n  b\n# c\n```\n## Other\n```bash\nz\n```\n"
    sec = _quick_start(readme)
    assert [b for _, b in _fenced_blocks(sec)] == ["a \\\n  b\n# c"]
    assert _commands("a \\\n  b\n# c\n\n$ d") == ["a b", "d"]
