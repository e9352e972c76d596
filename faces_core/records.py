"""Typed records that flow from the sources to the partitioner."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from faces_core.errors import Rejection
from faces_core.taxonomy import empty_labels


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box in pixels of the image it refers to, ``x0 < x1`` and ``y0 < y1``."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """One annotated face as a source describes it, before any image is opened.

    Attributes:
        source: ``tcs`` or ``imfdb``.
        item: Where the annotation is (``file:line`` or ``url#faceN``), for the error log.
        image_ref: URL (TCS) or filesystem path (IMFDB crop) of the image holding the face.
        subject: Person shown (IMFDB actor folder); None when the source does not say.
        movie: Movie (IMFDB); None for TCS.
        box: Face box in pixels of ``image_ref``; None means the whole image is the face
            (IMFDB crops).
        labels: attribute -> canonical value or None, for every attribute of the taxonomy.
        image_width: Image width the source declares (TCS), None if not declared.
        image_height: Image height the source declares (TCS), None if not declared.
        split_key: What the deterministic split hashes (actor for IMFDB, image for TCS).
        frame_box: IMFDB geometry of the face in the original video frame, if parsable.
    """

    source: str
    item: str
    image_ref: str
    subject: str | None
    movie: str | None
    box: Box | None
    labels: dict[str, str | None] = field(default_factory=empty_labels)
    image_width: int | None = None
    image_height: int | None = None
    split_key: str = ""
    frame_box: tuple[int, int, int, int] | None = None

    @property
    def face_id(self) -> str:
        """Id of this face as the source names its image (see :func:`face_id`)."""
        return face_id(self.source, self.image_ref, self.box)


def url_digest(url: str) -> bytes:
    """A 16-byte digest standing for a URL in a run-long index (the TCS parse's per-URL face
    count, the image store's URL index): a million URLs held as strings took ~130 MB more."""
    return hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def face_id(source: str, image_ref: str, box: Box | None) -> str:
    """Stable id of a face: hash of source, image reference and box.

    It does not depend on run order or shard; give it a portable ``image_ref`` (URL, or a
    path relative to the dataset root) and it does not depend on where the data lives.
    """
    coords = "" if box is None else f"{box.x0:.2f},{box.y0:.2f},{box.x1:.2f},{box.y1:.2f}"
    return hashlib.sha256(f"{source}|{image_ref}|{coords}".encode()).hexdigest()[:20]


@dataclass(slots=True)
class ParseResult:
    """What a source parser returns: records to keep plus rejected items, never an exception."""

    records: list[FaceRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    images: int = 0
    """How many distinct images (TCS lines / IMFDB crops) the source declared."""

    @classmethod
    def merged(cls, results: Iterable[ParseResult]) -> ParseResult:
        """One result holding several in order (a file's chunks, several TCS files)."""
        whole = cls()
        for result in results:
            whole.extend(result)
        return whole

    def extend(self, other: ParseResult) -> None:
        """Append another result in place (used to merge per-file results)."""
        self.records.extend(other.records)
        self.rejections.extend(other.rejections)
        self.images += other.images
