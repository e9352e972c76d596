"""``faces predict`` with the detector: one answer per face of a group photo, ``no_faces`` otherwise."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from faces_cli.main import main
from faces_core.inference.crop import crop_face
from faces_core.inference.detect import DetectSettings, FaceDetector, prepare
from faces_core.inference.predict import Predictor
from faces_core.sample.faces import face_box, faces_image


def _cli(args: list[str]) -> tuple[int, list[dict[str, Any]]]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["predict", *args])
    return code, [json.loads(line) for line in stdout.getvalue().splitlines()]


def test_a_group_photo_gives_one_answer_per_detected_face(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        f"predict: {{model_dir: {tiny_model}, device: cpu}}\n"
        "annotate: {crop_margin: 0.1, detect: {max_side: 640, device: cpu}}\n"
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    rng = random.Random(7)
    group = tmp_path / "group.png"
    image = faces_image(560, 240, [face_box(100, 120, 90), face_box(280, 120, 90), face_box(460, 120, 90)], rng)
    image.save(group)
    empty = tmp_path / "wall.png"
    faces_image(320, 240, [], rng).save(empty)

    code, lines = _cli([str(group), str(empty)])
    assert code == 0
    assert [(line["input"], line.get("face")) for line in lines] == [
        (str(group), 0),
        (str(group), 1),
        (str(group), 2),
        (str(empty), None),
    ]
    assert lines[3]["error"]["reason"] == "no_faces"
    detector = FaceDetector(DetectSettings(max_side=640, device="cpu"))
    faces = sorted(detector.detect([prepare(image, 640)])[0], key=lambda f: f.box[0])
    predictor = Predictor(tiny_model, device="cpu")
    expected = predictor.predict([crop_face(image, face, 1.0, 0.1, False) for face in faces])
    for line, face, prediction in zip(lines[:3], faces, expected, strict=True):
        assert line["box"] == [round(v) for v in face.box]
        assert line["attributes"] == {
            head: {"label": p["label"], "probability": round(p["probability"], 4)} for head, p in prediction.items()
        }
    centres = [(line["box"][0] + line["box"][2]) / 2 for line in lines[:3]]
    assert centres == pytest.approx([100, 280, 460], abs=15)
