"""IMFDB source: walk ``<root>/<Actor>/<Movie>/`` folders and turn every txt row into a
:class:`FaceRecord` or a :class:`Rejection`.

The published annotation files are hand-made and inconsistent (see the package README):
BOMs, CRLF, NULs, 16/17/18-field rows, space-separated geometry-only files, shifted and
merged columns, ``null`` rows, rows split across lines, typos, duplicated crops with
conflicting labels. Rather than trusting column positions, each row is read by *content*:

* the crop is the first cell that names an existing file in ``images/`` (else the first
  cell that looks like a crop file name: image extension, no whitespace, a letter in the
  stem), so joined or shifted leading columns do not matter;
* the frame geometry is the four integers right after the crop (cells are split on
  whitespace, so ``555  153  172  \\t174`` still gives four numbers), or four integers
  that open the row (rows whose geometry was moved to the front);
* the label tokens are placed by vocabulary, which works because the seven IMFDB
  vocabularies are disjoint (:data:`faces_core.taxonomy.IMFDB_LABELS`).

Decisions for ambiguous cases (each one produces exactly one outcome per non-blank line):

* a line without a crop name and with fewer than 7 cells (the tail of a row split across
  two lines, ``\\tFRONTAL\\tPARTIAL``) is ``malformed_line``; it is *not* joined to the
  line before, whose missing labels stay None. Joining would need a guess about which
  row it belongs to and would break the one-line-one-outcome accounting;
* a row of 7 or more cells without a crop name (``null`` rows) is ``missing_field``;
* a crop that is not on disk is ``missing_crop`` for every row naming it, even when the
  row repeats an earlier one, because such a row can never become a record;
* the first row naming an existing crop becomes the record; every later row naming the
  same crop is ``duplicate_row`` (exact copy, or merged: its labels are pooled with the
  record's and an attribute seen with two values becomes None + ``conflicting_labels``);
* label problems (``unknown_label``, ``conflicting_labels``) and ``bad_geometry`` are
  reported only for rows whose content reaches a record, so a rejected row is reported
  once, under its row-level reason (:data:`ROW_REASONS`). They annotate a kept face, so
  their item names the part at fault (``file.txt:N#SMILING``, ``#pose``, ``#frame_box``)
  and never equals a record's item: a face is never both kept and rejected.

Nothing outside the root is read (see the README's rules for bad data):

* a crop name is a file name in ``images/``: a row naming an absolute path or a path with
  a ``..`` part is ``path_outside_root`` and nothing is looked up;
* a symlink (actor or movie folder, txt file, ``images/``, crop) whose target resolves
  outside the root is not followed: a crop link is ``symlink_outside_root`` for every row
  naming it (or once, with the crop's path as item, when no row does), any other link once
  with its path as item. Links that stay inside the root are followed, and a record's
  ``image_ref`` is the link's own path, so it stays relative to the root.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Collection, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from faces_core.errors import Reason, Rejection, count_by_reason
from faces_core.files import open_regular
from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TXT_BYTES
from faces_core.records import FaceRecord, ParseResult
from faces_core.taxonomy import empty_labels, map_imfdb_token

logger = logging.getLogger(__name__)

SOURCE: Final = "imfdb"
STAGE: Final = "parse"
IMAGES_DIR: Final = "images"
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
_PATH_SEPARATOR = re.compile(r"[\\/]")
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class _Row:
    """One txt line read by content, before it is matched against the crops on disk."""

    item: str
    lineno: int
    key: str
    crop: str
    frame_box: tuple[int, int, int, int] | None
    tokens: tuple[str, ...]


@dataclass(slots=True)
class _Face:
    """A crop named by one or more rows: the record-to-be and the label votes for it."""

    first: _Row
    crop_path: str
    keys: set[str] = field(default_factory=set)
    votes: dict[str, dict[str, list[int]]] = field(default_factory=dict)


def _reject(item: str, reason: Reason, message: str) -> Rejection:
    return Rejection(source=SOURCE, item=item, stage=STAGE, reason=reason, message=message)


def _rel(path: Path, root: Path) -> str:
    """Path relative to the dataset root with ``/`` separators, for readable error items."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def escapes_root(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str | None:
    """Where ``path`` really leads when that is outside ``root``, else None.

    Both sides are resolved (symlinks followed, also dangling and looping ones, which
    ``realpath`` resolves as far as it can), so a root given through a link still works.

    Args:
        path: A file or folder at or under ``root`` as the walk names it.
        root: The dataset root.

    Returns:
        The resolved target when it is not ``root`` or below it, else None.
    """
    real_root = os.path.realpath(root)
    target = os.path.realpath(path)
    return None if os.path.commonpath([real_root, target]) == real_root else target


