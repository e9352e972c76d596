"""Training faces cut from the detector's box in their crops (``train.heads.boxes: detector``):
found as annotate finds them, cut by the same chip function, cached, and read the same way
at evaluation. Real MTCNN and dlib models, real files."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faces_core.facechip import FaceEmbedder, descriptor_dim
from faces_core.inference.detect import DetectSettings, FaceDetector, prepare
from faces_core.inference.model import FACE_TRUNK, EmbeddingHeads, ModelMeta, uses_detector_boxes
from faces_core.inference.reframe import find_in_crops
from faces_core.photo_eval import iou
from faces_core.sample.faces import face_box, faces_image
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.boxes import detector_boxes, locate, with_boxes
from faces_core.train.dataset import IGNORE_INDEX, FaceTable, subset
from faces_core.train.descriptors import embed_table
from faces_core.train.evaluate import predict_embedded
from faces_core.train.settings import HeadsSettings


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A picture with one face, and the face's tight annotator box (an ingest crop's extent)."""
    box = face_box(170, 160, 110)
    return np.asarray(faces_image(340, 340, [box], random.Random(seed))), box


def _box(row: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in row)
    return (x0, y0, x1, y1)


def _table(crops: list[np.ndarray]) -> FaceTable:
    blobs = [_png(c) for c in crops]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
    targets = np.full((len(blobs), 1), IGNORE_INDEX, dtype=np.int64)
    targets[:, 0] = [i % 2 for i in range(len(blobs))]
    meta = {"face_id": [f"face{i}" for i in range(len(blobs))], "subject": [f"p{i}" for i in range(len(blobs))]}
    return FaceTable(data, offsets, targets, ("gender",), meta)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Three tight face crops, as ingest stores them, and one crop of background only."""
    out = []
    for seed in range(3):
        pixels, (x0, y0, x1, y1) = _photo(seed)
        out.append(np.ascontiguousarray(pixels[y0:y1, x0:x1]))
    out.append(np.full((120, 90, 3), 180, dtype=np.uint8))
    return out


def test_the_box_found_in_a_crop_is_the_box_annotate_finds_in_the_photo(crops: list[np.ndarray]) -> None:
    """The detector sees a face that fills its crop (a border and enlargement), and the box it
    gives, in the photo's pixels, is where annotate's detector puts the same face; a crop of
    background gives none."""
    detector = FaceDetector(DetectSettings(device="cpu"))
    found = find_in_crops(crops, detector)
    assert np.isfinite(found[:3]).all() and np.isnan(found[3]).all()
    for seed in range(3):
        pixels, (x0, y0, x1, y1) = _photo(seed)
        in_photo = detector.detect([prepare(pixels, 1024)])[0][0].box
        from_crop = found[seed] + np.array([x0, y0, x0, y0], dtype=np.float32)
        assert iou(in_photo, from_crop) > 0.9, (in_photo, from_crop)
        assert 0.4 <= iou(found[seed], (0, 0, x1 - x0, y1 - y0)) < 0.98  # its own framing, not the crop's


def test_a_face_is_cut_from_its_stored_box_and_a_missed_one_from_its_crop(
    crops: list[np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The train-time descriptor of a located face is the annotate-time descriptor of the
    crop and the stored box, bit for bit; the crop without a face is kept whole (``keep``)
    or left out (``drop``), and logged either way."""
    table = _table(crops)
    with caplog.at_level("INFO"):
        kept, report = locate(table, "keep", tmp_path / "boxes")
    assert report == {"faces": 4, "undetected": 1, "policy": "keep"}
    assert "found 3 of 4" in caplog.text and "no_face_in_crop: face3" in caplog.text
    assert kept.boxes is not None and np.isnan(kept.boxes[3]).all()

    embedder = FaceEmbedder(flip=False, expression=True, agegender=True)
    train_time = embed_table(kept, None, flip=False, workers=1, expression=True, agegender=True)
    assert train_time.shape == (4, descriptor_dim(True, agegender=True))
    for i, crop in enumerate(crops):  # one face a batch on both sides: bit for bit
        box = _box(kept.boxes[i]) if i < 3 else (0.0, 0.0, 90.0, 120.0)
        one = subset(kept, np.arange(4) == i)
        alone = embed_table(one, None, flip=False, workers=1, expression=True, agegender=True)
        assert np.array_equal(alone, embedder.embed(crop, [box])), i
        np.testing.assert_allclose(train_time[i : i + 1], alone, rtol=1e-4, atol=1e-4)  # batched: float rounding
    whole_crop = embed_table(table, None, flip=False, workers=1, expression=True, agegender=True)
    assert np.array_equal(whole_crop[3], train_time[3]) and not np.array_equal(whole_crop[0], train_time[0])

    dropped, report = locate(table, "drop", tmp_path / "boxes")
    assert report["undetected"] == 1 and len(dropped) == 3 and dropped.meta["face_id"] == ["face0", "face1", "face2"]
    assert dropped.boxes is not None and np.isfinite(dropped.boxes).all()
    some = subset(kept, np.array([True, False, True, False])).boxes
    assert some is not None and np.array_equal(some, kept.boxes[[0, 2]])


