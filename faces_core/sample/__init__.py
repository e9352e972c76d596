"""Synthetic sample data in both source formats, for the demo, the tests and benchmarks.

Nothing here is downloaded: images are drawn (a skin-toned ellipse with eyes and a mouth on
a noise background), so sizes and boxes are exact and the files are free to ship.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

SKIN_TONES = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (241, 194, 125))


def noise_image(width: int, height: int, rng: random.Random) -> Image.Image:
    """RGB image of coarse colour noise (cheap to make, compresses poorly like photos do)."""
    small = Image.frombytes(
        "RGB",
        (max(1, width // 8), max(1, height // 8)),
        rng.randbytes(3 * max(1, width // 8) * max(1, height // 8)),
    )
    return small.resize((width, height), Image.Resampling.NEAREST)


def draw_face(image: Image.Image, box: tuple[int, int, int, int], rng: random.Random) -> Image.Image:
    """Draw a cartoon face filling ``box`` (x0, y0, x1, y1 in pixels) onto ``image`` in place."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    draw = ImageDraw.Draw(image)
    draw.ellipse(box, fill=rng.choice(SKIN_TONES), outline=(60, 40, 20))
    eye_r = max(1, w // 12)
    for ex in (x0 + w * 0.32, x0 + w * 0.68):
        ey = y0 + h * 0.4
        draw.ellipse((ex - eye_r, ey - eye_r, ex + eye_r, ey + eye_r), fill=(30, 30, 30))
    draw.arc((x0 + w * 0.3, y0 + h * 0.5, x0 + w * 0.7, y0 + h * 0.8), 20, 160, fill=(120, 30, 30))
    return image


def face_image(
    width: int,
    height: int,
    boxes: list[tuple[int, int, int, int]],
    rng: random.Random,
) -> Image.Image:
    """A noise image of the given size with a drawn face in each box."""
    image = noise_image(width, height, rng)
    for box in boxes:
        draw_face(image, box, rng)
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    """Encode an image to bytes (JPEG quality 90 unless told otherwise)."""
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        kwargs.setdefault("quality", 90)
        image = image.convert("RGB")
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
