"""Face detection: MTCNN (facenet-pytorch 2.5.3) run on batches of images of any sizes.

facenet-pytorch's ``MTCNN.detect`` only batches images of one size and ships its P/R/O-net
weights inside the wheel (``facenet_pytorch/data/*.pt``); nothing is downloaded here. This
module loads those three networks once and runs facenet's cascade on our own batches
(:mod:`faces_core.inference.cascade`: facenet's ``detect_face``, with channels-last
networks on the CPU): every image is first shrunk so its long side is at most
:attr:`DetectSettings.max_side` (never enlarged). Images whose sizes round up to the same
multiple of :attr:`DetectSettings.pad_multiple` share a batch (:func:`canvas_size` is the
grouping key) and are padded at the right and bottom to the largest of them (not at all
when they share one size), and boxes and landmarks are mapped back to the pixels of the
original image. An image without a face gives an empty list in its
slot, whatever the other images of the batch hold.

Box format everywhere: ``(x0, y0, x1, y1)`` floats in pixels of the upright original image,
clipped to it. Landmarks: five ``(x, y)`` points, in :data:`LANDMARKS` order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from PIL import Image

from faces_core.inference.cascade import detect_batch
from faces_core.inference.settings import DetectSettings

LANDMARKS: Final = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Order of the five landmark points (left/right as seen in the image)."""


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in pixels of the original (upright) image, clipped to it.
        confidence: O-net face probability in [0, 1].
        landmarks: Five ``(x, y)`` points in :data:`LANDMARKS` order, original pixels.
    """

    box: tuple[float, float, float, float]
    confidence: float
    landmarks: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Prepared:
    """An image ready for detection: shrunk to the long-side cap, as ``uint8 [H, W, 3]``.

    Attributes:
        pixels: The shrunk RGB pixels (what the detector sees; also what crops come from).
        scale: ``shrunk side / original side`` (1.0 when the image was small enough).
        original_size: ``(width, height)`` of the original upright image.
    """

    pixels: np.ndarray
    scale: float
    original_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the shrunk pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def prepare(image: Image.Image | np.ndarray, max_side: int, original_size: tuple[int, int] | None = None) -> Prepared:
    """Shrink an RGB image so its long side is at most ``max_side`` (never enlarged).

    Args:
        image: An RGB PIL image or ``uint8 [H, W, 3]`` array (upright: EXIF already applied).
        max_side: Long-side cap in pixels.
        original_size: ``(width, height)`` of the original when ``image`` was already decoded
            smaller (a JPEG decoded at reduced scale): sizes and scale refer to the original.

    Returns:
        The shrunk pixels with the scale that maps them back to the original.
    """
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
        pil = None
    else:
        width, height = image.size
        pil = image if image.mode == "RGB" else image.convert("RGB")
    full_w, full_h = original_size or (width, height)
    scale = min(1.0, max_side / max(full_w, full_h, 1))
    size = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
    if size != (width, height):
        pil = (pil if pil is not None else Image.fromarray(np.asarray(image))).resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(pil) if pil is not None else np.ascontiguousarray(image)
    if scale < 1.0:
        scale = pixels.shape[1] / full_w  # the exact ratio after rounding
    return Prepared(pixels=pixels, scale=scale, original_size=(full_w, full_h))


def canvas_size(size: tuple[int, int], pad_multiple: int) -> tuple[int, int]:
    """Padded ``(width, height)`` of an image of ``size``: the batching key."""
    width, height = size
    return (math.ceil(width / pad_multiple) * pad_multiple, math.ceil(height / pad_multiple) * pad_multiple)


def resolve_device(preference: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU.

    Raises:
        ValueError: ``cuda`` is asked for but no GPU is visible.
    """
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("annotate.detect.device is cuda but no CUDA GPU is visible: use auto or cpu")
    return torch.device("cuda", 0)


