"""An annotate run: lock the output, skip what is done, cut the files into shards, run them.

:func:`annotate_run` is the one wiring of a run's steps, whoever executes them
(:class:`AnnotateSteps`: the flows' Prefect tasks, or :class:`LocalSteps` in this process).
The work is split by job:

* :mod:`faces_core.annotate.engine`: the detector and attribute model, loaded once per process;
* :mod:`faces_core.annotate.reader`: files decoded in threads, ahead of the detector;
* :mod:`faces_core.annotate.shard`: one shard detected, predicted and committed.

:func:`annotate_folders` runs a whole annotation without Prefect (the flow runs the same
steps as tasks); both take their numbers from :class:`AnnotateSettings`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from faces_core.annotate import store
from faces_core.annotate.engine import NO_MODEL, Engine, detector_id, load_engine, model_version
from faces_core.annotate.inputs import FileJob, find_files, relative_jobs
from faces_core.annotate.reader import read_in_threads
from faces_core.annotate.settings import AnnotateSettings
from faces_core.annotate.shard import ShardReport, ShardRun, annotate_shard, run_shard

__all__ = [  # the run's names, and the step modules' names callers import from here
    "NO_MODEL",
    "AnnotateRun",
    "AnnotateSettings",
    "AnnotateSteps",
    "Engine",
    "LocalSteps",
    "ShardReport",
    "ShardRun",
    "annotate_folders",
    "annotate_run",
    "annotate_shard",
    "detector_id",
    "done_for",
    "load_engine",
    "model_version",
    "new_run_id",
    "read_in_threads",
    "reproducible_run_id",
    "run_shard",
    "shards",
    "summary",
]

log = logging.getLogger(__name__)


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by start time: ``20250102T030405Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def reproducible_run_id(jobs: Sequence[FileJob], out: str | os.PathLike[str], model_version: str, detector: str) -> str:
    """A run id taken from what the run reads, not from the clock: ``repro-<12 hex>``.

    The DVC ``annotate`` stage runs this way (``--reproducible``): the same photos, model and
    detector give byte-identical parts, so ``dvc.lock`` and ``git status`` stay unchanged
    after an identical ``dvc repro``. The parts already committed in ``out`` are part of the
    hash, so a reproducible run into a folder that holds earlier runs never takes an existing
    part's name (parts are never rewritten). Such rows have a null ``annotated_at``.
    """
    digest = hashlib.sha256()
    for text in (model_version, detector, *(job.file for job in jobs), "\0", *store.committed_parts(out)):
        digest.update(text.encode("utf-8", "surrogateescape") + b"\n")
    return f"repro-{digest.hexdigest()[:12]}"


def shards(jobs: Sequence[FileJob], size: int) -> list[list[FileJob]]:
    """Consecutive shards of at most ``size`` files."""
    size = max(1, size)
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


def done_for(jobs: Sequence[FileJob], done: dict[str, set[str]]) -> dict[str, set[str]]:
    """The part of ``done`` that concerns ``jobs`` (what a shard needs to know)."""
    return {job.file: done[job.file] for job in jobs if job.file in done}


class AnnotateSteps(Protocol):
    """How the steps of an annotate run execute; :func:`annotate_run` wires them, once for all.

    The annotate flows run them as Prefect tasks (``tasks.annotate.PrefectSteps``: a task per
    shard, a progress artifact); :class:`LocalSteps` runs them in this process (tests,
    benchmarks, scripts).
    """

    def find_files(self, inputs: Sequence[str], out: str) -> list[FileJob]:
        """Walk the input folders (never entering ``out``)."""
        ...

    def run_shards(
        self, run: ShardRun, chunks: Sequence[Sequence[FileJob]], done: Sequence[dict[str, set[str]]]
    ) -> Iterator[tuple[int, ShardReport]]:
        """Annotate and commit every shard (``done[i]``: what shard ``i`` skips); (shard index,
        its report) as each finishes."""
        ...


@dataclass(frozen=True, slots=True)
class AnnotateRun:
    """What :func:`annotate_run` did: the counts, the run id and the model version used."""

    report: ShardReport
    run_id: str
    model_version: str


def annotate_run(
    inputs: Sequence[str],
    out: str,
    settings: AnnotateSettings,
    model_dir: str | None,
    steps: AnnotateSteps,
    files: Sequence[FileJob] | None = None,
    draw_dir: str | None = None,
    reproducible: bool = False,
    out_url: str | None = None,
    model_url: str | None = None,
) -> AnnotateRun:
    """The annotate pipeline, the one wiring of its steps: lock, recover, skip what is done, shard.

    Args:
        inputs: Folders (walked recursively) or files.
        out: Output folder (``annotations/``, ``files/``, ``errors/`` parts).
        settings: Run settings.
        model_dir: Trained attribute model; None or missing gives detection only.
        steps: How the steps run (:class:`LocalSteps`, or the flow's Prefect tasks).
        files: The files to handle instead of walking ``inputs`` (the inbox passes the settled ones).
        draw_dir: Folder for drawn copies, or None.
        reproducible: The DVC stage writing its own output: rows name files relative to the
            working directory and the run id comes from the inputs
            (:func:`reproducible_run_id`), so the same inputs give the same bytes in any clone.
        out_url: The object-store URL ``out`` mirrors: each shard uploads its parts there
            (:mod:`faces_core.annotate.remote`) for the caller to commit.
        model_url: The object-store URL of ``model_dir``: each shard fetches it where it runs.

    Returns:
        The counts of every shard added up (``seconds``: the run's wall time), run id, model version.
    """
    clock = time.perf_counter()
    total = ShardReport()
    with store.output_lock(out, settings.lock_wait_s):
        store.recover(out)
        jobs = list(files) if files is not None else steps.find_files(inputs, out)
        if reproducible:
            jobs = relative_jobs(jobs)
        version = model_version(model_dir, settings.all_heads)
        if version == NO_MODEL:
            log.warning("no trained model in %s: detecting faces only (attribute columns stay empty)", model_dir)
        detector = detector_id(settings.detect)
        done = store.done_keys(out, version, detector)
        started: datetime | None = None if reproducible else datetime.now(UTC)
        run_id = reproducible_run_id(jobs, out, version, detector) if started is None else new_run_id(started)
        run = ShardRun(out, run_id, started, model_dir, settings, draw_dir, out_url, model_url)
        chunks = shards(jobs, settings.shard_size)
        for _, report in steps.run_shards(run, chunks, [done_for(chunk, done) for chunk in chunks]):
            total.add(report)
    total.seconds = time.perf_counter() - clock
    return AnnotateRun(total, run_id, version)


class LocalSteps:
    """:class:`AnnotateSteps` in this process, shard after shard.

    Args:
        on_shard: Called with (shard index, report) after each shard commits.
    """

    def __init__(self, on_shard: Callable[[int, ShardReport], None] | None = None) -> None:
        self.on_shard = on_shard

    def find_files(self, inputs: Sequence[str], out: str) -> list[FileJob]:
        return find_files(inputs, exclude=[out])

    def run_shards(
        self, run: ShardRun, chunks: Sequence[Sequence[FileJob]], done: Sequence[dict[str, set[str]]]
    ) -> Iterator[tuple[int, ShardReport]]:
        engine = load_engine(run.model_dir, run.settings)
        for index, chunk in enumerate(chunks):
            report = run_shard(run, index, chunk, done[index], engine)
            if self.on_shard is not None:
                self.on_shard(index, report)
            yield index, report


def annotate_folders(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    settings: AnnotateSettings | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    draw_dir: str | os.PathLike[str] | None = None,
    files: Sequence[FileJob] | None = None,
    on_shard: Callable[[int, ShardReport], None] | None = None,
) -> ShardReport:
    """:func:`annotate_run` with :class:`LocalSteps` (tests, benchmarks, scripts).

    Args:
        inputs: Folders (walked recursively) or files.
        out: Output folder (``annotations/``, ``files/``, ``errors/`` parts).
        settings: Run settings (defaults when None).
        model_dir: Trained attribute model; None or missing gives detection only.
        draw_dir: Folder for drawn copies, or None.
        files: The files to handle instead of walking ``inputs`` (the inbox passes the settled ones).
        on_shard: Called with (shard index, report) after each shard commits.

    Returns:
        The counts of every shard added up (``seconds`` is the wall time of the run).
    """
    run = annotate_run(
        [os.fspath(i) for i in inputs],
        os.fspath(out),
        settings or AnnotateSettings(),
        os.fspath(model_dir) if model_dir is not None else None,
        LocalSteps(on_shard),
        files,
        os.fspath(draw_dir) if draw_dir is not None else None,
    )
    return run.report


def summary(report: ShardReport) -> dict[str, Any]:
    """The counts of a run as plain values (flow result, table artifact, JSON)."""
    rate = report.frames / report.seconds if report.seconds > 0 else 0.0
    return {
        "files": report.files,
        "skipped": report.skipped,
        "faces": report.faces,
        "frames": report.frames,
        "errors": report.errors,
        "reasons": dict(sorted(report.reasons.items())),
        "seconds": round(report.seconds, 3),
        "images_per_s": round(rate, 2),
    }
