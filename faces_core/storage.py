"""The ingest output on disk: its layout and schema, the lock that lets one run write it, the
staging journal that swaps a new dataset in whole, recovery after a kill, and reading it.

Layout written by :func:`commit_dataset`::

    <out>/faces/source=<s>/bucket=<b>/part-<shard>.parquet
    <out>/errors.parquet
    <out>/summary.json
    <out>/.ingest.lock        held by the running ingest (see output_lock)

Every stage that reads the dataset (train, evaluate, the doctor) or writes a folder the same
way (annotate's lock) uses this module, not ingest's partition step: it is shared storage,
not a stage. A bucket is a partition and "at least N px" is one filter on ``min_side``
(:func:`read_faces`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pyarrow as pa
import pyarrow.dataset as ds

from faces_core.cancel import COMMIT_GUARD
from faces_core.files import flock_wait, fsync_dir
from faces_core.taxonomy import ATTRIBUTE_NAMES

log = logging.getLogger(__name__)


FACES_DIR = "faces"
ERRORS_FILE = "errors.parquet"
SUMMARY_FILE = "summary.json"

FACE_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),
        ("image_ref", pa.string()),
        ("image_sha256", pa.string()),
        ("item", pa.string()),
        ("subject", pa.string()),
        ("movie", pa.string()),
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("min_side", pa.int32()),
        ("split", pa.string()),
        *[(name, pa.string()) for name in ATTRIBUTE_NAMES],
        ("crop_format", pa.string()),
        ("crop", pa.binary()),
    ]
)
"""Columns stored in every part file. ``source`` and ``bucket`` come from the hive
directory names and appear as columns when read through :func:`read_faces`. x0..y1 are the
crop's box in pixels of the (EXIF-upright) source image; width/height are the crop's size."""

PARTITION_SCHEMA = pa.schema([("source", pa.string()), ("bucket", pa.string())])
"""Hive directory keys (``source=<s>/bucket=<b>``), declared rather than inferred from paths."""

DATASET_SCHEMA = pa.schema([*FACE_SCHEMA, *PARTITION_SCHEMA])
"""Columns of :func:`read_faces`: the part-file columns, then the hive keys."""


STAGING_PREFIX = ".staging-"
COMMIT_JOURNAL = ".commit"
"""Names the staging directory being moved into place; present only while a commit runs."""
LOCK_FILE = ".ingest.lock"
"""Held (``flock``) by the run that owns the output directory; holds that run's pid."""
_OLD_FACES = f".{FACES_DIR}.old"
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_ACCESS_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def staging_dir(out_dir: str | os.PathLike[str], run_id: str) -> Path:
    """A fresh staging directory beside the final outputs (same filesystem: rename is atomic)."""
    path = Path(out_dir) / f"{STAGING_PREFIX}{run_id}"
    if path.exists():
        shutil.rmtree(path)
    (path / FACES_DIR).mkdir(parents=True)
    return path


class OutputError(RuntimeError):
    """The output directory cannot take this run (read-only, full, or busy).

    The message names the directory and says what to do; the previous dataset there is
    left as it was.
    """


class OutputBusyError(OutputError):
    """Another ingest run holds the output directory's lock for longer than we may wait."""


def output_error(exc: OSError, out_dir: str | os.PathLike[str], stage: str = "ingest") -> OutputError | None:
    """Explain a write failure under ``out_dir`` as an :class:`OutputError`, if it is one.

    Only errors of the storage itself qualify (no space, quota, file size limit, read-only
    filesystem, permission denied); anything else returns None and should propagate as is.
    ``stage`` names the setting to change in the message (``annotate``: its ``--out``).
    """
    if exc.filename and not Path(os.fsdecode(exc.filename)).resolve().is_relative_to(Path(out_dir).resolve()):
        return None  # e.g. an unreadable input file: not the output directory's fault
    where = "ingest.out_dir in params.yaml (or --out-dir)" if stage == "ingest" else f"{stage}'s --out"
    kept = "the previous dataset is unchanged" if stage == "ingest" else "every shard committed so far is kept"
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.filename:
        cause += f": {os.fsdecode(exc.filename)}"
    if exc.errno in _SPACE_ERRNOS:
        return OutputError(
            f"output directory {out_dir} is full ({cause}): free some space there or point {where} at a "
            f"filesystem with room; {kept}"
        )
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return OutputError(
            f"output directory {out_dir} is not a directory ({cause}): a file is in the way; point {where} at a "
            "directory, or move the file"
        )
    if exc.errno in _ACCESS_ERRNOS:
        return OutputError(
            f"cannot write to output directory {out_dir} ({cause}): make it writable or point {where} at a "
            f"writable directory; {kept}"
        )
    return None


