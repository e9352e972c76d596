"""The error log: one schema for every item the pipeline rejects.

A bad row, URL, file or label is data, not an exception: it becomes a :class:`Rejection`
with a reason code from the closed set :data:`REASONS`, and the run goes on. The log is
written as Parquet beside the outputs so a user can query it like the dataset itself.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from faces_core.files import write_atomic_with


class Reason(StrEnum):
    """Closed set of rejection reason codes. Each member's description is in REASONS."""

    MALFORMED_LINE = "malformed_line"
    MISSING_FIELD = "missing_field"
    NO_FACES = "no_faces"
    BAD_GEOMETRY = "bad_geometry"
    DEGENERATE_BOX = "degenerate_box"
    BOX_OUT_OF_BOUNDS = "box_out_of_bounds"
    UNKNOWN_LABEL = "unknown_label"
    AMBIGUOUS_LABEL = "ambiguous_label"
    CONFLICTING_LABELS = "conflicting_labels"
    DUPLICATE_ROW = "duplicate_row"
    MISSING_CROP = "missing_crop"
    ORPHAN_CROP = "orphan_crop"
    JUNK_FILE = "junk_file"
    UNREADABLE_FILE = "unreadable_file"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    NOT_AN_IMAGE = "not_an_image"
    TOO_LARGE = "too_large"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    DUPLICATE_IMAGE = "duplicate_image"
    TOO_SMALL = "too_small"
    PATH_OUTSIDE_ROOT = "path_outside_root"
    SYMLINK_OUTSIDE_ROOT = "symlink_outside_root"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    REFUSED_HOST = "refused_host"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    EMPTY_FILE = "empty_file"
    UNREADABLE_VIDEO = "unreadable_video"


REASONS: dict[Reason, str] = {
    Reason.MALFORMED_LINE: "A line or row cannot be parsed (bad JSON, wrong number of fields).",
    Reason.MISSING_FIELD: "A required field (image URL, annotation list, crop name) is absent, empty or null.",
    Reason.NO_FACES: "An image carries no face annotation at all, or (faces predict) the detector finds no face in it.",
    Reason.BAD_GEOMETRY: "Box points or the declared image size are missing, not numbers, null, or too few.",
    Reason.DEGENERATE_BOX: "A box has zero or negative width or height.",
    Reason.BOX_OUT_OF_BOUNDS: "A box lies (mostly) outside its image, beyond the clipping tolerance.",
    Reason.UNKNOWN_LABEL: "A label string is in no mapping table of the taxonomy (reported, never guessed).",
    Reason.AMBIGUOUS_LABEL: "A known label string that names no single attribute (TCS 'others').",
    Reason.CONFLICTING_LABELS: "One face carries two different values for one attribute; that attribute is dropped.",
    Reason.DUPLICATE_ROW: "A row repeats a row already read for the same face (exact or merged duplicate).",
    Reason.MISSING_CROP: "An IMFDB row names a crop file that does not exist.",
    Reason.ORPHAN_CROP: "An IMFDB crop file that no row names (no labels for it).",
    Reason.JUNK_FILE: (
        "A file that is not part of the dataset format (.DS_Store, stray files), or a file in a folder to "
        "annotate that is neither an image nor a video (by content and extension)."
    ),
    Reason.UNREADABLE_FILE: "A file or URL that cannot be opened or read at all.",
    Reason.HTTP_ERROR: "The server answered with an HTTP error status (after retries).",
    Reason.TIMEOUT: (
        "The request timed out (after retries): no byte within download.timeout_s, or no complete answer "
        "within download.attempt_timeout_s (one attempt) or download.url_timeout_s (all attempts of a URL)."
    ),
    Reason.CONNECTION_ERROR: "The connection failed or was cut (after retries).",
    Reason.NOT_AN_IMAGE: "The content is not an image (wrong content type or undecodable header).",
    Reason.TOO_LARGE: "The download exceeds the configured maximum byte size.",
    Reason.CORRUPT_IMAGE: "The image cannot be fully decoded (truncated or damaged).",
    Reason.DECOMPRESSION_BOMB: "The image has more pixels than the configured limit.",
    Reason.DUPLICATE_IMAGE: "The image's content equals an image already ingested under another reference.",
    Reason.TOO_SMALL: "The face crop's shorter side is below the smallest size bucket.",
    Reason.PATH_OUTSIDE_ROOT: (
        "An IMFDB crop name is a path that leaves its images/ folder (absolute, or with a '..' part), "
        "or a local image lies outside the dataset root; nothing is opened."
    ),
    Reason.SYMLINK_OUTSIDE_ROOT: (
        "A symlink in the IMFDB tree (folder, txt or crop) points outside the dataset root; it is not "
        "followed. Links that stay inside the root are followed, and image_ref names the link."
    ),
    Reason.UNSUPPORTED_SCHEME: (
        "An image URL (or a redirect) is not http:// or https:// (file://, ftp://, data:, a bare path, ...); "
        "nothing is read."
    ),
    Reason.REFUSED_HOST: (
        "An image URL (or a redirect) names or resolves to a loopback, private, link-local or other "
        "non-public address while download.allow_private_hosts is false; nothing is requested."
    ),
    Reason.TOO_MANY_REDIRECTS: "Redirects loop or go on past the limit (download.max_redirects).",
    Reason.EMPTY_FILE: "A file to annotate has zero bytes (often a copy that has not started or failed).",
    Reason.UNREADABLE_VIDEO: (
        "A file recognised as a video (by content or extension) that OpenCV cannot open, or whose frames "
        "cannot be decoded."
    ),
}

