"""The embedding recipe: one crop path, person-grouped folds, no collapsed head, calibration,
unpublished heads left out of what users get. Real dlib models, real torch fits, real files."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faces_core.annotate.pipeline import AnnotateSettings, annotate_folders
from faces_core.annotate.store import read_annotations
from faces_core.facechip import CHIP_SIZE, FaceEmbedder, descriptor_dim, whole
from faces_core.inference.detect import DetectSettings
from faces_core.inference.model import FACE_TRUNK, EmbeddingHeads, ModelMeta, save_model
from faces_core.inference.predict import Predictor
from faces_core.sample.faces import face_box, faces_image
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.dataset import IGNORE_INDEX
from faces_core.train.descriptors import embed_crops
from faces_core.train.heads import (
    class_weights,
    cross_validate_head,
    fit_temperature,
    group_folds,
)
from faces_core.train.settings import HeadsSettings

FAST = HeadsSettings(folds=4, l2=(1e-3,), weighting=("none", "balanced"))


def _face_picture(seed: int = 0) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    box = face_box(160, 150, 120)
    image = faces_image(320, 320, [box], random.Random(seed))
    return np.asarray(image), tuple(float(v) for v in box)  # type: ignore[return-value]


def test_one_crop_path_train_time_and_annotate_time_give_the_same_tensor() -> None:
    """A face stored as an ingest crop (its box = the whole crop) and the same face handed to
    the predictor as a picture and a box go through the same chip and descriptor, bit for bit."""
    pixels, box = _face_picture()
    x0, y0, x1, y1 = (round(v) for v in box)
    crop = pixels[y0:y1, x0:x1]
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")  # lossless, as a PNG source stays PNG in ingest
    embedder = FaceEmbedder(flip=True, expression=True, agegender=True)

    # training caches the descriptor parts apart (embed_table); all start at the same chip
    blob = buffer.getvalue()
    train_time = np.concatenate(
        [embed_crops([blob], embedder, part) for part in ("face", "expression", "agegender")], 1
    )
    annotate_time = embedder.embed(crop, [whole(crop)])
    chip = embedder.chips(crop, [whole(crop)])[0]

    assert train_time.shape == (1, descriptor_dim(True, agegender=True)) == (1, 270) and np.isfinite(train_time).all()
    assert np.array_equal(train_time, annotate_time)
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
    # and the predictor's box path is that same function
    model_dir = _save_heads(Path(__import__("tempfile").mkdtemp()), {"gender": True}, agegender=True)
    predictor = Predictor(model_dir, device="cpu")
    features = torch.from_numpy(predictor.embedder.embed(crop, [whole(crop)]))  # type: ignore[union-attr]
    assert torch.equal(features, torch.from_numpy(annotate_time))


def test_person_grouped_folds_never_split_a_person_and_stay_balanced() -> None:
    rng = np.random.default_rng(0)
    groups = [f"imfdb:actor{int(a)}" for a in rng.integers(0, 23, size=2000)]
    folds = group_folds(groups, 5)
    for name in set(groups):
        assert len({int(f) for g, f in zip(groups, folds, strict=True) if g == name}) == 1
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() < 1.5 * sizes.min()
    assert np.array_equal(folds, group_folds(groups, 5))  # deterministic


def _clusters(counts: dict[int, int], people: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Descriptors around one centre per class, faces spread over ``people`` groups."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 128)) * 0.6
    x, y = [], []
    for label, n in counts.items():
        x.append(centres[label] + rng.normal(size=(n, 128)))
        y += [label] * n
    labels = np.array(y)
    groups = [f"p{int(i)}" for i in rng.integers(0, people, size=len(labels))]
    return np.concatenate(x).astype(np.float32), labels, group_folds(groups, 4)


def test_a_rare_class_is_still_predicted_and_the_head_is_published() -> None:
    """36 'child' faces among 1200: the head must still say child for children, and not
    for everyone (the old sqrt_inverse CNN called nearly every adult a child)."""
    x, y, folds = _clusters({0: 36, 1: 700, 2: 400, 3: 64}, people=40)
    result = cross_validate_head("age_stage", list(ATTRIBUTES["age_stage"]), x, y, folds, FAST)
    report = result.report
    assert set(report["predicted_share"]) == {"child", "young", "middle", "old"}
    assert report["recall"]["child"] > 0.5
    assert report["predicted_share"]["child"] < 0.1
    assert report["reliable"] and report["gain_over_floor"] >= 0.10


def test_a_head_without_signal_is_not_published() -> None:
    x, _, folds = _clusters({0: 300, 1: 300}, people=30)
    noise = np.random.default_rng(1).integers(0, 2, size=len(x))
    result = cross_validate_head("gender", ["male", "female"], x, noise, folds, FAST)
    assert not result.report["reliable"]
    assert result.report["macro_f1"]["pooled"] < 0.6


def test_unlabelled_faces_are_left_out_and_folds_missing_a_class_are_reported() -> None:
    x, y, folds = _clusters({0: 200, 1: 200, 2: 8}, people=20)
    y = y.copy()
    y[:50] = IGNORE_INDEX
    result = cross_validate_head("illumination", ["bad", "medium", "high"], x, y, folds, FAST)
    assert result.report["faces"] == len(y) - 50
    missing = result.report["folds_missing_a_class"]
    lacking = [f for f in result.report["folds"] if f["scored"] and not f["complete"]]
    assert lacking, "8 'high' faces over 20 people: some fold must lack the class"
    assert {str(f["fold"]) for f in lacking} == set(missing) and all("high" in v for v in missing.values())
    assert result.report["macro_f1"]["folds"] == sum(1 for f in result.report["folds"] if f["complete"])
    assert sum(f["faces"] for f in result.report["folds"]) == len(y) - 50


def test_temperature_is_recovered_and_calibration_error_drops() -> None:
    """Labels drawn from softmax(z), logits given as 3z: the fitted temperature is about 3."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 3, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1).numpy()
    t = fit_temperature((3 * z).numpy(), labels)
    assert 2.7 < t < 3.3
    x, y, folds = _clusters({0: 300, 1: 300}, people=30)
    report = cross_validate_head("gender", ["male", "female"], x, y, folds, FAST).report
    assert report["ece_after"] <= report["ece_before"] + 1e-9


