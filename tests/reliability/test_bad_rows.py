"""Broken TCS lines and IMFDB rows: each case asserts its exact outcome after a full ingest.

A case is kept (with its box, after clipping) or rejected at a named stage with a named
reason; label problems annotate a kept face. Each source is written as one file (one
line per case) and ingested once, through ``run_ingest`` with images from a loopback
server, so a crash anywhere (parse, download, validate, error log) fails every case.
"""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from faces_core.download import DownloadSettings
from faces_core.errors import read_errors
from faces_core.ingest.pipeline import IngestSettings, run_ingest
from faces_core.ingest.sources import MAX_LINE_BYTES
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.sample import encode, noise_image
from faces_core.storage import read_faces
from faces_core.testing import LoopbackServer, Route

HOST = "http://bad-rows.invalid"
SIDE = 200
Outcome = tuple[str, ...]
"""``("kept", x0, y0, x1, y1)`` and/or ``(reason, stage)`` tuples, per item of a case."""


def _face(points: object = ((0.25, 0.25), (0.75, 0.75)), **extra: object) -> dict[str, object]:
    face: dict[str, object] = {"label": ["G_Male"], "imageWidth": SIDE, "imageHeight": SIDE}
    if isinstance(points, tuple):
        face["points"] = [{"x": x, "y": y} for x, y in points]
    else:
        face["points"] = points
    face.update(extra)
    return face


def _obj(url: str, *faces: dict[str, object]) -> str:
    return json.dumps({"content": url, "annotation": list(faces)})


@dataclass(frozen=True)
class TcsCase:
    """One line: its bytes (``{url}`` is replaced by the case's image URL) and outcomes.

    ``line`` outcomes are for the item ``<file>:<N>``; ``face`` for ``<url>#face<k>``.
    """

    name: str
    raw: bytes
    line: tuple[Outcome, ...] = ()
    face: tuple[Outcome, ...] = ()
    face_index: int = 0
    url_of: str | None = None
    """Name of the case whose URL this line uses (duplicates), else its own."""


def _case(name: str, text: str, line: tuple[Outcome, ...] = (), face: tuple[Outcome, ...] = ()) -> TcsCase:
    return TcsCase(name, text.encode(), line, face)


KEPT = ("kept", 50, 50, 150, 150)
PARSE = "parse"