ERROR_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("item", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected item.

    Attributes:
        source: Dataset the item came from (``tcs``, ``imfdb``, ...).
        item: Where it is: ``file:line``, a URL, ``url#face3``, a crop path.
        stage: Pipeline stage that rejected it (``parse``, ``download``, ``validate``, ``partition``).
        reason: Code from :class:`Reason`.
        message: Human explanation with the offending value.
        time: When it was rejected (UTC); None when read back from a log written without
            timestamps (ingest's ``errors.parquet``, see :func:`rejections_to_table`).
    """

    source: str
    item: str
    stage: str
    reason: Reason
    message: str
    time: datetime | None = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        # Coerce so a typo'd reason fails at the point of rejection, not at write time.
        object.__setattr__(self, "reason", Reason(self.reason))
        # Bad input may bring undecodable names or lone surrogates; Parquet needs valid UTF-8.
        # A URL's password (a TCS image URL, a proxy in a message) never reaches the log.
        for name in ("source", "item", "stage", "message"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, redact_userinfo(utf8_text(value)))


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/@\s:]*):([^/@\s]*)@")


def redact_userinfo(text: str) -> str:
    """``text`` with the password of every URL's user info hidden: ``http://user:***@host``.

    Error logs, run parameters and logs leave this machine (Parquet shared with a team, the
    Prefect database and UI): a proxy password or a credential inside a TCS image URL must not
    travel with them.
    """
    return _USERINFO.sub(r"\1\2:***@", text) if "@" in text else text


def utf8_text(text: str) -> str:
    """``text`` made storable as UTF-8: lone surrogates (undecodable bytes) become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def rejections_to_table(rejections: Iterable[Rejection], timestamps: bool = True) -> pa.Table:
    """Arrow table of rejections in :data:`ERROR_SCHEMA`, sorted for stable output.

    ``timestamps=False`` leaves the ``time`` column null: a log that is part of a DVC stage
    output (ingest's ``errors.parquet``) must be the same bytes for the same inputs, or every
    re-ingest of unchanged data would look like new data and retrain everything downstream.
    """
    # Plain tuples, not asdict(): an ingest logs thousands and asdict copies each deeply.
    rows = sorted(
        ((r.source, r.stage, r.item, str(r.reason), r.message, r.time) for r in rejections),
        key=lambda r: r[:5],
    )
    source, stage, item, reason, message, time = (list(c) for c in zip(*rows, strict=True)) if rows else ([],) * 6
    if not timestamps:
        time = [None] * len(rows)
    columns = {"source": source, "item": item, "stage": stage, "reason": reason, "message": message, "time": time}
    return pa.table(columns, schema=ERROR_SCHEMA)


def write_errors(rejections: Iterable[Rejection], path: str | os.PathLike[str], timestamps: bool = True) -> Path:
    """Write the error log to Parquet atomically (temp file then rename) and return its path.

    ``timestamps=False``: the ``time`` column is null (see :func:`rejections_to_table`).
    """
    table = rejections_to_table(rejections, timestamps)
    return write_atomic_with(path, lambda tmp: pq.write_table(table, tmp))


def read_errors(path: str | os.PathLike[str]) -> list[Rejection]:
    """Read an error log written by :func:`write_errors`."""
    return [Rejection(**row) for row in pq.read_table(path).to_pylist()]


def count_by_reason(rejections: Iterable[Rejection]) -> dict[str, int]:
    """Counts per reason code, most frequent first."""
    return dict(Counter(str(r.reason) for r in rejections).most_common())
