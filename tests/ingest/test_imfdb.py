"""IMFDB source: one test per quirk of the published annotation files (each with a fixture
tree written here), the synthetic sample's round trip, and the exact accounting of the real
reference files and the 50-actor dataset in ../shared."""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from faces_core.errors import Reason, count_by_reason
from faces_core.ingest.pipeline import local_files
from faces_core.ingest.sources.imfdb import ROW_REASONS, parse_imfdb_file, read_imfdb_lines, scan_imfdb
from faces_core.records import FaceRecord, ParseResult
from faces_core.sample import encode, face_image
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.taxonomy import ATTRIBUTE_NAMES
from tests.conftest import SHARED

REFERENCE = SHARED / "reference" / "imfdb"
FULL = SHARED / "datasets" / "imfdb" / "IMFDB_final"

CROP = encode(face_image(12, 14, [(1, 1, 11, 13)], random.Random(0)))
LABELS = ("MALE", "NEUTRAL", "NONE", "MEDIUM", "YOUNG", "FRONTAL", "PARTIAL")
CANONICAL = {
    "gender": "male",
    "expression": "neutral",
    "occlusion": "none",
    "illumination": "medium",
    "age_stage": "young",
    "pose": "frontal",
    "makeup": "partial",
}
ITEM = "Actor/Film/Film.txt"


def _row(
    crop: str,
    box: Sequence[object] = (10, 20, 30, 40),
    labels: Sequence[str] = LABELS,
    clip: str = "Film_clip1",
    frame: str = "0001.jpg",
    actor: str = "Actor",
) -> list[str]:
    """The 17 cells of a well-formed row."""
    return [clip, frame, crop, *map(str, box), "Film", "2001", actor, *labels]


def _tab(cells: Sequence[str]) -> str:
    return "\t".join(cells)


def _movie(
    root: Path,
    lines: Sequence[str] | bytes,
    crops: Sequence[str] = (),
    actor: str = "Actor",
    movie: str = "Film",
    txt: str = "Film.txt",
) -> Path:
    """Write ``root/actor/movie/txt`` (lines joined by LF, or raw bytes) and its crops."""
    folder = root / actor / movie
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    (folder / txt).write_bytes(data)
    for name in crops:
        (folder / "images" / name).write_bytes(CROP)
    return folder / txt


def _reasons(result: ParseResult) -> dict[str, int]:
    return count_by_reason(result.rejections)


def _only(result: ParseResult) -> FaceRecord:
    assert len(result.records) == 1, result.records
    return result.records[0]


def _labelled(record: FaceRecord) -> dict[str, str]:
    """The IMFDB labels that are set (``is_face`` left out)."""
    return {k: v for k, v in record.labels.items() if v is not None and k != "is_face"}


def _items(result: ParseResult, reason: Reason) -> list[str]:
    return [r.item for r in result.rejections if r.reason == reason]


def _non_blank_items(root: Path) -> set[str]:
    """``file:line`` of every non-blank txt line, counted without the parser's reader."""
    items = set()
    for path in root.rglob("*.txt"):
        text = path.read_bytes().decode("utf-8", errors="replace").replace("\x00", "").replace("\ufeff", "")
        rel = path.relative_to(root).as_posix()
        items |= {f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if line.strip()}
    return items


def _assert_accounted(result: ParseResult, root: Path) -> None:
    """Every non-blank line is exactly one record or one row-level rejection."""
    rows = [r.item for r in result.rejections if r.reason in ROW_REASONS]
    records = [r.item for r in result.records]
    assert len(rows) == len(set(rows)) and len(records) == len(set(records))
    assert not set(rows) & set(records)
    assert set(rows) | set(records) == _non_blank_items(root)


# --- one test per quirk --------------------------------------------------------------------


