"""The ingest pipeline as plain functions: parse -> download -> plan -> partition -> commit.

The Prefect flow (``flows/ingest.py``) calls these same steps through thin tasks;
:func:`run_ingest` chains them without Prefect for benchmarks and scripts. Every face a
source declares ends up exactly once either in the Parquet dataset or in the error log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from faces_core.download import DownloadReport, DownloadSettings, ImageStore, download_all
from faces_core.errors import Reason, Rejection, count_by_reason, redact_userinfo, write_errors
from faces_core.files import FileTooLargeError, write_json
from faces_core.ingest.partition import (
    ImageJob,
    PartitionSettings,
    ShardResult,
    partition_shard,
    plan_jobs,
    shard,
    summarize,
)
from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TCS_BYTES, MAX_TXT_BYTES
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.records import FaceRecord, ParseResult
from faces_core.storage import (
    ERRORS_FILE,
    FACES_DIR,
    SUMMARY_FILE,
    OutputError,
    commit_dataset,
    output_lock,
    recover,
    staged,
)
from faces_core.validate import MAX_CROP_BYTES, ValidateSettings, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Everything an ingest run needs besides its inputs (sections of params.yaml).

    ``lock_wait_s`` is how long a run waits for another run on the same ``out_dir`` to
    finish before giving up (see :func:`~faces_core.storage.output_lock`). The
    ``max_*_bytes`` caps refuse a larger TCS file, IMFDB annotation txt or IMFDB crop unread
    (``too_large``), so no input is ever held whole in memory past them.
    """

    raw_dir: str = "data/raw"
    out_dir: str = "data/processed"
    shard_size: int = 1000
    workers: int = 0
    max_line_bytes: int = MAX_LINE_BYTES
    max_tcs_bytes: int = MAX_TCS_BYTES
    max_annotation_bytes: int = MAX_TXT_BYTES
    max_crop_bytes: int = MAX_CROP_BYTES
    lock_wait_s: float = 300.0
    download: DownloadSettings = field(default_factory=DownloadSettings)
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)

    @property
    def worker_count(self) -> int:
        """Processes for partitioning: ``workers`` or, when 0, one per CPU core."""
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


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


def check_raw_dir(settings: IngestSettings) -> None:
    """Fail before any download when the image store cannot take files (a file in the way,
    read-only, full), with one line that says what to do.

    Raises:
        OutputError: naming ``raw_dir`` and the cause.
    """
    root = Path(settings.raw_dir) / "images"
    probe = root / f".write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)  # a full disk leaves the probe created but empty
        cause = f"{os.strerror(exc.errno) if exc.errno else exc}: {os.fsdecode(exc.filename or root)}"
        raise OutputError(
            f"cannot store downloaded images in {settings.raw_dir} ({cause}): point ingest.raw_dir in params.yaml "
            "(or --raw-dir) at a writable directory with room; nothing was downloaded"
        ) from exc


def image_store(settings: IngestSettings) -> ImageStore:
    """The content-addressed store of downloaded images under ``raw_dir``."""
    return ImageStore(Path(settings.raw_dir) / "images")


def download_images(
    records: Sequence[FaceRecord],
    settings: IngestSettings,
    progress: Callable[[int, int], None] | None = None,
) -> DownloadReport:
    """Download (or find already stored) every distinct image URL the records name."""
    urls = list(dict.fromkeys(r.image_ref for r in records))
    return download_all(urls, image_store(settings), settings.download, progress=progress)


class NothingDownloadedError(RuntimeError):
    """Every image URL failed to connect: the network or the proxy is the problem, not the data.

    A run that kept going would commit a dataset without a single downloaded face and exit 0
    (a demo under a dead ``http_proxy`` did); this stops it first, and the previous dataset
    stays in place.
    """


def require_a_connection(report: DownloadReport, settings: DownloadSettings) -> None:
    """Raise when URLs were tried and every one failed with ``connection_error``.

    A run in which only some URLs fail is normal (dead hosts, moved images) and goes on; each
    failure is in the error log.

    Raises:
        NothingDownloadedError: Naming the proxy in use, and what to check.
    """
    if report.results or not report.rejections:
        return
    if any(r.reason != Reason.CONNECTION_ERROR for r in report.rejections):
        return
    sample = report.rejections[0]
    raise NothingDownloadedError(
        f"none of the {len(report.rejections)} image URLs could be reached ({proxy_description(settings)}); "
        f"first failure: {sample.item}: {sample.message}. Check the network and the proxy (--proxy, "
        "http_proxy/https_proxy; `faces doctor` tests it); nothing was committed, the previous dataset is unchanged"
    )


