"""Crop every valid face, bucket it by size, and write a hive-partitioned Parquet dataset.

Layout written by :func:`commit_dataset`::

    <out>/faces/source=<s>/bucket=<b>/part-<shard>.parquet
    <out>/errors.parquet
    <out>/summary.json
    <out>/.ingest.lock        held by the running ingest (see output_lock)

The research scripts kept size buckets as Python lists of paths ("all faces of at least
128 px" was a cumulative list). Here a bucket is a partition and "at least N px" is one
filter on ``min_side`` (:func:`read_faces`). Each shard of images is processed
independently (one Prefect task, or one process) and writes its own part files into a
staging directory that replaces the previous dataset in one rename, so a killed run never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import itertools
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from faces_core.cancel import COMMIT_GUARD
from faces_core.errors import Reason, Rejection
from faces_core.files import flock_wait, fsync_dir, open_regular
from faces_core.ingest.validate import (
    DuplicateTracker,
    ImageRejected,
    ValidateSettings,
    check_decodes,
    check_labels,
    clip_box,
    exif_orientation,
    load_upright_rgb,
    open_image,
    stored_as_is,
    upright_box,
)
from faces_core.records import Box, FaceRecord, face_id
from faces_core.splits import SplitFractions, assign_split
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


@dataclass(frozen=True, slots=True)
class PartitionSettings:
    """Knobs of the partition step (``partition`` section of params.yaml).

    Attributes:
        bucket_edges: Ascending min-side edges in px; faces below the first are ``too_small``,
            the last bucket is open-ended.
        margin: Fraction of the box size added on every side before cropping (clipped to
            the image).
        jpeg_quality: Quality for re-encoded JPEG crops (PNG sources stay PNG).
        split: Train/val/test fractions of split groups (actors, images).
        seed: Seed of the split hash.
    """

    bucket_edges: tuple[int, ...] = (50, 100, 128, 200, 224)
    margin: float = 0.0
    jpeg_quality: int = 95
    split: SplitFractions = field(default_factory=SplitFractions)
    seed: int = 0

    def __post_init__(self) -> None:
        edges = tuple(int(e) for e in self.bucket_edges)
        if not edges or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] <= 0:
            raise ValueError(f"partition.bucket_edges must be positive and ascending, got {list(self.bucket_edges)}")
        if self.margin < 0:
            raise ValueError(f"partition.margin must be >= 0, got {self.margin}")
        object.__setattr__(self, "bucket_edges", edges)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Names of the buckets for ``edges``: ``[50, 100, 128]`` -> ``50-100, 100-128, 128-inf``."""
    uppers = [*list(edges[1:]), "inf"]
    return [f"{lo}-{hi}" for lo, hi in zip(edges, uppers, strict=True)]


def bucket_for(min_side: float, edges: Sequence[int]) -> str | None:
    """Bucket name for a crop's shorter side, or None when it is below the first edge."""
    i = bisect.bisect_right(edges, min_side) - 1
    return None if i < 0 else bucket_labels(edges)[i]


@dataclass(frozen=True, slots=True)
class ImageJob:
    """One image to open and the faces annotated on it.

    Attributes:
        path: Local file to open (downloaded file or IMFDB crop).
        ref: Portable reference written to Parquet (URL, or path relative to the IMFDB root).
        sha256: Content hash of the file.
        records: Faces on this image, in source order.
    """

    path: str
    ref: str
    sha256: str
    records: tuple[FaceRecord, ...]


