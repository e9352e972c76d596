"""Crop every valid face, bucket it by size, and write each shard's Parquet parts.

The research scripts kept size buckets as Python lists of paths ("all faces of at least
128 px" was a cumulative list). Here a bucket is a partition of the dataset
(:mod:`faces_core.storage` holds its layout, the commit and reading it). Each shard of images
is processed independently (one Prefect task, or one process) and writes its own part files
into the staging directory that :func:`faces_core.storage.commit_dataset` swaps in whole.
"""

from __future__ import annotations

import bisect
import io
import itertools
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from faces_core.errors import Reason, Rejection
from faces_core.files import open_regular
from faces_core.records import Box, FaceRecord, face_id
from faces_core.splits import SplitFractions, assign_split
from faces_core.storage import FACE_SCHEMA, faces_dataset
from faces_core.taxonomy import ATTRIBUTE_NAMES
from faces_core.validate import (
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

log = logging.getLogger(__name__)


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
    tracker: DuplicateTracker | None = None,
) -> tuple[list[ImageJob], list[Rejection]]:
    """Group faces by image and reject faces whose image duplicates an earlier one.

    Args:
        records: Parsed faces of any source.
        files: image_ref -> (local path, sha256) for every image that is available locally.
            Faces whose image is missing here must already have been rejected upstream.
        refs: image_ref -> portable reference for Parquet (defaults to image_ref).
        tracker: The run's duplicate index, when its faces are planned in chunks: an image
            whose content an earlier chunk (or source) had is a duplicate too.

    Returns:
        Jobs sorted by portable reference, and ``duplicate_image`` rejections.
    """
    by_image: dict[str, list[FaceRecord]] = defaultdict(list)
    for record in records:
        by_image[record.image_ref].append(record)
    refs = refs or {}
    candidates = sorted((refs.get(image_ref, image_ref), image_ref) for image_ref in by_image if image_ref in files)
    tracker = tracker if tracker is not None else DuplicateTracker()
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
    * an upright RGB JPEG (:func:`~faces_core.validate.stored_as_is`) is stored as
      its own bytes, so its pixels are only checked to decode
      (:func:`~faces_core.validate.check_decodes`), not converted.
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


def summarize(
    out_faces: str | os.PathLike[str],
    rejections: Sequence[Rejection],
    images: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Counts per source, bucket, split, label value and rejection reason for summary.json."""
    table = faces_dataset(out_faces).to_table(columns=["source", "bucket", "split", *ATTRIBUTE_NAMES])
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