def test_boxes_are_cached_by_content_and_a_torn_file_is_redone(crops: list[np.ndarray], tmp_path: Path) -> None:
    table = _table(crops)
    first = detector_boxes(table, tmp_path)
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 1
    files[0].write_bytes(b"torn")  # a kill while writing
    again = detector_boxes(table, tmp_path)
    np.testing.assert_array_equal(first, again)
    assert np.load(files[0]).shape == (4, 4)
    other = _table(crops[:2])  # other crops: another chunk key
    detector_boxes(other, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    with pytest.raises(ValueError, match=r"boxes must be \[4, 4\]"):
        with_boxes(table, first[:2])


def _detector_box_model(seed: int) -> tuple[EmbeddingHeads, ModelMeta]:
    """A gender head on the full descriptor of a model trained with ``boxes: detector``."""
    model = EmbeddingHeads({"gender": 2}, dim=descriptor_dim(True, agegender=True))
    torch.manual_seed(seed)
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight)
    params = {"heads": {"flip": False, "expression": True, "agegender": True, "boxes": "detector"}}
    return model, ModelMeta(FACE_TRUNK, 150, {"gender": list(ATTRIBUTES["gender"])}, params=params)


def test_evaluation_reads_a_crop_as_the_model_was_trained_to(crops: list[np.ndarray]) -> None:
    """A model trained with ``boxes: detector`` is scored on descriptors cut from the boxes
    found in the evaluated crops, not from the whole crops."""
    table = _table(crops)
    model, meta = _detector_box_model(seed=0)
    assert uses_detector_boxes(meta) and not uses_detector_boxes(ModelMeta(FACE_TRUNK, 150, meta.attributes))
    confidences: dict[str, np.ndarray] = {}
    answer = predict_embedded(model.eval(), meta, table, workers=1, confidences=confidences)["gender"]
    located = with_boxes(table, detector_boxes(table, None))
    x = embed_table(located, None, flip=False, workers=1, expression=True, agegender=True)
    expected = torch.softmax(model(torch.from_numpy(x))["gender"], dim=1)
    assert np.array_equal(answer, expected.argmax(1).numpy())
    np.testing.assert_allclose(confidences["gender"], expected.max(1).values.detach().numpy(), rtol=1e-6)


def test_the_box_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="boxes must be detector or ingest"):
        HeadsSettings(boxes="annotator")
    with pytest.raises(ValueError, match="undetected keep or drop"):
        HeadsSettings(undetected="skip")


def test_predict_reads_a_crop_from_the_box_found_in_it(crops: list[np.ndarray], tmp_path: Path) -> None:
    """``faces predict`` on face crops (no detection over the image) answers a detector-box
    model from the box found in each crop, and from the whole crop where none is."""
    from faces_core.inference.model import save_model
    from faces_core.inference.predict import Predictor

    model, meta = _detector_box_model(seed=1)
    predictor = Predictor(save_model(model, meta, tmp_path / "model").parent, device="cpu", batch_size=3)
    assert predictor.reframer is not None
    answers = predictor.predict([Image.fromarray(c) for c in crops])
    found = find_in_crops(crops, predictor.reframer)
    for i, crop in enumerate(crops):
        box = _box(found[i]) if i < 3 else (0.0, 0.0, 90.0, 120.0)
        assert answers[i] == predictor.predict_boxes(crop, [box])[0], i
