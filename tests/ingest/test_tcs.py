"""TCS HumAIn source: one test per quirk of the DataTurks export, reading from files and
URLs (origin and proxy mode of the loopback server), the real file's exact accounting, and
the synthetic sample and stand-in images that replace the gone image hosts."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageOps

from faces_core.errors import Reason, count_by_reason
from faces_core.ingest.sources.tcs import TcsInputError, parse_tcs_lines, read_tcs
from faces_core.records import Box, ParseResult
from faces_core.sample.tcs import TcsSample, load_routes, routes_for_jsonl, write_tcs_sample
from faces_core.taxonomy import ATTRIBUTE_NAMES
from faces_core.testing import LoopbackServer, Route
from tests.conftest import SHARED

REAL = SHARED / "reference" / "tcs" / "Face_Recognition.json"
URL = "http://img.invalid/a.jpg"


def _face(
    labels: list[str] | None = None,
    points: object = ((0.1, 0.2), (0.3, 0.6)),
    width: object = 1000,
    height: object = 500,
) -> dict[str, object]:
    """One annotation entry; ``points`` given as pairs becomes DataTurks' ``{x, y}`` dicts."""
    if isinstance(points, tuple):
        points = [{"x": x, "y": y} for x, y in points]
    face: dict[str, object] = {"label": labels if labels is not None else ["G_Male"], "notes": "", "points": points}
    if width is not None:
        face["imageWidth"] = width
    if height is not None:
        face["imageHeight"] = height
    return face


def _line(*faces: dict[str, object], url: str = URL) -> str:
    return json.dumps({"content": url, "annotation": list(faces), "extras": None, "metadata": {}})


def _parse(*lines: str) -> ParseResult:
    return parse_tcs_lines(list(lines), origin="t.json")


def _corners(box: Box | None) -> tuple[float, float, float, float]:
    assert box is not None
    return (box.x0, box.y0, box.x1, box.y1)


def _reasons(result: ParseResult) -> dict[str, int]:
    return count_by_reason(result.rejections)


# --- one test per quirk -----------------------------------------------------------------------


def test_face_becomes_record_with_pixel_box_and_every_attribute() -> None:
    result = _parse(_line(_face(["Emotion_Happy", "Age_20_30", "E_White", "G_Male"])))
    assert result.images == 1 and result.rejections == []
    (record,) = result.records
    assert record.source == "tcs" and record.item == f"{URL}#face0"
    assert record.image_ref == URL and record.split_key == URL
    assert record.subject is None and record.movie is None
    assert _corners(record.box) == pytest.approx((100.0, 100.0, 300.0, 300.0))
    assert (record.image_width, record.image_height) == (1000, 500)
    assert set(record.labels) == set(ATTRIBUTE_NAMES)
    assert record.labels == {
        **dict.fromkeys(ATTRIBUTE_NAMES),
        "expression": "happiness",
        "age_range": "20_30",
        "ethnicity": "white",
        "gender": "male",
        "is_face": "true",
    }


def test_faces_of_one_image_share_its_split_key_and_are_numbered() -> None:
    result = _parse(_line(_face(), _face(points=((0.5, 0.5), (0.7, 0.9)))))
    assert [r.item for r in result.records] == [f"{URL}#face0", f"{URL}#face1"]
    assert {r.split_key for r in result.records} == {URL}


def test_labels_in_any_order_and_spaced_gender() -> None:
    result = _parse(_line(_face(["G_ Female", "E_Asian", "Age_below20", "Emotion_Neutral"])))
    labels = result.records[0].labels
    assert (labels["gender"], labels["ethnicity"], labels["age_range"], labels["expression"]) == (
        "female",
        "asian",
        "below_20",
        "neutral",
    )
    assert result.rejections == []


def test_same_value_spelled_twice_is_no_conflict() -> None:
    result = _parse(_line(_face(["G_Male", "G_ Male"])))
    assert result.records[0].labels["gender"] == "male" and result.rejections == []