def leaves_folder(name: str) -> bool:
    """True when a crop name is a path that can leave its folder: absolute, a drive, or ``..``."""
    return name.startswith(("/", "\\")) or bool(_DRIVE.match(name)) or ".." in _PATH_SEPARATOR.split(name)


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


def _parse_line(line: str, item: str, lineno: int, crops: Collection[str]) -> _Row | Rejection:
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
            return _reject(
                item,
                Reason.MALFORMED_LINE,
                f"{len(cells)} cells and no crop name (fragment of a row split across lines?): {line.strip()!r}",
            )
        return _reject(item, Reason.MISSING_FIELD, f"no crop file name in the row: {line.strip()!r}")
    before = [cell.split() for cell in cells[:crop_at]]
    after = [cell.split() for cell in cells[crop_at + 1 :]]
    frame_box, rest = _split_geometry(after)
    if frame_box is None:
        frame_box = _leading_geometry(before)
    return _Row(
        item=item,
        lineno=lineno,
        key="\t".join(cells),
        crop=cells[crop_at],
        frame_box=frame_box,
        tokens=_label_tokens(rest),
    )


def _list_dir(
    path: Path, root: Path, sink: list[Rejection], escaped: dict[str, str] | None = None
) -> list[os.DirEntry[str]]:
    """Directory entries sorted by name (deterministic walk), without links leaving the root.

    A folder that cannot be listed yields no entries and an ``unreadable_file`` in
    ``sink``, so its content is reported missing instead of silently skipped. A symlink
    whose target is outside ``root`` is left out and reported as ``symlink_outside_root``
    in ``sink``, or collected as name -> target in ``escaped`` for the caller to report.
    """
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        sink.append(_reject(_rel(path, root), Reason.UNREADABLE_FILE, f"cannot list folder: {exc}"))
        return []
    kept = []
    for entry in entries:
        if not _utf8(entry.name):
            sink.append(
                _reject(
                    _rel(Path(entry.path), root),
                    Reason.UNREADABLE_FILE,
                    "name is not valid UTF-8 and cannot be stored; rename it",
                )
            )
            continue
        target = escapes_root(entry.path, root) if entry.is_symlink() else None
        if target is None:
            kept.append(entry)
        elif escaped is not None:
            escaped[entry.name] = target
        else:
            sink.append(_symlink_rejection(_rel(Path(entry.path), root), target))
    return kept


