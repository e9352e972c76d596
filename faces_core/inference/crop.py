"""Face crops for the attribute model: the detected box with a margin, optionally levelled.

The model was trained on annotated boxes cut from upright photos; a detected box is a
little tighter than most annotators draw, hence the margin. ``align`` rotates the crop about
the eyes' midpoint so the eyes are level, for heads tilted to a shoulder.
"""

from __future__ import annotations

import math

from PIL import Image

from faces_core.inference.detect import Face


def crop_face(image: Image.Image, face: Face, scale: float, margin: float, align: bool) -> Image.Image:
    """The face's crop from the shrunk image, with a margin, optionally turned upright.

    Args:
        image: The shrunk RGB image the detector saw.
        face: Detection in original pixels.
        scale: Shrunk / original pixels.
        margin: Fraction of the box added on each side.
        align: Rotate about the eyes' midpoint so the eyes are level.

    Returns:
        An RGB crop of at least 1x1 pixel.
    """
    x0, y0, x1, y1 = (v * scale for v in face.box)
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    box = (x0 - dx, y0 - dy, x1 + dx, y1 + dy)
    if align:
        (lx, ly), (rx, ry) = ((x * scale, y * scale) for x, y in face.landmarks[:2])
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
        if abs(angle) > 1.0:
            side = max(box[2] - box[0], box[3] - box[1])
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            region = (round(cx - side), round(cy - side), round(cx + side), round(cy + side))
            patch = image.crop(region)  # pads with black outside the image
            centre = ((lx + rx) / 2 - region[0], (ly + ry) / 2 - region[1])
            patch = patch.rotate(angle, resample=Image.Resampling.BILINEAR, center=centre)
            box = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
            image = patch
    width, height = image.size
    left, top = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    right, bottom = min(width, max(left + 1, math.ceil(box[2]))), min(height, max(top + 1, math.ceil(box[3])))
    return image.crop((left, top, right, bottom))
