"""Annotating the generated folder: rows per face, one row per file, the error log, re-runs, COCO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from faces_core.annotate import store
from faces_core.annotate.export import write_coco
from faces_core.annotate.pipeline import NO_MODEL, ShardReport, annotate_folders
from faces_core.sample.faces import AnnotateSample, face_box, faces_image
from tests.annotate.conftest import FAST


def _centre(row: dict[str, float]) -> tuple[float, float]:
    return (row["x0"] + row["x1"]) / 2, (row["y0"] + row["y1"]) / 2


def test_every_file_gets_its_faces_or_its_reason(annotated: tuple[Path, ShardReport], sample: AnnotateSample) -> None:
    out, report = annotated
    files = {row["file"]: row for row in store.latest_files(out).to_pylist()}
    assert set(files) == {str(f.path) for f in sample.files}
    faces = store.read_annotations(out).to_pylist()
    for expected in sample.files:
        row = files[str(expected.path)]
        if expected.reason is not None:
            assert (row["status"], row["reason"], row["faces"]) == ("error", str(expected.reason), 0), row
            continue
        assert (row["status"], row["reason"], row["faces"]) == ("ok", None, sum(expected.faces)), row
        assert (row["width"], row["height"]) == expected.size
        per_frame = [
            sum(1 for f in faces if f["file"] == row["file"] and f["frame_index"] == i) for i in (None, 0, 4, 8)
        ]
        assert per_frame == ([0, *expected.faces] if row["kind"] == "video" else [*expected.faces, 0, 0, 0])
    assert report.files == len(sample.files) and report.skipped == 0
    assert report.faces == sample.faces == len(faces) == 13
    assert report.frames == 14  # 11 images decoded + 3 video frames (0 s, 1 s, 2 s at 4 fps)
    assert report.reasons == {str(r): 1 for r in sample.rejected.values()}


def test_error_log_names_each_bad_file_with_its_reason(
    annotated: tuple[Path, ShardReport], sample: AnnotateSample
) -> None:
    out, _ = annotated
    logged = {Path(r.item).relative_to(sample.root).as_posix(): r.reason for r in store.read_all_errors(out)}
    assert logged == sample.rejected
    assert logged == {
        "broken/truncated.jpg": "corrupt_image",
        "broken/empty.png": "empty_file",
        "broken/notes.jpg": "not_an_image",
        "broken/readme.txt": "junk_file",
        "broken/clip.mp4": "unreadable_video",
    }


def test_boxes_are_in_upright_original_pixels(annotated: tuple[Path, ShardReport], sample: AnnotateSample) -> None:
    out, _ = annotated
    rows = {(Path(r["file"]).name, r["frame_index"], r["face"]): r for r in store.read_annotations(out).to_pylist()}
    # rotated.jpg is stored on its side with EXIF orientation 6: the face is upright at (120, 160) of 240x320.
    rotated = rows[("rotated.jpg", None, 0)]
    assert (rotated["image_width"], rotated["image_height"]) == (240, 320)
    assert _centre(rotated) == pytest.approx((120, 165), abs=12)
    # large.jpg (1280x960) was searched at 640 px; its box is mapped back to full-size pixels.
    large = rows[("large.jpg", None, 0)]
    assert _centre(large) == pytest.approx((640, 500), abs=30)
    assert 250 < large["x1"] - large["x0"] < 420
    # pair.png: two faces, numbered left to right, each with five landmarks inside its box.
    left, right = rows[("pair.png", None, 0)], rows[("pair.png", None, 1)]
    assert left["x1"] < right["x0"]
    for face in (left, right):
        xs, ys = face["landmarks"][0::2], face["landmarks"][1::2]
        assert all(face["x0"] <= x <= face["x1"] for x in xs) and all(face["y0"] <= y <= face["y1"] for y in ys)
        assert face["confidence"] >= FAST.detect.min_confidence
        assert face["model_version"] == NO_MODEL and face["gender"] is None and face["gender_probability"] is None
    video = [r for k, r in rows.items() if k[0] == "walk.avi"]
    assert [(r["frame_index"], r["timestamp_s"]) for r in video] == [(0, 0.0), (4, 1.0)]


def test_a_rerun_skips_everything_and_writes_nothing(
    annotated: tuple[Path, ShardReport], sample: AnnotateSample
) -> None:
    out, _ = annotated
    before = store.parts(out)
    report = annotate_folders([sample.root], out, FAST)
    assert (report.files, report.skipped, report.faces, report.frames) == (0, len(sample.files), 0, 0)
    assert store.parts(out) == before


def test_a_changed_file_is_annotated_again_and_only_its_latest_rows_count(
    sample: AnnotateSample, tmp_path: Path
) -> None:
    import random

    root = tmp_path / "photos"
    shutil.copytree(sample.root / "modes", root)
    out = tmp_path / "out"
    first = annotate_folders([root], out, FAST)
    assert (first.files, first.faces) == (4, 4)
    faces_image(480, 240, [face_box(130, 120, 100), face_box(350, 120, 100)], random.Random(5)).save(root / "gray.png")
    second = annotate_folders([root], out, FAST)
    assert (second.files, second.skipped, second.faces) == (1, 3, 2)
    current = store.read_annotations(out).to_pylist()
    assert sorted((Path(r["file"]).name, r["face"]) for r in current) == [
        ("alpha.png", 0),
        ("cmyk.jpg", 0),
        ("deep16.png", 0),
        ("gray.png", 0),
        ("gray.png", 1),
    ]
    assert len(store.read_files(out)) == 5  # old rows are kept, never rewritten


def test_coco_export_loads_back_with_the_parquet_box_count(annotated: tuple[Path, ShardReport]) -> None:
    out, _ = annotated
    path = write_coco(out, out / "export" / "coco.json")
    data = json.loads(path.read_text())
    faces = store.read_annotations(out)
    assert len(data["annotations"]) == faces.num_rows == 13
    assert {a["image_id"] for a in data["annotations"]} <= {i["id"] for i in data["images"]}
    assert len(data["images"]) == 13  # 11 images (one without faces) + 2 video frames with a face
    assert data["categories"][0]["keypoints"] == ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
    boxes = sorted(tuple(a["bbox"]) for a in data["annotations"])
    expected = sorted(
        (round(r["x0"], 2), round(r["y0"], 2), round(r["x1"] - r["x0"], 2), round(r["y1"] - r["y0"], 2))
        for r in faces.to_pylist()
    )
    assert len(boxes) == len(expected)
    for got, want in zip(boxes, expected, strict=True):
        assert got == pytest.approx(want, abs=0.011)


def test_draw_writes_one_copy_per_searched_image_or_frame(
    annotated: tuple[Path, ShardReport], sample: AnnotateSample
) -> None:
    out, _ = annotated
    drawn = sorted(p.relative_to(out / "drawn" / sample.root.name).as_posix() for p in (out / "drawn").rglob("*.jpg"))
    assert len(drawn) == 14
    assert "clips/walk.avi.f000004.jpg" in drawn and "rotated.jpg.jpg" in drawn


def test_a_missing_input_folder_is_an_error_not_an_empty_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        annotate_folders([tmp_path / "nope"], tmp_path / "out", FAST)