def _utf8(name: str) -> bool:
    """False for a file name holding bytes that are not UTF-8 (decoded as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _symlink_rejection(item: str, target: str) -> Rejection:
    # The target is named so the user can fix the tree; it is never opened.
    return _reject(
        item,
        Reason.SYMLINK_OUTSIDE_ROOT,
        f"symlink to {target!r} outside the dataset root; not followed (copy the file into the root to use it)",
    )


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _junk(path: Path, root: Path, why: str, sink: list[Rejection]) -> None:
    """One ``junk_file`` per file at or under ``path`` (a stray folder yields its files; an
    empty one, such as a folder named like an annotation ``.txt``, is itself the junk)."""
    if path.is_dir() and not path.is_symlink():
        entries = _list_dir(path, root, sink)
        for entry in entries:
            _junk(Path(entry.path), root, why, sink)
        if not entries:
            sink.append(_reject(_rel(path, root), Reason.JUNK_FILE, f"{why}: an empty folder {path.name!r}"))
        return
    sink.append(_reject(_rel(path, root), Reason.JUNK_FILE, f"{why}: {path.name!r}"))


class _MovieParser:
    """Collects the rows of every txt file of one movie folder and merges them per crop."""

    def __init__(
        self,
        movie_dir: Path,
        root: Path,
        crops: Collection[str],
        escaped: dict[str, str] | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_file_bytes: int = MAX_TXT_BYTES,
    ) -> None:
        self.movie_dir = movie_dir
        self.max_line_bytes = max_line_bytes
        self.max_file_bytes = max_file_bytes
        self.root = root
        self.crops = frozenset(crops)
        self.escaped = dict(escaped or {})
        self._on_disk = self.crops | set(self.escaped)
        self._folded = {name.casefold(): name for name in sorted(self._on_disk, reverse=True)}
        self.faces: dict[str, _Face] = {}
        self.rejections: list[Rejection] = []
        self.named_links: set[str] = set()

    def _resolve(self, crop: str) -> str | None:
        """Crop file name on disk; case differences are tolerated (the files come from macOS)."""
        return crop if crop in self._on_disk else self._folded.get(crop.casefold())

    def feed_file(self, path: Path) -> None:
        """Parse every line of one txt file into the movie's faces or rejections."""
        rel = _rel(path, self.root)
        try:
            with open_regular(path) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > self.max_file_bytes:
                    self.rejections.append(
                        _reject(
                            rel,
                            Reason.TOO_LARGE,
                            f"annotation file of {size} bytes, more than {self.max_file_bytes} "
                            "(ingest.max_annotation_bytes); not read",
                        )
                    )
                    return
                for lineno, line in enumerate(iter_imfdb_lines(fh, self.max_line_bytes), start=1):
                    if line.strip():
                        self._feed_line(line, f"{rel}:{lineno}", lineno)
        except OSError as exc:  # a FIFO or device (never opened for reading), permissions, I/O
            self.rejections.append(
                _reject(rel, Reason.UNREADABLE_FILE, f"cannot read annotation file: {exc.strerror or exc}")
            )

    def _feed_line(self, line: str, item: str, lineno: int) -> None:
        if len(line) > self.max_line_bytes:
            # Checked before splitting: a huge line of tabs would become millions of cells.
            self.rejections.append(
                _reject(
                    item,
                    Reason.MALFORMED_LINE,
                    f"line is longer than {self.max_line_bytes} characters; not parsed "
                    "(raise ingest.max_line_bytes if it is real)",
                )
            )
            return
        row = _parse_line(line, item, lineno, self._on_disk)
        if isinstance(row, Rejection):
            self.rejections.append(row)
            return
        if leaves_folder(row.crop):
            self.rejections.append(
                _reject(
                    item,
                    Reason.PATH_OUTSIDE_ROOT,
                    f"crop {row.crop!r} is a path leaving images/; a crop must be a file name in images/",
                )
            )
            return
        name = self._resolve(row.crop)
        if name is not None and name in self.escaped:
            self.rejections.append(_symlink_rejection(item, self.escaped[name]))
            self.named_links.add(name)
            return
        if name is None:
            where = _rel(self.movie_dir / IMAGES_DIR, self.root)
            self.rejections.append(_reject(item, Reason.MISSING_CROP, f"crop {row.crop!r} is not in {where}/"))
            return
        face = self.faces.get(name)
        if face is None:
            face = self.faces[name] = _Face(first=row, crop_path=os.path.join(self.movie_dir, IMAGES_DIR, name))
            if row.frame_box is None:
                self.rejections.append(
                    _reject(
                        f"{item}#frame_box",
                        Reason.BAD_GEOMETRY,
                        f"no x, y, w, h integers for crop {name!r}; face kept with frame_box None",
                    )
                )
        elif row.key in face.keys:
            self.rejections.append(
                _reject(item, Reason.DUPLICATE_ROW, f"exact duplicate of an earlier row for crop {name!r}")
            )
            return
        else:
            self.rejections.append(
                _reject(
                    item,
                    Reason.DUPLICATE_ROW,
                    f"crop {name!r} already read at line {face.first.lineno}; labels merged into that record",
                )
            )
        face.keys.add(row.key)
        self._vote(face, row)

    def _vote(self, face: _Face, row: _Row) -> None:
        """Add a row's label tokens to the crop's votes; unknown tokens are reported here."""
        for token in row.tokens:
            mapped = map_imfdb_token(token)
            if mapped is None:
                self.rejections.append(
                    _reject(f"{row.item}#{token}", Reason.UNKNOWN_LABEL, f"label {token!r} is in no IMFDB vocabulary")
                )
                continue
            attribute, value = mapped
            lines = face.votes.setdefault(attribute, {}).setdefault(value, [])
            if row.lineno not in lines:
                lines.append(row.lineno)

    def finish(self, subject: str, movie: str) -> ParseResult:
        """Records (one per crop) plus the rejections collected so far."""
        result = ParseResult(rejections=self.rejections)
        for face in self.faces.values():
            labels = empty_labels()
            labels["is_face"] = "true"
            for attribute, values in face.votes.items():
                if len(values) == 1:
                    labels[attribute] = next(iter(values))
                    continue
                seen = ", ".join(
                    f"{value} (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})"
                    for value, lines in values.items()
                )
                result.rejections.append(
                    _reject(
                        f"{face.first.item}#{attribute}",
                        Reason.CONFLICTING_LABELS,
                        f"{attribute} has {len(values)} values: {seen}; left None",
                    )
                )
            result.records.append(
                FaceRecord(
                    source=SOURCE,
                    item=face.first.item,
                    image_ref=face.crop_path,
                    subject=subject,
                    movie=movie,
                    box=None,
                    labels=labels,
                    split_key=subject,
                    frame_box=face.first.frame_box,
                )
            )
        return result

    def named(self) -> set[str]:
        """Crop file names that some row resolved to."""
        return set(self.faces)


