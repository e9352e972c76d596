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
        failed: Why the value cannot be real (a rate above its physical limit, a negative
            time exponent): a failed measurement, never "met"; it fails the run like a miss.
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
    failed: str = ""

    def __post_init__(self) -> None:
        if self.failed:
            object.__setattr__(self, "met", False)
            if not self.target:
                object.__setattr__(self, "target", "a physically possible value")

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


# --- Stable figures: interleaved rounds, CPU and wall time, load flags, impossible values ---------

SPREAD_TARGET = 0.10
"""Rounds go on until every ratio's spread ((max - min) / median) is under this."""
LOAD_RISE = 0.5
"""A round during which the 1-minute load average rose by more than this is flagged."""


@dataclass(slots=True)
class Sample:
    """One timed run of one contender.

    Attributes:
        wall_s: Wall-clock seconds of the measured work.
        cpu_s: CPU seconds (user + system) of the process(es) that did it, children included.
        items: Items done (images, faces, URLs), so rates are ``items / wall_s``.
        peak_rss_mib: Peak resident memory of the process tree, where it was sampled.
        extra: Whatever else the contender reports (faces found, lost, tail times ...).
    """

    wall_s: float
    cpu_s: float
    items: int
    peak_rss_mib: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_per_1000(self) -> float:
        """CPU seconds per 1,000 items."""
        return 1000.0 * self.cpu_s / self.items if self.items else 0.0


@dataclass(slots=True)
class Rounds:
    """Interleaved rounds of several contenders on the same data.

    ``samples[name][i]`` is contender ``name`` in round ``i``; ``loads[i]`` the 1-minute load
    average before and after round ``i``.
    """

    ours: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    loads: list[tuple[float, float]] = field(default_factory=list)
    stopped: str = ""

    def ratios(self, baseline: str) -> list[float]:
        """``ours rate / baseline rate`` per round."""
        return [ratio(o.rate, b.rate) for o, b in zip(self.samples[self.ours], self.samples[baseline], strict=True)]

    def median_ratio(self, baseline: str) -> float:
        return median(self.ratios(baseline))

    def spread(self, baseline: str) -> float:
        return spread(self.ratios(baseline))

    def median_sample(self, name: str) -> Sample:
        """The round whose rate is the median of ``name``'s (lower middle for an even count)."""
        ordered = sorted(self.samples[name], key=lambda s: s.rate)
        return ordered[(len(ordered) - 1) // 2]

    def median_rate(self, name: str) -> float:
        return median([s.rate for s in self.samples[name]])

    def peak_rss(self, name: str) -> float:
        return max(s.peak_rss_mib for s in self.samples[name])

    def median_cpu_per_1000(self, name: str) -> float:
        return median([s.cpu_per_1000 for s in self.samples[name]])

    def flagged(self) -> list[int]:
        """Rounds (0-based) during which the load average rose by more than :data:`LOAD_RISE`."""
        return [i for i, (before, after) in enumerate(self.loads) if after - before > LOAD_RISE]

    def describe(self) -> str:
        """One sentence: rounds, spreads, loads and flagged rounds, for the notes."""
        parts = [
            f"{len(self.loads)} interleaved rounds ({self.stopped})",
            "ratio spread " + ", ".join(f"{self.spread(b):.0%} vs {b}" for b in self.samples if b != self.ours),
            "load average per round " + ", ".join(f"{a:.2f}->{b:.2f}" for a, b in self.loads),
        ]
        flagged = self.flagged()
        if flagged:
            parts.append("load rose during round(s) " + ", ".join(str(i + 1) for i in flagged))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ours": self.ours,
            "stopped": self.stopped,
            "loads": self.loads,
            "flagged_rounds": self.flagged(),
            "samples": {k: [asdict(s) for s in v] for k, v in self.samples.items()},
            "ratios": {b: self.ratios(b) for b in self.samples if b != self.ours},
            "spreads": {b: self.spread(b) for b in self.samples if b != self.ours},
        }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def spread(values: list[float]) -> float:
    """``(max - min) / median``: 0 for one value; infinite when the median is 0."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else float("inf")


def interleave(
    contenders: dict[str, Callable[[], Sample]],
    ours: str = "ours",
    min_rounds: int = 2,
    max_rounds: int = 5,
    target_spread: float = SPREAD_TARGET,
) -> Rounds:
    """Run every contender once per round, in turn, until each ratio ``ours / baseline`` has a
    spread under ``target_spread`` (at least ``min_rounds``) or ``max_rounds`` are done.

    The order alternates between rounds, so a contender is not always the one that runs right
    after another's burst of I/O.
    """
    rounds = Rounds(ours=ours, samples={name: [] for name in contenders})
    names = list(contenders)
    for i in range(max(1, max_rounds)):
        before = os.getloadavg()[0]
        for name in names if i % 2 == 0 else names[::-1]:
            rounds.samples[name].append(contenders[name]())
        rounds.loads.append((round(before, 2), round(os.getloadavg()[0], 2)))
        done = i + 1
        spreads = [rounds.spread(b) for b in names if b != ours]
        if done >= min_rounds and all(s < target_spread for s in spreads):
            rounds.stopped = f"every ratio spread under {target_spread:.0%} after {done}"
            return rounds
    rounds.stopped = f"round cap {max_rounds} reached; spread still above {target_spread:.0%}"
    if len(names) == 1:
        rounds.stopped = f"{max_rounds} rounds"
    return rounds


def measured_call(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Wall and CPU seconds (this process, all threads) of ``fn()``, and its result."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0, out


def run_child(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[str, Sample]:
    """Run ``command`` to its end: its stdout, and a sample with its wall time, its CPU time
    (children it waited for included, from ``RUSAGE_CHILDREN``) and the peak RSS of its tree.

    ``items`` is 0: the caller fills it from the child's report.
    """
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with (
        subprocess.Popen(command, cwd=cwd or REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child,
        PeakTreeRss(child.pid) as rss,
    ):
        stdout, stderr = child.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed with exit status {child.returncode}:\n{stderr.decode()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return stdout.decode(), Sample(wall_s=wall, cpu_s=cpu, items=0, peak_rss_mib=rss.peak / 2**20)


def impossible_rate(rate: float, limit: float | None, slack: float = 0.02) -> str:
    """Why a rate cannot be real (above its physical limit), or ''."""
    if rate < 0:
        return f"negative rate {rate:.3g}"
    if limit is not None and rate > limit * (1 + slack):
        return f"rate {rate:.3g} above the physical limit {limit:.3g}"
    return ""


def impossible_exponent(exponent: float) -> str:
    """Why a fitted time exponent cannot be real (work that shrinks as the input grows), or ''."""
    return f"time exponent {exponent:.2f} < 0: more work took less time" if exponent < 0 else ""
