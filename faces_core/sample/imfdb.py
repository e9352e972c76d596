"""Synthetic IMFDB tree holding every quirk of the published annotation files.

:func:`write_imfdb_sample` draws a small ``IMFDB_final`` folder: a few actors with a few
movies each, mostly well-formed 17-field rows, plus one or more instances of each format
quirk the parser must survive (see :mod:`faces_core.ingest.sources.imfdb`). It tallies what the
parser must return while it writes, so a test compares the parse against counts that were
not computed by the parser itself.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from faces_core.errors import Reason
from faces_core.sample import encode, face_image
from faces_core.taxonomy import IMFDB_COLUMNS, IMFDB_LABELS, IMFDB_TYPOS

ACTORS: Final = (
    ("AaravMehta", "MALE"),
    ("BhavnaIyer", "FEMALE"),
    ("ChetanRao", "MALE"),
    ("DivyaNair", "FEMALE"),
    ("EshanKapur", "MALE"),
    ("FarahSeth", "FEMALE"),
    ("GopalDas", "MALE"),
    ("HemaPillai", "FEMALE"),
)
"""Invented actor folder names and genders (no real person)."""

MOVIES: Final = (
    "NeelaAasman",
    "SunehraPal",
    "DoorKiRaah",
    "PhoolBagh",
    "ChandniRaat",
    "NayaSavera",
    "BaarishMein",
    "LambaSafar",
)
_RAW_TOKENS: Final = {
    attribute: tuple(raw for raw, (attr, _) in IMFDB_LABELS.items() if attr == attribute and raw not in IMFDB_TYPOS)
    for attribute in IMFDB_COLUMNS
}
SMALL_SIDE: Final = 24
"""Shorter side of the tiny crops (below a 50 px size bucket)."""
LARGE_SIDE: Final = 260
"""Shorter side of the large crops (above 224 px)."""


@dataclass(frozen=True, slots=True)
class ImfdbSample:
    """A written sample and what parsing it must give.

    Attributes:
        root: The ``IMFDB_final`` folder (pass it to ``scan_imfdb``).
        images: Expected ``ParseResult.images`` (crop files written in ``images/``).
        records: Expected number of face records.
        rows: Non-blank txt lines written (records plus row-level rejections).
        rejections: Expected rejection count per reason code at parse stage.
        corrupt_crops: Crops whose JPEG is truncated (they parse; validation must reject).
        tiny_crops: Crops whose shorter side is below 50 px.
        large_crops: Crops whose shorter side is above 224 px.
    """

    root: Path
    images: int
    records: int
    rows: int
    rejections: dict[str, int]
    corrupt_crops: tuple[Path, ...]
    tiny_crops: tuple[Path, ...]
    large_crops: tuple[Path, ...]


@dataclass(slots=True)
class _Movie:
    """One movie folder being written: its lines and the next crop number."""

    actor: str
    gender: str
    name: str
    path: Path
    txt_name: str
    actor_field: str
    year: str
    lines: list[str] = field(default_factory=list)
    bom: bool = False
    crlf: bool = False
    next_crop: int = 1


@dataclass(slots=True)
class _Writer:
    """Draws crops and rows and tallies the parse outcome of everything it writes."""

    root: Path
    rng: random.Random
    images: int = 0
    records: int = 0
    rows: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    corrupt: list[Path] = field(default_factory=list)
    tiny: list[Path] = field(default_factory=list)
    large: list[Path] = field(default_factory=list)

    def crop(
        self,
        movie: _Movie,
        size: tuple[int, int] | None = None,
        suffix: str = ".jpg",
        corrupt: bool = False,
    ) -> str:
        """Write the next crop of a movie and return its file name."""
        name = f"{movie.actor}_{movie.next_crop}{suffix}"
        movie.next_crop += 1
        w, h = size or (self.rng.randint(56, 200), self.rng.randint(64, 220))
        data = encode(face_image(w, h, [(1, 1, w - 2, h - 2)], self.rng))
        path = movie.path / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) // 2] if corrupt else data)
        self.images += 1
        for kept, bucket in ((corrupt, self.corrupt), (min(w, h) < 50, self.tiny), (min(w, h) > 224, self.large)):
            if kept:
                bucket.append(path)
        return name

    def labels(self, movie: _Movie) -> list[str]:
        """Seven raw label cells in IMFDB column order, gender matching the actor."""
        cells = [self.rng.choice(_RAW_TOKENS[attribute]) for attribute in IMFDB_COLUMNS]
        cells[0] = movie.gender
        return cells

    def cells(self, movie: _Movie, crop: str, labels: Sequence[str] | None = None) -> list[str]:
        """The 17 cells of a well-formed row for ``crop``."""
        frame = f"{self.rng.randint(100, 99999):05d}.jpg"
        box = [self.rng.randint(0, 500), self.rng.randint(0, 300), self.rng.randint(30, 200), self.rng.randint(30, 200)]
        clip = f"{movie.name}_clip{self.rng.randint(1, 9)}"
        meta = [movie.name, movie.year, movie.actor_field]
        return [clip, frame, crop, *map(str, box), *meta, *(labels or self.labels(movie))]

    def line(self, movie: _Movie, text: str, outcome: Reason | None = None, **extra: int) -> None:
        """Append a non-blank line; ``outcome`` None means it yields a record.

        Args:
            movie: Movie whose txt gets the line.
            text: The line without its line break.
            outcome: Row-level reason the parser must give, or None for a record.
            **extra: Further (non row-level) reasons the line causes, with their counts.
        """
        movie.lines.append(text)
        self.rows += 1
        if outcome is None:
            self.records += 1
        else:
            self.rejections[outcome] += 1
        for reason, count in extra.items():
            self.rejections[Reason(reason)] += count

    def junk(self, path: Path, data: bytes = b"\x00\x00\x00\x01Bud1") -> None:
        """Write a file the parser must report as ``junk_file``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.rejections[Reason.JUNK_FILE] += 1


