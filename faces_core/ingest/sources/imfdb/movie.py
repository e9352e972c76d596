"""One movie folder's txt rows merged per crop into records, with a rejection for every other line."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from faces_core.errors import Reason, Rejection
from faces_core.files import open_regular
from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TXT_BYTES
from faces_core.ingest.sources.imfdb.rows import SOURCE, Row, iter_imfdb_lines, parse_line, reject
from faces_core.ingest.sources.imfdb.tree import IMAGES_DIR, leaves_folder, list_crops, relative, symlink_rejection
from faces_core.records import FaceRecord, ParseResult
from faces_core.taxonomy import empty_labels, map_imfdb_token


@dataclass(slots=True)
class _Face:
    """A crop named by one or more rows: the record-to-be and the label votes for it."""

    first: Row
    crop_path: str
    keys: set[str] = field(default_factory=set)
    votes: dict[str, dict[str, list[int]]] = field(default_factory=dict)


class MovieParser:
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
        rel = relative(path, self.root)
        try:
            with open_regular(path) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > self.max_file_bytes:
                    self.rejections.append(
                        reject(
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
                reject(rel, Reason.UNREADABLE_FILE, f"cannot read annotation file: {exc.strerror or exc}")
            )

    def _feed_line(self, line: str, item: str, lineno: int) -> None:
        if len(line) > self.max_line_bytes:
            # Checked before splitting: a huge line of tabs would become millions of cells.
            self.rejections.append(
                reject(
                    item,
                    Reason.MALFORMED_LINE,
                    f"line is longer than {self.max_line_bytes} characters; not parsed "
                    "(raise ingest.max_line_bytes if it is real)",
                )
            )
            return
        row = parse_line(line, item, lineno, self._on_disk)
        if isinstance(row, Rejection):
            self.rejections.append(row)
            return
        name = self._crop_of(row)
        if name is not None:
            self._add(name, row)

    def _crop_of(self, row: Row) -> str | None:
        """The crop file on disk that ``row`` names, or None with the row's rejection recorded."""
        item = row.item
        if leaves_folder(row.crop):
            self.rejections.append(
                reject(
                    item,
                    Reason.PATH_OUTSIDE_ROOT,
                    f"crop {row.crop!r} is a path leaving images/; a crop must be a file name in images/",
                )
            )
            return None
        name = self._resolve(row.crop)
        if name is not None and name in self.escaped:
            self.rejections.append(symlink_rejection(item, self.escaped[name]))
            self.named_links.add(name)
            return None
        if name is None:
            where = relative(self.movie_dir / IMAGES_DIR, self.root)
            self.rejections.append(reject(item, Reason.MISSING_CROP, f"crop {row.crop!r} is not in {where}/"))
        return name

    def _add(self, name: str, row: Row) -> None:
        """Make ``row`` the record of crop ``name``, or merge it into the record of an earlier row."""
        item = row.item
        face = self.faces.get(name)
        if face is None:
            face = self.faces[name] = _Face(first=row, crop_path=os.path.join(self.movie_dir, IMAGES_DIR, name))
            if row.frame_box is None:
                self.rejections.append(
                    reject(
                        f"{item}#frame_box",
                        Reason.BAD_GEOMETRY,
                        f"no x, y, w, h integers for crop {name!r}; face kept with frame_box None",
                    )
                )
        elif row.key in face.keys:
            self.rejections.append(
                reject(item, Reason.DUPLICATE_ROW, f"exact duplicate of an earlier row for crop {name!r}")
            )
            return
        else:
            self.rejections.append(
                reject(
                    item,
                    Reason.DUPLICATE_ROW,
                    f"crop {name!r} already read at line {face.first.lineno}; labels merged into that record",
                )
            )
        face.keys.add(row.key)
        self._vote(face, row)

    def _vote(self, face: _Face, row: Row) -> None:
        """Add a row's label tokens to the crop's votes; unknown tokens are reported here."""
        for token in row.tokens:
            mapped = map_imfdb_token(token)
            if mapped is None:
                self.rejections.append(
                    reject(f"{row.item}#{token}", Reason.UNKNOWN_LABEL, f"label {token!r} is in no IMFDB vocabulary")
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
                    reject(
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
        crops = list_crops(images_dir, root_path, escaped)[0] if images_dir.is_dir() else []
    parser = MovieParser(movie_dir, root_path, crops, escaped, max_line_bytes)
    parser.feed_file(path)
    result = parser.finish(subject=movie_dir.parent.name, movie=movie_dir.name)
    result.images = len(result.records)
    return result
