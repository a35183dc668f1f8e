"""Shared helpers for the scripts in ``benchmarks/``: timing, memory, machine info, workers,
and writing one's own section of ``BENCHMARKS.md``.

Nothing here imports JAX at module level, so an orchestrating parent process stays light and
every measurement can run in a fresh worker process (fresh compilation caches, its own peak RSS).

Typical use::

    from _common import Stopwatch, machine_info, peak_rss_mb, run_worker, write_section

    with Stopwatch() as sw:
        ...
    print(sw.seconds, peak_rss_mb())
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "CompileTimer",
    "SectionTimers",
    "Stopwatch",
    "cpu_seconds",
    "fmt",
    "machine_info",
    "markdown_table",
    "peak_rss_mb",
    "rss_mb",
    "run_worker",
    "worker_result",
    "write_section",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
_HEADER = (
    "# Benchmarks\n\n"
    "Produced by the scripts in `benchmarks/` (see `benchmarks/README.md`); each section is\n"
    "written by its script. Timings come from one run on the machine named in the section;\n"
    "compare ratios within a section, not absolute times across machines.\n"
)
_RESULT_TAG = "@@BENCH_RESULT@@"


# ----------------------------------------------------------------------------- time and memory
def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall clock) and ``sw.cpu_seconds``.

    CPU time (user + system, all threads of this process) barely changes when other jobs
    compete for the cores, so it is the better number on a shared machine; wall time on an
    idle machine lies between ``cpu_seconds / n_cores`` and about ``cpu_seconds``.
    """

    def __enter__(self) -> Stopwatch:
        self._t0, self._c0 = time.perf_counter(), cpu_seconds()
        self.seconds = self.cpu_seconds = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = cpu_seconds() - self._c0


class SectionTimers:
    """Cumulative wall time of named functions, by wrapping them in place (for profiling).

    ``timers.wrap(module_or_class, "attr", "label")`` replaces the attribute by a timed
    wrapper; ``timers.restore()`` puts every original back. The wrapper costs about a
    microsecond per call, so it is negligible around coarse sections (histogram building,
    an SVI run, posterior draws). ``windows[label]`` keeps every call's ``(start, end)``
    (``perf_counter``), e.g. for :meth:`CompileTimer.seconds_within`.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.windows: dict[str, list[tuple[float, float]]] = {}
        self._patched: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str | None = None) -> None:
        label = label or attr
        orig = getattr(owner, attr)
        self.seconds.setdefault(label, 0.0)
        self.calls.setdefault(label, 0)
        self.windows.setdefault(label, [])

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                self.seconds[label] += t1 - t0
                self.calls[label] += 1
                self.windows[label].append((t0, t1))

        self._patched.append((owner, attr, orig))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, orig in reversed(self._patched):
            setattr(owner, attr, orig)
        self._patched.clear()


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileTimer:
    """Wall time spent tracing, lowering and XLA-compiling JAX code while active.

    Listens to ``jax.monitoring`` duration events (``/jax/core/compile/*``), so it sees every
    compilation in the process, including those inside library calls and the many small
    ones of eagerly dispatched operations. Nested traces overlap in time, so totals are the
    length of the *union* of the event intervals, never a plain sum.
    """

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []
        self.n_backend_compiles = 0
        self._active = False
        self._registered = False

    def _listener(self, event: str, duration: float, **_: Any) -> None:
        if self._active and event in _COMPILE_EVENTS:
            t1 = time.perf_counter()
            self.intervals.append((t1 - float(duration), t1))
            if event.endswith("backend_compile_duration"):
                self.n_backend_compiles += 1

    @property
    def total(self) -> float:
        """Seconds during which some compilation step was running."""
        return sum(b - a for a, b in _union(self.intervals))

    def seconds_within(self, windows: Iterable[tuple[float, float]]) -> float:
        """Compilation seconds that fall inside the given ``(start, end)`` windows."""
        comp, out = _union(self.intervals), 0.0
        for w0, w1 in _union(windows):
            for a, b in comp:
                out += max(0.0, min(b, w1) - max(a, w0))
        return out

    def __enter__(self) -> CompileTimer:
        import jax.monitoring

        if not self._registered:
            jax.monitoring.register_event_duration_secs_listener(self._listener)
            self._registered = True
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``; else the peak)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def machine_info(
    packages: Iterable[str] = ("scnbtools", "jax", "jaxlib", "numpyro", "optax"),
) -> dict:
    """Cores, CPU model, memory, load, Python and package versions, JAX devices."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["load_avg_1_5_15"] = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        pass
    for pkg in packages:
        info[pkg] = _version(pkg)
    try:
        import jax

        info["jax_devices"] = ", ".join(str(d) for d in jax.devices())
        info["jax_backend"] = jax.default_backend()
    except Exception as e:  # pragma: no cover - informational only
        info["jax_devices"] = f"unavailable ({type(e).__name__})"
    return info


# ----------------------------------------------------------------------------- workers
def worker_result(result: dict) -> None:
    """Print a worker's JSON result on one tagged line (read back by :func:`run_worker`)."""
    print(_RESULT_TAG + json.dumps(result, default=_json_default), flush=True)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def run_worker(
    script: str | Path,
    args: Sequence[str],
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """Run ``python script *args`` in a fresh process and return its tagged JSON result.

    The worker's other output is echoed line by line (``echo=None`` silences it). A worker
    that fails or prints no result raises ``RuntimeError`` with the tail of its output.
    """
    cmd = [sys.executable, str(script), *map(str, args)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    result, tail = None, []
    t0 = time.perf_counter()
    for line in proc.stdout or ():
        if line.startswith(_RESULT_TAG):
            result = json.loads(line[len(_RESULT_TAG) :])
            continue
        tail = [*tail[-40:], line.rstrip()]
        if echo is not None:
            echo("    | " + line.rstrip())
        if timeout is not None and time.perf_counter() - t0 > timeout:
            proc.kill()
            break
    rc = proc.wait()
    if rc != 0 or result is None:
        raise RuntimeError(
            f"worker {' '.join(cmd[1:])} failed (exit code {rc}):\n" + "\n".join(tail[-20:])
        )
    return result


# ----------------------------------------------------------------------------- markdown
def fmt(x: Any, digits: int = 3) -> str:
    """Compact number formatting for tables (``-`` for ``None``/NaN)."""
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    xf = float(x)
    if xf != xf:
        return "–"
    if abs(xf) >= 1000:
        return f"{xf:,.0f}"
    return f"{xf:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through :func:`fmt`."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(out)


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``## {title}`` section of ``BENCHMARKS.md``.

    The section runs from its heading to the next ``## `` heading; every other section is
    left byte for byte as it was. The file is re-read right before writing and replaced
    atomically, because other scripts write their own sections of the same file.
    """
    heading = f"## {title}"
    text = path.read_text() if path.exists() else _HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == heading), None)
    new = heading + "\n\n" + body.strip("\n") + "\n\n"
    if start is None:
        if not text.endswith("\n\n"):
            text = text.rstrip("\n") + "\n\n"
        text += new
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        text = "".join(lines[:start]) + new + "".join(lines[end:])
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text.rstrip("\n") + "\n")
    os.replace(tmp, path)
