"""Hostile image files for the reliability suite, each with the exact outcome it must have.

Every good image is a four-colour quadrant picture (red, green / blue, yellow) so a crop
can be checked for content and orientation by the mean colour of its quadrants. A case
states its outcome for both ways an image arrives: as a local IMFDB crop and as a TCS
download through a loopback server (the downloader rejects some files earlier, at stage
``download``, from their first bytes).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

RED: Final = (220, 40, 40)
GREEN: Final = (40, 200, 40)
BLUE: Final = (40, 40, 220)
YELLOW: Final = (230, 220, 40)
QUADRANTS: Final = (RED, GREEN, BLUE, YELLOW)
"""Colours of the top-left, top-right, bottom-left and bottom-right quadrants."""

SIDE: Final = 240


@dataclass(frozen=True, slots=True)
class Outcome:
    """What must happen to a file: kept (reason None) or rejected at ``stage`` with ``reason``."""

    reason: str | None = None
    stage: str | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None


KEPT: Final = Outcome()


@dataclass(frozen=True, slots=True)
class BadFile:
    """One hostile file.

    Attributes:
        name: Case id, also the file stem.
        suffix: File extension it is saved under (may lie about the content).
        data: The bytes.
        size: (width, height) a viewer shows (after EXIF rotation); what TCS declares.
        local: Outcome as an IMFDB crop (the whole file is the face).
        downloaded: Outcome as a TCS image whose face box is the centre half of the image.
        expected: Upright RGB pixels a kept crop is cut from (None when rejected).
        crop_format: ``crop_format`` of a kept face.
        tolerance: Largest mean absolute difference per quadrant channel (0 for lossless).
    """

    name: str
    suffix: str
    data: bytes
    size: tuple[int, int]
    local: Outcome
    downloaded: Outcome
    expected: np.ndarray | None = None
    crop_format: str = "png"
    tolerance: float = 0.0

    @property
    def filename(self) -> str:
        return f"{self.name}{self.suffix}"


def quadrant_image(
    width: int = SIDE, height: int = SIDE, colours: tuple[tuple[int, int, int], ...] = QUADRANTS
) -> Image.Image:
    """RGB image split in four flat quadrants of ``colours`` (TL, TR, BL, BR)."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    array[:h2, :w2], array[:h2, w2:], array[h2:, :w2], array[h2:, w2:] = colours
    return Image.fromarray(array, "RGB")


