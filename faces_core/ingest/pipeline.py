"""The ingest pipeline as plain functions: parse -> download -> plan -> partition -> commit.

The Prefect flow (``flows/ingest.py``) calls these same steps through thin tasks;
:func:`run_ingest` chains them without Prefect for benchmarks and scripts. Every face a
source declares ends up exactly once either in the Parquet dataset or in the error log.

:func:`ingest_run` is the one wiring of the steps, whoever executes them
(:class:`IngestSteps`). The steps live by job: :mod:`faces_core.ingest.remote` (TCS images
downloaded by URL), :mod:`faces_core.ingest.local` (IMFDB crops hashed on disk),
:mod:`faces_core.ingest.partition` (validate, crop, bucket a shard); this module collects
the sources, plans the jobs and writes the outputs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from faces_core import storage
from faces_core.download import DownloadReport
from faces_core.errors import Rejection, count_by_reason, redact_userinfo, write_errors
from faces_core.files import write_json
from faces_core.ingest.local import local_files
from faces_core.ingest.partition import ImageJob, ShardResult, partition_shard, plan_jobs, shard, summarize
from faces_core.ingest.remote import (
    NothingDownloadedError,
    check_raw_dir,
    download_images,
    downloaded_files,
    image_store,
    proxy_description,
    redact_url,
    require_a_connection,
)
from faces_core.ingest.settings import IngestSettings
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import iter_tcs
from faces_core.records import FaceRecord, ParseResult
from faces_core.storage import FACES_DIR
from faces_core.validate import DuplicateTracker

__all__ = [  # the run's names, and the step modules' names callers import from here
    "FACES_DIR",
    "Collected",
    "IngestInputError",
    "IngestSettings",
    "IngestSteps",
    "LocalSteps",
    "NothingDownloadedError",
    "check_inputs",
    "check_raw_dir",
    "chunked",
    "concat",
    "download_images",
    "downloaded_files",
    "finalize",
    "image_store",
    "ingest_run",
    "local_files",
    "process_pool",
    "proxy_description",
    "redact_url",
    "require_a_connection",
    "run_ingest",
    "worker_pool",
]

log = logging.getLogger(__name__)


class IngestInputError(FileNotFoundError):
    """An ingest input (TCS file, IMFDB root) does not exist; the message says what to do."""


def check_inputs(tcs: str | None, imfdb_root: str | None) -> None:
    """Fail fast, before any work, when a local input is missing or nothing is to be done.

    Raises:
        IngestInputError: naming every missing input and how to fix it.
    """
    if not tcs and not imfdb_root:
        raise IngestInputError("nothing to ingest: set ingest.tcs and/or ingest.imfdb_root in params.yaml or pass them")
    problems = []
    if tcs and not tcs.startswith(("http://", "https://")) and not Path(tcs).is_file():
        problems.append(f"TCS file {tcs!r} does not exist")
    if imfdb_root and not Path(imfdb_root).is_dir():
        problems.append(f"IMFDB root {imfdb_root!r} is not a directory")
    if problems:
        raise IngestInputError(
            "; ".join(problems) + ". Run `faces sample` to write the bundled sample, or point ingest.tcs / "
            "ingest.imfdb_root in params.yaml (or --tcs / --imfdb-root) at your data; '' skips a source."
        )


def finalize(
    staging: Path,
    settings: IngestSettings,
    rejections: Sequence[Rejection],
    images: dict[str, int],
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write error log and summary into staging, then swap the whole output into place.

    ``on_phase`` is told ``write`` and then ``commit`` as each begins (progress, tests).
    """
    phase = on_phase or _no_phase
    phase("write")
    summary = summarize(staging / FACES_DIR, rejections, images)
    # No wall-clock time in a DVC output: the same inputs give the same bytes (no spurious retrain).
    write_errors(rejections, staging / storage.ERRORS_FILE, timestamps=False)
    write_json(summary, staging / storage.SUMMARY_FILE)
    phase("commit")
    storage.commit_dataset(staging, settings.out_dir)
    log.info(
        "ingest: %d faces kept, %d rejections %s", summary["faces"], summary["rejections"], count_by_reason(rejections)
    )
    return summary