def _tab(cells: Sequence[str]) -> str:
    return "\t".join(cells)


def _write_quirks(w: _Writer, slots: list[_Movie]) -> None:
    """Append one instance of every row-level quirk, spread round-robin over the movies."""
    it = iter(range(1_000))

    def slot() -> _Movie:
        return slots[next(it) % len(slots)]

    m = slot()  # NUL bytes inside a row
    w.line(m, _tab(w.cells(m, w.crop(m))).replace("\t", "\t\x00", 1))
    m = slot()  # trailing TAB: 18 fields
    w.line(m, _tab(w.cells(m, w.crop(m))) + "\t")
    m = slot()  # clip and frame joined by a space: 16 fields
    cells = w.cells(m, w.crop(m))
    w.line(m, _tab([f"{cells[0]} {cells[1]}", *cells[2:]]))
    m = slot()  # multi-space coordinate cell
    cells = w.cells(m, w.crop(m))
    w.line(m, _tab([*cells[:3], f"{cells[3]}  {cells[4]}  {cells[5]}  ", *cells[6:]]))
    m = slot()  # null row
    w.line(m, _tab(["null"] * 7 + w.cells(m, "x.jpg")[7:]), Reason.MISSING_FIELD)
    m = slot()  # shifted row: leading extra field, only three numbers after the crop
    cells = w.cells(m, w.crop(m))
    w.line(m, _tab([cells[3], *cells[:3], *cells[4:]]), bad_geometry=1)
    m = slot()  # geometry moved in front of the clip
    cells = w.cells(m, w.crop(m))
    w.line(m, _tab([*cells[3:7], *cells[:3], *cells[7:]]))
    m = slot()  # crop first, then geometry, then clip and frame
    cells = w.cells(m, w.crop(m))
    w.line(m, _tab([*cells[2:7], *cells[:2], *cells[7:]]))
    m = slot()  # merged and empty label cells (``NONE MEDIUM``, ``YOUNG FRONTAL``, ``""``)
    lab = [m.gender, "NEUTRAL", "NONE", "MEDIUM", "YOUNG", "FRONTAL", "PARTIAL"]
    cells = w.cells(m, w.crop(m), lab)
    w.line(
        m, _tab([*cells[:9], cells[9] + " ", lab[0], "", lab[1], f"{lab[2]} {lab[3]} ", f"{lab[4]} {lab[5]}", lab[6]])
    )
    m = slot()  # typos from the published files
    w.line(m, _tab(w.cells(m, w.crop(m), [m.gender, "NEUTRAL", "NONE", "BAD", "MIDDDLE", "LEFT", "PARTIA"])))
    m = slot()
    w.line(m, _tab(w.cells(m, w.crop(m), [m.gender, "HAPPINESS", "NONE", "HIGH", "OLD", "UP", "PARTIALs"])))
    m = slot()  # unknown label: reported, the face is kept
    w.line(
        m, _tab(w.cells(m, w.crop(m), [m.gender, "SMILING", "NONE", "HIGH", "OLD", "UP", "PARTIAL"])), unknown_label=1
    )
    m = slot()  # two poses in one row
    w.line(
        m,
        _tab(w.cells(m, w.crop(m), [m.gender, "FEAR", "NONE", "HIGH", "YOUNG", "FRONTAL RIGHT", "OVER"])),
        conflicting_labels=1,
    )
    m = slot()  # row split across two lines: the row is kept, the fragment is malformed
    cells = w.cells(m, w.crop(m))
    w.line(m, _tab(cells[:-2]))
    w.line(m, "\t" + _tab(cells[-2:]), Reason.MALFORMED_LINE)
    m = slot()  # a crop that is not on disk
    w.line(m, _tab(w.cells(m, f"{m.actor}_missing_{m.next_crop}.jpg")), Reason.MISSING_CROP)
    m = slot()  # exact duplicate row
    text = _tab(w.cells(m, w.crop(m)))
    w.line(m, text)
    w.line(m, text, Reason.DUPLICATE_ROW)
    m = slot()  # same crop listed twice, expression and pose disagree
    crop = w.crop(m)
    lab = [m.gender, "ANGER", "GLASSES", "MEDIUM", "YOUNG", "LEFT", "PARTIAL"]
    w.line(m, _tab(w.cells(m, crop, lab)))
    w.line(m, _tab(w.cells(m, crop, [*lab[:1], "SADNESS", *lab[2:5], "RIGHT", *lab[6:]])), Reason.DUPLICATE_ROW)
    w.rejections[Reason.CONFLICTING_LABELS] += 2
    m = slot()  # an image no row names
    w.crop(m)
    w.rejections[Reason.ORPHAN_CROP] += 1
    m = slot()  # a .jpeg crop
    w.line(m, _tab(w.cells(m, w.crop(m, suffix=".jpeg"))))
    m = slot()  # truncated JPEG: parses fine, validation must reject it
    w.line(m, _tab(w.cells(m, w.crop(m, corrupt=True))))
    for size in ((SMALL_SIDE, SMALL_SIDE + 6), (18, 22), (LARGE_SIDE, LARGE_SIDE + 40)):
        m = slot()
        w.line(m, _tab(w.cells(m, w.crop(m, size=size))))