def tcs_cases() -> list[TcsCase]:
    u = "{url}"
    return [
        TcsCase("bom_first_line", b"\xef\xbb\xbf" + _obj(u, _face()).encode(), face=(KEPT,)),
        _case("control", _obj(u, _face()), face=(KEPT,)),
        TcsCase("crlf", _obj(u, _face()).encode() + b"\r", face=(KEPT,)),
        TcsCase("bom_mid_file", b"\xef\xbb\xbf" + _obj(u, _face()).encode(), face=(KEPT,)),
        _case("malformed_json", '{"content": "{url}", "annotation": [', line=(("malformed_line", PARSE),)),
        TcsCase(
            "non_utf8_bytes",
            b'{"content": "{url}\xff\xfe", "annotation": []}',
            line=(("malformed_line", PARSE),),
        ),
        _case(
            "lone_surrogate_escape", '{"content": "{url}\\ud800", "annotation": []}', line=(("malformed_line", PARSE),)
        ),
        _case("deep_nesting", "[" * 100_000 + "]" * 100_000, line=(("malformed_line", PARSE),)),
        _case("json_array_line", "[" + _obj(u, _face()) + "]", line=(("malformed_line", PARSE),)),
        _case("json_scalar", "42", line=(("malformed_line", PARSE),)),
        _case("json_null", "null", line=(("malformed_line", PARSE),)),
        _case("missing_content", json.dumps({"annotation": [_face()]}), line=(("missing_field", PARSE),)),
        _case("empty_content", json.dumps({"content": " ", "annotation": [_face()]}), line=(("missing_field", PARSE),)),
        _case(
            "content_is_number", json.dumps({"content": 7, "annotation": [_face()]}), line=(("missing_field", PARSE),)
        ),
        _case("missing_annotation", json.dumps({"content": u}), line=(("missing_field", PARSE),)),
        _case(
            "annotation_is_object", json.dumps({"content": u, "annotation": _face()}), line=(("malformed_line", PARSE),)
        ),
        _case("annotation_null", json.dumps({"content": u, "annotation": None}), line=()),  # no_faces, by URL
        _case("face_is_string", json.dumps({"content": u, "annotation": ["face"]}), face=(("bad_geometry", PARSE),)),
        _case(
            "missing_points",
            _obj(u, {"label": [], "imageWidth": SIDE, "imageHeight": SIDE}),
            face=(("bad_geometry", PARSE),),
        ),
        _case("one_point", _obj(u, _face(((0.1, 0.1),))), face=(("bad_geometry", PARSE),)),
        _case("points_is_string", _obj(u, _face("0.1,0.1,0.5,0.5")), face=(("bad_geometry", PARSE),)),
        _case("coordinate_is_string", _obj(u, _face((("0.25", 0.25), (0.75, 0.75)))), face=(("bad_geometry", PARSE),)),
        _case("coordinate_is_bool", _obj(u, _face(((True, 0.25), (0.75, 0.75)))), face=(("bad_geometry", PARSE),)),
        _case("coordinate_nan", _obj(u, _face(((float("nan"), 0.25), (0.75, 0.75)))), face=(("bad_geometry", PARSE),)),
        _case(
            "coordinate_infinite", _obj(u, _face(((0.25, float("inf")), (0.75, 0.75)))), face=(("bad_geometry", PARSE),)
        ),
        _case(
            "coordinate_minus_infinite",
            _obj(u, _face(((float("-inf"), 0.25), (0.75, 0.75)))),
            face=(("bad_geometry", PARSE),),
        ),
        _case("coordinate_huge_int", _obj(u, _face(((10**400, 0.25), (0.75, 0.75)))), face=(("bad_geometry", PARSE),)),
        _case(
            "missing_image_width",
            _obj(u, {"label": [], "points": _face()["points"], "imageHeight": SIDE}),
            face=(("bad_geometry", PARSE),),
        ),
        _case("image_width_string", _obj(u, _face(imageWidth="200")), face=(("bad_geometry", PARSE),)),
        _case("image_width_zero", _obj(u, _face(imageWidth=0)), face=(("bad_geometry", PARSE),)),
        _case("image_height_negative", _obj(u, _face(imageHeight=-200)), face=(("bad_geometry", PARSE),)),
        _case("image_width_fraction", _obj(u, _face(imageWidth=200.5)), face=(("bad_geometry", PARSE),)),
        _case("zero_size_box", _obj(u, _face(((0.5, 0.5), (0.5, 0.5)))), face=(("degenerate_box", PARSE),)),
        _case("zero_width_box", _obj(u, _face(((0.5, 0.2), (0.5, 0.8)))), face=(("degenerate_box", PARSE),)),
        _case("inverted_box", _obj(u, _face(((0.75, 0.75), (0.25, 0.25)))), face=(KEPT,)),
        _case(
            "negative_within_tolerance",
            _obj(u, _face(((-0.02, -0.02), (0.75, 0.75)))),
            face=(("kept", 0, 0, 150, 150),),
        ),
        _case(
            "negative_beyond_tolerance",
            _obj(u, _face(((-0.5, 0.25), (0.75, 0.75)))),
            face=(("box_out_of_bounds", "validate"),),
        ),
        _case("box_outside_image", _obj(u, _face(((1.2, 1.2), (1.5, 1.5)))), face=(("box_out_of_bounds", "validate"),)),
        _case(
            "box_sliver_inside", _obj(u, _face(((0.999, 0.25), (1.04, 0.75)))), face=(("degenerate_box", "validate"),)
        ),
        _case("unknown_label", _obj(u, _face(label=["G_Male", "Smiling_Wide"])), face=(KEPT, ("unknown_label", PARSE))),
        _case("label_is_string", _obj(u, _face(label="G_Male")), face=(KEPT, ("unknown_label", PARSE))),
        _case("label_is_number", _obj(u, _face(label=[3])), face=(KEPT, ("unknown_label", PARSE))),
        _case("declared_size_half", _obj(u, _face(imageWidth=100, imageHeight=100)), face=(KEPT,)),
        TcsCase(
            "duplicate_line",
            _obj(u, _face()).encode(),
            face=(("duplicate_row", PARSE),),
            face_index=1,
            url_of="control",
        ),
    ]