def quadrant_means(image: Image.Image) -> list[tuple[float, float, float]]:
    """Mean RGB of the inner half of each quadrant (edges blur under JPEG)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = array.shape[:2]
    ys = ((h // 8, 3 * h // 8), (5 * h // 8, 7 * h // 8))
    xs = ((w // 8, 3 * w // 8), (5 * w // 8, 7 * w // 8))
    return [tuple(array[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)) for (y0, y1) in ys for (x0, x1) in xs]


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB, nor a header without pixels)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes declaring ``width x height`` pixels (1-bit grey, a few rows of data)."""
    return _png(width, height, 1, 0, b"\x00" * (1 + (width + 7) // 8) * 4)


def rgb48_png(image: Image.Image) -> bytes:
    """16 bits per channel RGB PNG whose high bytes are ``image``'s pixels."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    return _png(image.width, image.height, 16, 2, rows)


def grey16_png(values: tuple[int, int, int, int]) -> tuple[bytes, np.ndarray]:
    """16-bit greyscale PNG with one 16-bit level per quadrant, and its expected 8-bit RGB."""
    array = np.zeros((SIDE, SIDE), dtype=np.uint16)
    h2 = w2 = SIDE // 2
    array[:h2, :w2], array[:h2, w2:], array[h2:, :w2], array[h2:, w2:] = values
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    eight = np.rint(array / 257.0).astype(np.uint8)
    return _png(SIDE, SIDE, 16, 0, rows), np.stack([eight] * 3, axis=-1)


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).

    Returns:
        The file and the upright image a viewer shows (240 wide, 320 high).
    """
    upright = quadrant_image(SIDE, 320)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 320 x 240, as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes()), upright


def animated_gif() -> bytes:
    """Two frames: the quadrants, then their colours swapped (only the first is the face)."""
    first = quadrant_image()
    second = quadrant_image(colours=(YELLOW, BLUE, GREEN, RED))
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return buf.getvalue()


def _case(
    name: str,
    suffix: str,
    data: bytes,
    size: tuple[int, int],
    local: Outcome = KEPT,
    downloaded: Outcome | None = None,
    expected: np.ndarray | None = None,
    crop_format: str = "png",
    tolerance: float = 0.0,
) -> BadFile:
    """A case whose download outcome is its local one unless told otherwise."""
    return BadFile(
        name, suffix, data, size, local, local if downloaded is None else downloaded, expected, crop_format, tolerance
    )


def bad_files() -> list[BadFile]:
    """Every case of the suite, in a fixed order."""
    quad = quadrant_image()
    base = np.asarray(quad)
    jpeg = _save(quad, "JPEG", quality=95)
    png = _save(quad, "PNG")
    rotated, upright = exif_rotated_jpeg()
    grey16, grey16_expected = grey16_png((0x2000, 0x6000, 0xA000, 0xE000))
    wide = quadrant_image(20_000, 120)
    palette = quad.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    not_an_image = Outcome("not_an_image", "validate")
    sniffed_out = Outcome("not_an_image", "download")  # the downloader checks the first bytes
    corrupt = Outcome("corrupt_image", "validate")
    bomb = Outcome("decompression_bomb", "validate")
    html = b"<!DOCTYPE html><html><head><title>404</title></head><body>gone</body></html>\n"
    return [
        _case("control_jpeg", ".jpg", jpeg, quad.size, expected=base, crop_format="jpeg", tolerance=8.0),
        _case("zero_byte", ".jpg", b"", quad.size, not_an_image, sniffed_out),
        _case("truncated_jpeg", ".jpg", jpeg[: len(jpeg) // 2], quad.size, corrupt),
        _case("truncated_png", ".png", png[: len(png) // 2], quad.size, corrupt),
        _case("png_named_jpg", ".jpg", png, quad.size, expected=base),
        _case("html_named_jpg", ".jpg", html, quad.size, not_an_image, sniffed_out),
        _case("animated_gif", ".gif", animated_gif(), quad.size, expected=base),
        _case("grey_16bit_png", ".png", grey16, quad.size, expected=grey16_expected),
        _case("rgb_48bit_png", ".png", rgb48_png(quad), quad.size, expected=base),
        _case(
            "cmyk_jpeg",
            ".jpg",
            _save(quad.convert("CMYK"), "JPEG", quality=95),
            quad.size,
            expected=base,
            crop_format="jpeg",
            tolerance=8.0,
        ),
        _case("palette_png", ".png", _save(palette, "PNG"), quad.size, expected=base),
        _case(
            "exif_rotated_jpeg",
            ".jpg",
            rotated,
            upright.size,
            expected=np.asarray(upright),
            crop_format="jpeg",
            tolerance=8.0,
        ),
        _case("bomb_144mpx", ".png", bomb_png(12_000, 12_000), (12_000, 12_000), bomb),
        _case("bomb_400mpx", ".png", bomb_png(20_000, 20_000), (20_000, 20_000), bomb),
        # As a crop the whole pixel is the face (too small to bucket); a TCS box of the
        # centre half of one pixel has no area left after clipping.
        _case(
            "one_pixel",
            ".png",
            _save(Image.new("RGB", (1, 1), RED), "PNG"),
            (1, 1),
            Outcome("too_small", "partition"),
            Outcome("degenerate_box", "validate"),
        ),
        _case(
            "wide_20000px",
            ".jpg",
            _save(wide, "JPEG", quality=95),
            wide.size,
            expected=np.asarray(wide),
            crop_format="jpeg",
            tolerance=8.0,
        ),
        _case("webp", ".webp", _save(quad, "WEBP", lossless=True), quad.size, expected=base),
        _case("tiff", ".tif", _save(quad, "TIFF", compression="tiff_lzw"), quad.size, expected=base),
    ]