def _write_geometry_only(w: _Writer, actor: str, gender: str, faces: int) -> None:
    """A space-separated file without label columns, named after the actor, not the movie."""
    movie = _Movie(actor, gender, "Extras", w.root / actor / "Extras", f"{actor}.txt", actor, "-")
    for _ in range(faces):
        crop = w.crop(movie)
        box = " ".join(str(w.rng.randint(1, 300)) for _ in range(4))
        w.line(movie, f"Extras Full Movie Part {w.rng.randint(1, 4)} {w.rng.randint(1, 9999):04d}.jpg {crop} {box}")
    _flush(movie)


def _flush(movie: _Movie) -> None:
    """Write a movie's txt with its encoding quirks."""
    newline = "\r\n" if movie.crlf else "\n"
    text = newline.join(movie.lines) + newline
    movie.path.mkdir(parents=True, exist_ok=True)
    (movie.path / movie.txt_name).write_bytes(("\ufeff" if movie.bom else "").encode() + text.encode())


def write_imfdb_sample(root: Path, seed: int = 0, actors: int = 4, movies: int = 2, faces: int = 5) -> ImfdbSample:
    """Write a synthetic ``IMFDB_final`` tree into ``root`` and return what parsing must give.

    Every quirk of the published files appears at least once: BOM (also a BOM-only line),
    CRLF, blank lines, NUL, 18/16/15-field rows, a multi-space coordinate cell, a
    geometry-only space-separated file, a ``null`` row, shifted rows, merged label cells,
    typos, an unknown label, two values in one cell, a row split across lines, a missing
    crop, an orphan crop, exact and conflicting duplicate rows, ``.DS_Store`` and other
    junk, an actor field spelled unlike the folder, a txt not named after its movie, a
    ``.jpeg`` crop, a truncated JPEG and tiny (< 50 px) and large (> 224 px) crops.

    Args:
        root: Folder to create as the ``IMFDB_final`` root (parents are created).
        seed: Seed of every random choice: the same seed writes the same bytes.
        actors: Number of actor folders (1 to 8).
        movies: Regular movie folders per actor (at least 1); actor 0 gets one more
            geometry-only movie.
        faces: Well-formed rows (and crops) per regular movie.

    Returns:
        The sample with its expected parse counts.

    Raises:
        ValueError: When ``actors``, ``movies`` or ``faces`` is out of range.
    """
    if not 1 <= actors <= len(ACTORS) or movies < 1 or faces < 0:
        raise ValueError(
            f"need 1 <= actors <= {len(ACTORS)}, movies >= 1 and faces >= 0; got actors={actors} "
            f"movies={movies} faces={faces}"
        )
    root = Path(root)
    w = _Writer(root=root, rng=random.Random(seed))
    slots: list[_Movie] = []
    for a, (actor, gender) in enumerate(ACTORS[:actors]):
        for j in range(movies):
            index = a * movies + j
            name = MOVIES[index % len(MOVIES)] + (f"_{index // len(MOVIES)}" if index >= len(MOVIES) else "")
            slots.append(
                _Movie(actor, gender, name, root / actor / name, f"{name}.txt", actor, str(w.rng.randint(1955, 2015)))
            )
    slots[0].bom = True
    slots[-1].crlf = True
    slots[min(1, len(slots) - 1)].actor_field = slots[min(1, len(slots) - 1)].actor[:4] + "Kumar"
    slots[-1].txt_name = f"{slots[-1].actor}_{slots[-1].name}.txt"
    for movie in slots:
        for k in range(faces):
            if k == 1:
                movie.lines.append("")
            w.line(movie, _tab(w.cells(movie, w.crop(movie))))
    slots[0].lines.insert(min(2, len(slots[0].lines)), "\ufeff")
    _write_quirks(w, slots)
    for movie in slots:
        _flush(movie)
    _write_geometry_only(w, *ACTORS[0], faces=max(faces, 3))
    first = slots[0]
    for junk in (root / ".DS_Store", root / first.actor / ".DS_Store", first.path / ".DS_Store"):
        w.junk(junk)
    w.junk(first.path / "images" / ".DS_Store")
    w.junk(first.path / "images" / "Thumbs.db")
    w.junk(slots[-1].path / "notes.docx", b"PK\x03\x04")
    return ImfdbSample(
        root=root,
        images=w.images,
        records=w.records,
        rows=w.rows,
        rejections={str(reason): count for reason, count in w.rejections.most_common()},
        corrupt_crops=tuple(w.corrupt),
        tiny_crops=tuple(w.tiny),
        large_crops=tuple(w.large),
    )
