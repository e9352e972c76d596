"""Paths that try to leave the IMFDB root: ``..`` and absolute crop names, symlinks.

The rule (README, "Rules for bad data"): a crop name is a file name in ``images/``; a row
naming a path that can leave that folder is ``path_outside_root`` and nothing is looked
up. A symlink anywhere in the tree whose target resolves outside the root is not followed
(``symlink_outside_root``); links that stay inside are followed and the face's
``image_ref`` is the link's own path, relative to the root like every other.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from faces_core.errors import Rejection, read_errors
from faces_core.ingest.pipeline import IngestSettings, local_files, run_ingest
from faces_core.ingest.sources.imfdb import ROW_REASONS, escapes_root, leaves_folder, parse_imfdb_file, scan_imfdb
from faces_core.records import FaceRecord, ParseResult
from faces_core.sample import encode, face_image
from faces_core.storage import read_faces

LABELS = "MALE\tNEUTRAL\tNONE\tMEDIUM\tYOUNG\tFRONTAL\tPARTIAL"


def _row(crop: str, movie: str = "Film") -> str:
    return f"{movie}_clip1\t0001.jpg\t{crop}\t10\t20\t30\t40\t{movie}\t2001\tActor\t{LABELS}"


def _jpeg(seed: int) -> bytes:
    """A distinct 80x90 face crop (distinct content: no duplicate_image between cases)."""
    return encode(face_image(80, 90, [(0, 0, 80, 90)], random.Random(seed)))


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _link(link: Path, target: Path | str) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


# --- defect 7: a crop symlink leaving the root ---------------------------------------------


def test_crop_symlink_outside_root_is_rejected_and_every_ref_stays_relative(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    images = root / "Actor" / "Film" / "images"
    secret = _write(tmp_path / "elsewhere" / "secret.jpg", _jpeg(99))
    _write(images / "Actor_1.jpg", _jpeg(1))
    _link(images / "Actor_2.jpg", secret)
    _write(root / "Actor" / "Film" / "Film.txt", _row("Actor_1.jpg") + "\n" + _row("Actor_2.jpg") + "\n")

    summary = run_ingest(None, scan_imfdb(root), root, IngestSettings(out_dir=str(tmp_path / "out"), workers=1))

    rows = read_faces(tmp_path / "out").to_table(columns=["image_ref", "image_sha256"]).to_pylist()
    assert [row["image_ref"] for row in rows] == ["Actor/Film/images/Actor_1.jpg"]
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in {row["image_sha256"] for row in rows}
    errors = read_errors(tmp_path / "out" / "errors.parquet")
    assert [(e.item, str(e.reason), e.stage) for e in errors] == [
        ("Actor/Film/Film.txt:2", "symlink_outside_root", "parse")
    ]
    assert str(secret) in errors[0].message
    assert summary["sources"]["imfdb"]["rejected"] == {"symlink_outside_root": 1}


# --- one tree with every path case, ingested once ------------------------------------------


@dataclass(frozen=True)
class Tree:
    root: Path
    outside: Path
    parsed: ParseResult
    errors: list[Rejection]
    refs: dict[str, str]
    """item -> image_ref of every kept face."""


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("paths")
    root, outside = base / "IMFDB_final", base / "outside"
    _write(outside / "secret.jpg", _jpeg(90))
    _write(outside / "secret2.jpg", _jpeg(91))
    _write(outside / "Movie" / "Movie.txt", _row("Actor_8.jpg", "Movie") + "\n")
    _write(outside / "Movie" / "images" / "Actor_8.jpg", _jpeg(92))
    _write(outside / "Star" / "Movie" / "Movie.txt", _row("Star_1.jpg", "Movie") + "\n")
    _write(outside / "Star" / "Movie" / "images" / "Star_1.jpg", _jpeg(93))
    _write(outside / "images" / "Actor_5.jpg", _jpeg(94))
    _write(outside / "film.txt", _row("Actor_7.jpg", "Film3") + "\n")

    film = root / "Actor" / "Film"
    _write(film / "images" / "Actor_1.jpg", _jpeg(1))
    _link(film / "images" / "link_out.jpg", outside / "secret.jpg")
    _write(film / "extra" / "pool.jpg", _jpeg(2))
    _link(film / "images" / "link_in.jpg", Path("..") / "extra" / "pool.jpg")
    _link(film / "images" / "dangling.jpg", film / "images" / "gone.jpg")
    _link(film / "images" / "loop.jpg", "loop.jpg")
    _link(film / "images" / "unnamed_out.jpg", outside / "secret2.jpg")
    crops = [
        "Actor_1.jpg",
        f"../../../../{outside.name}/secret.jpg",
        str(outside / "secret.jpg"),
        "..\\..\\..\\outside\\secret.jpg",
        "link_out.jpg",
        "link_in.jpg",
        "dangling.jpg",
        "loop.jpg",
        "C:\\outside\\secret.jpg",
        "../images/Actor_1.jpg",
    ]
    _write(film / "Film.txt", "".join(_row(c) + "\n" for c in crops))
    _link(root / "Actor" / "LinkedMovie", outside / "Movie")
    _link(root / "LinkedActor", outside / "Star")
    _write(root / "Actor" / "Film2" / "Film2.txt", _row("Actor_5.jpg", "Film2") + "\n")
    _link(root / "Actor" / "Film2" / "images", outside / "images")
    _write(root / "Actor" / "Film3" / "images" / "Actor_7.jpg", _jpeg(3))
    _link(root / "Actor" / "Film3" / "Film3.txt", outside / "film.txt")

    out = base / "out"
    # The root itself is given through a link: that alone must change nothing.
    given = _link(base / "root-link", root)
    parsed = scan_imfdb(given)
    run_ingest(None, parsed, given, IngestSettings(out_dir=str(out), raw_dir=str(base / "raw"), workers=1))
    table = read_faces(out).to_table(columns=["item", "image_ref"]).to_pylist()
    errors = read_errors(out / "errors.parquet")
    yield Tree(root, outside, parsed, errors, {r["item"]: r["image_ref"] for r in table})


FILM = "Actor/Film/Film.txt"
CASES: dict[str, tuple[str, str] | str] = {
    f"{FILM}:1": "Actor/Film/images/Actor_1.jpg",  # control
    f"{FILM}:2": ("path_outside_root", "parse"),  # ../../../../outside/secret.jpg
    f"{FILM}:3": ("path_outside_root", "parse"),  # /abs/.../outside/secret.jpg
    f"{FILM}:4": ("path_outside_root", "parse"),  # ..\..\..\outside\secret.jpg
    f"{FILM}:5": ("symlink_outside_root", "parse"),  # images/link_out.jpg -> outside
    f"{FILM}:6": "Actor/Film/images/link_in.jpg",  # -> ../extra/pool.jpg, inside: followed
    f"{FILM}:7": ("unreadable_file", "validate"),  # dangling link
    f"{FILM}:8": ("unreadable_file", "validate"),  # link to itself
    f"{FILM}:9": ("path_outside_root", "parse"),  # C:\outside\secret.jpg
    f"{FILM}:10": ("path_outside_root", "parse"),  # ../images/Actor_1.jpg: leaves images/ even if back
    "Actor/Film/images/unnamed_out.jpg": ("symlink_outside_root", "parse"),
    "Actor/Film/extra/pool.jpg": ("junk_file", "parse"),  # the link target itself is not a crop
    "Actor/LinkedMovie": ("symlink_outside_root", "parse"),
    "LinkedActor": ("symlink_outside_root", "parse"),
    "Actor/Film2/images": ("symlink_outside_root", "parse"),
    "Actor/Film2/Film2.txt:1": ("missing_crop", "parse"),  # its images/ was not followed
    "Actor/Film3/Film3.txt": ("symlink_outside_root", "parse"),
    "Actor/Film3/images/Actor_7.jpg": ("orphan_crop", "parse"),  # the only txt was not followed
}


@pytest.mark.parametrize("item", list(CASES))
def test_path_case_outcome(tree: Tree, item: str) -> None:
    expected = CASES[item]
    outcomes = [(str(e.reason), e.stage) for e in tree.errors if e.item == item]
    if isinstance(expected, str):
        assert tree.refs[item] == expected
        assert outcomes == []
    else:
        assert item not in tree.refs
        assert outcomes == [expected]


def test_path_tree_has_no_other_outcome_and_no_absolute_ref(tree: Tree) -> None:
    assert {e.item for e in tree.errors} | set(tree.refs) == set(CASES)
    assert len(tree.errors) == sum(1 for v in CASES.values() if isinstance(v, tuple))
    assert all(not ref.startswith("/") and ".." not in ref.split("/") for ref in tree.refs.values())
    assert not any(str(tree.outside) in ref for ref in tree.refs.values())


def test_every_line_is_one_record_or_one_row_rejection(tree: Tree) -> None:
    # Rows read: Film.txt (10) and Film2.txt (1); the linked txt/movie/actor are not read.
    rows = [e.item for e in tree.parsed.rejections if e.reason in ROW_REASONS and ".txt:" in e.item]
    records = [r.item for r in tree.parsed.records]
    assert sorted(rows + records) == sorted(i for i in CASES if ".txt:" in i)


# --- the guard in local_files, for records that did not come from scan_imfdb ---------------


def test_local_files_refuses_images_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    inside = _write(root / "A" / "M" / "images" / "A_1.jpg", _jpeg(1))
    outside = _write(tmp_path / "outside.jpg", _jpeg(2))
    link = _link(root / "A" / "M" / "images" / "A_2.jpg", outside)
    records = [
        FaceRecord("imfdb", f"A/M/M.txt:{i}", str(path), "A", "M", None, split_key="A")
        for i, path in enumerate([inside, outside, link, root / "A" / ".." / ".." / "outside.jpg", root], start=1)
    ]
    files, refs, rejected = local_files(records, root)
    assert refs == {str(inside): "A/M/images/A_1.jpg"}
    assert set(files) == {str(inside)}
    assert [(r.item, str(r.reason), r.stage) for r in rejected] == [
        ("A/M/M.txt:2", "path_outside_root", "validate"),
        ("A/M/M.txt:3", "symlink_outside_root", "validate"),
        ("A/M/M.txt:4", "path_outside_root", "validate"),
        ("A/M/M.txt:5", "path_outside_root", "validate"),  # the root itself is no image
    ]


def test_parse_imfdb_file_with_given_crop_names_never_looks_outside(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    txt = _write(root / "A" / "M" / "M.txt", _row("../../../../etc/passwd.jpg") + "\n" + _row("A_1.jpg") + "\n")
    result = parse_imfdb_file(txt, root, crops=["A_1.jpg", "../../../../etc/passwd.jpg"])
    assert [(r.item, str(r.reason)) for r in result.rejections] == [("A/M/M.txt:1", "path_outside_root")]
    assert [r.image_ref for r in result.records] == [str(root / "A" / "M" / "images" / "A_1.jpg")]


@pytest.mark.parametrize(
    ("name", "leaves"),
    [
        ("Actor_1.jpg", False),
        ("..jpg", False),
        ("a..b.jpg", False),
        ("sub/Actor_1.jpg", False),  # stays below images/ (and is then simply missing)
        ("../Actor_1.jpg", True),
        ("sub/../../x.jpg", True),
        ("/etc/x.jpg", True),
        ("\\\\server\\share\\x.jpg", True),
        ("..\\x.jpg", True),
        ("C:x.jpg", True),
        ("c:\\x.jpg", True),
    ],
)
def test_leaves_folder(name: str, leaves: bool) -> None:
    assert leaves_folder(name) is leaves


def test_escapes_root_resolves_both_sides(tmp_path: Path) -> None:
    root = tmp_path / "real"
    (root / "a").mkdir(parents=True)
    alias = _link(tmp_path / "alias", root)
    assert escapes_root(alias / "a", alias) is None
    assert escapes_root(root / "a", alias) is None
    assert escapes_root(_link(root / "up", ".."), root) == str(tmp_path)
    assert escapes_root(_link(root / "self", "."), root) is None
    assert escapes_root(root, root) is None
    assert os.path.realpath(tmp_path / "x") == escapes_root(_link(root / "gone", tmp_path / "x"), root)


def test_names_that_are_not_utf8_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "IMFDB_final"
    film = root / "Actor" / "Film"
    _write(film / "images" / "Actor_1.jpg", _jpeg(1))
    _write(film / "Film.txt", _row("Actor_1.jpg") + "\n")
    raw_root = os.fsencode(root)
    os.makedirs(raw_root + b"/Act\xffor/Film/images")
    with open(raw_root + b"/Actor/Film/images/Actor_\xfe.jpg", "wb") as f:
        f.write(_jpeg(2))
    summary = run_ingest(None, scan_imfdb(root), root, IngestSettings(out_dir=str(tmp_path / "out"), workers=1))
    errors = read_errors(tmp_path / "out" / "errors.parquet")
    assert {(e.item, str(e.reason)) for e in errors} == {
        ("Act\ufffdor", "unreadable_file"),
        ("Actor/Film/images/Actor_\ufffd.jpg", "unreadable_file"),
    }
    assert len(errors) == 2
    assert summary["faces"] == 1
