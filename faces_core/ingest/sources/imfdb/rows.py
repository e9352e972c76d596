"""The annotation txt format: bytes into lines, each line into a row read by content, and the
source's rejection vocabulary."""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from faces_core.errors import Reason, Rejection
from faces_core.taxonomy import map_imfdb_token

SOURCE: Final = "imfdb"
STAGE: Final = "parse"
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""Suffixes (lower-case) of crop files accepted in ``images/``: what Pillow decodes; the
published set has only JPEGs, validation decides whether a file really is an image."""

ROW_REASONS: Final = frozenset(
    {
        Reason.MALFORMED_LINE,
        Reason.MISSING_FIELD,
        Reason.MISSING_CROP,
        Reason.DUPLICATE_ROW,
        Reason.PATH_OUTSIDE_ROOT,
        Reason.SYMLINK_OUTSIDE_ROOT,
    }
)
"""Reasons that consume a whole txt line when their item is ``file.txt:N``. Records plus
these rejections account for every non-blank line; the other parse reasons annotate a kept
record or a file (``symlink_outside_root`` also names links no row reaches, by path)."""

MIN_ROW_CELLS: Final = 7
"""A geometry-only row has 7 cells; fewer without a crop name is a fragment, not a row."""

_INT = re.compile(r"[+-]?[0-9]{1,9}")
"""A frame coordinate: ASCII digits, few enough that int() never refuses them."""
_DATE = re.compile(r"(?:1[89]|20)\d\d|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|-")


@dataclass(frozen=True, slots=True)
class Row:
    """One txt line read by content, before it is matched against the crops on disk."""

    item: str
    lineno: int
    key: str
    crop: str
    frame_box: tuple[int, int, int, int] | None
    tokens: tuple[str, ...]


def reject(item: str, reason: Reason, message: str) -> Rejection:
    """A rejection of this source at the parse stage."""
    return Rejection(source=SOURCE, item=item, stage=STAGE, reason=reason, message=message)


def read_imfdb_lines(raw: bytes) -> list[str]:
    """Decode a txt file into lines, numbered from 1 at index 0.

    Invalid UTF-8 is replaced rather than fatal and NULs and BOMs (also mid-file ones) are
    dropped before the file is split, because they occur in the published files and carry no
    content. Lines are split on CRLF, CR or LF only, so line numbers match what an editor
    shows. Files are parsed with the streaming :func:`iter_imfdb_lines`; this is the same
    thing for bytes already in memory.

    Args:
        raw: File content.

    Returns:
        The lines without their line breaks (blank ones included).
    """
    return list(iter_imfdb_lines(io.BytesIO(raw), len(raw) + 1))  # one definition of a line


_BYTE_BREAK = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff".encode()
_READ_CHUNK = 1024 * 1024


def iter_imfdb_lines(f: BinaryIO, max_line_bytes: int) -> Iterator[str]:
    """The lines of a txt stream as :func:`read_imfdb_lines` gives them, holding one bounded line.

    A line longer than ``max_line_bytes`` bytes is yielded as ``max_line_bytes + 1`` ``#``
    characters (its content is never needed: the parser rejects it by length), or as ``""``
    when it holds only blanks (as the whole-file reader would skip it); the rest of it is
    skipped as it streams by, so a huge line costs neither memory nor a split into millions
    of cells.
    """
    overlong = "#" * (max_line_bytes + 1)
    pending = b""
    skipping, blank = False, True
    held = b""
    for chunk in iter(lambda: f.read(_READ_CHUNK), b""):
        # NULs and BOMs go before splitting, as read_imfdb_lines drops them first ("\r\0\n"
        # is one CRLF); a BOM cut by the chunk boundary is held back for the next chunk.
        raw = held + chunk.replace(b"\x00", b"")
        keep = 2 if raw.endswith(_BOM[:2]) else 1 if raw.endswith(_BOM[:1]) else 0
        raw, held = (raw[:-keep], raw[-keep:]) if keep else (raw, b"")
        data = pending + raw.replace(_BOM, b"")
        pending = b""
        if skipping:
            found = _BYTE_BREAK.search(data[:-1] if data.endswith(b"\r") else data)
            if found is None:
                blank = blank and _blank(data.rstrip(b"\r"))
                pending = b"\r" if data.endswith(b"\r") else b""
                continue
            blank = blank and _blank(data[: found.start()])
            yield "" if blank else overlong
            data, skipping = data[found.end() :], False
        cut = len(data) - 1 if data.endswith(b"\r") else len(data)  # a CR may be half of CRLF
        lines = _BYTE_BREAK.split(data[:cut])
        pending = lines.pop() + data[cut:]
        for line in lines:
            yield _decode_line(line) if len(line) <= max_line_bytes else ("" if _blank(line) else overlong)
        if len(pending) > max_line_bytes + 1:
            cr = pending.endswith(b"\r")
            skipping, blank = True, _blank(pending.rstrip(b"\r"))
            pending = b"\r" if cr else b""
    pending += held
    if skipping:
        tail = _BYTE_BREAK.split(pending)  # a CR kept back may end the line
        yield "" if blank else overlong
        if len(tail) > 1:
            yield ""
        return
    for line in _BYTE_BREAK.split(pending):  # like str.split: a final break gives a last empty line
        yield _decode_line(line) if len(line) <= max_line_bytes else ("" if _blank(line) else overlong)


def _blank(raw: bytes) -> bool:
    """Whether bytes decode to whitespace (and BOMs) only, as ``str.strip`` sees it."""
    return not raw.decode("utf-8", errors="ignore").replace("\ufeff", "").strip()


def _decode_line(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\ufeff", "")


def _has_space(cell: str) -> bool:
    """``any(ch.isspace() for ch in cell)`` at C speed: ``str.split`` splits on exactly those."""
    return bool(cell) and cell.split(None, 1) != [cell]


_ASCII_LETTER = re.compile(r"[A-Za-z]")


def _has_letter(text: str) -> bool:
    """``any(ch.isalpha() for ch in text)``, with a regex for ASCII text (almost every name)."""
    if text.isascii():
        return _ASCII_LETTER.search(text) is not None
    return any(ch.isalpha() for ch in text)


def _is_crop_name(cell: str) -> bool:
    """True for ``Actor_12.jpg``-like names; frame names such as ``0171.jpg`` have no letter."""
    stem, dot, suffix = cell.rpartition(".")
    return bool(dot) and f".{suffix.lower()}" in IMAGE_SUFFIXES and not _has_space(cell) and _has_letter(stem)


def _find_crop(cells: list[str], crops: Collection[str]) -> int | None:
    """Index of the crop cell.

    A crop-like name that exists on disk wins, then any crop-like name (the row still
    names a crop, which may be missing), then an existing file whose stem has no letter.
    Frame names (``0171.jpg``) have no letter, so they never shadow the crop.
    """
    names = [i for i, cell in enumerate(cells) if "." in cell and not _has_space(cell)]
    looks = [i for i in names if _is_crop_name(cells[i])]
    exists = [i for i in names if cells[i] in crops]
    ranked = [i for i in looks if i in exists] + looks + exists
    return ranked[0] if ranked else None


def _split_geometry(after: list[list[str]]) -> tuple[tuple[int, int, int, int] | None, list[list[str]]]:
    """Take the first four tokens after the crop as x, y, w, h when they are all integers.

    Returns:
        The geometry (or None) and the cells left after it, as token lists.
    """
    flat = [(ci, tok) for ci, cell in enumerate(after) for tok in cell]
    if len(flat) < 4 or not all(_INT.fullmatch(tok) for _, tok in flat[:4]):
        return None, after
    x, y, w, h = (int(tok) for _, tok in flat[:4])
    last = flat[3][0]
    taken = sum(1 for ci, _ in flat[:4] if ci == last)
    tail = after[last][taken:]
    return (x, y, w, h), ([tail] if tail else []) + after[last + 1 :]


def _leading_geometry(before: list[list[str]]) -> tuple[int, int, int, int] | None:
    """Four integers opening the row (and only four): geometry moved in front of the clip."""
    flat = [tok for cell in before for tok in cell]
    if len(flat) > 4 and all(_INT.fullmatch(tok) for tok in flat[:4]) and not _INT.fullmatch(flat[4]):
        x, y, w, h = (int(tok) for tok in flat[:4])
        return x, y, w, h
    return None


def _label_tokens(rest: list[list[str]]) -> tuple[str, ...]:
    """Tokens of the label cells among the cells after the geometry.

    The labels start after the date and actor cells (``date + 2``) or at the first cell
    holding a known label token, whichever comes first. Taking the earlier of the two
    means an unknown token in the gender column is reported instead of being mistaken
    for the actor, while extra leading cells (shifted rows) are skipped.
    """
    starts = [i for i, cell in enumerate(rest) if cell and map_imfdb_token(cell[0]) is not None][:1]
    starts += [i + 2 for i, cell in enumerate(rest) if len(cell) == 1 and _DATE.fullmatch(cell[0])][:1]
    if not starts:
        return ()
    return tuple(tok for cell in rest[min(starts) :] for tok in cell)


def parse_line(line: str, item: str, lineno: int, crops: Collection[str]) -> Row | Rejection:
    """Read one non-blank line by content.

    Args:
        line: The line (BOM, NUL and line break already removed).
        item: ``Actor/Movie/file.txt:N``, used in the returned row or rejection.
        lineno: Line number N.
        crops: File names in the movie's ``images/`` folder (to prefer real crop names).

    Returns:
        The parsed row, or a ``missing_field`` / ``malformed_line`` rejection when no crop
        name can be found.
    """
    raw_cells = line.split("\t") if "\t" in line else line.split()
    cells = [cell.strip() for cell in raw_cells]
    while cells and not cells[-1]:
        cells.pop()
    crop_at = _find_crop(cells, crops)
    if crop_at is None:
        if len(cells) < MIN_ROW_CELLS:
            return reject(
                item,
                Reason.MALFORMED_LINE,
                f"{len(cells)} cells and no crop name (fragment of a row split across lines?): {line.strip()!r}",
            )
        return reject(item, Reason.MISSING_FIELD, f"no crop file name in the row: {line.strip()!r}")
    before = [cell.split() for cell in cells[:crop_at]]
    after = [cell.split() for cell in cells[crop_at + 1 :]]
    frame_box, rest = _split_geometry(after)
    if frame_box is None:
        frame_box = _leading_geometry(before)
    return Row(
        item=item,
        lineno=lineno,
        key="\t".join(cells),
        crop=cells[crop_at],
        frame_box=frame_box,
        tokens=_label_tokens(rest),
    )
