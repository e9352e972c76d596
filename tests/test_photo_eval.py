"""The in-the-wild check: labels file, IoU matching and scores (pure), then ``faces evaluate
--photos`` through the real annotate flow on synthetic photos and on ../shared's wild set."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from faces_core.photo_eval import (
    Detection,
    LabelledBox,
    LabelsError,
    detections_from_rows,
    greedy_pairs,
    iou,
    match,
    parse_labels,
    read_labels,
    score_attribute,
    score_photos,
)
from faces_core.sample.faces import face_box, faces_image
from tests.conftest import REPO, shared_path
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]


def det(file: str, box: tuple[float, float, float, float], **predictions: str | None) -> Detection:
    return Detection(file, box, 0.99, predictions)


def lab(file: str, box: tuple[float, float, float, float], is_face: bool = True, **labels: str) -> LabelledBox:
    return LabelledBox(file, box, is_face, labels)


# --- matching ------------------------------------------------------------------------------------


def test_iou_of_equal_disjoint_and_half_overlapping_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_greedy_matching_is_one_to_one_highest_iou_first() -> None:
    labelled = [(0, 0, 10, 10), (8, 0, 18, 10)]
    # Detection 0 overlaps both labels, best label 1 (IoU 0.82); detection 1 sits on label 1 exactly.
    detected = [(7, 0, 17, 10), (8, 0, 18, 10), (0, 0, 10, 10)]
    pairs = greedy_pairs(detected, labelled, threshold=0.4)
    assert [(i, j) for i, j, _ in pairs] == [(1, 1), (2, 0)]  # detection 0 lost both to better ones
    assert greedy_pairs(detected, labelled, threshold=1.0) == [(1, 1, 1.0), (2, 0, 1.0)]


def test_misses_extras_and_files_without_labels() -> None:
    labels = [lab("a.jpg", (0, 0, 10, 10)), lab("a.jpg", (50, 50, 60, 60)), lab("b.jpg", (0, 0, 10, 10))]
    detections = [
        det("a.jpg", (1, 0, 11, 10)),  # matches the first box of a.jpg
        det("a.jpg", (30, 30, 40, 40)),  # on nothing: extra
        det("b.jpg", (6, 6, 16, 16)),  # IoU 0.09 with b's box: an extra, and b's face is missed
        det("unlabelled.jpg", (0, 0, 10, 10)),  # a file without labels is not scored at all
    ]
    result = match(detections, labels, threshold=0.4)
    assert [(d.file, b.box) for d, b, _ in result.matched] == [("a.jpg", (0, 0, 10, 10))]
    assert [(b.file, b.box) for b in result.missed] == [("a.jpg", (50, 50, 60, 60)), ("b.jpg", (0, 0, 10, 10))]
    assert [(d.file, d.box) for d in result.extra] == [("a.jpg", (30, 30, 40, 40)), ("b.jpg", (6, 6, 16, 16))]
    counts = score_photos(detections, labels, threshold=0.4)["detection"]
    assert (counts["labelled_faces"], counts["detections"]) == (3, 3)
    assert (counts["matched"], counts["missed"], counts["extra"], counts["extra_on_non_face"]) == (1, 2, 2, 0)
    assert match(detections, labels, threshold=0.05).missed == [labels[1]]  # a lower threshold takes b's


def test_a_detection_on_a_box_marked_not_a_face_is_an_extra_not_a_match() -> None:
    labels = [lab("a.jpg", (0, 0, 10, 10)), lab("a.jpg", (20, 0, 30, 10), is_face=False)]
    detections = [det("a.jpg", (0, 0, 10, 10)), det("a.jpg", (20, 0, 30, 10))]
    report = score_photos(detections, labels)
    counts = report["detection"]
    assert (counts["labelled_faces"], counts["non_face_boxes"]) == (1, 1)
    assert (counts["matched"], counts["missed"], counts["extra"], counts["extra_on_non_face"]) == (1, 0, 1, 1)
    assert report["extra"] == [{"file": "a.jpg", "box_xyxy": [20, 0, 30, 10], "confidence": 0.99, "on": "faces[0]"}]
    # A non-face box nobody detected is neither missed nor extra.
    assert score_photos(detections[:1], labels)["detection"]["missed"] == 0


def test_the_non_face_box_takes_part_in_the_matching() -> None:
    """A detection that sits on a non-face box must not be free to match a weakly overlapping face."""
    labels = [lab("a.jpg", (0, 0, 10, 10)), lab("a.jpg", (4, 0, 14, 10), is_face=False)]
    counts = score_photos([det("a.jpg", (4, 0, 14, 10))], labels, threshold=0.4)["detection"]
    assert (counts["matched"], counts["missed"], counts["extra_on_non_face"]) == (0, 1, 1)


# --- scores --------------------------------------------------------------------------------------


def test_scores_of_one_attribute() -> None:
    pairs: list[tuple[str, str | None]] = [
        ("female", "female"),
        ("female", "male"),
        ("male", "male"),
        ("male", "male"),
        ("male", None),
    ]
    score = score_attribute(pairs)
    assert (score["labelled"], score["n"], score["not_predicted"]) == (5, 4, 1)
    assert score["accuracy"] == 0.75
    assert score["recall"] == {"female": 0.5, "male": 1.0}
    # F1(female) = 2*1*0.5/1.5 = 2/3; F1(male) = 2*(2/3)*1/(5/3) = 0.8
    assert score["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert score["confusion"] == {"female": {"female": 1, "male": 1}, "male": {"male": 2}}
    assert (score["top_class"], score["top_class_share"], score["one_class"]) == ("male", 0.75, False)


def test_macro_f1_is_over_labelled_classes_and_one_class_heads_are_flagged() -> None:
    pairs: list[tuple[str, str | None]] = [("happiness", "anger")] + [("neutral", "neutral")] * 5
    score = score_attribute(pairs)
    assert score["recall"] == {"happiness": 0.0, "neutral": 1.0}  # anger was never labelled: no entry
    assert score["macro_f1"] == pytest.approx((0.0 + 1.0) / 2)
    assert (score["top_class"], score["one_class"]) == ("neutral", True)  # 5 of 6 > 80 %
    assert score["confusion"]["happiness"] == {"anger": 1}


def test_a_withheld_head_is_not_predicted_not_wrong() -> None:
    score = score_attribute([("old", None), ("young", None)])
    assert (score["labelled"], score["n"], score["not_predicted"]) == (2, 0, 2)
    assert score["accuracy"] is None and score["macro_f1"] is None and score["top_class"] is None


def test_unsure_and_missing_labels_are_left_out_of_that_attribute() -> None:
    data = {
        "faces": [
            {"file": "a.jpg", "box_xyxy": [0, 0, 10, 10], "is_face": True, "gender": "male", "expression": "unsure"},
            {"file": "a.jpg", "box_xyxy": [20, 0, 30, 10], "is_face": True, "gender": "female"},
        ]
    }
    labels = parse_labels(data)
    detections = [det("a.jpg", (0, 0, 10, 10), gender="male", expression="neutral"), det("a.jpg", (20, 0, 30, 10))]
    report = score_photos(detections, labels)
    assert set(report["attributes"]) == {"gender"}  # nobody was sure of an expression
    gender = report["attributes"]["gender"]
    assert (gender["labelled"], gender["n"], gender["not_predicted"], gender["accuracy"]) == (2, 1, 1, 1.0)


# --- labels file and annotation rows -------------------------------------------------------------


def test_labels_file_is_read_with_notes_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    entries = [
        {"file": "sub/./img1.jpg", "box_xyxy": [1, 2, 30.5, 40]},
        {"file": "img2.jpg", "box_xyxy": [0, 0, 9, 9], "is_face": False},
        {"file": "img3.jpg", "box_xyxy": [0, 0, 9, 9], "age_stage": "old", "gender": "unsure"},
    ]
    path.write_text(json.dumps({"_about": "by eye", "faces": entries}))
    labels = read_labels(path)
    assert labels[0] == LabelledBox("sub/img1.jpg", (1.0, 2.0, 30.5, 40.0), True, {}, 0)
    assert labels[1].is_face is False
    assert labels[2].labels == {"age_stage": "old"}


def test_every_bad_entry_is_named_with_what_to_fix(tmp_path: Path) -> None:
    entries: list[Any] = [
        {"file": "ok.jpg", "box_xyxy": [0, 0, 10, 10]},
        {"file": "../up.jpg", "box_xyxy": [0, 0, 10, 10]},
        {"file": "a.jpg", "box_xyxy": [10, 0, 5, 10]},
        {"file": "a.jpg", "box_xyxy": [0, 0, 10]},
        {"file": "a.jpg", "box_xyxy": [0, 0, 10, 10], "gender": "man", "is_face": "yes"},
        {"file": "a.jpg", "box_xyxy": [0, 0, 10, 10], "mood": "happy"},
        "a.jpg",
    ]
    with pytest.raises(LabelsError) as exc:
        parse_labels({"faces": entries}, "labels.json")
    message = str(exc.value)
    assert "labels.json: 7 problem(s)" in message and "faces[0]" not in message
    assert "faces[1]: \"file\" '../up.jpg' must lie inside the photos folder" in message
    assert 'faces[2]: "box_xyxy" [10, 0, 5, 10] must have x0 < x1' in message
    assert 'faces[3]: "box_xyxy" must be 4 numbers' in message
    assert "faces[4]: \"gender\" 'man' is not one of male|female|unsure" in message
    assert 'faces[4]: "is_face" must be true or false' in message
    assert "faces[5]: unknown key(s) ['mood']" in message
    assert "faces[6]: expected an object" in message
    with pytest.raises(LabelsError, match='"faces" list'):
        parse_labels([entries[0]])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LabelsError, match="not readable JSON"):
        read_labels(tmp_path / "bad.json")


def test_annotation_rows_become_detections_relative_to_the_photos_folder(tmp_path: Path) -> None:
    row = {"file": str(tmp_path / "photos" / "sub" / "a.jpg"), "x0": 1.0, "y0": 2.0, "x1": 3.0, "y1": 4.0}
    row |= {"confidence": 0.9, "gender": "male", "expression": None}
    (found,) = detections_from_rows([row], tmp_path / "photos")
    assert (found.file, found.box) == ("sub/a.jpg", (1.0, 2.0, 3.0, 4.0))
    assert found.predictions["gender"] == "male" and found.predictions["expression"] is None


# --- the command, through the real annotate flow -------------------------------------------------


def faces_cli(*argv: str) -> tuple[int, str, str]:
    """``faces ARGV`` in-process: (exit status, stdout, stderr)."""
    from faces_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cpu_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml: the repository's, with the detector on the CPU (same answer, any machine)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["annotate"]["detect"]["device"] = "cpu"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FACES_PARAMS", str(path))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, Path]:
    """Three synthetic photos and a labels file: (photos folder, labels file).

    a.jpg: 3 faces, 2 labelled (1 extra); b.png: 1 face labelled and a labelled box on bare
    background (missed); c.jpg: its face labelled ``is_face: false`` (an extra on a non-face);
    d.jpg: a face in a file the labels do not name (not scored).
    """
    rng = random.Random(3)
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    a = [face_box(90, 120, 90), face_box(240, 120, 90), face_box(390, 120, 90)]
    faces_image(480, 240, a, rng).save(root / "a.jpg", quality=92)
    faces_image(320, 240, [face_box(100, 120, 100)], rng).save(root / "sub" / "b.png")
    faces_image(320, 240, [face_box(160, 120, 96)], rng).save(root / "c.jpg", quality=92)
    faces_image(320, 240, [face_box(160, 120, 96)], rng).save(root / "d.jpg", quality=92)
    entries = [
        {"file": "a.jpg", "box_xyxy": list(a[0]), "is_face": True, "gender": "female", "age_stage": "middle"},
        {"file": "a.jpg", "box_xyxy": list(a[1]), "is_face": True, "gender": "male", "expression": "unsure"},
        {"file": "sub/b.png", "box_xyxy": list(face_box(100, 120, 100)), "is_face": True, "ethnicity": "asian"},
        {"file": "sub/b.png", "box_xyxy": list(face_box(250, 120, 80)), "is_face": True, "gender": "male"},
        {"file": "c.jpg", "box_xyxy": list(face_box(160, 120, 96)), "is_face": False},
    ]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"_about": "drawn", "faces": entries}))
    return root, labels


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "cpu_params")
def test_faces_evaluate_photos_scores_the_annotate_path(
    photos: tuple[Path, Path], tiny_model: Path, tmp_path: Path
) -> None:
    root, labels = photos
    out = tmp_path / "report" / "photos.json"
    code, stdout, stderr = faces_cli(
        "evaluate", "--photos", str(root), "--labels", str(labels), "--model", str(tiny_model), "--out", str(out)
    )
    assert code == 0, stderr
    report = json.loads(out.read_text())
    counts = report["detection"]
    assert (counts["labelled_faces"], counts["non_face_boxes"], counts["detections"]) == (4, 1, 5)
    assert (counts["matched"], counts["missed"], counts["extra"], counts["extra_on_non_face"]) == (3, 1, 2, 1)
    assert report["missed"] == [{"file": "sub/b.png", "box_xyxy": list(face_box(250, 120, 80)), "entry": 3}]
    assert report["annotate"]["files"] == 3 and report["file_errors"] == []  # d.jpg was never annotated
    heads = json.loads((tiny_model / "model.json").read_text())["attributes"]
    gender = report["attributes"]["gender"]
    assert "gender" in heads  # the tiny model is trained on IMFDB's sample, which labels gender
    assert (gender["labelled"], gender["n"], gender["not_predicted"]) == (2, 2, 0)
    assert gender["accuracy"] is not None and 0.0 <= gender["macro_f1"] <= 1.0
    assert set(gender["recall"]) == {"female", "male"} and 0.5 <= gender["top_class_share"] <= 1.0
    assert "expression" not in report["attributes"]  # only labelled "unsure"
    # ethnicity: the tiny model (IMFDB sample) has no such head, so its column is empty.
    ethnicity = report["attributes"]["ethnicity"]
    if "ethnicity" not in heads:
        assert (ethnicity["labelled"], ethnicity["n"], ethnicity["not_predicted"]) == (1, 0, 1)
    assert "3 of 4 labelled faces found in 3 photos" in stdout and "gender" in stdout
    assert f"report: {out}" in stdout


@pytest.mark.usefixtures("cpu_params")
def test_bad_flags_and_labels_exit_2_before_anything_runs(photos: tuple[Path, Path], tmp_path: Path) -> None:
    root, labels = photos
    code, _, err = faces_cli("evaluate", "--photos", str(root))
    assert code == 2 and "--photos and --labels go together" in err
    code, _, err = faces_cli("evaluate", "--photos", str(root), "--labels", str(labels), "--split", "val")
    assert code == 2 and "--split cannot be used with --photos" in err
    code, _, err = faces_cli("evaluate", "--photos", str(root), "--labels", str(labels), "--iou", "0")
    assert code == 2 and "--iou must be in (0, 1]" in err
    empty = tmp_path / "no-model"
    empty.mkdir()
    code, _, err = faces_cli("evaluate", "--photos", str(root), "--labels", str(labels), "--model", str(empty))
    assert code == 2 and f"no trained model in {empty}" in err
    (root / "c.jpg").unlink()
    code, _, err = faces_cli("evaluate", "--photos", str(root), "--labels", str(labels))
    assert code == 2 and "1 labelled file(s) not found" in err and "c.jpg" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"faces": [{"file": "a.jpg", "box_xyxy": [0, 0, 1, 1], "age_stage": "teen"}]}))
    code, _, err = faces_cli("evaluate", "--photos", str(root), "--labels", str(bad))
    assert code == 2 and "faces[0]: \"age_stage\" 'teen' is not one of child|young|middle|old|unsure" in err


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.usefixtures("prefect_harness", "cpu_params")
def test_the_wild_set_faces_are_found(tiny_model: Path, tmp_path: Path) -> None:
    """The detector with params.yaml's settings finds at least 28 of the 32 labelled real faces."""
    wild = shared_path("datasets", "wild")
    out = tmp_path / "wild.json"
    code, stdout, stderr = faces_cli(
        "evaluate",
        "--photos",
        str(wild / "images"),
        "--labels",
        str(wild / "labels.json"),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
    )
    assert code == 0, stderr
    counts = json.loads(out.read_text())["detection"]
    assert counts["labelled_faces"] == 32
    assert counts["matched"] >= 28, stdout


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "cpu_params")
def test_all_heads_scores_a_withheld_head(photos: tuple[Path, Path], tmp_path: Path) -> None:
    """A head the model withholds counts as not predicted; with --all-heads it is scored."""
    from tests.train.test_heads import _save_heads

    root, labels = photos
    model = _save_heads(tmp_path / "m", {"gender": False})
    runs = {}
    for name, extra in (("plain", ()), ("all", ("--all-heads",))):
        out = tmp_path / f"{name}.json"
        code, _, stderr = faces_cli(
            "evaluate", "--photos", str(root), "--labels", str(labels), "--model", str(model), "--out", str(out), *extra
        )
        assert code == 0, stderr
        runs[name] = json.loads(out.read_text())["attributes"]["gender"]
    assert (runs["plain"]["n"], runs["plain"]["not_predicted"]) == (0, 2)
    assert (runs["all"]["n"], runs["all"]["not_predicted"]) == (2, 0) and runs["all"]["accuracy"] is not None