def process_pool(workers: int, start_method: str = "fork") -> ProcessPoolExecutor:
    """The process pool every ingest path uses for CPU-bound shards (decode, crop, encode).

    ``fork`` outside Prefect (bench, scripts: workers start in milliseconds); ``spawn`` inside
    a flow, whose process runs Prefect's threads, which forking does not copy safely.
    """
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method))


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """:func:`process_pool` for one run, or None for one worker (work runs in the caller)."""
    if workers <= 1:
        yield None
        return
    with process_pool(workers) as pool:
        yield pool


@dataclass(slots=True)
class Collected:
    """What a run keeps while it plans its sources chunk by chunk: the rejections so far, the
    images each source declared, the duplicate index and how many shards were cut.

    Each chunk's faces become jobs (:meth:`add_downloaded`, :meth:`add`) that are partitioned
    before the next chunk is read; only the digest -> first reference index
    (:class:`~faces_core.validate.DuplicateTracker`) spans the run, so an image repeated in a
    later chunk or in the other source is still a ``duplicate_image``.
    """

    rejections: list[Rejection] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    tracker: DuplicateTracker = field(default_factory=DuplicateTracker)
    shards: int = 0

    def add_downloaded(self, source: str, parsed: ParseResult, report: DownloadReport) -> list[ImageJob]:
        """Plan a chunk whose images were downloaded (faces of failed URLs become rejections).

        A URL with a password in it is stored in the dataset's ``image_ref`` with the password
        hidden (face ids still come from the URL as given, so they do not change).
        """
        files, failed = downloaded_files(parsed.records, report)
        refs = {url: redact_userinfo(url) for url in files if "@" in url}
        return self.add(source, parsed, files, refs, failed)

    def add(
        self,
        source: str,
        parsed: ParseResult,
        files: dict[str, tuple[str, str]],
        refs: dict[str, str],
        rejections: Sequence[Rejection] = (),
    ) -> list[ImageJob]:
        """Plan a chunk of a source's faces with the local file of each image (for local images,
        what :func:`local_files` gives) and the rejections found getting them: one job per
        distinct image, sorted by reference; duplicate images join the rejections."""
        self.rejections += parsed.rejections
        self.rejections += rejections
        self.images[source] = self.images.get(source, 0) + parsed.images
        jobs, duplicates = plan_jobs(parsed.records, files, refs, self.tracker)
        self.rejections += duplicates
        return jobs

    def cut(self, jobs: Sequence[ImageJob], size: int) -> tuple[int, list[list[ImageJob]]]:
        """``jobs`` in shards of ``size`` images, numbered on from the shards cut before."""
        shards = shard(jobs, size)
        first, self.shards = self.shards, self.shards + len(shards)
        return first, shards


def chunked(parsed: ParseResult, chunk_images: int) -> Iterator[ParseResult]:
    """A source parsed whole, in chunks of ``chunk_images`` distinct images, as
    :func:`~faces_core.ingest.sources.tcs.iter_tcs` streams a file (an image's faces stay in
    one chunk; the rejections and the image count come with the first)."""
    by_image: dict[str, list[FaceRecord]] = {}
    for record in parsed.records:
        by_image.setdefault(record.image_ref, []).append(record)
    refs = list(by_image)
    size = max(1, int(chunk_images))
    for start in range(0, max(1, len(refs)), size):
        chunk = ParseResult(records=[r for ref in refs[start : start + size] for r in by_image[ref]])
        if start == 0:
            chunk.rejections, chunk.images = list(parsed.rejections), parsed.images
        yield chunk