def plan_jobs(
    records: Iterable[FaceRecord],
    files: dict[str, tuple[str, str]],
    refs: dict[str, str] | None = None,
) -> tuple[list[ImageJob], list[Rejection]]:
    """Group faces by image and reject faces whose image duplicates an earlier one.

    Args:
        records: Parsed faces of any source.
        files: image_ref -> (local path, sha256) for every image that is available locally.
            Faces whose image is missing here must already have been rejected upstream.
        refs: image_ref -> portable reference for Parquet (defaults to image_ref).

    Returns:
        Jobs sorted by portable reference, and ``duplicate_image`` rejections.
    """
    by_image: dict[str, list[FaceRecord]] = defaultdict(list)
    for record in records:
        by_image[record.image_ref].append(record)
    refs = refs or {}
    candidates = sorted((refs.get(image_ref, image_ref), image_ref) for image_ref in by_image if image_ref in files)
    tracker = DuplicateTracker()
    jobs: list[ImageJob] = []
    rejections: list[Rejection] = []
    for ref, image_ref in candidates:
        path, sha = files[image_ref]
        first = tracker.add(ref, sha)
        faces = tuple(by_image[image_ref])
        if first is not None:
            rejections.extend(
                Rejection(
                    r.source, r.item, "validate", Reason.DUPLICATE_IMAGE, f"image {ref} has the same content as {first}"
                )
                for r in faces
            )
            continue
        jobs.append(ImageJob(path=path, ref=ref, sha256=sha, records=faces))
    return jobs, rejections


def shard(jobs: Sequence[ImageJob], size: int) -> list[list[ImageJob]]:
    """Cut jobs into consecutive shards of at most ``size`` images (a Prefect task each)."""
    size = max(1, int(size))
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


