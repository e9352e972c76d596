"""Image and annotation checks between download and partitioning.

Everything here is a pure function of its arguments (no Prefect, no global Pillow state is
changed), so the partitioner can call it from threads or a process pool. A bad image or box
raises :class:`ImageRejected` with a reason code; the caller turns it into a
:class:`~faces_core.errors.Rejection` and goes on.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from faces_core.errors import Reason, Rejection
from faces_core.files import FileTooLargeError, open_regular
from faces_core.records import Box
from faces_core.taxonomy import ATTRIBUTES

logger = logging.getLogger(__name__)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError)
"""What Pillow's decoders raise on damaged data (OSError and SyntaxError by contract, the
rest seen on fuzzed files)."""

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


BOX_FRAMES: Final = ("auto", "upright", "stored")
"""Values of ``validate.box_frame``."""


@dataclass(frozen=True)
class ValidateSettings:
    """Limits for :func:`load_rgb` and :func:`clip_box`.

    Attributes:
        max_image_pixels: Larger images are rejected from their header, before decoding, as
            ``decompression_bomb``. Pillow's own hard limit (``2 * Image.MAX_IMAGE_PIXELS``,
            ~179 M by default) still applies on top; raise that global once at start-up if
            you need more, as it cannot be changed per call thread-safely.
        box_tolerance: A box may extend past the image by this fraction of the image side
            (annotators overshoot) and is then clipped; further out is ``box_out_of_bounds``.
        min_box_side: Smallest width and height in pixels after clipping, else ``degenerate_box``.
        box_frame: Which pixels a source's boxes are in when the image carries an EXIF
            orientation: ``upright`` (as a viewer shows it), ``stored`` (as the file stores
            it, before the rotation: tools that ignore EXIF draw there) or ``auto``
            (:func:`upright_box`: ``stored`` when the declared image size is the stored one
            of a quarter-turned image, else ``upright``).
    """

    max_image_pixels: int = 120_000_000
    box_tolerance: float = 0.05
    min_box_side: float = 1.0
    box_frame: str = "auto"

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1 or self.box_tolerance < 0 or self.min_box_side < 0:
            raise ValueError(f"invalid validate settings: {self!r}")
        if self.box_frame not in BOX_FRAMES:
            raise ValueError(f"validate.box_frame must be one of {', '.join(BOX_FRAMES)}; got {self.box_frame!r}")


class ImageRejected(Exception):
    """An image or box failed a check; picklable so it crosses process-pool boundaries.

    Args:
        reason: Rejection code.
        message: Human explanation with the offending value.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)
        self.reason = Reason(reason)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def to_rejection(self, source: str, item: str, stage: str = "validate") -> Rejection:
        """The error-log row for this failure."""
        return Rejection(source, item, stage, self.reason, self.message)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image decoded by :func:`decode_image`, with what the file itself held.

    Attributes:
        image: The loaded, upright, 8-bit ``RGB`` image, independent of the file.
        format: The file's format as Pillow names it (``JPEG``, ``PNG`` ...), or None.
        unchanged: True when decoding left the pixels as stored (an RGB file without EXIF
            rotation, decoded at full size): only then may a crop of the whole image reuse
            the file's bytes.
        full_size: ``(width, height)`` of the upright image at full size: ``image.size``
            unless it was decoded reduced (``max_side``).
    """

    image: Image.Image
    format: str | None
    unchanged: bool
    full_size: tuple[int, int]


def load_rgb(
    path: str | os.PathLike[str], settings: ValidateSettings | None = None, data: bytes | None = None
) -> Image.Image:
    """Open, fully decode and normalise an image to upright 8-bit RGB (see :func:`decode_image`).

    ``data``: the file's bytes, already read (``path`` then only names it in messages).

    Returns:
        A loaded ``RGB`` image, independent of the file.

    Raises:
        ImageRejected: ``unreadable_file``, ``not_an_image``, ``decompression_bomb``,
            ``corrupt_image``.
    """
    return decode_image(path, settings, data=data).image


def decode_image(
    path: str | os.PathLike[str],
    settings: ValidateSettings | None = None,
    max_side: int | None = None,
    data: bytes | None = None,
) -> DecodedImage:
    """Open, fully decode and normalise an image to upright 8-bit RGB, opening it only once.

    :func:`open_image` then :func:`load_upright_rgb`: the pixel count is checked from the
    header before any pixel is decoded, formats with a real ``verify()`` are verified, EXIF
    orientation is applied (width and height are those a viewer shows), transparent images
    are composited on white, and CMYK, palette, grayscale and 16-bit images are converted
    (16-bit scaled down, not clipped).

    Args:
        path: Image file.
        settings: Limits (defaults when None).
        max_side: The caller shrinks the image to this long side anyway: a JPEG at least
            twice that size is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
            ``draft``), never below ``max_side``. A 12-megapixel photo for a 1024-px
            detector then costs a sixteenth of the time and memory.
        data: The file's bytes when already read (``path`` then only names it in messages).

    Returns:
        The decoded image with the file's format, whether the pixels are as stored, and the
        full upright size.

    Raises:
        ImageRejected: ``unreadable_file`` (cannot open), ``not_an_image`` (no decoder
            recognises it), ``decompression_bomb``, ``corrupt_image`` (truncated/damaged).
    """
    image = open_image(path, settings, data)
    if max_side is not None and image.format == "JPEG" and max(image.size) >= 2 * max_side:
        width, height = image.size
        scale = max_side / max(width, height)
        full = (height, width) if exif_orientation(image) in _SWAPPING_ORIENTATIONS else (width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        decoded = load_upright_rgb(image, path)
        return DecodedImage(decoded.image, decoded.format, False, full)
    return load_upright_rgb(image, path)


_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that turn the stored image a quarter turn (width and height swap)."""