def test_int_corner_coordinates() -> None:
    result = _parse(_line(_face(points=((0, 0.5), (1, 1)), width=400, height=300)))
    assert result.records[0].box == Box(0.0, 150.0, 400.0, 300.0)
    assert result.rejections == []


def test_inverted_corners_are_normalised_not_rejected() -> None:
    result = _parse(_line(_face(points=((0.3, 0.6), (0.1, 0.2)))))
    assert _corners(result.records[0].box) == pytest.approx((100.0, 100.0, 300.0, 300.0))
    assert result.rejections == []


@pytest.mark.parametrize(
    "points",
    [((0.4, 0.5), (0.4, 0.5)), ((0.1, 0.5), (0.3, 0.5)), ((0.4, 0.1), (0.4, 0.9))],
    ids=["point", "flat", "thin"],
)
def test_zero_width_or_height_is_degenerate(points: tuple[tuple[float, float], ...]) -> None:
    result = _parse(_line(_face([], points=points), _face()))
    assert _reasons(result) == {"degenerate_box": 1}
    assert result.rejections[0].item == f"{URL}#face0"
    assert [r.item for r in result.records] == [f"{URL}#face1"]


@pytest.mark.parametrize(
    "face",
    [
        _face(points=None),
        _face(points=[{"x": 0.1, "y": 0.2}]),
        _face(points=[{"x": 0.1, "y": 0.2}, {"x": 0.3, "y": 0.4}, {"x": 0.5, "y": 0.6}]),
        _face(points=[[0.1, 0.2], [0.3, 0.4]]),
        _face(points=((0.1, "0.2"), (0.3, 0.4))),
        _face(points=((0.1, None), (0.3, 0.4))),
        _face(points=((True, 0.2), (0.3, 0.4))),
        _face(points=[{"x": 0.1}, {"x": 0.3, "y": 0.4}]),
        _face(width=None),
        _face(height=0),
        _face(width=-5),
        _face(width="1000"),
        _face(width=999.5),
        "not a face",
    ],
    ids=[
        "no-points",
        "one-point",
        "three-points",
        "lists",
        "string",
        "null",
        "bool",
        "missing-y",
        "no-width",
        "zero-height",
        "negative-width",
        "string-width",
        "fractional-width",
        "not-an-object",
    ],
)
def test_unusable_geometry_is_bad_geometry(face: object) -> None:
    result = _parse(json.dumps({"content": URL, "annotation": [face, _face()]}))
    assert _reasons(result) == {"bad_geometry": 1}
    assert result.rejections[0].item == f"{URL}#face0"
    assert len(result.records) == 1


def test_nan_coordinate_is_bad_geometry() -> None:
    line = _line(_face()).replace('"x": 0.1', '"x": NaN')
    assert _reasons(_parse(line)) == {"bad_geometry": 1}


@pytest.mark.parametrize("annotation", [None, []], ids=["null", "empty"])
def test_no_annotation_is_one_no_faces_per_image(annotation: list[object] | None) -> None:
    result = _parse(json.dumps({"content": URL, "annotation": annotation}))
    assert result.images == 1 and result.records == []
    assert _reasons(result) == {"no_faces": 1}
    assert result.rejections[0].item == URL


def test_malformed_json_line_is_rejected_and_other_lines_kept() -> None:
    good = _line(_face())
    result = _parse(
        good, '{"content": "http://x.invalid/b.jpg", "annotation": [', "[1, 2]", good.replace("a.jpg", "c.jpg")
    )
    assert _reasons(result) == {"malformed_line": 2}
    assert [r.item for r in result.rejections] == ["t.json:2", "t.json:3"]
    assert len(result.records) == 2 and result.images == 2


@pytest.mark.parametrize("content", [None, 42, "", "  "], ids=["null", "number", "empty", "blank"])
def test_missing_content_is_missing_field(content: object) -> None:
    result = _parse(json.dumps({"content": content, "annotation": [_face()]}))
    assert _reasons(result) == {"missing_field": 1}
    assert result.rejections[0].item == "t.json:1"
    assert result.records == [] and result.images == 0