def proxy_description(settings: DownloadSettings) -> str:
    """Which proxy image downloads go through, with any password hidden."""
    chosen = dict(settings.proxies or {})
    for key in ("http", "https"):
        for name in (f"{key}_proxy", f"{key.upper()}_PROXY"):
            if os.environ.get(name) and key not in chosen:
                chosen[key] = os.environ[name]
    general = {k: v for k, v in chosen.items() if k in ("http", "https") and v}
    if not general:
        return "no proxy: direct connections"
    return "through proxy " + ", ".join(f"{k}={redact_url(v)}" for k, v in sorted(general.items()))


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (``user:***@host``).

    A URL with a scheme goes through :func:`faces_core.errors.redact_userinfo`; a proxy given
    as bare ``user:pw@host:port`` (no scheme, which that redactor leaves alone in free text)
    is handled here.
    """
    if "://" in url:
        return redact_userinfo(url)
    userinfo, at, host = url.rpartition("@")
    if not at or "/" in userinfo:
        return url
    return f"{userinfo.split(':', 1)[0]}:***@{host}"


def downloaded_files(
    records: Sequence[FaceRecord], report: DownloadReport
) -> tuple[dict[str, tuple[str, str]], list[Rejection]]:
    """Map URLs to stored files; reject each face whose image could not be downloaded.

    A failed URL is rejected once per face it carried (item ``url#faceN``, the URL's reason),
    so every face can be found in the error log.
    """
    files = {url: (str(stored.path), stored.sha256) for url, stored in report.results.items()}
    failed = {r.item: r for r in report.rejections}
    rejections = [
        Rejection(rec.source, rec.item, "download", failed[rec.image_ref].reason, failed[rec.image_ref].message)
        for rec in records
        if rec.image_ref not in files and rec.image_ref in failed
    ]
    missing = [rec for rec in records if rec.image_ref not in files and rec.image_ref not in failed]
    if missing:
        raise RuntimeError(
            f"{len(missing)} faces have neither a file nor a download rejection (first: {missing[0].item})"
        )
    return files, rejections


def local_files(
    records: Sequence[FaceRecord],
    root: str | os.PathLike[str],
    pool: Executor | None = None,
    max_bytes: int = MAX_CROP_BYTES,
) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[Rejection]]:
    """Hash local images (IMFDB crops) and give each a path relative to ``root`` for Parquet.

    Nothing outside ``root`` is read, whatever the records say (the IMFDB parser already
    refuses such crops; this guards records from anywhere else). The reference is the path
    as the walk named it, relative to ``root``: a symlink inside the root keeps its own name
    rather than its target's, so ``image_ref`` is relative for every face.

    Args:
        records: Faces whose ``image_ref`` names a local file.
        root: The dataset root.
        pool: Checks and hashes the files in these worker processes, in chunks; the
            result is the same as without.
        max_bytes: A larger crop is ``too_large``, never read (``ingest.max_crop_bytes``).

    Returns:
        image_ref -> (path, sha256) for every readable image; image_ref -> path relative to
        ``root``; and one rejection per face whose image lies outside the root
        (``path_outside_root``), resolves outside it through a symlink
        (``symlink_outside_root``) or cannot be read (``unreadable_file``).
    """
    unique = list(dict.fromkeys(r.image_ref for r in records))
    chunks = [unique[i : i + _HASH_CHUNK] for i in range(0, len(unique), _HASH_CHUNK)]
    roots = [os.fspath(root)] * len(chunks)
    caps = [max_bytes] * len(chunks)
    refs: dict[str, str] = {}
    refused: dict[str, tuple[Reason, str]] = {}
    files: dict[str, tuple[str, str]] = {}
    for chunk, outcomes in zip(
        chunks, (pool.map if pool is not None else map)(_check_and_hash, chunks, roots, caps), strict=True
    ):
        for ref, outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, _Refused):
                refused[ref] = (outcome.reason, outcome.message)
            else:
                refs[ref], files[ref] = outcome[0], (ref, outcome[1])
    rejections = [
        Rejection(r.source, r.item, "validate", *refused[r.image_ref]) for r in records if r.image_ref in refused
    ]
    return files, refs, rejections


_HASH_CHUNK = 500
"""Files per job in a pool: big enough that pickling a chunk costs little next to reading
it, small enough that the workers finish together."""


@dataclass(frozen=True, slots=True)
class _Refused:
    reason: Reason
    message: str


def _check_and_hash(
    paths: Sequence[str], root: str, max_bytes: int = MAX_CROP_BYTES
) -> list[tuple[str, str] | _Refused]:
    """For each path: (path relative to ``root``, sha256), or why it is not read.

    The root checks run in the same worker as the hashing, so a pool does both in parallel
    (in the parent they were a tenth of an IMFDB ingest); the outcome is the same anywhere.
    """
    resolver = _RootPaths(root)
    outcomes: list[tuple[str, str] | _Refused] = []
    for ref in paths:
        relative = resolver.relative(ref)
        if relative is None:
            outcomes.append(_Refused(Reason.PATH_OUTSIDE_ROOT, f"{ref} is not under the dataset root {root}; not read"))
            continue
        target = resolver.escapes(ref)
        if target is not None:
            outcomes.append(
                _Refused(Reason.SYMLINK_OUTSIDE_ROOT, f"{relative} links to {target!r} outside the root; not read")
            )
            continue
        try:
            outcomes.append((relative, sha256_file(ref, max_bytes)))
        except FileTooLargeError as exc:
            outcomes.append(_Refused(Reason.TOO_LARGE, f"{relative}: {exc} (ingest.max_crop_bytes); not read"))
        except OSError as exc:
            outcomes.append(_Refused(Reason.UNREADABLE_FILE, f"cannot read {relative}: {exc.strerror or exc}"))
    return outcomes


class _RootPaths:
    """Where paths under one root lead, resolving each folder once (a walk repeats folders).

    ``os.path.realpath`` lstats every component of every path: for 17,000 IMFDB crops that
    was most of the hashing phase. A path whose last component is not a link (nor ``.`` or
    ``..``) resolves to its folder's real path plus its name, so folders are resolved once
    per folder as written (``..`` inside it included, which only ``realpath`` may resolve,
    as a link may precede it) and cached; links are resolved in full. Below-the-root tests
    are string-prefix tests on normalised paths, which is what ``commonpath`` computes.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.abs_root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def realpath(self, path: str) -> str:
        """``os.path.realpath(path)``, with the folder's resolution cached."""
        folder, name = os.path.split(path)
        if name in ("", ".", "..") or os.path.islink(path):
            return os.path.realpath(path)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder or os.curdir)
        return os.path.join(real_folder, name)

    def relative(self, ref: str) -> str | None:
        """``ref`` relative to the root with ``/`` separators, or None when it is not below it.

        Paths are compared as written first (so a link keeps its own name), then resolved
        (for a root given through a symlink while the records name the real folder).
        """
        below = _below(os.path.abspath(ref), self.abs_root)
        if below is None:
            below = _below(self.realpath(ref), self.real_root)
        return None if below is None else below.replace(os.sep, "/")

    def escapes(self, ref: str) -> str | None:
        """Where ``ref`` really leads when that is outside the root, else None (as :func:`~faces_core.ingest.sources.imfdb.escapes_root`)."""
        target = self.realpath(ref)
        return None if target == self.real_root or _below(target, self.real_root) is not None else target


