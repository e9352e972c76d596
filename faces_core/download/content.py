"""What a body is: image formats sniffed from the magic bytes (servers' headers lie), and a
description of anything else that never quotes its bytes."""

from __future__ import annotations

from typing import Final

from faces_core.download.results import DownloadError
from faces_core.errors import Reason

SNIFF_BYTES: Final = 32
"""Bytes of a body's head that :func:`sniff_image_type` needs."""
_BMP_DIB_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})
IMAGE_TYPES: Final = {  # MIME type -> the extension a stored file gets
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
}


def sniff_image_type(head: bytes) -> tuple[str, str] | None:
    """Identify an image format from its first bytes.

    Args:
        head: At least the first 32 bytes of the file (fewer only if the file is shorter).

    Returns:
        ``(mime_type, extension)`` for JPEG/PNG/GIF/WEBP/BMP/TIFF, else None.
    """
    if head.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif head.startswith((b"GIF87a", b"GIF89a")):
        mime = "image/gif"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mime = "image/webp"
    elif head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        # "BM" alone is too weak (any text starting "BM..."), so check the DIB header size too.
        mime = "image/bmp"
    elif head.startswith((b"II*\x00", b"MM\x00*")):
        mime = "image/tiff"
    else:
        return None
    return mime, IMAGE_TYPES[mime]


def sniff_or_raise(head: bytes) -> tuple[str, str]:
    """``(mime_type, extension)`` of an image head, else a ``not_an_image`` :class:`DownloadError`."""
    kind = sniff_image_type(head)
    if kind is None:
        raise DownloadError(Reason.NOT_AN_IMAGE, f"content does not look like an image ({describe_content(head)})")
    return kind


def describe_content(head: bytes) -> str:
    """A guess at what non-image bytes are, for an error message that never quotes them.

    The bytes may be a private file or a server's page: the error log says only what kind of
    thing they look like.

    Args:
        head: The first bytes of the body.

    Returns:
        A short phrase such as ``"looks like text/html"``.
    """
    if not head:
        return "empty body"
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start:
        return "looks like text/html"
    if start.startswith((b"<?xml", b"<svg")):
        return "looks like XML or SVG"
    if start[:1] in (b"{", b"["):
        return "looks like JSON"
    if head.startswith(b"%PDF"):
        return "looks like application/pdf"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "looks like plain text"
    return "unrecognised binary data"
