"""Annotation outputs: Parquet parts appended per run, committed one shard at a time.

Layout of an output folder::

    OUT/annotations/part-<run>-<shard>.parquet   one row per face (ANNOTATION_SCHEMA)
    OUT/files/part-<run>-<shard>.parquet         one row per file handled (FILE_SCHEMA)
    OUT/errors/part-<run>-<shard>.parquet        the error log of that shard (faces_core.errors)
    OUT/.annotate.lock                           held by the running annotate

A part is never rewritten. Each shard writes its parts to hidden temporary names, then
renames them into place, the ``files`` part last: the ``files`` part is the commit mark of
the shard. :func:`recover` (run under the lock before each run) deletes temporaries and any
``annotations``/``errors`` part whose ``files`` part is missing, so a run killed at any moment
leaves either a whole shard or nothing of it, and the next run redoes only the missing
shards. :func:`read_annotations` gives, per file, the rows of the latest run that handled it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from faces_core.errors import ERROR_SCHEMA, Reason, Rejection, rejections_to_table
from faces_core.files import fsync_dir, write_atomic_with
from faces_core.storage import output_lock as _output_lock
from faces_core.taxonomy import ATTRIBUTE_NAMES

log = logging.getLogger(__name__)

ANNOTATIONS_DIR: Final = "annotations"
FILES_DIR: Final = "files"
ERRORS_DIR: Final = "errors"
LOCK_FILE: Final = ".annotate.lock"
OUTPUT_ENTRIES: Final = (ANNOTATIONS_DIR, FILES_DIR, ERRORS_DIR, "drawn", "coco.json")
"""What an annotate run creates directly under its output folder (parts, ``--draw``, ``--export``)."""
_TMP_PREFIX: Final = ".tmp-"

ANNOTATION_SCHEMA: Final = pa.schema(
    [
        ("file", pa.string()),
        ("sha256", pa.string()),
        ("kind", pa.string()),
        ("frame_index", pa.int32()),
        ("timestamp_s", pa.float64()),
        ("face", pa.int32()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("confidence", pa.float32()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        *[(name, pa.string()) for name in ATTRIBUTE_NAMES],
        *[(f"{name}_probability", pa.float32()) for name in ATTRIBUTE_NAMES],
        ("model_version", pa.string()),
        ("detector", pa.string()),
        ("run_id", pa.string()),
        ("annotated_at", pa.timestamp("us", tz="UTC")),
    ]
)
"""One row per face. Box ``x0 y0 x1 y1`` in pixels of the upright image (or video frame);
``landmarks`` are x, y pairs of left eye, right eye, nose, mouth left, mouth right;
``frame_index`` and ``timestamp_s`` are 0 and 0.0 for images; ``face`` numbers the faces of a
frame left to right. Attribute columns are null when no model was used or the model has no
head for that attribute."""

FILE_SCHEMA: Final = pa.schema(
    [
        ("file", pa.string()),
        ("sha256", pa.string()),
        ("kind", pa.string()),
        ("size_bytes", pa.int64()),
        ("status", pa.string()),
        ("faces", pa.int32()),
        ("frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("model_version", pa.string()),
        ("detector", pa.string()),
        ("run_id", pa.string()),
        ("annotated_at", pa.timestamp("us", tz="UTC")),
    ]
)
"""One row per file handled by a run: ``status`` is ``ok`` (decoded and searched; ``faces``
may be 0) or ``error`` (``reason`` and ``message`` as in the error log)."""

RETRIED_REASONS: Final = frozenset({Reason.UNREADABLE_FILE})
"""Failures that may be gone next time (permissions): never skipped. A file that changes (an
empty file filled by a copy) has a new hash and is annotated anyway."""


def output_lock(out: str | os.PathLike[str], wait_s: float = 0.0) -> contextlib.AbstractContextManager[Path]:
    """Hold ``OUT/.annotate.lock`` for one run (ingest's ``flock``: released even by SIGKILL).

    Raises:
        faces_core.storage.OutputError: ``out`` cannot be written.
        faces_core.storage.OutputBusyError: Another annotate run holds it past ``wait_s``.
    """
    return _output_lock(out, wait_s, lock_file=LOCK_FILE, stage="annotate")


def part_name(run_id: str, shard: int) -> str:
    """File name of a shard's parts (the same in all three folders)."""
    return f"part-{run_id}-{shard:05d}.parquet"


def write_part(table: pa.Table, out: str | os.PathLike[str], folder: str, name: str) -> Path:
    """Write one Parquet part: temporary name, fsync, then rename into ``OUT/folder/name``."""
    tmp_name = f"{_TMP_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}"
    write = partial(pq.write_table, table, compression="zstd")
    return write_atomic_with(Path(out) / folder / name, lambda tmp: write(where=tmp), durable=True, tmp_name=tmp_name)


def commit_shard(
    out: str | os.PathLike[str],
    name: str,
    faces: Sequence[dict[str, Any]],
    files: Sequence[dict[str, Any]],
    rejections: Sequence[Rejection],
    timestamps: bool = True,
) -> list[Path]:
    """Commit a shard's rows: faces and errors parts first, the files part (the mark) last.

    Nothing is written when ``files`` is empty (every file of the shard was skipped).
    ``timestamps=False`` leaves the error part's ``time`` null (a reproducible run).

    Returns:
        The parts written.
    """
    if not files:
        return []
    written = []
    if faces:
        written.append(
            write_part(pa.Table.from_pylist(list(faces), schema=ANNOTATION_SCHEMA), out, ANNOTATIONS_DIR, name)
        )
    if rejections:
        written.append(write_part(rejections_to_table(rejections, timestamps), out, ERRORS_DIR, name))
    written.append(write_part(pa.Table.from_pylist(list(files), schema=FILE_SCHEMA), out, FILES_DIR, name))
    fsync_dir(Path(out) / FILES_DIR)
    return written


def committed_parts(out: str | os.PathLike[str]) -> list[str]:
    """Names of the committed shards in ``out`` (their ``files`` parts), sorted."""
    directory = Path(out) / FILES_DIR
    return sorted(p.name for p in directory.glob("part-*.parquet")) if directory.is_dir() else []


def recover(out: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed run left half done: temporaries and parts of uncommitted shards.

    Call it while holding the output lock (another live run's temporaries would look stale).

    Returns:
        The paths removed.
    """
    root = Path(out)
    committed = {p.name for p in (root / FILES_DIR).glob("part-*.parquet")}
    removed: list[Path] = []
    for folder in (ANNOTATIONS_DIR, FILES_DIR, ERRORS_DIR):
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            stale = path.name.startswith(_TMP_PREFIX) or (folder != FILES_DIR and path.name not in committed)
            if stale and path.is_file():
                path.unlink()
                removed.append(path)
    if removed:
        log.warning("removed %d parts of shards a killed run had not committed: they are redone", len(removed))
    return removed


def _read(out: str | os.PathLike[str], folder: str, schema: pa.Schema) -> pa.Table:
    parts = sorted((Path(out) / folder).glob("part-*.parquet"))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(pq.read_table(p, schema=schema) for p in parts)


def read_files(out: str | os.PathLike[str]) -> pa.Table:
    """Every file row of every run (FILE_SCHEMA), oldest part first."""
    return _read(out, FILES_DIR, FILE_SCHEMA)


def read_all_errors(out: str | os.PathLike[str]) -> list[Rejection]:
    """Every error-log row of every run."""
    return [Rejection(**row) for row in _read(out, ERRORS_DIR, ERROR_SCHEMA).to_pylist()]


def done_keys(out: str | os.PathLike[str], model_version: str, detector: str) -> dict[str, set[str]]:
    """file -> content hashes already handled with this model and detector (to be skipped).

    Files that failed for a reason that may pass (:data:`RETRIED_REASONS`) are not included.
    """
    table = read_files(out).select(["file", "sha256", "reason", "model_version", "detector"])
    done: dict[str, set[str]] = {}
    for row in table.to_pylist():
        if row["sha256"] is None or row["model_version"] != model_version or row["detector"] != detector:
            continue
        if row["reason"] is not None and row["reason"] in RETRIED_REASONS:
            continue
        done.setdefault(row["file"], set()).add(row["sha256"])
    return done


def latest_files(out: str | os.PathLike[str]) -> pa.Table:
    """The latest row per file across runs (by ``annotated_at``, then run id), sorted by file."""
    table = read_files(out)
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(
        table, sort_keys=[("file", "ascending"), ("annotated_at", "descending"), ("run_id", "descending")]
    )
    table = table.take(order)
    files = table.column("file").to_pylist()
    keep = [i for i, name in enumerate(files) if i == 0 or files[i - 1] != name]
    return table.take(pa.array(keep, pa.int64()))


def read_annotations(out: str | os.PathLike[str]) -> pa.Table:
    """The current annotations: for each file, the face rows of the latest run that handled it.

    A file annotated again (new content, new model) shows only its newest rows, so there is
    one row per (file, frame, face); a file whose latest attempt failed shows none.

    Args:
        out: The annotate output folder.

    Returns:
        Rows in ANNOTATION_SCHEMA sorted by file, frame and face.
    """
    latest = latest_files(out)
    faces = _read(out, ANNOTATIONS_DIR, ANNOTATION_SCHEMA)
    if faces.num_rows == 0 or latest.num_rows == 0:
        return ANNOTATION_SCHEMA.empty_table()
    current = {
        (f, r) for f, r in zip(latest.column("file").to_pylist(), latest.column("run_id").to_pylist(), strict=True)
    }
    mask = [
        (f, r) in current
        for f, r in zip(faces.column("file").to_pylist(), faces.column("run_id").to_pylist(), strict=True)
    ]
    faces = faces.filter(pa.array(mask, pa.bool_()))
    order = pc.sort_indices(
        faces, sort_keys=[("file", "ascending"), ("frame_index", "ascending"), ("face", "ascending")]
    )
    return faces.take(order)


def parts(out: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Part file names per folder (for tests and the summary)."""
    return {
        folder: sorted(p.name for p in (Path(out) / folder).glob("part-*.parquet"))
        for folder in (ANNOTATIONS_DIR, FILES_DIR, ERRORS_DIR)
    }


def rows_by_file(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group face rows by their ``file``."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["file"], []).append(row)
    return grouped