class IngestSteps(Protocol):
    """How each step of an ingest runs; :func:`ingest_run` wires them, the same way for all.

    The ingest flow runs them as Prefect tasks (``tasks.ingest.PrefectSteps``: progress
    artifacts, a spawn pool, Dask when asked); :class:`LocalSteps` runs them in this process
    (tests, benchmarks, scripts). There is one wiring, so what the tests check is what the
    flow does.
    """

    def parse_tcs(self, tcs: str, settings: IngestSettings) -> Iterable[ParseResult]:
        """The TCS file or URL parsed in chunks of ``settings.chunk_images`` images (streamed:
        a chunk is read when the run asks for it)."""
        ...

    def start_parse_imfdb(self, root: str, settings: IngestSettings) -> Callable[[], ParseResult]:
        """Start parsing the IMFDB tree; the returned call waits for its result."""
        ...

    def download(self, records: Sequence[FaceRecord], settings: IngestSettings) -> DownloadReport:
        """Download (or find stored) every image the records name."""
        ...

    def hash_local(
        self, records: Sequence[FaceRecord], root: str, settings: IngestSettings
    ) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[Rejection]]:
        """:func:`local_files` of the records under ``root``."""
        ...

    def partition(
        self, shards: Sequence[Sequence[ImageJob]], staging: Path, settings: IngestSettings, first: int = 0
    ) -> Iterable[ShardResult]:
        """Partition every shard into ``staging`` (shard ``k`` numbered ``first + k``); results in any order."""
        ...

    def finalize(
        self, staging: Path, settings: IngestSettings, rejections: Sequence[Rejection], images: dict[str, int]
    ) -> dict[str, Any]:
        """:func:`finalize`: error log, summary, commit."""
        ...

    def phase(self, name: str) -> None:
        """Told each phase as it begins: ``download``, ``hash``, ``partition`` (and ``finalize``
        tells ``write`` and ``commit``)."""
        ...


def ingest_run(tcs: str | None, imfdb_root: str | None, settings: IngestSettings, steps: IngestSteps) -> dict[str, Any]:
    """The ingest pipeline: the one wiring of its steps, whoever runs them.

    Holds the output directory's lock throughout, first completes or clears what a killed
    run left there, parses both sources at once, downloads the TCS images (refused before
    any download when the image store cannot take files, stopped when no URL could connect
    at all), hashes the IMFDB crops, plans one job per distinct image, partitions the shards
    into staging and swaps the new dataset in whole.

    Args:
        tcs: TCS JSON Lines file or URL, or None.
        imfdb_root: IMFDB_final directory, or None.
        settings: Run settings.
        steps: How each step runs (:class:`LocalSteps`, or the flow's Prefect tasks).

    Returns:
        The summary written to summary.json.

    Raises:
        OutputError: The output directory or image store is busy, read-only or full.
        NothingDownloadedError: Not one TCS image URL could be reached.
    """
    with storage.output_lock(settings.out_dir, settings.lock_wait_s):
        storage.recover(settings.out_dir)
        collected = Collected()
        imfdb_result = steps.start_parse_imfdb(imfdb_root, settings) if imfdb_root else None
        if tcs:
            check_raw_dir(settings)
        chunks = iter(steps.parse_tcs(tcs, settings) if tcs else ())
        first_chunk = next(chunks, None)  # a TCS input that cannot be read fails here, before staging

        def partition(jobs: Sequence[ImageJob], staging: Path) -> None:
            steps.phase("partition")
            first, shards = collected.cut(jobs, settings.shard_size)
            for result in steps.partition(shards, staging, settings, first):
                collected.rejections += result.rejections

        with storage.staged(settings.out_dir, uuid.uuid4().hex[:8]) as staging:
            stored_any = False
            for parsed in itertools.chain([first_chunk] if first_chunk is not None else [], chunks):
                # One chunk at a time: its images downloaded, its faces planned and cropped,
                # so memory holds one chunk whatever the file's length.
                steps.phase("download")
                report = steps.download(parsed.records, settings)
                if not stored_any:
                    require_a_connection(report, settings.download)
                    stored_any = bool(report.results)
                partition(collected.add_downloaded("tcs", parsed, report), staging)
            if imfdb_result is not None and imfdb_root:
                parsed = imfdb_result()
                steps.phase("hash")
                partition(
                    collected.add("imfdb", parsed, *steps.hash_local(parsed.records, imfdb_root, settings)), staging
                )
            return steps.finalize(staging, settings, collected.rejections, collected.images)