def _below(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` when strictly below it (both normalised absolute paths)."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path[len(prefix) :] if path.startswith(prefix) and len(path) > len(prefix) else None


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
    write_errors(rejections, staging / ERRORS_FILE, timestamps=False)
    write_json(summary, staging / SUMMARY_FILE)
    phase("commit")
    commit_dataset(staging, settings.out_dir)
    log.info(
        "ingest: %d faces kept, %d rejections %s", summary["faces"], summary["rejections"], count_by_reason(rejections)
    )
    return summary


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool of ``workers`` processes, or None for one (work runs in the caller).

    Used outside Prefect (bench, scripts): forked workers start in milliseconds. The flow's
    tasks use their own spawn pool instead (forking a process that runs Prefect's threads is
    not safe).
    """
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


@dataclass(slots=True)
class Collected:
    """Faces of every source with the local file of each image, ready for :func:`plan_jobs`."""

    records: list[FaceRecord] = field(default_factory=list)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)

    def add_downloaded(self, source: str, parsed: ParseResult, report: DownloadReport) -> None:
        """Add a source whose images were downloaded (faces of failed URLs become rejections).

        A URL with a password in it is stored in the dataset's ``image_ref`` with the password
        hidden (face ids still come from the URL as given, so they do not change).
        """
        files, failed = downloaded_files(parsed.records, report)
        refs = {url: redact_userinfo(url) for url in files if "@" in url}
        self._add(source, parsed, files, refs, failed)

    def add_local(
        self,
        source: str,
        parsed: ParseResult,
        files: dict[str, tuple[str, str]],
        refs: dict[str, str],
        rejections: Sequence[Rejection] = (),
    ) -> None:
        """Add a source whose images are local files (hashed by :func:`local_files`)."""
        self._add(source, parsed, files, refs, list(rejections))

    def _add(
        self,
        source: str,
        parsed: ParseResult,
        files: dict[str, tuple[str, str]],
        refs: dict[str, str],
        rejections: list[Rejection],
    ) -> None:
        self.records += parsed.records
        self.files.update(files)
        self.refs.update(refs)
        self.rejections += parsed.rejections + rejections
        self.images[source] = parsed.images

    def plan(self) -> list[ImageJob]:
        """Group faces by image; duplicate images join the rejections."""
        jobs, duplicates = plan_jobs(self.records, self.files, self.refs)
        self.rejections += duplicates
        return jobs


class IngestSteps(Protocol):
    """How each step of an ingest runs; :func:`ingest_run` wires them, the same way for all.

    The ingest flow runs them as Prefect tasks (``tasks.ingest.PrefectSteps``: progress
    artifacts, a spawn pool, Dask when asked); :class:`LocalSteps` runs them in this process
    (tests, benchmarks, scripts). There is one wiring, so what the tests check is what the
    flow does.
    """

    def start_parse_tcs(self, tcs: str, settings: IngestSettings) -> Callable[[], ParseResult]:
        """Start parsing the TCS file or URL; the returned call waits for its result."""
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
        self, shards: Sequence[Sequence[ImageJob]], staging: Path, settings: IngestSettings
    ) -> Iterable[ShardResult]:
        """Partition every shard into ``staging``; results in any order."""
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
    with output_lock(settings.out_dir, settings.lock_wait_s):
        recover(settings.out_dir)
        collected = Collected()
        tcs_result = steps.start_parse_tcs(tcs, settings) if tcs else None
        imfdb_result = steps.start_parse_imfdb(imfdb_root, settings) if imfdb_root else None
        if tcs_result is not None:
            check_raw_dir(settings)
            parsed = tcs_result()
            steps.phase("download")
            report = steps.download(parsed.records, settings)
            require_a_connection(report, settings.download)
            collected.add_downloaded("tcs", parsed, report)
        if imfdb_result is not None and imfdb_root:
            parsed = imfdb_result()
            steps.phase("hash")
            collected.add_local("imfdb", parsed, *steps.hash_local(parsed.records, imfdb_root, settings))
        jobs = collected.plan()
        steps.phase("partition")
        with staged(settings.out_dir, uuid.uuid4().hex[:8]) as staging:
            for result in steps.partition(shard(jobs, settings.shard_size), staging, settings):
                collected.rejections += result.rejections
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

    def start_parse_tcs(self, tcs: str, settings: IngestSettings) -> Callable[[], ParseResult]:
        given = self.parsed["tcs"]
        result = (
            given
            if given is not None
            else read_tcs(tcs, max_line_bytes=settings.max_line_bytes, max_bytes=settings.max_tcs_bytes)
        )
        return lambda: result

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
        self, shards: Sequence[Sequence[ImageJob]], staging: Path, settings: IngestSettings
    ) -> Iterable[ShardResult]:
        args = [(s, staging / FACES_DIR, i, settings.partition, settings.validate) for i, s in enumerate(shards)]
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
    merged = ParseResult()
    for result in results:
        merged.extend(result)
    return merged