def test_unknown_label_is_reported_and_face_kept() -> None:
    result = _parse(_line(_face(["Emotion_Confused", "G_Male", 7])))
    assert _reasons(result) == {"unknown_label": 2}
    assert all(r.item == f"{URL}#face0" for r in result.rejections)
    assert "Emotion_Confused" in result.rejections[0].message
    assert result.records[0].labels["gender"] == "male"
    assert result.records[0].labels["expression"] is None


def test_others_is_ambiguous_and_face_kept() -> None:
    result = _parse(_line(_face(["others", "Age_30_40"])))
    assert _reasons(result) == {"ambiguous_label": 1}
    labels = result.records[0].labels
    assert labels["age_range"] == "30_40" and labels["gender"] is None and labels["ethnicity"] is None


def test_two_ethnicities_conflict_and_attribute_is_unset() -> None:
    result = _parse(_line(_face(["Emotion_Neutral", "Age_20_30", "E_Hispanic", "E_Arab", "G_Male"])))
    assert _reasons(result) == {"conflicting_labels": 1}
    assert "E_Hispanic" in result.rejections[0].message and "E_Arab" in result.rejections[0].message
    labels = result.records[0].labels
    assert labels["ethnicity"] is None
    assert (labels["gender"], labels["age_range"], labels["is_face"]) == ("male", "20_30", "true")


def test_not_face_alone_is_kept_as_non_face() -> None:
    result = _parse(_line(_face(["Not_Face"])))
    assert result.rejections == []
    assert result.records[0].labels == {**dict.fromkeys(ATTRIBUTE_NAMES), "is_face": "false"}


def test_not_face_drops_every_other_label() -> None:
    result = _parse(_line(_face(["Age_above_50", "Not_Face", "E_White", "G_Male"])))
    assert _reasons(result) == {"conflicting_labels": 3}
    assert all("Not_Face" in r.message for r in result.rejections)
    assert result.records[0].labels == {**dict.fromkeys(ATTRIBUTE_NAMES), "is_face": "false"}


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    result = _parse("", _line(_face()), "   ", "{bad")
    assert result.images == 1 and len(result.records) == 1
    assert [r.item for r in result.rejections] == ["t.json:4"]


def test_repeated_box_of_one_image_is_a_duplicate_row() -> None:
    result = _parse(_line(_face()), _line(_face(), _face(points=((0.5, 0.5), (0.7, 0.9)))))
    assert _reasons(result) == {"duplicate_row": 1}
    assert result.rejections[0].item == f"{URL}#face1" and "t.json:1" in result.rejections[0].message
    assert [r.item for r in result.records] == [f"{URL}#face0", f"{URL}#face2"]
    assert result.images == 1


# --- reading files and URLs -------------------------------------------------------------------