CASES = tcs_cases()
NO_FACES = {"annotation_null"}


@dataclass(frozen=True)
class TcsRun:
    origin: str
    lines: dict[str, int]
    urls: dict[str, str]
    kept: dict[str, tuple[int, int, int, int]]
    rejected: dict[str, list[tuple[str, str]]]


@pytest.fixture(scope="module")
def tcs_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcsRun]:
    base = tmp_path_factory.mktemp("rows")
    urls = {c.name: f"{HOST}/{c.url_of or c.name}.jpg" for c in CASES}
    routes = {
        url: Route(body=encode(noise_image(SIDE, SIDE, random.Random(i)), quality=80))
        for i, url in enumerate(sorted(set(urls.values())))
    }
    raw = b"\n".join(c.raw.replace(b"{url}", urls[c.name].encode()) for c in CASES) + b"\n"
    jsonl = base / "rows.jsonl"
    jsonl.write_bytes(raw)
    out = base / "out"
    with LoopbackServer(routes) as server:
        download = DownloadSettings(timeout_s=5.0, retries=0, proxies={"http": server.proxy_url})
        run_ingest(
            read_tcs(jsonl),
            None,
            None,
            IngestSettings(out_dir=str(out), raw_dir=str(base / "raw"), workers=1, download=download),
        )
    kept = {r["item"]: (r["x0"], r["y0"], r["x1"], r["y1"]) for r in read_faces(out).to_table().to_pylist()}
    rejected: dict[str, list[tuple[str, str]]] = {}
    for e in read_errors(out / "errors.parquet"):
        rejected.setdefault(e.item, []).append((str(e.reason), e.stage))
    lines = {c.name: n for n, c in enumerate(CASES, start=1)}
    yield TcsRun(str(jsonl), lines, urls, kept, rejected)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tcs_line_outcome(tcs_run: TcsRun, case: TcsCase) -> None:
    line_item = f"{tcs_run.origin}:{tcs_run.lines[case.name]}"
    assert tuple(tcs_run.rejected.get(line_item, [])) == case.line
    face_item = f"{tcs_run.urls[case.name]}#face{case.face_index}"
    got: list[Outcome] = []
    if face_item in tcs_run.kept:
        got.append(("kept", *tcs_run.kept[face_item]))
    got += tcs_run.rejected.get(face_item, [])
    if case.name in NO_FACES:
        assert tcs_run.rejected[tcs_run.urls[case.name]] == [("no_faces", PARSE)]
    if not case.line:
        assert tuple(got) == case.face
    else:
        assert got == []


def test_tcs_every_line_has_an_outcome(tcs_run: TcsRun) -> None:
    items = set(tcs_run.kept) | set(tcs_run.rejected)
    for case in CASES:
        line_item = f"{tcs_run.origin}:{tcs_run.lines[case.name]}"
        face_item = f"{tcs_run.urls[case.name]}#face{case.face_index}"
        assert {line_item, face_item, tcs_run.urls[case.name]} & items, case.name
    assert len(tcs_run.kept) == sum(1 for c in CASES if c.face and c.face[0][0] == "kept")