class FaceDetector:
    """MTCNN with its weights from the facenet-pytorch wheel, answering batches of any sizes.

    Arguments:
        settings: Thresholds, sizes and device (defaults when None).

    Example:
        >>> detector = FaceDetector()
        >>> faces = detector.detect([prepare(Image.open("group.jpg").convert("RGB"), 1024)])[0]
        >>> [round(f.confidence, 2) for f in faces]
        [1.0, 0.99]
    """

    def __init__(self, settings: DetectSettings | None = None) -> None:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.settings = settings or DetectSettings()
        self.device = resolve_device(self.settings.device)
        # pretrained=True loads facenet_pytorch/data/{p,r,o}net.pt from the installed wheel.
        # Channels-last on the CPU: oneDNN's convolutions are twice as fast in that layout.
        self.channels_last = self.device.type == "cpu"
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.pnet, self.rnet, self.onet = (
            net(pretrained=True).to(self.device, memory_format=layout).eval() for net in (PNet, RNet, ONet)
        )

    def detect(self, images: Sequence[Prepared]) -> list[list[Face]]:
        """Faces of every image, batching images with the same canvas (:func:`canvas_size`).

        Args:
            images: Prepared images (see :func:`prepare`), any sizes, in any order.

        Returns:
            One list of faces per image, in input order, best score first; ``[]`` when an
            image has no face.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        smallest = canvas_size((self.settings.min_face_size, self.settings.min_face_size), self.settings.pad_multiple)
        for i, image in enumerate(images):
            width, height = canvas_size(image.size, self.settings.pad_multiple)
            # The cascade needs at least one pyramid level: no canvas side below the smallest face.
            groups.setdefault((max(width, smallest[0]), max(height, smallest[1])), []).append(i)
        out: list[list[Face]] = [[] for _ in images]
        step = self.settings.batch_size
        for key, members in groups.items():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                # The batch's canvas is as small as its images allow (no padding at all when
                # they share one size, as video frames and camera folders do), never over the key.
                canvas = (
                    max(smallest[0], *(images[i].size[0] for i in chunk)),
                    max(smallest[1], *(images[i].size[1] for i in chunk)),
                )
                assert canvas[0] <= key[0] and canvas[1] <= key[1]
                for i, faces in zip(chunk, self._detect_canvas([images[i] for i in chunk], canvas), strict=True):
                    out[i] = faces
        return out

    @torch.inference_mode()
    def _detect_canvas(self, images: Sequence[Prepared], canvas: tuple[int, int]) -> list[list[Face]]:
        """One forward pass of the cascade over images padded to the same ``canvas``."""
        width, height = canvas
        batch = torch.zeros((len(images), height, width, 3), dtype=torch.uint8)
        for k, image in enumerate(images):
            h, w = image.pixels.shape[:2]
            batch[k, :h, :w].numpy()[...] = image.pixels  # copy through a numpy view of the tensor
        s = self.settings
        boxes, points = detect_batch(
            batch.to(self.device),
            s.min_face_size,
            self.pnet,
            self.rnet,
            self.onet,
            list(s.thresholds),
            s.factor,
            self.channels_last,
        )
        return [_faces(boxes[k], points[k], image, s.min_confidence) for k, image in enumerate(images)]


def _faces(boxes: np.ndarray, points: np.ndarray, image: Prepared, min_confidence: float) -> list[Face]:
    """Detections of one image in original pixels, best score first; padding-only boxes dropped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    width, height = image.original_size
    shrunk_w, shrunk_h = image.size
    faces: list[Face] = []
    for row, pts in zip(boxes, points, strict=True):
        x0, y0, x1, y1, score = (float(v) for v in row)
        if score < min_confidence or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            continue
        # A box centred in the padding belongs to no image pixel.
        if (x0 + x1) / 2 >= shrunk_w or (y0 + y1) / 2 >= shrunk_h:
            continue
        box = (
            min(max(x0 / image.scale, 0.0), width),
            min(max(y0 / image.scale, 0.0), height),
            min(max(x1 / image.scale, 0.0), width),
            min(max(y1 / image.scale, 0.0), height),
        )
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        landmarks = tuple((float(x) / image.scale, float(y) / image.scale) for x, y in pts)
        faces.append(Face(box=box, confidence=score, landmarks=landmarks))
    faces.sort(key=lambda f: -f.confidence)
    return faces