def open_image(
    path: str | os.PathLike[str], settings: ValidateSettings | None = None, data: bytes | None = None
) -> Image.Image:
    """Open an image lazily (header only), with its pixel count checked and, where the format
    has a real ``verify()``, verified.

    For formats with a real ``verify()`` (PNG: CRCs of every chunk, damage the decoder
    tolerates) the file is verified and then re-opened (Pillow cannot decode after verify);
    for the others (JPEG ...) ``verify()`` checks nothing, so the file is opened once: at
    ingest this is a third of the time per image. The caller closes the image (or hands it
    to :func:`load_upright_rgb` or :func:`check_decodes`, which do).

    Raises:
        ImageRejected: as :func:`decode_image`, except ``corrupt_image`` from pixel data.
    """
    settings = settings or ValidateSettings()
    image = _open(path, settings, data)
    if _verifies(image):
        with image as probe:
            try:
                probe.verify()
            except _DECODE_ERRORS as exc:
                raise ImageRejected(Reason.CORRUPT_IMAGE, f"{path}: verify failed: {exc}") from exc
        image = _open(path, settings, data)
    return image


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag of a JPEG (1 when absent or not a JPEG), None when unreadable."""
    try:
        return int(image.getexif().get(0x0112, 1)) if image.format == "JPEG" else 1
    except (*_DECODE_ERRORS, KeyError):
        return None  # unreadable EXIF: exif_transpose keeps the stored pixels


def stored_as_is(image: Image.Image) -> bool:
    """True when the file's pixels are what a viewer shows as 8-bit RGB: an RGB JPEG with no
    EXIF rotation. Only then may a crop of the whole image keep the file's own bytes."""
    return image.format == "JPEG" and image.mode == "RGB" and exif_orientation(image) in (None, 1)


