"""The detector's box of a face that fills its own crop, as annotate finds it in a photo.

An ingest crop, or a crop given to ``faces predict`` without detection, is the face's
annotator box; a model trained with ``train.heads.boxes: detector`` reads each face from the
box MTCNN gives instead, as annotate does in a photo. :func:`find_in_crops` finds that box:
the crop is enlarged when small and set in a black border (MTCNN misses a face that touches
the image edge on every side), and of the faces found the one overlapping the crop most is
its face. Used by training (:mod:`faces_core.train.boxes`, cached) and by the predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from faces_core.facechip import Box, whole
from faces_core.inference.detect import FaceDetector, prepare
from faces_core.photo_eval import iou

BORDER: Final = 0.3
"""Black border set around a crop before detection, as a fraction of its long side: MTCNN
misses a face that touches the image edge on every side."""

MIN_SIDE: Final = 96
"""A crop whose short side is smaller is enlarged to this first (annotate's smallest face is
40 px; most IMFDB crops are 50 to 170 px)."""

MIN_IOU: Final = 0.4
"""A detection overlapping the crop less than this is another face, not the crop's."""


def crop_box(pixels: np.ndarray, found: np.ndarray | None) -> Box:
    """The box a crop's face is cut from: ``found`` (a row of :func:`find_in_crops`) where the
    detector found it, else the whole crop (the annotator's box), as training keeps it."""
    if found is not None and np.isfinite(found).all():
        x0, y0, x1, y1 = (float(v) for v in found)
        return (x0, y0, x1, y1)
    return whole(pixels)


def find_in_crops(crops: Sequence[np.ndarray], detector: FaceDetector) -> np.ndarray:
    """``float32 [N, 4]``: the detected box of each crop's face, in the crop's pixels.

    Each ``uint8 [H, W, 3]`` crop is enlarged to :data:`MIN_SIDE` when smaller and set in a
    black border of :data:`BORDER`; of the faces found, the one overlapping the whole crop
    most (at least :data:`MIN_IOU`) is its face. A row of ``NaN`` means none was found. The box
    may reach past the crop's edge, as a detected box in a photo reaches past a tight crop;
    the chip is padded there.
    """
    placed = []
    for pixels in crops:
        h, w = pixels.shape[:2]
        scale = max(1.0, MIN_SIDE / max(1, min(h, w)))
        if scale > 1.0:
            from PIL import Image

            size = (round(w * scale), round(h * scale))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        pad = round(BORDER * max(pixels.shape[:2]))
        canvas = np.zeros((pixels.shape[0] + 2 * pad, pixels.shape[1] + 2 * pad, 3), dtype=np.uint8)
        canvas[pad : pad + pixels.shape[0], pad : pad + pixels.shape[1]] = pixels
        placed.append((canvas, scale, pad, (0.0, 0.0, float(w), float(h))))
    found = detector.detect([prepare(canvas, detector.settings.max_side) for canvas, _, _, _ in placed])
    out = np.full((len(crops), 4), np.nan, dtype=np.float32)
    for i, ((_, scale, pad, crop_box), faces) in enumerate(zip(placed, found, strict=True)):
        boxes = [tuple((v - pad) / scale for v in face.box) for face in faces]
        overlaps = [iou(box, crop_box) for box in boxes]
        if overlaps and max(overlaps) >= MIN_IOU:
            out[i] = boxes[int(np.argmax(overlaps))]
    return out