def test_balanced_class_weights_are_capped() -> None:
    w = class_weights(np.array([0] * 990 + [1] * 10), 2, "balanced", cap=4.0)
    assert abs(float(w[1] / w[0]) - 4.0) < 1e-5  # 99x uncapped
    assert torch.equal(class_weights(np.array([0, 1, 1]), 2, "none", 4.0), torch.ones(2))


def _save_heads(root: Path, published: dict[str, bool], expression: bool = True, agegender: bool = False) -> Path:
    heads = {a: list(ATTRIBUTES[a]) for a in published}
    model = EmbeddingHeads({a: len(c) for a, c in heads.items()}, dim=descriptor_dim(expression, agegender=agegender))
    torch.manual_seed(0)
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight)
    meta = ModelMeta(
        backbone=FACE_TRUNK,
        input_size=CHIP_SIZE,
        attributes=heads,
        version="test-heads",
        params={"heads": {"flip": True, "expression": expression, "agegender": agegender}},
        heads={
            a: {"reliable": ok, "macro_f1": {"pooled": 0.3}, "floor_macro_f1": {"pooled": 0.29}}
            for a, ok in published.items()
        },
    )
    save_model(model, meta, root / "model")
    return root / "model"


def test_an_unpublished_head_is_left_out_of_predict_and_annotate_unless_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = _save_heads(tmp_path, {"gender": True, "age_stage": False})
    pixels, box = _face_picture(1)

    with caplog.at_level("WARNING"):
        answer = Predictor(model_dir, device="cpu").predict_boxes(pixels, [box])[0]
    assert set(answer) == {"gender"}
    assert "age_stage (CV macro-F1 0.30 vs floor 0.29)" in caplog.text and "--all-heads" in caplog.text
    everything = Predictor(model_dir, device="cpu", all_heads=True).predict_boxes(pixels, [box])[0]
    assert set(everything) == {"gender", "age_stage"}
    assert abs(sum(everything["age_stage"]["probabilities"].values()) - 1) < 1e-5

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(pixels).save(photos / "one.jpg", quality=95)
    settings = AnnotateSettings(detect=DetectSettings(max_side=640, device="cpu"), lock_wait_s=5.0)
    annotate_folders([photos], tmp_path / "out", settings, model_dir=model_dir)
    rows = read_annotations(tmp_path / "out").to_pylist()
    assert len(rows) == 1
    assert rows[0]["gender"] in ("male", "female") and rows[0]["gender_probability"] is not None
    assert rows[0]["age_stage"] is None and rows[0]["age_stage_probability"] is None

    from dataclasses import replace

    annotate_folders([photos], tmp_path / "all", replace(settings, all_heads=True), model_dir=model_dir)
    assert read_annotations(tmp_path / "all").to_pylist()[0]["age_stage"] in ATTRIBUTES["age_stage"]


def test_a_model_written_before_the_expression_part_still_predicts(tmp_path: Path) -> None:
    """model.json without ``heads.expression``: 128-d heads on dlib's descriptor only."""
    model_dir = _save_heads(tmp_path, {"gender": True}, expression=False)
    predictor = Predictor(model_dir, device="cpu")
    assert predictor.embedder is not None and predictor.embedder.dim == 128
    pixels, box = _face_picture(2)
    answer = predictor.predict_boxes(pixels, [box])[0]
    assert answer["gender"]["label"] in ("male", "female")


def test_the_fer_expression_head_passes_fers_logits_through() -> None:
    """``expression_head: fer``: scored on the same folds as a trained head, and in the final
    model its logits are fer's, column for column, over the fitted temperature."""
    from faces_core.train.dataset import FaceTable
    from faces_core.train.heads import fit_heads
    from faces_core.train.teachers import fer_columns

    classes = list(ATTRIBUTES["expression"])
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, len(classes), size=n)
    x = rng.normal(size=(n, descriptor_dim(True))).astype(np.float32)
    columns = fer_columns(classes)
    x[np.arange(n), np.array(columns)[y]] += 3.0  # fer's logit of the true class stands out
    folds = group_folds([f"p{i % 20}" for i in range(n)], 4)
    result = cross_validate_head("expression", classes, x, y, folds, FAST, peer=columns)
    assert result.peer == tuple(columns) and "peer" in result.report["chosen"]
    assert result.report["accuracy"]["pooled"] > 0.8
    targets = np.full((n, len(ATTRIBUTES)), IGNORE_INDEX, dtype=np.int64)
    targets[:, list(ATTRIBUTES).index("expression")] = y
    table = FaceTable(np.zeros(0, np.uint8), np.zeros(n + 1, np.int64), targets, list(ATTRIBUTES), {})
    model = fit_heads(x, table, {"expression": classes}, {"expression": result}, FAST)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))["expression"] * result.temperature
    assert torch.allclose(logits, torch.from_numpy(x[:, columns]), atol=1e-4)
    with pytest.raises(ValueError, match="expression_head: trained"):
        fer_columns(["neutral", "smirk"])