def _write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_tcs_from_file_with_line_items(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.json", _line(_face()), "{oops")
    result = read_tcs(path)
    assert len(result.records) == 1
    assert result.rejections[0].item == f"{path}:2"


def test_read_tcs_flags_invalid_utf8_line_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(
        b'\xef\xbb\xbf{"content": "http://x.invalid/\xff.jpg", "annotation": null}\n' + _line(_face()).encode()
    )
    result = read_tcs(str(path))
    assert _reasons(result) == {"malformed_line": 1} and len(result.records) == 1


def test_read_tcs_missing_file_raises_with_advice(tmp_path: Path) -> None:
    with pytest.raises(TcsInputError, match=r"not found: .*nope\.json; check the path"):
        read_tcs(tmp_path / "nope.json")


@pytest.mark.usefixtures("no_env_proxy")
def test_read_tcs_from_url_in_origin_mode() -> None:
    body = (_line(_face()) + "\n").encode()
    with LoopbackServer({"/export.json": Route(body=body, content_type="application/json")}) as server:
        url = server.url("/export.json")
        result = read_tcs(url, timeout=5)
    assert len(result.records) == 1 and result.images == 1


@pytest.mark.usefixtures("no_env_proxy")
def test_read_tcs_through_proxy_for_a_gone_host() -> None:
    gone = "http://dataturks.invalid/export.json"
    body = (_line(_face()) + "\n").encode()
    with LoopbackServer({gone: Route(body=body, content_type="application/json")}) as server:
        with requests.Session() as session:
            session.proxies = {"http": server.proxy_url}
            result = read_tcs(gone, timeout=5, session=session)
        assert server.hits[gone] == 1
    assert len(result.records) == 1


@pytest.mark.usefixtures("no_env_proxy")
def test_read_tcs_honours_http_proxy_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = "http://dataturks.invalid/env.json"
    with LoopbackServer({gone: Route(body=_line(_face()).encode(), content_type="application/json")}) as server:
        monkeypatch.setenv("http_proxy", server.proxy_url)
        result = read_tcs(gone, timeout=5)
        assert server.hits[gone] == 1
    assert len(result.records) == 1


@pytest.mark.usefixtures("no_env_proxy")
def test_read_tcs_http_error_and_unreachable_url_raise() -> None:
    with LoopbackServer() as server:
        with pytest.raises(TcsInputError, match="404"):
            read_tcs(server.url("/missing.json"), timeout=5)
        closed = server.url("/x.json")
    with pytest.raises(TcsInputError, match="local path"):
        read_tcs(closed, timeout=2)


# --- the real export --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_file() -> Path:
    if not REAL.exists():
        pytest.skip(f"{REAL} not found: the real TCS export lives in the read-only ../shared beside the checkout")
    return REAL


@pytest.mark.shared
def test_real_file_exact_counts(real_file: Path) -> None:
    result = read_tcs(real_file)
    assert result.images == 120
    assert len(result.records) == 350
    assert _reasons(result) == {
        "conflicting_labels": 8,
        "ambiguous_label": 2,
        "degenerate_box": 1,
        "no_faces": 1,
    }
    assert Counter(r.labels["is_face"] for r in result.records) == {"true": 212, "false": 138}


@pytest.mark.shared
def test_real_file_accounts_for_every_box(real_file: Path) -> None:
    lines = real_file.read_text(encoding="utf-8").splitlines()
    declared = {
        f"{obj['content']}#face{k}"
        for obj in (json.loads(line) for line in lines if line.strip())
        for k in range(len(obj["annotation"] or []))
    }
    assert len(declared) == 351
    result = read_tcs(real_file)
    box_level = {str(Reason.BAD_GEOMETRY), str(Reason.DEGENERATE_BOX)}
    rejected = [r.item for r in result.rejections if r.reason in box_level]
    kept = [r.item for r in result.records]
    assert len(kept) + len(rejected) == 351
    assert set(kept) | set(rejected) == declared and not set(kept) & set(rejected)


@pytest.mark.shared
def test_real_file_stand_in_images_have_declared_sizes(real_file: Path) -> None:
    routes = routes_for_jsonl(real_file, seed=0)
    result = read_tcs(real_file)
    assert len(routes) == 120
    sizes = {r.image_ref: (r.image_width, r.image_height) for r in result.records}
    largest = max(sizes, key=lambda url: sizes[url][0] * sizes[url][1])
    picks = [largest, *(next(u for u in sizes if u.endswith(ext)) for ext in (".png", ".gif", ".jpeg"))]
    for url in picks:
        with Image.open(io.BytesIO(routes[url].body)) as image:
            assert image.size == sizes[url]
            assert image.format == {"png": "PNG", "gif": "GIF"}.get(url.rsplit(".", 1)[-1], "JPEG")
            assert routes[url].content_type == f"image/{image.format.lower()}"
            image.load()


# --- the synthetic sample ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> TcsSample:
    return write_tcs_sample(tmp_path_factory.mktemp("tcs"), seed=1, slow_delay=1.0)


def test_sample_parses_to_its_expected_counts(sample: TcsSample) -> None:
    result = read_tcs(sample.jsonl)
    assert result.images == sample.images == 22
    assert len(result.records) == sample.records
    assert _reasons(result) == sample.rejections
    every_parse_reason = {
        "malformed_line",
        "missing_field",
        "no_faces",
        "bad_geometry",
        "degenerate_box",
        "unknown_label",
        "ambiguous_label",
        "conflicting_labels",
    }
    assert set(sample.rejections) == every_parse_reason


def test_sample_routes_rebuild_from_disk_and_cover_every_url(sample: TcsSample) -> None:
    assert load_routes(sample.plan.parent) == sample.routes
    urls = {r.image_ref for r in read_tcs(sample.jsonl).records}
    assert urls <= set(sample.routes)
    assert set(sample.outcomes) <= set(sample.routes)
    assert sorted(o for o in sample.outcomes.values() if o != "ok") == [
        "corrupt_image",
        "http_error",
        "not_an_image",
        "timeout",
    ]


def test_sample_is_deterministic(tmp_path: Path, sample: TcsSample) -> None:
    again = write_tcs_sample(tmp_path, seed=1, slow_delay=1.0)
    assert again.jsonl.read_bytes() == sample.jsonl.read_bytes()
    assert again.routes == sample.routes


def test_sample_images_decode_to_declared_sizes_and_modes(sample: TcsSample) -> None:
    parsed = read_tcs(sample.jsonl).records
    records = {r.image_ref.rsplit("/", 1)[-1]: r for r in parsed}
    modes = {"alpha_04.png": "RGBA", "gray_05.jpg": "L", "palette_06.gif": "P", "portrait_01.jpg": "RGB"}
    for name, record in records.items():
        if name in {"page_20.jpg", "truncated_21.jpg"}:
            continue
        with Image.open(io.BytesIO(sample.routes[record.image_ref].body)) as image:
            shown = ImageOps.exif_transpose(image)
            assert shown.size == (record.image_width, record.image_height), name
            if name in modes:
                assert image.mode == modes[name]
    rotated = Image.open(io.BytesIO(sample.routes[records["rotated_07.jpg"].image_ref].body))
    assert rotated.size == (640, 480) and rotated.getexif()[0x0112] == 6
    large = records["large_08.jpg"]
    assert (large.image_width, large.image_height) == (3000, 2000)
    sides = [min(r.box.width, r.box.height) for r in parsed if r.box is not None]
    assert min(sides) <= 32 and max(sides) >= 240


@pytest.mark.usefixtures("no_env_proxy")
def test_sample_served_through_proxy_with_injected_failures(sample: TcsSample) -> None:
    host = "http://tcs-sample.invalid"
    with LoopbackServer(sample.routes) as server, requests.Session() as session:
        session.proxies = {"http": server.proxy_url}

        def get(name: str, timeout: float = 5.0) -> requests.Response:
            return session.get(f"{host}/{name}", timeout=timeout)

        ok = get("portrait_01.jpg")
        assert ok.status_code == 200 and ok.headers["Content-Type"] == "image/jpeg"
        assert get("missing_16.jpg").status_code == 404
        assert [get("flaky_17.jpg").status_code for _ in range(3)] == [500, 500, 200]
        throttled = get("throttled_18.jpg")
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
        assert get("throttled_18.jpg").status_code == 200
        with pytest.raises(requests.Timeout):
            get("slow_19.jpg", timeout=0.2)
        assert get("page_20.jpg").headers["Content-Type"] == "text/html"
        truncated = get("truncated_21.jpg")
        assert truncated.status_code == 200
        with pytest.raises(OSError), Image.open(io.BytesIO(truncated.content)) as image:
            image.load()
        moved = get("redirect_22.jpg")
        assert moved.status_code == 200 and moved.history[0].status_code == 302
        assert Image.open(io.BytesIO(moved.content)).size == (640, 480)