@dataclass(slots=True)
class ShardResult:
    """What one shard produced: kept face rows written to disk and rejected faces."""

    kept: int = 0
    files: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _expand(box: Box, margin: float, width: int, height: int) -> Box:
    dx, dy = box.width * margin, box.height * margin
    return Box(max(0.0, box.x0 - dx), max(0.0, box.y0 - dy), min(width, box.x1 + dx), min(height, box.y1 + dy))


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _crop_rows(
    job: ImageJob, settings: PartitionSettings, vsettings: ValidateSettings
) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Read one image once and turn each of its faces into a row or a rejection.

    The file is read into memory once: its header is checked, its pixels decoded from those
    bytes, and a whole-image crop keeps them as they are. When every face of the image is
    the whole image (IMFDB's crops), two shortcuts apply that change no outcome:

    * an image smaller than the smallest bucket is ``too_small`` from its header alone,
      since its pixels would be dropped whatever they hold (a third of IMFDB's crops);
    * an upright RGB JPEG (:func:`~faces_core.ingest.validate.stored_as_is`) is stored as
      its own bytes, so its pixels are only checked to decode
      (:func:`~faces_core.ingest.validate.check_decodes`), not converted.
    """
    rows: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    try:
        data = _read(job.path)
        image = open_image(job.path, vsettings, data)
    except ImageRejected as exc:
        return rows, [_portable(exc, job).to_rejection(r.source, r.item) for r in job.records]
    whole_faces = all(record.box is None for record in job.records)
    orientation = exif_orientation(image)  # for boxes drawn on the stored pixels (validate.box_frame)
    # The file's bytes are a valid crop of the whole image only when they are what a viewer shows.
    stored = data if stored_as_is(image) else None
    try:
        if whole_faces and min(image.size) < settings.bucket_edges[0]:
            image.close()
            width, height = image.size
            return rows, _too_small_rows(job, width, height, settings)
        if whole_faces and stored is not None:
            fmt = "jpeg"
            width, height = check_decodes(image, job.path)
            decoded: Image.Image | None = None
        else:
            result = load_upright_rgb(image, job.path)
            decoded, width, height = result.image, *result.image.size
            fmt = "jpeg" if result.format == "JPEG" else "png"
    except ImageRejected as exc:
        return rows, [_portable(exc, job).to_rejection(r.source, r.item) for r in job.records]
    for record in job.records:
        labels, bad_labels = _checked_labels(record)
        rejections.extend(bad_labels)
        try:
            box = _face_box(record, width, height, vsettings, orientation)
        except ImageRejected as exc:
            rejections.append(exc.to_rejection(record.source, record.item))
            continue
        crop_box = _expand(box, settings.margin, width, height)
        x0, y0 = round(crop_box.x0), round(crop_box.y0)
        x1, y1 = max(x0 + 1, round(crop_box.x1)), max(y0 + 1, round(crop_box.y1))
        cw, ch = x1 - x0, y1 - y0
        bucket = bucket_for(min(cw, ch), settings.bucket_edges)
        if bucket is None:
            rejections.append(_too_small(record, cw, ch, settings))
            continue
        whole = (x0, y0, x1, y1) == (0, 0, width, height)
        if whole and stored is not None:
            crop_bytes = stored  # already the face: keep the original bytes
        else:
            assert decoded is not None  # stored is None unless the image was kept as is
            crop_bytes = _encode(decoded.crop((x0, y0, x1, y1)), fmt, settings.jpeg_quality)
        rows.append(
            {
                "bucket": bucket,
                "face_id": face_id(record.source, job.ref, record.box),
                "image_ref": job.ref,
                "image_sha256": job.sha256,
                "item": record.item,
                "subject": record.subject,
                "movie": record.movie,
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "width": cw,
                "height": ch,
                "min_side": min(cw, ch),
                "split": assign_split(record.split_key or job.ref, settings.split, settings.seed),
                **{name: labels.get(name) for name in ATTRIBUTE_NAMES},
                "crop_format": fmt,
                "crop": crop_bytes,
            }
        )
    return rows, rejections


def _portable(exc: ImageRejected, job: ImageJob) -> ImageRejected:
    """``exc`` naming the image by its portable reference, not this machine's file path.

    The error log is part of a DVC output: a message holding ``/home/me/checkout/...`` (or the
    raw store's path of a download) made the same inputs give different bytes in every clone.
    """
    if job.path == job.ref or job.path not in exc.message:
        return exc
    return ImageRejected(exc.reason, exc.message.replace(job.path, job.ref))


def _read(path: str) -> bytes:
    try:  # a FIFO or device as a crop is refused unopened (it would block or never end)
        with open_regular(path) as f:  # not Path(): a path object per crop is measurable at 15,000 crops
            return f.read()
    except OSError as exc:
        raise ImageRejected(Reason.UNREADABLE_FILE, f"{path}: {exc.strerror or exc}") from exc


def _checked_labels(record: FaceRecord) -> tuple[dict[str, str | None], list[Rejection]]:
    """The record's labels without those outside the taxonomy, and one rejection per such label."""
    bad = set(check_labels(record.labels))
    rejections = [
        Rejection(record.source, record.item, "validate", Reason.UNKNOWN_LABEL, f"{a}={v!r} is not in the taxonomy")
        for a, v in sorted(bad)
    ]
    return {k: v for k, v in record.labels.items() if (k, v) not in bad}, rejections


def _too_small(record: FaceRecord, width: int, height: int, settings: PartitionSettings) -> Rejection:
    return Rejection(
        record.source,
        record.item,
        "partition",
        Reason.TOO_SMALL,
        f"crop is {width}x{height} px; the smallest bucket starts at {settings.bucket_edges[0]} px",
    )


def _too_small_rows(job: ImageJob, width: int, height: int, settings: PartitionSettings) -> list[Rejection]:
    """Rejections of an image whose every face is the whole image and below the smallest bucket."""
    rejections: list[Rejection] = []
    for record in job.records:
        rejections.extend(_checked_labels(record)[1])
        rejections.append(_too_small(record, width, height, settings))
    return rejections


def _face_box(
    record: FaceRecord, width: int, height: int, vsettings: ValidateSettings, orientation: int | None = 1
) -> Box:
    if record.box is None:
        return Box(0.0, 0.0, float(width), float(height))
    declared = (record.image_width, record.image_height) if record.image_width and record.image_height else None
    box = upright_box(record.box, declared, orientation, (width, height), vsettings.box_frame)
    return clip_box(box, width, height, vsettings)


def partition_shard(
    jobs: Sequence[ImageJob],
    staging: str | os.PathLike[str],
    shard_index: int,
    settings: PartitionSettings,
    vsettings: ValidateSettings,
) -> ShardResult:
    """Validate, crop and bucket one shard of images; write its part files into ``staging``.

    Args:
        jobs: Images of this shard (from :func:`plan_jobs`).
        staging: Dataset root being built (``.../faces`` of a staging directory).
        shard_index: Used in part file names so shards never overwrite each other.
        settings: Partition settings.
        vsettings: Validation settings.

    Returns:
        Count of kept faces, files written and rejections (validate/partition stage).
    """
    result = ShardResult()
    by_partition: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        rows, rejections = _crop_rows(job, settings, vsettings)
        result.rejections.extend(rejections)
        source = job.records[0].source
        for row in rows:
            by_partition[(source, row.pop("bucket"))].append(row)
    for (source, bucket), rows in sorted(by_partition.items()):
        rows.sort(key=lambda r: r["face_id"])
        directory = Path(staging) / f"source={source}" / f"bucket={bucket}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{shard_index:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=FACE_SCHEMA), path, compression="zstd")
        result.files.append(str(path))
        result.kept += len(rows)
    return result


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
    dataset = _faces_dataset(path)
    expr = None
    for condition in (
        None if min_side is None else ds.field("min_side") >= min_side,
        None if split is None else ds.field("split") == split,
        None if source is None else ds.field("source") == source,
    ):
        if condition is not None:
            expr = condition if expr is None else expr & condition
    return dataset if expr is None else dataset.filter(expr)


def _faces_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    """The faces directory as a dataset with the full schema even when it holds no file.

    A run that rejects everything leaves an empty ``faces/``; inferring the schema from its
    (absent) files would give no columns at all and make every filter or summary fail.
    """
    partitioning = ds.partitioning(PARTITION_SCHEMA, flavor="hive")
    return ds.dataset(path, format="parquet", partitioning=partitioning, schema=DATASET_SCHEMA)


def summarize(
    out_faces: str | os.PathLike[str],
    rejections: Sequence[Rejection],
    images: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Counts per source, bucket, split, label value and rejection reason for summary.json."""
    table = _faces_dataset(out_faces).to_table(columns=["source", "bucket", "split", *ATTRIBUTE_NAMES])
    frame = table.to_pylist()
    by_source: dict[str, Any] = {}
    for row in frame:
        entry = by_source.setdefault(
            str(row["source"]),
            {"faces": 0, "buckets": Counter(), "splits": Counter(), "labels": defaultdict(Counter)},
        )
        entry["faces"] += 1
        entry["buckets"][str(row["bucket"])] += 1
        entry["splits"][row["split"]] += 1
        for name in ATTRIBUTE_NAMES:
            if row[name] is not None:
                entry["labels"][name][row[name]] += 1
    rejected: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rejections:
        rejected[r.source][str(r.reason)] += 1
    summary: dict[str, Any] = {
        "faces": len(frame),
        "rejections": sum(sum(counts.values()) for counts in rejected.values()),
        "sources": {},
    }
    # A source that was read but kept and rejected nothing still gets its (zero) entry.
    for source in sorted(set(by_source) | set(rejected) | set(images or {})):
        entry = by_source.get(source, {"faces": 0, "buckets": {}, "splits": {}, "labels": {}})
        summary["sources"][source] = {
            "images": (images or {}).get(source),
            "faces": entry["faces"],
            "buckets": dict(sorted(entry["buckets"].items(), key=lambda kv: int(kv[0].split("-")[0]))),
            "splits": dict(sorted(entry["splits"].items())),
            "labels": {k: dict(sorted(v.items())) for k, v in sorted(entry["labels"].items())},
            "rejected": dict(rejected[source].most_common()),
        }
    return summary