def _list_crops(images_dir: Path, root: Path, escaped: dict[str, str]) -> tuple[list[str], list[Rejection]]:
    """Crop file names in ``images/`` and ``junk_file`` rejections for everything else.

    Links leaving the root go to ``escaped`` (name -> target) instead: the rows naming them
    are rejected by the movie parser.
    """
    crops: list[str] = []
    junk: list[Rejection] = []
    for entry in _list_dir(images_dir, root, junk, escaped):
        path = Path(entry.path)
        if not entry.name.startswith(".") and not _is_dir(entry) and path.suffix.lower() in IMAGE_SUFFIXES:
            crops.append(entry.name)
        else:
            _junk(path, root, "not a crop image in images/", junk)
    return crops, junk


def parse_imfdb_file(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    crops: Collection[str] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ParseResult:
    """Parse one IMFDB annotation file ``<root>/<Actor>/<Movie>/<any>.txt``.

    The actor and movie come from the folders, never from the row (the actor field is
    often spelled differently). Orphan crops and junk files are not reported here: they
    are properties of the folder, see :func:`scan_imfdb`.

    Args:
        path: The txt file.
        root: Dataset root that rejection items are relative to; defaults to the folder
            above the actor folder.
        crops: File names present in the movie's ``images/`` folder; listed from disk
            when None (pass them to parse without touching the disk twice).
        max_line_bytes: A longer line is ``malformed_line`` and not parsed.

    Returns:
        Records (one per existing crop) and rejections. ``images`` is the number of
        distinct crops on disk that the file names.
    """
    path = Path(path).absolute()
    movie_dir = path.parent
    root_path = Path(root).absolute() if root is not None else movie_dir.parent.parent
    escaped: dict[str, str] = {}
    if crops is None:
        images_dir = movie_dir / IMAGES_DIR
        crops = _list_crops(images_dir, root_path, escaped)[0] if images_dir.is_dir() else []
    parser = _MovieParser(movie_dir, root_path, crops, escaped, max_line_bytes)
    parser.feed_file(path)
    result = parser.finish(subject=movie_dir.parent.name, movie=movie_dir.name)
    result.images = len(result.records)
    return result


def _scan_movie(
    movie_dir: Path, root: Path, subject: str, max_line_bytes: int, max_file_bytes: int = MAX_TXT_BYTES
) -> ParseResult:
    """All txt files of one movie folder, then its orphan crops and junk files."""
    unlisted: list[Rejection] = []
    entries = _list_dir(movie_dir, root, unlisted)
    images = next((e for e in entries if e.name == IMAGES_DIR and _is_dir(e)), None)
    escaped: dict[str, str] = {}
    crops, junk = _list_crops(Path(images.path), root, escaped) if images is not None else ([], [])
    junk[:0] = unlisted
    parser = _MovieParser(movie_dir, root, crops, escaped, max_line_bytes, max_file_bytes)
    for entry in entries:
        path = Path(entry.path)
        if entry is images:
            continue
        if path.suffix.lower() == ".txt" and not entry.name.startswith(".") and not _is_dir(entry):
            parser.feed_file(path)
        else:
            _junk(path, root, "not an annotation txt or images/ folder", junk)
    result = parser.finish(subject=subject, movie=movie_dir.name)
    named = parser.named()
    images_dir = movie_dir / IMAGES_DIR
    for name in crops:
        if name not in named:
            result.rejections.append(
                _reject(_rel(images_dir / name, root), Reason.ORPHAN_CROP, f"no row names crop {name!r}; no labels")
            )
    for name, target in sorted(escaped.items()):
        if name not in parser.named_links:
            result.rejections.append(_symlink_rejection(_rel(images_dir / name, root), target))
    result.rejections.extend(junk)
    result.images = len(crops)
    return result


def scan_imfdb(
    root: str | os.PathLike[str],
    max_line_bytes: int = MAX_LINE_BYTES,
    pool: Executor | None = None,
    max_file_bytes: int = MAX_TXT_BYTES,
) -> ParseResult:
    """Parse a whole ``IMFDB_final`` tree without opening any image.

    Folders are walked in sorted order so records and rejections come out in the same
    order on every machine. Files outside ``<Actor>/<Movie>/*.txt`` and
    ``<Actor>/<Movie>/images/<crop>`` are reported as ``junk_file``.

    Args:
        root: The ``IMFDB_final`` folder (one sub-folder per actor).
        max_line_bytes: A longer txt line is ``malformed_line`` and not parsed.
        pool: Parses movie folders in these worker processes (each movie is independent;
            results keep the walk's order, so the output is the same as without a pool).
        max_file_bytes: A larger annotation txt is ``too_large``, never read
            (``ingest.max_annotation_bytes``).

    Returns:
        Records and rejections (source ``imfdb``, stage ``parse``); ``images`` counts the
        crop files found on disk.

    Raises:
        NotADirectoryError: When ``root`` is not a folder (a bad input, not a bad row).
    """
    root_path = Path(root).absolute()
    if not root_path.is_dir():
        raise NotADirectoryError(f"IMFDB root {str(root_path)!r} is not a directory; point it at IMFDB_final/")
    steps: list[Rejection | tuple[Path, str]] = []  # in walk order: junk found, or a movie to parse
    found: list[Rejection] = []
    for actor in _list_dir(root_path, root_path, found):
        if not _is_dir(actor) or actor.name.startswith("."):
            _junk(Path(actor.path), root_path, "not an actor folder", found)
            continue
        movies = _list_dir(Path(actor.path), root_path, found)
        steps += found
        found = []
        for movie in movies:
            if not _is_dir(movie) or movie.name.startswith("."):
                _junk(Path(movie.path), root_path, "not a movie folder", found)
                steps += found
                found = []
            else:
                steps.append((Path(movie.path), actor.name))
    steps += found
    movie_steps = [step for step in steps if isinstance(step, tuple)]
    args = (
        [movie for movie, _ in movie_steps],
        [root_path] * len(movie_steps),
        [actor for _, actor in movie_steps],
        [max_line_bytes] * len(movie_steps),
        [max_file_bytes] * len(movie_steps),
    )
    parsed = iter(pool.map(_scan_movie, *args, chunksize=4) if pool is not None else map(_scan_movie, *args))
    result = ParseResult()
    for step in steps:
        if isinstance(step, tuple):
            result.extend(next(parsed))
        else:
            result.rejections.append(step)
    logger.info(
        "IMFDB %s: %d records from %d crops, rejections %s",
        root_path,
        len(result.records),
        result.images,
        count_by_reason(result.rejections),
    )
    return result
