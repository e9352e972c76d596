"""What every benchmark shares: figures with their baseline and limit, timing, tree RSS, results.

A benchmark returns a :class:`BenchResult`: a list of :class:`Figure` (ours, the baseline
measured in the same run, their ratio, the physical limit where one exists, the target and
whether it was met) plus the raw measurements. :mod:`bench.__main__` writes each result
to ``bench/results/<name>.json`` and all of them into ``bench/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SHARED = REPO.parent / "shared"
IMFDB_SHARED = SHARED / "datasets" / "imfdb" / "IMFDB_final"
THIS_MACHINE = "this machine"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure, with what it is compared against.

    Attributes:
        measure: What was measured, e.g. ``download 1,000 images, concurrency 64``.
        ours: Our value, in ``unit``.
        unit: ``images/s``, ``faces/s``, ``x`` ...
        baseline: The baseline's value in the same unit, measured in the same run (None: no
            baseline, e.g. a fitted exponent).
        baseline_name: What the baseline is (``serial requests.get loop``).
        ratio: ``ours / baseline`` oriented so that higher is better (None without baseline).
        limit: The physical limit in ``unit`` where one exists (latency bound, ...).
        target: The target in words (``>= 25x``); empty when the figure has none.
        met: Whether the target was met; None when there is no target.
        machine: Where the figure was measured; anything but :data:`THIS_MACHINE` is a
            recorded figure from another machine and does not decide the exit status.
        note: How to read it (extrapolated, few samples ...).
    """

    measure: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    limit: float | None = None
    target: str = ""
    met: bool | None = None
    machine: str = THIS_MACHINE
    note: str = ""

    @property
    def share_of_limit(self) -> float | None:
        """``ours / limit`` (1.0 = at the physical limit); None without a limit."""
        return self.ours / self.limit if self.limit else None

    @property
    def gating(self) -> bool:
        """True when a missed target fails this run (measured here, with a target)."""
        return self.met is not None and self.machine == THIS_MACHINE


@dataclass(slots=True)
class BenchResult:
    """What one benchmark returns: its figures and the raw measurements behind them."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """False when a target measured in this run was missed."""
        return all(f.met is not False for f in self.figures if f.gating)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (figures with their share of limit and gating flag)."""
        return {
            "name": self.name,
            "title": self.title,
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "figures": [{**asdict(f), "share_of_limit": f.share_of_limit, "gating": f.gating} for f in self.figures],
            "notes": self.notes,
            "details": self.details,
        }


def ratio(ours: float, baseline: float) -> float:
    """``ours / baseline`` (rates: higher is better); infinite when the baseline is zero."""
    return ours / baseline if baseline else float("inf")


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """Wall seconds of ``fn(*args, **kwargs)`` and its result."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write ``data`` as indented JSON (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def _tree_rss_psutil(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # a worker that just ended
            total += proc.memory_info().rss
    return total


def _children_proc(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _tree_rss_proc(pid: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        todo += _children_proc(current)
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (psutil when installed, else /proc)."""
    try:
        return _tree_rss_psutil(pid)
    except ImportError:
        return _tree_rss_proc(pid)


class PeakTreeRss:
    """Peak of :func:`tree_rss` for a process, sampled every ``interval`` s in a thread.

    Forked workers' copy-on-write pages count once per process, as ``ps`` shows them: the
    figure is an upper bound of the memory the tree holds.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakTreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
