"""Property-based tests of both parsers: any input gives records or typed rejections.

For any lines (text, JSON of any shape, near-valid annotations with hostile values, raw
bytes) the parsers must not raise, every non-blank line must be accounted for exactly once,
and everything they return must be storable (the error log is Parquet, so every text must
be valid UTF-8). Example counts are modest and derandomized: the suite runs on 2 cores in
CI and must not flake; raise ``FACES_HYPOTHESIS_EXAMPLES`` to search harder locally.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faces_core.errors import Reason, Rejection, rejections_to_table
from faces_core.ingest.sources import MAX_LINE_BYTES
from faces_core.ingest.sources.imfdb import ROW_REASONS, parse_imfdb_file, read_imfdb_lines
from faces_core.ingest.sources.tcs import parse_tcs_lines, read_tcs
from faces_core.records import FaceRecord, ParseResult
from faces_core.taxonomy import ATTRIBUTE_NAMES, ATTRIBUTES, IMFDB_LABELS, TCS_LABELS

SCALE = int(os.environ.get("FACES_HYPOTHESIS_EXAMPLES", "1"))
PROPERTY = settings(
    deadline=None,
    derandomize=SCALE == 1,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ORIGIN = "t.jsonl"
SMALL_LINE = 400
"""A max_line_bytes some examples exceed, so the length rule is exercised too."""

# --- strategies ----------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None), max_size=40)  # surrogates and control chars too
undecodable = st.binary(max_size=60).map(lambda b: b.decode("utf-8", errors="surrogateescape"))
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=10**300, max_value=10**400),
    st.sampled_from([0, 1, -1, 0.5, 0.25, 0.75, 1.5, -0.5, 100, 200, 1e-9]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
points = st.one_of(
    st.lists(st.fixed_dictionaries({"x": numbers, "y": numbers}), min_size=0, max_size=3),
    json_values,
)
labels = st.one_of(
    st.lists(st.sampled_from([*TCS_LABELS, "others", "Face", " G_Male "]) | any_text, max_size=5), json_values
)
faces = st.fixed_dictionaries(
    {"points": points},
    optional={"label": labels, "imageWidth": numbers | json_values, "imageHeight": numbers | json_values},
)
urls = st.sampled_from(["http://a.invalid/1.jpg", "http://a.invalid/2.jpg", " http://a.invalid/1.jpg "]) | any_text
annotations = st.one_of(st.lists(faces | json_values, max_size=4), json_values)
objects = st.fixed_dictionaries({}, optional={"content": urls | json_values, "annotation": annotations})


@st.composite
def tcs_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["object", "object", "object", "json", "text", "bytes"]))
    if kind == "object":
        line = json.dumps(draw(objects), ensure_ascii=draw(st.booleans()), allow_nan=True)
    elif kind == "json":
        line = json.dumps(draw(json_values), allow_nan=True)
    elif kind == "text":
        line = draw(any_text)
    else:
        line = draw(undecodable)
    prefix = draw(st.sampled_from(["", "", "\ufeff", " "]))
    return prefix + line + draw(st.sampled_from(["", "\r", "  "]))


# --- the TCS contract, stated independently of the parser ----------------------------------


def _tcs_expected(lines: list[str], max_line_bytes: int) -> tuple[set[str], list[str], Counter[str]]:
    """Line items rejected whole, lines that are ``no_faces``, and the face items to expect.

    This is the documented contract of a line: too long, undecodable, not JSON, not an
    object, no usable ``content`` or no ``annotation`` -> rejected whole; a null or empty
    annotation -> ``no_faces``; otherwise one outcome per entry of the annotation list,
    numbered per URL across the file.
    """
    whole: set[str] = set()
    no_faces: list[str] = []
    face_items: Counter[str] = Counter()
    per_url: dict[str, int] = {}
    for n, raw in enumerate(lines, start=1):
        where = f"{ORIGIN}:{n}"
        line = raw.removeprefix("\ufeff")
        if len(line.rstrip("\r\n").encode("utf-8", errors="surrogatepass")) > max_line_bytes:
            whole.add(where)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError, UnicodeError):
            whole.add(where)
            continue
        url = obj.get("content") if isinstance(obj, dict) else None
        if not isinstance(url, str) or not url.strip() or "annotation" not in obj:
            whole.add(where)
            continue
        url = url.strip()
        first = per_url.setdefault(url, 0)
        annotation = obj["annotation"]
        if annotation is None or annotation == []:
            no_faces.append(where)
        elif not isinstance(annotation, list):
            whole.add(where)
        else:
            per_url[url] = first + len(annotation)
            face_items.update(f"{url}#face{k}" for k in range(first, first + len(annotation)))
    return whole, no_faces, face_items


FACE_REASONS = {Reason.BAD_GEOMETRY, Reason.DEGENERATE_BOX, Reason.DUPLICATE_ROW}
LABEL_REASONS = {Reason.UNKNOWN_LABEL, Reason.AMBIGUOUS_LABEL, Reason.CONFLICTING_LABELS}


def _assert_storable(result: ParseResult) -> None:
    assert rejections_to_table(result.rejections).num_rows == len(result.rejections)
    for record in result.records:
        for text in (record.item, record.image_ref, record.subject or "", record.movie or ""):
            text.encode("utf-8")


def _assert_labels(record: FaceRecord) -> None:
    assert set(record.labels) == set(ATTRIBUTE_NAMES)
    for attribute, value in record.labels.items():
        assert value is None or value in ATTRIBUTES[attribute], (attribute, value)


def _assert_tcs_contract(lines: list[str], result: ParseResult, max_line_bytes: int) -> None:
    whole, no_faces, face_items = _tcs_expected(lines, max_line_bytes)
    assert all(isinstance(r, Rejection) and isinstance(r.reason, Reason) for r in result.rejections)
    line_level = [r for r in result.rejections if r.reason in (Reason.MALFORMED_LINE, Reason.MISSING_FIELD)]
    assert sorted(r.item for r in line_level) == sorted(whole)
    empty = [r for r in result.rejections if r.reason == Reason.NO_FACES]
    assert sorted(r.message.rsplit("(", 1)[1].rstrip(")") for r in empty) == sorted(no_faces)
    outcomes = Counter(r.item for r in result.records)
    outcomes.update(r.item for r in result.rejections if r.reason in FACE_REASONS)
    assert outcomes == face_items  # every face exactly once: kept or rejected
    kept = {r.item for r in result.records}
    assert all(r.item in kept for r in result.rejections if r.reason in LABEL_REASONS)
    for record in result.records:
        assert record.box is not None
        corners = (record.box.x0, record.box.y0, record.box.x1, record.box.y1)
        assert all(math.isfinite(c) for c in corners)
        assert record.box.x0 < record.box.x1 and record.box.y0 < record.box.y1
        assert isinstance(record.image_width, int) and record.image_width > 0
        assert isinstance(record.image_height, int) and record.image_height > 0
        _assert_labels(record)
    _assert_storable(result)


@settings(PROPERTY, max_examples=80 * SCALE)
@given(st.lists(tcs_lines(), max_size=8), st.sampled_from([MAX_LINE_BYTES, SMALL_LINE]))
def test_parse_tcs_lines_accounts_for_every_line(lines: list[str], max_line_bytes: int) -> None:
    result = parse_tcs_lines(lines, ORIGIN, max_line_bytes)
    _assert_tcs_contract(lines, result, max_line_bytes)


@settings(PROPERTY, max_examples=60 * SCALE)
@given(st.lists(st.binary(max_size=80) | tcs_lines().map(lambda s: s.encode("utf-8", "surrogatepass")), max_size=6))
def test_read_tcs_file_of_any_bytes(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "any.jsonl"
        path.write_bytes(b"\n".join(chunks))
        result = read_tcs(path, max_line_bytes=SMALL_LINE)
    # The file's lines as a file reader sees them: split on LF only.
    lines = [raw.decode("utf-8", errors="surrogateescape") for raw in b"\n".join(chunks).split(b"\n")]
    if lines and lines[-1] == "":
        lines.pop()
    relabelled = parse_tcs_lines(lines, ORIGIN, SMALL_LINE)
    _assert_tcs_contract(lines, relabelled, SMALL_LINE)
    assert [r.item for r in result.records] == [r.item for r in relabelled.records]
    assert len(result.rejections) == len(relabelled.rejections)


# --- IMFDB ---------------------------------------------------------------------------------

CROPS = ["Actor_1.jpg", "Actor_2.JPG", "Actor_3.png", "x.jpg"]
imfdb_tokens = st.one_of(
    st.sampled_from(CROPS),
    st.sampled_from(
        ["Actor_9.jpg", "../Actor_1.jpg", "/etc/Actor_1.jpg", "..\\x.jpg", "C:\\x.jpg", "0001.jpg", "Actor 1.jpg"]
    ),
    st.sampled_from([*IMFDB_LABELS, "null", "-", "2001", "12-3-2001", "", " ", "Film", "Actor"]),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.sampled_from(["9" * 5000, "١٢", "+7", "-0"]),
    any_text,
)


@st.composite
def imfdb_lines(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    cells = draw(st.lists(imfdb_tokens, max_size=20))
    if draw(st.booleans()):  # a row shaped like the real ones, with hostile geometry
        geometry = st.integers(-5, 10**9).map(str) | st.sampled_from(["9" * 5000, "١٢", "null", "1.5"])
        cells = [draw(st.sampled_from(CROPS)), *draw(st.lists(geometry, min_size=4, max_size=4)), *cells]
    sep = draw(st.sampled_from(["\t", "\t", " ", "  \t"]))
    line = sep.join(cells)
    if draw(st.booleans()):
        line = draw(st.sampled_from(["", "\ufeff", "\x00"])) + line + draw(st.sampled_from(["", "\t", "\x00"]))
    return line.encode("utf-8", errors="surrogatepass")


@st.composite
def imfdb_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(imfdb_lines(), max_size=10))
    breaks = [draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) for _ in lines]
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + b"".join(x + y for x, y in zip(lines, breaks, strict=True))


@settings(PROPERTY, max_examples=100 * SCALE)
@given(st.binary(max_size=200) | imfdb_files())
def test_read_imfdb_lines_any_bytes(raw: bytes) -> None:
    lines = read_imfdb_lines(raw)
    assert lines and all(isinstance(line, str) for line in lines)
    assert not any(ch in line for line in lines for ch in "\r\n\x00\ufeff")
    # NULs, then BOMs, are dropped from the bytes before they are split into lines.
    text = raw.replace(b"\x00", b"").replace("\ufeff".encode(), b"")
    breaks = text.count(b"\r\n") + text.replace(b"\r\n", b"").count(b"\r") + text.replace(b"\r\n", b"").count(b"\n")
    assert len(lines) == breaks + 1


@settings(PROPERTY, max_examples=80 * SCALE)
@given(imfdb_files(), st.sampled_from([MAX_LINE_BYTES, 60]))
def test_parse_imfdb_file_accounts_for_every_line(raw: bytes, max_line_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "IMFDB_final"
        movie = root / "Actor" / "Film"
        (movie / "images").mkdir(parents=True)
        txt = movie / "Film.txt"
        txt.write_bytes(raw)
        result = parse_imfdb_file(txt, root, crops=CROPS, max_line_bytes=max_line_bytes)
    non_blank = {f"Actor/Film/Film.txt:{n}" for n, line in enumerate(read_imfdb_lines(raw), 1) if line.strip()}
    row_level = [r.item for r in result.rejections if r.reason in ROW_REASONS]
    records = [r.item for r in result.records]
    assert len(row_level) == len(set(row_level)) and len(records) == len(set(records))
    assert set(row_level).isdisjoint(records)
    assert set(row_level) | set(records) == non_blank
    # A note on a kept face names the part at fault: a row of the face (the first, or a
    # duplicate whose labels were merged into it) and, after '#', the field or token.
    merged = {r.item for r in result.rejections if r.reason == Reason.DUPLICATE_ROW}
    for rejection in result.rejections:
        assert isinstance(rejection.reason, Reason)
        if rejection.reason not in ROW_REASONS:
            row, _, part = rejection.item.partition("#")
            assert part and row in set(records) | merged, rejection
    for record in result.records:
        assert Path(record.image_ref).parent == movie.absolute() / "images"
        assert Path(record.image_ref).name in CROPS
        _assert_labels(record)
    assert len({r.image_ref for r in result.records}) == len(result.records)
    _assert_storable(result)