@contextlib.contextmanager
def output_lock(
    out_dir: str | os.PathLike[str], wait_s: float = 0.0, lock_file: str = LOCK_FILE, stage: str = "ingest"
) -> Iterator[Path]:
    """Hold the output directory for one run, so two runs never interleave their commits.

    A second run on the same ``out_dir`` waits up to ``wait_s`` seconds for the first to
    finish (a scheduled run queued behind a manual one), then gives up with a message
    naming the holder. The lock is an ``flock`` on ``<out_dir>/.ingest.lock``: the kernel
    drops it when its holder dies, even by SIGKILL, so a stale file never blocks a run.

    Args:
        out_dir: The output directory (created if missing).
        wait_s: Seconds to wait for a running ingest to finish; 0 refuses at once.
        lock_file: Name of the lock file in ``out_dir`` (each stage that writes there has its own).
        stage: The stage named in messages (``ingest``, ``annotate``): its params section
            holds ``lock_wait_s`` and its command takes the output flag.

    Yields:
        The lock file's path.

    Raises:
        OutputError: ``out_dir`` cannot be created or written (read-only, full).
        OutputBusyError: Another run still holds it after ``wait_s`` seconds.
    """
    out = Path(out_dir)
    path = out / lock_file
    flag = "--out-dir" if stage == "ingest" else "--out"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        _raise_output_error(exc, out)
    try:

        def say_we_wait() -> None:
            log.info("waiting up to %g s for another %s run (%s) to release %s", wait_s, stage, _lock_holder(fd), out)

        if not flock_wait(fd, wait_s, say_we_wait):
            raise OutputBusyError(
                f"another {stage} run ({_lock_holder(fd)}) is writing to {out}: wait for it to finish, or pass a "
                f"different {flag}, or raise {stage}.lock_wait_s (waited {wait_s:g} s)"
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError as exc:
            _raise_output_error(exc, out)
        yield path
    finally:
        os.close(fd)  # releases the flock


def _raise_output_error(exc: OSError, out: Path) -> NoReturn:
    explained = output_error(exc, out)
    if explained is None:
        raise exc
    raise explained from exc


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


@contextlib.contextmanager
def staged(out_dir: str | os.PathLike[str], run_id: str) -> Iterator[Path]:
    """A staging directory for one run that a failed run removes again.

    A storage failure under ``out_dir`` (disk full, read-only) is re-raised as an
    :class:`OutputError` that says what to do. Once the commit journal names this staging
    directory it is kept: :func:`recover` must be able to finish that commit.

    Raises:
        OutputError: Writing under ``out_dir`` failed for lack of space or permission.
    """
    out = Path(out_dir)
    try:
        staging = staging_dir(out, run_id)
    except OSError as exc:
        _raise_output_error(exc, out)
    try:
        yield staging
    except BaseException as exc:
        if not _journal_names(out, staging):
            discard_staging(staging)
        if isinstance(exc, OSError):
            _raise_output_error(exc, out)
        raise


def _journal_names(out: Path, staging: Path) -> bool:
    try:
        return (out / COMMIT_JOURNAL).read_text(encoding="utf-8").strip() == staging.name
    except OSError:
        return False


def discard_staging(staging: Path) -> None:
    """Remove an unfinished staging directory (a failed run), so it frees its space now."""
    shutil.rmtree(staging, ignore_errors=True)


def recover(out_dir: str | os.PathLike[str]) -> None:
    """Finish or undo what a killed run left in ``out_dir``, and drop stale staging.

    A run killed during :func:`commit_dataset` after its journal was written had a complete
    staging directory: the commit is rolled forward, so the outputs are all new. Killed
    before that, the previous outputs were never touched. Either way no mix of old and new
    files and no staging directory remains. Call it while holding :func:`output_lock`:
    another live run's staging would look stale.
    """
    out = Path(out_dir)
    if not out.exists():
        return
    journal = out / COMMIT_JOURNAL
    if journal.exists():
        name = journal.read_text(encoding="utf-8").strip()
        staging = out / name
        if name.startswith(STAGING_PREFIX) and "/" not in name and staging.is_dir():
            log.warning("completing the commit of %s interrupted by a killed run", staging)
            for _ in _roll_forward(out, staging):
                pass
        journal.unlink(missing_ok=True)
    final, old = out / FACES_DIR, out / _OLD_FACES
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)
    for stale in [*out.glob(f"{STAGING_PREFIX}*"), *out.glob(f"{COMMIT_JOURNAL}.tmp*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def commit_dataset(staging: Path, out_dir: str | os.PathLike[str]) -> Path:
    """Move a finished staging dataset into place, replacing the previous one.

    First a journal naming the staging directory is written atomically: that is the
    commit point. Then the error log, the summary and the faces directory are moved in by
    renames that :func:`recover` repeats after a kill, so readers find the old outputs or,
    once recovered, all of the new ones.
    """
    with COMMIT_GUARD:
        for _ in commit_steps(staging, out_dir):
            pass
    return Path(out_dir) / FACES_DIR


def commit_steps(staging: Path, out_dir: str | os.PathLike[str]) -> Iterator[str]:
    """:func:`commit_dataset` one step at a time, yielding each step's name once done.

    Stopping the iteration early leaves the same state a kill at that point would, which
    lets tests check that :func:`recover` completes every step.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{COMMIT_JOURNAL}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(staging.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / COMMIT_JOURNAL)
    fsync_dir(out)
    yield "journal"
    yield from _roll_forward(out, staging)


def _roll_forward(out: Path, staging: Path) -> Iterator[str]:
    """Idempotent moves of a journalled commit (each step checks what is already done)."""
    for name in (ERRORS_FILE, SUMMARY_FILE):
        if (staging / name).exists():
            os.replace(staging / name, out / name)
            yield name
    final, old, new = out / FACES_DIR, out / _OLD_FACES, staging / FACES_DIR
    if new.exists():
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            yield "faces-aside"
        new.rename(final)
        fsync_dir(out)
        yield "faces-in"
    shutil.rmtree(old, ignore_errors=True)
    yield "old-removed"
    (out / COMMIT_JOURNAL).unlink(missing_ok=True)
    fsync_dir(out)
    yield "journal-removed"
    shutil.rmtree(staging, ignore_errors=True)
    yield "staging-removed"


def read_faces(
    root: str | os.PathLike[str],
    min_side: int | None = None,
    split: str | None = None,
    source: str | None = None,
) -> ds.Dataset:
    """Open the faces dataset, optionally keeping faces whose shorter side is >= ``min_side``.

    Args:
        root: The ``faces`` directory (or the output dir that holds it).
        min_side: Keep faces at least this many px on their shorter side (the research
            scripts' cumulative "128 and up" lists are ``min_side=128``).
        split: Keep only ``train``, ``val`` or ``test``.
        source: Keep only ``tcs`` or ``imfdb``.

    Returns:
        A lazily filtered pyarrow dataset with ``source`` and ``bucket`` columns from the
        directory names. ``.to_table()`` or ``.to_batches()`` to read.
    """
    path = Path(root)
    if (path / FACES_DIR).is_dir():
        path = path / FACES_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"no faces dataset at {path}: run `faces ingest` first")
    dataset = faces_dataset(path)
    expr = None
    for condition in (
        None if min_side is None else ds.field("min_side") >= min_side,
        None if split is None else ds.field("split") == split,
        None if source is None else ds.field("source") == source,
    ):
        if condition is not None:
            expr = condition if expr is None else expr & condition
    return dataset if expr is None else dataset.filter(expr)


def faces_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    """The faces directory as a dataset with the full schema even when it holds no file.

    A run that rejects everything leaves an empty ``faces/``; inferring the schema from its
    (absent) files would give no columns at all and make every filter or summary fail.
    """
    partitioning = ds.partitioning(PARTITION_SCHEMA, flavor="hive")
    return ds.dataset(path, format="parquet", partitioning=partitioning, schema=DATASET_SCHEMA)