def check_decodes(image: Image.Image, path: str | os.PathLike[str]) -> tuple[int, int]:
    """Decode an opened image only to prove its pixel data is whole; close it; its size.

    For a file whose bytes are kept as they are (:func:`stored_as_is`) the pixels are not
    needed, only the proof that they decode. A JPEG is decoded at 1/8 scale (``draft``):
    libjpeg still reads every entropy-coded block, so a truncated or damaged stream fails
    exactly as a full decode does, but it skips most of the inverse DCT and the colour
    conversion, which on IMFDB's ~100 px crops are a third of the decode time.

    Raises:
        ImageRejected: ``corrupt_image``.
    """
    with image:
        size = image.size
        if image.format == "JPEG":
            image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        try:
            image.load()
        except _DECODE_ERRORS as exc:
            raise ImageRejected(Reason.CORRUPT_IMAGE, f"{path}: cannot decode: {exc}") from exc
    return size


def load_upright_rgb(image: Image.Image, path: str | os.PathLike[str]) -> DecodedImage:
    """Decode an image from :func:`open_image` to upright 8-bit RGB and close it.

    Raises:
        ImageRejected: ``corrupt_image`` (truncated/damaged pixel data, unconvertible mode).
    """
    with image:
        stored_mode, stored_size = image.mode, image.size
        orientation = exif_orientation(image)
        try:
            image.load()
        except _DECODE_ERRORS as exc:
            raise ImageRejected(Reason.CORRUPT_IMAGE, f"{path}: cannot decode: {exc}") from exc
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except (*_DECODE_ERRORS, KeyError) as exc:
            # Bad metadata does not make the pixels bad: keep the stored orientation.
            logger.warning("%s: ignoring unreadable EXIF orientation: %s", path, exc)
        try:
            rgb = _to_rgb(image)
        except _DECODE_ERRORS as exc:
            raise ImageRejected(Reason.CORRUPT_IMAGE, f"{path}: cannot convert mode {image.mode}: {exc}") from exc
        unchanged = stored_mode == "RGB" and rgb.size == stored_size and orientation in (None, 1)
        return DecodedImage(rgb, image.format, unchanged, rgb.size)


def _verifies(image: Image.Image) -> bool:
    """True when the image's format checks something in ``verify()`` (Pillow's base ones do not)."""
    return type(image).verify not in (Image.Image.verify, ImageFile.ImageFile.verify)