def test_well_formed_row_gives_a_full_record(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg"))], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    record = _only(result)
    assert result.rejections == [] and result.images == 1
    assert record.source == "imfdb" and record.item == f"{ITEM}:1"
    assert record.image_ref == str((tmp_path / "Actor/Film/images/Actor_1.jpg").absolute())
    assert (record.subject, record.movie, record.split_key) == ("Actor", "Film", "Actor")
    assert record.box is None and record.frame_box == (10, 20, 30, 40)
    assert (record.image_width, record.image_height) == (None, None)
    assert set(record.labels) == set(ATTRIBUTE_NAMES)
    assert record.labels == {**dict.fromkeys(ATTRIBUTE_NAMES), **CANONICAL, "is_face": "true"}


def test_bom_crlf_blank_and_bom_only_lines_are_skipped(tmp_path: Path) -> None:
    lines = ["", _tab(_row("Actor_1.jpg")), "\ufeff", "  ", _tab(_row("Actor_2.jpg"))]
    _movie(tmp_path, b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n", ["Actor_1.jpg", "Actor_2.jpg"])
    result = scan_imfdb(tmp_path)
    assert result.rejections == []
    assert [r.item for r in result.records] == [f"{ITEM}:2", f"{ITEM}:5"]
    assert all(r.labels["makeup"] == "partial" for r in result.records)


def test_nul_bytes_are_dropped(tmp_path: Path) -> None:
    _movie(tmp_path, ("\x00" + _tab(_row("Actor_1.jpg")).replace("\t", "\t\x00") + "\x00\n").encode(), ["Actor_1.jpg"])
    record = _only(scan_imfdb(tmp_path))
    assert record.frame_box == (10, 20, 30, 40) and _labelled(record) == CANONICAL


def test_trailing_tab_row_of_18_fields(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg")) + "\t"], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert result.rejections == [] and _labelled(_only(result)) == CANONICAL


def test_clip_and_frame_joined_by_a_space_16_fields(tmp_path: Path) -> None:
    cells = _row("Amir_1.jpg", clip="3Idiots", frame="100020.jpg")
    _movie(tmp_path, [_tab([f"{cells[0]} {cells[1]}", *cells[2:]])], ["Amir_1.jpg"])
    record = _only(scan_imfdb(tmp_path))
    assert record.image_ref.endswith("Amir_1.jpg") and record.frame_box == (10, 20, 30, 40)
    assert _labelled(record) == CANONICAL


def test_geometry_only_space_separated_file(tmp_path: Path) -> None:
    lines = [
        "JamaiRaja_MadhuriDixit_AnilKapoor 1179.jpg AnilKapoor_1.jpg 405 38 86 90",
        "Hello Brother (1994) - CD1 02943.jpg AnilKapoor_2.jpg 414 98 23 28",
    ]
    _movie(tmp_path, lines, ["AnilKapoor_1.jpg", "AnilKapoor_2.jpg"], actor="AnilKapoor", txt="AnilKapoor.txt")
    result = scan_imfdb(tmp_path)
    assert result.rejections == []
    assert [r.frame_box for r in result.records] == [(405, 38, 86, 90), (414, 98, 23, 28)]
    for record in result.records:
        assert record.labels == {**dict.fromkeys(ATTRIBUTE_NAMES), "is_face": "true"}
        assert (record.subject, record.movie) == ("AnilKapoor", "Film")


def test_multi_space_coordinate_cell(tmp_path: Path) -> None:
    cells = _row("Madhavan_11.jpg", box=(555, 153, 172, 174))
    _movie(tmp_path, [_tab([*cells[:3], "555  153  172  ", "174", *cells[7:]])], ["Madhavan_11.jpg"])
    record = _only(scan_imfdb(tmp_path))
    assert record.frame_box == (555, 153, 172, 174) and _labelled(record) == CANONICAL


def test_row_split_across_two_lines_keeps_head_and_rejects_fragment(tmp_path: Path) -> None:
    cells = _row("Madhavan_20.jpg")
    _movie(
        tmp_path,
        ["", _tab(cells[:-2]), "\t" + _tab(cells[-2:]), _tab(_row("Madhavan_21.jpg"))],
        ["Madhavan_20.jpg", "Madhavan_21.jpg"],
    )
    result = scan_imfdb(tmp_path)
    assert _reasons(result) == {"malformed_line": 1}
    assert _items(result, Reason.MALFORMED_LINE) == [f"{ITEM}:3"]
    head = result.records[0]
    assert head.item == f"{ITEM}:2" and head.labels["pose"] is None and head.labels["makeup"] is None
    assert head.labels["age_stage"] == "young"
    assert result.records[1].labels["pose"] == "frontal"


def test_null_row_is_missing_field(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(["null"] * 7 + _row("x.jpg")[7:]), _tab(_row("Actor_1.jpg"))], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert _reasons(result) == {"missing_field": 1}
    assert _items(result, Reason.MISSING_FIELD) == [f"{ITEM}:1"]
    assert _only(result).item == f"{ITEM}:2"


def test_shifted_row_keeps_the_face_without_geometry(tmp_path: Path) -> None:
    cells = _row("Katrinakaif_300.jpg", box=(377, 379, 34, 324), clip="ZNMD(2011)-720p", frame="20439.jpg")
    _movie(tmp_path, [_tab([cells[3], *cells[:3], *cells[4:]])], ["Katrinakaif_300.jpg"])
    result = scan_imfdb(tmp_path)
    record = _only(result)
    assert record.frame_box is None and _labelled(record) == CANONICAL
    assert _reasons(result) == {"bad_geometry": 1}
    assert _items(result, Reason.BAD_GEOMETRY) == [f"{ITEM}:1#frame_box"]


def test_null_geometry_with_existing_crop_is_bad_geometry(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg", box=("null", "null", "null", "null")))], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert _only(result).frame_box is None and _reasons(result) == {"bad_geometry": 1}


@pytest.mark.parametrize(
    "cells",
    [
        # geometry moved in front of the clip (Bharathi/Padayottam)
        ["10", "20", "30", "40", "[360p]", "23252.jpg", "Actor_1.jpg", "Film", "1982", "Actor", *LABELS],
        # crop first, then geometry, then clip and frame (AmrishPuri/Mr.India)
        ["Actor_1.jpg", "10", "20", "30", "40", "India_Clip", "1284.jpg", "Film", "1987", "Actor", *LABELS],
    ],
    ids=["geometry-first", "crop-first"],
)
def test_rotated_columns_are_read_by_content(tmp_path: Path, cells: list[str]) -> None:
    _movie(tmp_path, [_tab(cells)], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    record = _only(result)
    assert result.rejections == []
    assert record.frame_box == (10, 20, 30, 40) and _labelled(record) == CANONICAL


def test_merged_and_empty_label_cells(tmp_path: Path) -> None:
    line = "Misc\t200.png\tRimiSen_197.jpg\t11\t5\t277\t320\tMisc\t-\tRimisen \tFEMALE\t\tNEUTRAL\tNONE MEDIUM \tYOUNG FRONTAL\tPARTIAL"
    _movie(tmp_path, [line], ["RimiSen_197.jpg"], actor="Rimisen", movie="Misc", txt="Misc.txt")
    result = scan_imfdb(tmp_path)
    assert result.rejections == []
    assert _labelled(_only(result)) == {**CANONICAL, "gender": "female"}


@pytest.mark.parametrize(
    ("token", "attribute", "value"),
    [("MIDDDLE", "age_stage", "middle"), ("PARTIA", "makeup", "partial"), ("PARTIALs", "makeup", "partial")],
)
def test_label_typos_are_mapped(tmp_path: Path, token: str, attribute: str, value: str) -> None:
    labels = list(LABELS)
    labels[4 if attribute == "age_stage" else 6] = token
    _movie(tmp_path, [_tab(_row("Actor_1.jpg", labels=labels))], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert result.rejections == [] and _only(result).labels[attribute] == value


def test_unknown_label_is_reported_and_the_face_kept(tmp_path: Path) -> None:
    labels = ["MALE", "SMILING", *LABELS[2:]]
    _movie(tmp_path, [_tab(_row("Actor_1.jpg", labels=labels))], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    record = _only(result)
    assert record.labels["expression"] is None and record.labels["gender"] == "male"
    assert _reasons(result) == {"unknown_label": 1}
    assert _items(result, Reason.UNKNOWN_LABEL) == [f"{ITEM}:1#SMILING"]


def test_unknown_label_in_the_gender_column_is_not_taken_for_the_actor(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg", labels=["MALEE", *LABELS[1:]]))], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert _items(result, Reason.UNKNOWN_LABEL) == [f"{ITEM}:1#MALEE"]
    assert _labelled(_only(result)) == {k: v for k, v in CANONICAL.items() if k != "gender"}


def test_two_values_for_one_attribute_in_a_row_conflict(tmp_path: Path) -> None:
    labels = ["MALE", "NEUTRAL", "GLASSES", "MEDIUM", "FRONTAL", "RIGHT", "PARTIAL"]  # ANR/Pandaga line 117
    _movie(tmp_path, [_tab(_row("ANR_98.jpg", labels=labels))], ["ANR_98.jpg"])
    result = scan_imfdb(tmp_path)
    record = _only(result)
    assert record.labels["pose"] is None and record.labels["age_stage"] is None
    assert record.labels["occlusion"] == "glasses"
    assert _items(result, Reason.CONFLICTING_LABELS) == [f"{ITEM}:1#pose"]
    assert _reasons(result) == {"conflicting_labels": 1}


def test_actor_field_differing_from_folder_uses_the_folder(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Amir_1.jpg", actor="AmirKhan"))], ["Amir_1.jpg"], actor="AamairKhan")
    record = _only(scan_imfdb(tmp_path))
    assert (record.subject, record.split_key) == ("AamairKhan", "AamairKhan")


def test_txt_not_named_after_the_movie(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg"))], ["Actor_1.jpg"], movie="JamaiRaja", txt="labels_v2.txt")
    record = _only(scan_imfdb(tmp_path))
    assert record.movie == "JamaiRaja" and record.item == "Actor/JamaiRaja/labels_v2.txt:1"


def test_missing_crop(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg")), _tab(_row("Actor_2.jpg"))], ["Actor_2.jpg"])
    result = scan_imfdb(tmp_path)
    assert _reasons(result) == {"missing_crop": 1}
    assert _items(result, Reason.MISSING_CROP) == [f"{ITEM}:1"]
    assert _only(result).image_ref.endswith("Actor_2.jpg")


def test_movie_without_images_folder_reports_every_row_missing(tmp_path: Path) -> None:
    txt = _movie(tmp_path, [_tab(_row("Actor_1.jpg")), _tab(_row("Actor_2.jpg"))])
    (txt.parent / "images").rmdir()
    assert _reasons(scan_imfdb(tmp_path)) == {"missing_crop": 2}


def test_crop_name_differing_only_in_case_resolves_to_the_file(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("katrinakaif_1.JPG"))], ["Katrinakaif_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert result.rejections == [] and _only(result).image_ref.endswith("/Katrinakaif_1.jpg")


def test_orphan_crop(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("Actor_1.jpg"))], ["Actor_1.jpg", "Actor_2.jpg"])
    result = scan_imfdb(tmp_path)
    assert _reasons(result) == {"orphan_crop": 1} and result.images == 2
    assert _items(result, Reason.ORPHAN_CROP) == ["Actor/Film/images/Actor_2.jpg"]


def test_images_without_any_txt_are_all_orphans(tmp_path: Path) -> None:
    txt = _movie(tmp_path, [], ["Actor_1.jpg", "Actor_2.jpg"])
    txt.unlink()
    result = scan_imfdb(tmp_path)
    assert result.records == [] and _reasons(result) == {"orphan_crop": 2}


def test_exact_duplicate_row(tmp_path: Path) -> None:
    line = _tab(_row("Actor_1.jpg"))
    _movie(tmp_path, [line, line, line + "\t"], ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert _labelled(_only(result)) == CANONICAL
    assert _reasons(result) == {"duplicate_row": 2}
    assert _items(result, Reason.DUPLICATE_ROW) == [f"{ITEM}:2", f"{ITEM}:3"]


def test_same_crop_with_conflicting_labels_gives_one_record(tmp_path: Path) -> None:
    other = ["MALE", "ANGER", "NONE", "MEDIUM", "YOUNG", "LEFT", "PARTIAL"]
    lines = [_tab(_row("Actor_71.jpg")), _tab(_row("Actor_72.jpg")), _tab(_row("Actor_71.jpg", labels=other))]
    _movie(tmp_path, lines, ["Actor_71.jpg", "Actor_72.jpg"])
    result = scan_imfdb(tmp_path)
    record = result.records[0]
    assert len(result.records) == 2 and record.item == f"{ITEM}:1"
    assert _labelled(record) == {k: v for k, v in CANONICAL.items() if k not in {"expression", "pose"}}
    assert _items(result, Reason.DUPLICATE_ROW) == [f"{ITEM}:3"]
    assert sorted(_items(result, Reason.CONFLICTING_LABELS)) == [f"{ITEM}:1#expression", f"{ITEM}:1#pose"]
    message = next(r.message for r in result.rejections if r.item.endswith("#expression"))
    assert "neutral (line 1)" in message and "anger (line 3)" in message


def test_junk_files_at_every_level(tmp_path: Path) -> None:
    txt = _movie(tmp_path, [_tab(_row("Actor_1.jpg"))], ["Actor_1.jpg"])
    folder = txt.parent
    junk = [
        tmp_path / ".DS_Store",
        tmp_path / "README.md",
        tmp_path / "Actor" / ".DS_Store",
        folder / ".DS_Store",
        folder / "notes.docx",
        folder / "old" / "Film.txt",
        folder / "images" / ".DS_Store",
        folder / "images" / "Thumbs.db",
        folder / "images" / "._Actor_1.jpg",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00junk")
    result = scan_imfdb(tmp_path)
    assert _labelled(_only(result)) == CANONICAL
    assert _reasons(result) == {"junk_file": len(junk)}
    assert sorted(_items(result, Reason.JUNK_FILE)) == sorted(p.relative_to(tmp_path).as_posix() for p in junk)


def test_jpeg_crop(tmp_path: Path) -> None:
    _movie(tmp_path, [_tab(_row("SoumithraChattergee_22.jpeg"))], ["SoumithraChattergee_22.jpeg"])
    result = scan_imfdb(tmp_path)
    assert result.rejections == [] and _only(result).image_ref.endswith(".jpeg")


def test_unreadable_txt(tmp_path: Path) -> None:
    txt = _movie(tmp_path, [_tab(_row("Actor_1.jpg"))], ["Actor_1.jpg"])
    txt.unlink()
    txt.symlink_to(tmp_path / "gone.txt")
    result = scan_imfdb(tmp_path)
    assert _items(result, Reason.UNREADABLE_FILE) == [ITEM]
    assert result.records == [] and _reasons(result) == {"unreadable_file": 1, "orphan_crop": 1}


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    _movie(tmp_path, _tab(_row("Actor_1.jpg", clip="Film\xe9")).encode("latin-1") + b"\n", ["Actor_1.jpg"])
    result = scan_imfdb(tmp_path)
    assert result.rejections == [] and _labelled(_only(result)) == CANONICAL


# --- API ----------------------------------------------------------------------------------


def test_read_imfdb_lines_numbers_like_an_editor() -> None:
    raw = b"\xef\xbb\xbfa\r\n\r\nb\rc\x00\n\xef\xbb\xbf\nd"
    assert read_imfdb_lines(raw) == ["a", "", "b", "c", "", "d"]


def test_parse_imfdb_file_matches_scan_without_folder_checks(tmp_path: Path) -> None:
    txt = _movie(tmp_path, [_tab(_row("Actor_1.jpg")), _tab(_row("Actor_9.jpg"))], ["Actor_1.jpg", "Actor_2.jpg"])
    (txt.parent / ".DS_Store").write_bytes(b"x")
    result = parse_imfdb_file(txt)
    assert [r.item for r in result.records] == [f"{ITEM}:1"] and result.images == 1
    assert _reasons(result) == {"missing_crop": 1}
    given = parse_imfdb_file(txt, root=tmp_path, crops={"Actor_1.jpg", "Actor_9.jpg"})
    assert len(given.records) == 2 and given.rejections == []


def test_scan_is_deterministic(tmp_path: Path) -> None:
    sample = write_imfdb_sample(tmp_path / "IMFDB_final")
    first, second = scan_imfdb(sample.root), scan_imfdb(str(sample.root))
    assert first.records == second.records
    assert [(r.item, r.reason, r.message) for r in first.rejections] == [
        (r.item, r.reason, r.message) for r in second.rejections
    ]


def test_scan_and_hash_in_a_process_pool_equal_the_serial_run(tmp_path: Path) -> None:
    """Movie folders parsed and crops hashed in worker processes give exactly the serial
    result: same records, same rejections in the same order, same digests."""
    sample = write_imfdb_sample(tmp_path / "IMFDB_final", actors=6, movies=3)
    (sample.root / "stray.txt").write_text("junk between actors")
    serial = scan_imfdb(sample.root)
    with ProcessPoolExecutor(2) as pool:
        pooled = scan_imfdb(sample.root, pool=pool)
        hashed = local_files(pooled.records, sample.root, pool)
    assert pooled.records == serial.records and pooled.images == serial.images
    assert [(r.item, r.reason, r.message) for r in pooled.rejections] == [
        (r.item, r.reason, r.message) for r in serial.rejections
    ]
    assert any(r.reason == Reason.JUNK_FILE and r.item == "stray.txt" for r in pooled.rejections)
    assert hashed == local_files(serial.records, sample.root)
    assert len(hashed[0]) == len({r.image_ref for r in serial.records})


def test_scan_of_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"x\.txt"):
        scan_imfdb(tmp_path / "x.txt")


# --- synthetic sample ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"actors": 1, "movies": 1, "faces": 0}, {"actors": 8, "movies": 3}])
def test_sample_round_trip(tmp_path: Path, kwargs: dict[str, int]) -> None:
    sample = write_imfdb_sample(tmp_path / "IMFDB_final", **kwargs)
    result = scan_imfdb(sample.root)
    assert _reasons(result) == sample.rejections
    assert len(result.records) == sample.records and result.images == sample.images
    assert sample.rows == len(_non_blank_items(sample.root))
    assert sample.images < 200
    _assert_accounted(result, sample.root)


def test_sample_holds_every_quirk(tmp_path: Path) -> None:
    sample = write_imfdb_sample(tmp_path / "IMFDB_final")
    parse_reasons = {
        "malformed_line",
        "missing_field",
        "bad_geometry",
        "unknown_label",
        "conflicting_labels",
        "duplicate_row",
        "missing_crop",
        "orphan_crop",
        "junk_file",
    }
    assert set(sample.rejections) == parse_reasons
    raw = b"".join(p.read_bytes() for p in sample.root.rglob("*.txt"))
    for needle in (
        rb"^\xef\xbb\xbf",
        rb"\r\n",
        rb"\x00",
        rb"\t\n",
        rb"\tMIDDDLE\t",
        rb"\tPARTIA\r?\n",
        rb"PARTIALs",
        rb"\tnull\t",
    ):
        assert re.search(needle, raw, re.MULTILINE), needle
    assert any(p.suffix == ".jpeg" for p in sample.root.rglob("images/*"))
    assert any(not p.stem.startswith(p.parent.name) for p in sample.root.rglob("*.txt"))
    assert list(sample.root.rglob(".DS_Store"))
    assert sample.corrupt_crops and sample.tiny_crops and sample.large_crops
    with pytest.raises(OSError), Image.open(sample.corrupt_crops[0]) as image:
        image.load()
    for path in sample.tiny_crops:
        with Image.open(path) as image:
            assert min(image.size) < 50
    for path in sample.large_crops:
        with Image.open(path) as image:
            assert min(image.size) > 224


def test_sample_is_deterministic_per_seed(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return hashlib.sha256(
            b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)
        ).hexdigest()

    a, b, c = (write_imfdb_sample(tmp_path / name, seed=seed).root for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert digest(a) == digest(b) != digest(c)


def test_sample_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="actors"):
        write_imfdb_sample(tmp_path, actors=0)


# --- real data in ../shared ---------------------------------------------------------------


def _shared(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"../shared/{path.relative_to(SHARED).as_posix()} not found: {path} is absent")
    return path


@pytest.mark.shared
def test_reference_files_exact_counts() -> None:
    root = _shared(REFERENCE)
    result = scan_imfdb(root)
    assert len(result.records) == 204 and result.images == 204
    assert _reasons(result) == {
        "missing_crop": 987,
        "conflicting_labels": 3,
        "duplicate_row": 2,
        "missing_field": 2,
        "malformed_line": 1,
    }
    _assert_accounted(result, root)
    blue = {r.image_ref.rsplit(os.sep, 1)[1]: r for r in result.records if r.movie == "Blue"}
    assert blue["AkshayKumar_71.jpg"].labels["occlusion"] is None
    assert _items(result, Reason.MALFORMED_LINE) == ["Madhavan/Cheli/Cheli.txt:12"]


def _crop_names(txt: Path) -> set[str]:
    """Crop-like names a file mentions, to parse the rows as if every crop were on disk."""
    return set(re.findall(r"[^\s\t]*[A-Za-z][^\s\t]*\.jpe?g", txt.read_text("utf-8", errors="replace")))


@pytest.mark.shared
@pytest.mark.parametrize(
    ("txt", "records", "reasons"),
    [
        ("AamairKhan/3Idiots/3Idiots.txt", 225, {}),
        ("AmitabhBachchan/Anand/Anand.txt", 202, {}),
        ("AnilKapoor/JamaiRaja/AnilKapoor.txt", 226, {}),
        ("Bharathi/Narasimham/Narasimham.txt", 43, {}),
        ("Madhavan/Cheli/Cheli.txt", 55, {"malformed_line": 1}),
        (
            "KatrinaKaif/ZindagiNaMilegiDobara/ZindagiNaMilegiDobara.txt",
            2,
            {"duplicate_row": 234, "conflicting_labels": 3, "missing_field": 2, "bad_geometry": 1},
        ),
    ],
)
def test_reference_rows_parse_as_if_crops_existed(txt: str, records: int, reasons: dict[str, int]) -> None:
    path = _shared(REFERENCE) / txt
    result = parse_imfdb_file(path, root=REFERENCE, crops=_crop_names(path))
    assert len(result.records) == records and _reasons(result) == reasons
    actor = txt.split("/")[0]
    assert all(r.subject == actor and r.split_key == actor for r in result.records)
    by_crop = {Path(r.image_ref).name: r for r in result.records}
    if actor == "AamairKhan":
        assert _labelled(by_crop["Amir_1.jpg"]) == {
            **CANONICAL,
            "expression": "disgust",
            "pose": "up",
        } and by_crop["Amir_1.jpg"].frame_box == (184, 37, 100, 107)
    if actor == "AnilKapoor":
        assert all(_labelled(r) == {} and r.frame_box is not None for r in result.records)
    if actor == "Madhavan":
        assert by_crop["Madhavan_11.jpg"].frame_box == (555, 153, 172, 174)
        assert by_crop["Madhavan_20.jpg"].labels["pose"] is None
    if actor == "KatrinaKaif":
        assert by_crop["Katrinakaif_300.jpg"].frame_box is None
        assert by_crop["Katrinakaif_1.jpg"].frame_box == (731, 111, 50, 73)


@pytest.mark.shared
def test_full_dataset_accounting() -> None:
    root = _shared(FULL)
    result = scan_imfdb(root)
    _assert_accounted(result, root)
    assert len(result.records) == 15389 and result.images == 17128
    assert _reasons(result) == {
        "orphan_crop": 1739,
        "missing_crop": 646,
        "duplicate_row": 412,
        "junk_file": 197,
        "conflicting_labels": 96,
        "missing_field": 3,
        "bad_geometry": 1,
        "malformed_line": 1,
    }
    assert {r.subject for r in result.records} == {p.name for p in root.iterdir() if p.is_dir()}