def test_fifty_megabyte_line_is_rejected_in_bounded_memory_and_time(tmp_path: Path) -> None:
    """A valid JSON object on one 50 MB line: without the limit it would be parsed whole."""
    good = _obj("http://h.invalid/a.jpg", _face())
    huge = json.dumps({"content": "http://h.invalid/b.jpg", "annotation": [], "pad": "x" * (50 * 1024 * 1024)})
    path = tmp_path / "huge.jsonl"
    path.write_text(good + "\n" + huge + "\n" + good.replace("a.jpg", "c.jpg") + "\n")
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = read_tcs(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    assert [(r.item, str(r.reason)) for r in result.rejections] == [(f"{path}:2", "malformed_line")]
    assert f"longer than {MAX_LINE_BYTES} bytes" in result.rejections[0].message
    assert [r.item for r in result.records] == ["http://h.invalid/a.jpg#face0", "http://h.invalid/c.jpg#face0"]
    assert peak < 8 * MAX_LINE_BYTES, f"peak {peak} bytes"  # a few copies of one bounded line, not 50 MB
    assert elapsed < 10.0


def test_max_line_bytes_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    line = _obj("http://h.invalid/a.jpg", _face())
    path.write_text(line + "\n")
    assert len(read_tcs(path, max_line_bytes=len(line)).records) == 1
    assert [str(r.reason) for r in read_tcs(path, max_line_bytes=len(line) - 1).rejections] == ["malformed_line"]


def test_pretty_printed_json_array_file_is_rejected_line_by_line(tmp_path: Path) -> None:
    objects = [json.loads(_obj(f"http://h.invalid/{i}.jpg", _face())) for i in range(2)]
    path = tmp_path / "array.json"
    path.write_text(json.dumps(objects, indent=2))
    lines = path.read_text().splitlines()
    result = read_tcs(path)
    assert result.records == []
    assert [str(r.reason) for r in result.rejections] == ["malformed_line"] * len(lines)
    one_line = tmp_path / "array-one-line.json"
    one_line.write_text(json.dumps(objects))
    rejections = read_tcs(one_line).rejections
    assert [(r.item, str(r.reason)) for r in rejections] == [(f"{one_line}:1", "malformed_line")]
    assert "convert a JSON array file to JSON Lines" in rejections[0].message


def test_empty_and_blank_files_give_nothing(tmp_path: Path) -> None:
    for name, data in {"empty": b"", "blank": b"\n\r\n  \n", "bom_only": b"\xef\xbb\xbf\n"}.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(data)
        result = read_tcs(path)
        assert (result.records, result.rejections, result.images) == ([], [], 0), name


# --- IMFDB rows ----------------------------------------------------------------------------

LABELS = ["MALE", "NEUTRAL", "NONE", "MEDIUM", "YOUNG", "FRONTAL", "PARTIAL"]


def _row(crop: str, geometry: tuple[str, ...] = ("10", "20", "30", "40"), labels: list[str] = LABELS) -> list[str]:
    return ["Film_clip1", "0001.jpg", crop, *geometry, "Film", "2001", "Actor", *labels]


ROW = "\t".join
IMFDB_ROWS: list[tuple[str, bytes, tuple[Outcome, ...]]] = [
    ("well_formed_17", ROW(_row("A_1.jpg")).encode(), (("kept",),)),
    # Kept; row 16 names the same crop with another gender: the face's gender is unset.
    (
        "joined_16",
        ROW(["Film_clip1 0001.jpg", *_row("A_2.jpg")[2:]]).encode(),
        (("kept",), ("conflicting_labels", PARSE)),
    ),
    ("trailing_tab_18", (ROW(_row("A_3.jpg")) + "\t").encode(), (("kept",),)),
    ("geometry_only_7", b"Film_clip1 0001.jpg A_4.jpg 10 20 30 40", (("kept",),)),
    ("null_row", ROW(["null"] * 17).encode(), (("missing_field", PARSE),)),
    ("fragment", b"\tFRONTAL\tPARTIAL", (("malformed_line", PARSE),)),
    ("single_cell", b"garbage", (("malformed_line", PARSE),)),
    ("missing_crop", ROW(_row("A_99.jpg")).encode(), (("missing_crop", PARSE),)),
    ("nul_bytes", ROW(_row("A_5.jpg")).replace("\t", "\t\x00").encode(), (("kept",),)),
    (
        "unknown_label",
        ROW(_row("A_6.jpg", labels=[*LABELS[:6], "GLITTER"])).encode(),
        (("kept",), ("unknown_label", PARSE)),
    ),
    (
        "non_utf8_label",
        ROW(_row("A_7.jpg", labels=LABELS[:6])).encode() + b"\tPART\xffIAL",
        (("kept",), ("unknown_label", PARSE)),
    ),
    ("text_geometry", ROW(_row("A_8.jpg", ("x", "y", "w", "h"))).encode(), (("kept",), ("bad_geometry", PARSE))),
    (
        "huge_number_geometry",
        ROW(_row("A_9.jpg", ("9" * 5000, "1", "2", "3"))).encode(),
        (("kept",), ("bad_geometry", PARSE)),
    ),
    (
        "unicode_digit_geometry",
        ROW(_row("A_10.jpg", ("١٢", "1", "2", "3"))).encode(),
        (("kept",), ("bad_geometry", PARSE)),
    ),
    ("exact_duplicate", ROW(_row("A_1.jpg")).encode(), (("duplicate_row", PARSE),)),
    (
        "conflicting_duplicate",
        ROW(_row("A_2.jpg", labels=["FEMALE", *LABELS[1:]])).encode(),
        (("duplicate_row", PARSE),),
    ),
    ("overlong", b"MALE\t" * (MAX_LINE_BYTES // 5 + 1), (("malformed_line", PARSE),)),
]
IMFDB_CROPS = [f"A_{i}.jpg" for i in range(1, 11)]


@pytest.fixture(scope="module")
def imfdb_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Outcome]]]:
    base = tmp_path_factory.mktemp("imfdb-rows")
    movie = base / "IMFDB_final" / "Actor" / "Film"
    (movie / "images").mkdir(parents=True)
    for i, name in enumerate(IMFDB_CROPS):
        (movie / "images" / name).write_bytes(encode(noise_image(64, 64, random.Random(i))))
    # CR-only line breaks between two rows, CRLF elsewhere: every break style is a row end.
    data = b"\xef\xbb\xbf" + b"\r\n".join(raw for _, raw, _ in IMFDB_ROWS[:-1]) + b"\r" + IMFDB_ROWS[-1][1] + b"\n"
    (movie / "Film.txt").write_bytes(data)
    out = base / "out"
    root = movie.parents[1]
    run_ingest(None, scan_imfdb(root), root, IngestSettings(out_dir=str(out), raw_dir=str(base / "raw"), workers=1))
    outcomes: dict[str, list[Outcome]] = {}
    for row in read_faces(out).to_table(columns=["item"]).to_pylist():
        outcomes.setdefault(row["item"], []).append(("kept",))
    for e in read_errors(out / "errors.parquet"):
        item = e.item.split("#")[0]  # label/geometry notes name the part at fault after '#'
        outcomes.setdefault(item, []).append((str(e.reason), e.stage))
    yield outcomes


@pytest.mark.parametrize(("lineno", "name"), [(n, row[0]) for n, row in enumerate(IMFDB_ROWS, start=1)])
def test_imfdb_row_outcome(imfdb_run: dict[str, list[Outcome]], lineno: int, name: str) -> None:
    expected = IMFDB_ROWS[lineno - 1][2]
    assert tuple(imfdb_run.get(f"Actor/Film/Film.txt:{lineno}", [])) == expected


def test_imfdb_rows_have_no_other_outcome(imfdb_run: dict[str, list[Outcome]]) -> None:
    assert set(imfdb_run) == {f"Actor/Film/Film.txt:{n}" for n in range(1, len(IMFDB_ROWS) + 1)}