def _open(path: str | os.PathLike[str], settings: ValidateSettings, data: bytes | None = None) -> Image.Image:
    """``Image.open`` (of ``data`` when given) with its failures mapped to reasons and our pixel limit applied."""
    try:
        image = Image.open(path if data is None else io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(Reason.DECOMPRESSION_BOMB, f"{path}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(Reason.NOT_AN_IMAGE, f"{path}: no image decoder recognises it") from exc
    except Image.DecompressionBombWarning as exc:  # only raised when warnings are errors
        raise ImageRejected(Reason.DECOMPRESSION_BOMB, f"{path}: {exc}") from exc
    except OSError as exc:
        # Pillow reports damage ("Truncated File Read") as an OSError without an errno; only an
        # error of the file system itself (with an errno, never for bytes in memory) is unreadable.
        if exc.errno is None or data is not None:
            raise ImageRejected(Reason.CORRUPT_IMAGE, f"{path}: bad header: {exc}") from exc
        raise ImageRejected(Reason.UNREADABLE_FILE, f"{path}: {exc.strerror or exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(Reason.CORRUPT_IMAGE, f"{path}: bad header: {exc}") from exc
    width, height = image.size
    if width * height > settings.max_image_pixels:
        image.close()
        raise ImageRejected(
            Reason.DECOMPRESSION_BOMB,
            f"{path}: {width}x{height} = {width * height} pixels > {settings.max_image_pixels}",
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _ALPHA_MODES or (image.mode != "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in _WIDE_INT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255, turning 16-bit photos white.
        wide = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        floats = np.asarray(image, dtype=np.float64)
        scale = 255.0 if floats.size and np.nanmax(floats) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(floats * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def clip_box(box: Box, width: int, height: int, settings: ValidateSettings | None = None) -> Box:
    """Clip a face box to its image, tolerating a small overshoot.

    Args:
        box: Box in pixels of the (EXIF-transposed) image.
        width: Image width in pixels.
        height: Image height in pixels.
        settings: Tolerance and minimum side (defaults when None).

    Returns:
        The box clipped to ``[0, width] x [0, height]``.

    Raises:
        ImageRejected: ``bad_geometry`` (NaN/inf), ``box_out_of_bounds`` (sticks out by more
            than the tolerance), ``degenerate_box`` (a side shorter than ``min_box_side``
            after clipping).
    """
    settings = settings or ValidateSettings()
    coords = (box.x0, box.y0, box.x1, box.y1)
    if not all(math.isfinite(c) for c in coords):
        raise ImageRejected(Reason.BAD_GEOMETRY, f"non-finite box {coords}")
    tol_x, tol_y = settings.box_tolerance * width, settings.box_tolerance * height
    if box.x0 < -tol_x or box.y0 < -tol_y or box.x1 > width + tol_x or box.y1 > height + tol_y:
        raise ImageRejected(
            Reason.BOX_OUT_OF_BOUNDS,
            f"box {coords} outside {width}x{height} image beyond {settings.box_tolerance:.0%} tolerance",
        )
    clipped = Box(max(box.x0, 0.0), max(box.y0, 0.0), min(box.x1, float(width)), min(box.y1, float(height)))
    if clipped.width < settings.min_box_side or clipped.height < settings.min_box_side:
        raise ImageRejected(
            Reason.DEGENERATE_BOX,
            f"box {coords} is {clipped.width:g}x{clipped.height:g} px inside the image "
            f"(minimum side {settings.min_box_side:g})",
        )
    return clipped


def scale_box(box: Box, declared_wh: tuple[int, int], actual_wh: tuple[int, int]) -> Box:
    """Rescale a box given in pixels of the size a source declared to the image's real size.

    TCS boxes are fractions of the declared size, but the file may have been resized since
    (or be EXIF-rotated). Only scaling is applied: a declared size with swapped sides is
    scaled per axis, not rotated.

    Args:
        box: Box in pixels of an image of size ``declared_wh``.
        declared_wh: (width, height) the source declared.
        actual_wh: (width, height) of the loaded, EXIF-transposed image.

    Returns:
        The box in pixels of ``actual_wh`` (the same box when the sizes agree).

    Raises:
        ImageRejected: ``bad_geometry`` when a declared side is not positive.
    """
    (dw, dh), (aw, ah) = declared_wh, actual_wh
    if dw <= 0 or dh <= 0:
        raise ImageRejected(Reason.BAD_GEOMETRY, f"declared image size {dw}x{dh} is not positive")
    if (dw, dh) == (aw, ah):
        return box
    sx, sy = aw / dw, ah / dh
    return Box(box.x0 * sx, box.y0 * sy, box.x1 * sx, box.y1 * sy)


def upright_box(
    box: Box,
    declared_wh: tuple[int, int] | None,
    orientation: int | None,
    upright_wh: tuple[int, int],
    frame: str = "auto",
) -> Box:
    """A source's box in pixels of the upright (EXIF-applied) image, whichever frame it was drawn in.

    A box drawn by a tool that ignores EXIF is in the stored pixels: applied to the upright
    image as is, it lands on the wrong part of a rotated photo. With ``frame="auto"`` the
    declared image size tells: the stored size of a quarter-turned image (sides swapped
    against the upright one) means the box is in the stored frame. Flips and half turns keep
    the size, so they cannot be told apart: ``validate.box_frame: stored`` says so for a whole
    source.

    Args:
        box: Box in pixels of ``declared_wh`` (or of the frame itself when None).
        declared_wh: (width, height) the source declared, or None.
        orientation: EXIF orientation tag (1-8; None or 1: none).
        upright_wh: (width, height) of the upright image.
        frame: ``auto``, ``upright`` or ``stored``.
    """
    aw, ah = upright_wh
    swaps = orientation in _SWAPPING_ORIENTATIONS
    stored_wh = (ah, aw) if swaps else (aw, ah)
    if frame == "auto":
        frame = "stored" if swaps and declared_wh == stored_wh and stored_wh != upright_wh else "upright"
    if frame == "upright" or orientation in (None, 1):
        return scale_box(box, declared_wh, upright_wh) if declared_wh else box
    if declared_wh:
        box = scale_box(box, declared_wh, stored_wh)
    return _orient_box(box, int(orientation or 1), stored_wh)


def _orient_box(box: Box, orientation: int, stored_wh: tuple[int, int]) -> Box:
    """Map a box from stored pixels to the pixels ``ImageOps.exif_transpose`` shows."""
    w, h = stored_wh
    x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
    corners = {
        2: (w - x1, y0, w - x0, y1),  # mirrored left-right
        3: (w - x1, h - y1, w - x0, h - y0),  # half turn
        4: (x0, h - y1, x1, h - y0),  # mirrored top-bottom
        5: (y0, x0, y1, x1),  # transposed
        6: (h - y1, x0, h - y0, x1),  # shown turned a quarter clockwise
        7: (h - y1, w - x1, h - y0, w - x0),  # transverse
        8: (y0, w - x1, y1, w - x0),  # shown turned a quarter anticlockwise
    }
    return Box(*corners.get(orientation, (x0, y0, x1, y1)))


def check_labels(labels: dict[str, str | None]) -> list[tuple[str, str]]:
    """Labels outside the taxonomy, as (attribute, bad value) pairs in input order.

    None means "not labelled" and is fine for a known attribute. An unknown attribute is
    reported whatever its value (``""`` standing for None).
    """
    bad: list[tuple[str, str]] = []
    for attribute, value in labels.items():
        allowed = ATTRIBUTES.get(attribute)
        if allowed is None:
            bad.append((attribute, "" if value is None else str(value)))
        elif value is not None and value not in allowed:
            bad.append((attribute, str(value)))
    return bad


MAX_CROP_BYTES: Final = 50 * 1024**2
"""Default ``ingest.max_crop_bytes``: a local image (an IMFDB crop) larger than this is refused
unread (``too_large``), as a download past ``download.max_bytes`` is."""


def sha256_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> str:
    """Hex sha256 of a file's bytes, read in chunks (images can be tens of MB).

    Raises:
        FileTooLargeError: Larger than ``max_bytes`` (when given); nothing read.
        OSError: Unreadable, or not a regular file (a FIFO is refused unopened, never waited on).
    """
    with open_regular(path) as f:
        if max_bytes is not None:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise FileTooLargeError(errno.EFBIG, f"{size} bytes, more than {max_bytes}", os.fspath(path))
        return hashlib.file_digest(f, "sha256").hexdigest()


class DuplicateTracker:
    """Finds images whose content equals an image already seen under another reference.

    Feed it (ref, sha256) pairs in a deterministic order (e.g. sorted by ref) so the same
    ref is kept on every run. The first ref seen for a digest is the original; adding the
    same ref again is not a duplicate. ``add`` is a single atomic dict operation, so threads
    may share a tracker, though only one order makes the result deterministic.
    """

    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def __len__(self) -> int:
        """Distinct contents seen."""
        return len(self._first)

    def add(self, ref: str, sha256: str) -> str | None:
        """Record ``ref`` and return the earlier ref it duplicates, or None if it is new."""
        first = self._first.setdefault(sha256, ref)
        return None if first == ref else first

    def original(self, sha256: str) -> str | None:
        """The ref kept for a digest, if seen."""
        return self._first.get(sha256)

    def duplicates(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Add many pairs; return duplicate ref -> the original ref it repeats."""
        found: dict[str, str] = {}
        for ref, sha in pairs:
            original = self.add(ref, sha)
            if original is not None:
                found[ref] = original
        return found