class LocalSteps:
    """:class:`IngestSteps` in this process, with a forked worker pool for hashing and cropping.

    Sources may be given already parsed (``tcs``/``imfdb``): tests and benchmarks parse once
    and ingest many times. Use as a context manager (the pool lives as long as the block).

    Args:
        settings: Run settings (``worker_count`` sizes the pool).
        progress: ``progress(done, total)`` during downloads.
        on_phase: Told each phase as it begins: ``download``, ``hash``, ``partition``,
            ``write``, ``commit``.
        tcs: The TCS export, already parsed.
        imfdb: The IMFDB tree, already parsed.
    """

    def __init__(
        self,
        settings: IngestSettings,
        progress: Callable[[int, int], None] | None = None,
        on_phase: Callable[[str], None] | None = None,
        tcs: ParseResult | None = None,
        imfdb: ParseResult | None = None,
    ) -> None:
        self.progress = progress
        self.on_phase = on_phase or _no_phase
        self.parsed = {"tcs": tcs, "imfdb": imfdb}
        self._pools = worker_pool(settings.worker_count)
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalSteps:
        self.pool = self._pools.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._pools.__exit__(*exc)  # type: ignore[arg-type]

    def parse_tcs(self, tcs: str, settings: IngestSettings) -> Iterable[ParseResult]:
        given = self.parsed["tcs"]
        if given is not None:
            return chunked(given, settings.chunk_images)
        return iter_tcs(
            tcs,
            max_line_bytes=settings.max_line_bytes,
            max_bytes=settings.max_tcs_bytes,
            chunk_images=settings.chunk_images,
        )

    def start_parse_imfdb(self, root: str, settings: IngestSettings) -> Callable[[], ParseResult]:
        given = self.parsed["imfdb"]
        result = (
            given
            if given is not None
            else scan_imfdb(root, settings.max_line_bytes, self.pool, settings.max_annotation_bytes)
        )
        return lambda: result

    def download(self, records: Sequence[FaceRecord], settings: IngestSettings) -> DownloadReport:
        return download_images(records, settings, self.progress)

    def hash_local(
        self, records: Sequence[FaceRecord], root: str, settings: IngestSettings
    ) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[Rejection]]:
        return local_files(records, root, self.pool, settings.max_crop_bytes)

    def partition(
        self, shards: Sequence[Sequence[ImageJob]], staging: Path, settings: IngestSettings, first: int = 0
    ) -> Iterable[ShardResult]:
        args = [
            (s, staging / FACES_DIR, first + i, settings.partition, settings.validate) for i, s in enumerate(shards)
        ]
        if self.pool is None or len(args) <= 1:
            return [partition_shard(*a) for a in args]
        return list(self.pool.map(partition_shard, *zip(*args, strict=True)))

    def finalize(
        self, staging: Path, settings: IngestSettings, rejections: Sequence[Rejection], images: dict[str, int]
    ) -> dict[str, Any]:
        return finalize(staging, settings, rejections, images, self.on_phase)

    def phase(self, name: str) -> None:
        self.on_phase(name)


def run_ingest(
    tcs: ParseResult | None,
    imfdb: ParseResult | None,
    imfdb_root: str | os.PathLike[str] | None,
    settings: IngestSettings,
    progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """:func:`ingest_run` with :class:`LocalSteps` on sources parsed already (bench, scripts, tests).

    Args:
        tcs: Parsed TCS export (its images are downloaded), or None.
        imfdb: Parsed IMFDB tree, or None.
        imfdb_root: Root the IMFDB crop paths are made relative to.
        settings: Run settings.
        progress: ``progress(done, total)`` during downloads.
        on_phase: Told each phase as it begins: ``download``, ``hash``, ``partition``,
            ``write``, ``commit``.

    Raises:
        OutputError: The output directory is busy (another run), read-only or full.
    """
    root = os.fspath(imfdb_root) if imfdb is not None and imfdb_root is not None else None
    with LocalSteps(settings, progress, on_phase, tcs=tcs, imfdb=imfdb) as steps:
        return ingest_run("parsed TCS export" if tcs is not None else None, root, settings, steps)


def _no_phase(name: str) -> None:
    """Default ``on_phase``: phases are only reported to callers that ask."""


def concat(results: Iterable[ParseResult]) -> ParseResult:
    """Merge parse results (several TCS files, say)."""
    return ParseResult.merged(results)
