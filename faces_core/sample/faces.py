"""Shaded synthetic faces that a real face detector (MTCNN) finds, and a folder of them.

The flat cartoon faces of :func:`faces_core.sample.draw_face` carry no shading, and MTCNN
(trained on photos) sees no face in them. :func:`render_face` paints a face the way light
falls on one: a lit oval darkening towards its rim, soft dark eye sockets under brows, a
shadow under the nose and between the lips, and hair on top. MTCNN scores these above 0.99
at any size from about 60 px, in colour or grey. Everything is drawn here, so the images
are free to ship, and exact: each face's box is known.

:func:`write_annotate_sample` writes a folder of every kind of file ``faces annotate`` must
handle, with what annotating it must give.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

from faces_core.errors import Reason

SKIN: Final = ((205, 160, 130), (180, 130, 95), (140, 95, 65), (230, 190, 160))
HAIR: Final = ((50, 35, 25), (20, 20, 20), (110, 80, 40))

Box = tuple[int, int, int, int]


def _blob(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))[..., None]


def render_face(canvas: np.ndarray, box: Box, skin: tuple[int, int, int], hair: tuple[int, int, int]) -> None:
    """Paint a shaded face filling ``box`` (x0, y0, x1, y1; about 3:4 wide:tall) in place.

    Args:
        canvas: ``float32 [H, W, 3]`` RGB pixels in 0..255, changed in place.
        box: The face's oval, in pixels of ``canvas``.
        skin: RGB skin tone of the lit centre.
        hair: RGB hair colour.
    """
    x0, y0, x1, y1 = box
    height, width = canvas.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    w, h = x1 - x0, y1 - y0
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    face = np.asarray(skin, np.float32) * np.clip(1.05 - 0.35 * d, 0, 1)[..., None]
    canvas[:] = np.where((d <= 1)[..., None], face, canvas)
    for ex in (cx - 0.2 * w, cx + 0.2 * w):
        canvas *= 1 - 0.75 * _blob(xx, yy, ex, y0 + 0.42 * h, 0.08 * w, 0.035 * h)
        canvas *= 1 - 0.5 * _blob(xx, yy, ex, y0 + 0.33 * h, 0.11 * w, 0.02 * h)
    canvas *= 1 - 0.3 * _blob(xx, yy, cx, y0 + 0.6 * h, 0.05 * w, 0.06 * h)
    canvas *= 1 - 0.6 * _blob(xx, yy, cx, y0 + 0.76 * h, 0.15 * w, 0.03 * h)
    canvas[:] = np.where(((d <= 1.25) & (yy < y0 + 0.22 * h))[..., None], np.asarray(hair, np.float32), canvas)


def faces_image(width: int, height: int, boxes: list[Box], rng: random.Random, background: int = 200) -> Image.Image:
    """An RGB image of a soft grey-gradient background with a shaded face in each box."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = background - 30 * (yy / max(height, 1)) + 10 * (xx / max(width, 1))
    canvas = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
    for box in boxes:
        render_face(canvas, box, rng.choice(SKIN), rng.choice(HAIR))
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def face_box(cx: int, cy: int, width: int) -> Box:
    """A face box of ``width`` (height 4/3 of it) centred on ``(cx, cy)``."""
    height = round(width * 4 / 3)
    return (cx - width // 2, cy - height // 2, cx - width // 2 + width, cy - height // 2 + height)


@dataclass(frozen=True, slots=True)
class SampleFile:
    """One file of the sample and what annotating it must give.

    Attributes:
        path: The file, under the sample root.
        faces: Faces per sampled frame (one entry for an image; one per sampled video frame),
            empty when the file must be rejected.
        reason: Rejection code the file must get, or None when it is annotated.
        size: ``(width, height)`` of the upright image or of a video frame.
    """

    path: Path
    faces: tuple[int, ...]
    reason: Reason | None = None
    size: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class AnnotateSample:
    """A written folder and the outcome expected for each file."""

    root: Path
    files: tuple[SampleFile, ...] = field(default_factory=tuple)

    @property
    def faces(self) -> int:
        """Faces expected over every image and sampled video frame."""
        return sum(sum(f.faces) for f in self.files)

    @property
    def rejected(self) -> dict[str, Reason]:
        """Relative path -> reason for the files that must be rejected."""
        return {str(f.path.relative_to(self.root)): f.reason for f in self.files if f.reason is not None}


def _save(image: Image.Image, path: Path, fmt: str, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    path.write_bytes(buf.getvalue())
    return path


def write_video(path: Path, frames: list[Image.Image], fps: float) -> Path:
    """Write RGB frames (all one size) as an MJPEG AVI with OpenCV's VideoWriter."""
    import cv2

    width, height = frames[0].size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPEG video {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.asarray(frame.convert("RGB")), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def write_annotate_sample(root: Path, seed: int = 0, video: bool = True) -> AnnotateSample:
    """Write a folder of images and a video with known faces, plus every kind of bad file.

    Images are small (at most 640 px) so detection stays cheap on a CPU. The video is 3 s at
    4 fps, 160x120: a face in its first two seconds, none in the last.

    Args:
        root: Folder to write (created).
        seed: Seed of skin and hair colours.
        video: Also write ``clips/walk.avi`` (needs OpenCV).

    Returns:
        The files written and what annotating each must give (1 s video sampling).
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files: list[SampleFile] = []

    def add(rel: str, image: Image.Image, fmt: str, faces: int, **kwargs: object) -> Path:
        path = _save(image, root / rel, fmt, **kwargs)
        files.append(SampleFile(path, (faces,), None, image.size))
        return path

    add("one.jpg", faces_image(320, 240, [face_box(160, 120, 96)], rng), "JPEG", 1, quality=92)
    add("pair.png", faces_image(480, 240, [face_box(130, 120, 100), face_box(350, 120, 100)], rng), "PNG", 2)
    add("modes/gray.png", faces_image(240, 240, [face_box(120, 120, 96)], rng).convert("L"), "PNG", 1)
    rgba = faces_image(240, 240, [face_box(120, 120, 96)], rng).convert("RGBA")
    add("modes/alpha.png", rgba, "PNG", 1)
    add("modes/cmyk.jpg", faces_image(240, 240, [face_box(120, 120, 96)], rng).convert("CMYK"), "JPEG", 1)
    wide = np.asarray(faces_image(240, 240, [face_box(120, 120, 96)], rng).convert("L"), np.uint16) * 257
    add("modes/deep16.png", Image.fromarray(wide.astype(np.uint16)), "PNG", 1)
    add("nested/deeper/photo.webp", faces_image(300, 300, [face_box(150, 150, 110)], rng), "WEBP", 1)
    add("nested/no_extension", faces_image(240, 240, [face_box(120, 120, 96)], rng), "PNG", 1)
    add("large.jpg", faces_image(1280, 960, [face_box(640, 480, 360)], rng), "JPEG", 1, quality=85)
    add("empty_room.jpg", faces_image(320, 240, [], rng), "JPEG", 0)

    # Stored turned 90 degrees with EXIF orientation 6: upright only when EXIF is applied.
    upright = faces_image(240, 320, [face_box(120, 160, 110)], rng)
    exif = Image.Exif()
    exif[0x0112] = 6
    add("rotated.jpg", upright.transpose(Image.Transpose.ROTATE_90), "JPEG", 1, exif=exif)
    files[-1] = SampleFile(files[-1].path, (1,), None, upright.size)

    bad: list[tuple[str, bytes, Reason]] = [
        ("broken/truncated.jpg", _half(_jpeg_bytes(faces_image(200, 200, [], rng))), Reason.CORRUPT_IMAGE),
        ("broken/empty.png", b"", Reason.EMPTY_FILE),
        ("broken/notes.jpg", b"shopping list: milk, eggs\n" * 4, Reason.NOT_AN_IMAGE),
        ("broken/readme.txt", b"not a photo\n", Reason.JUNK_FILE),
        ("broken/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, Reason.UNREADABLE_VIDEO),
    ]
    for rel, data, reason in bad:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(SampleFile(path, (), reason))

    if video:
        with_face = faces_image(160, 120, [face_box(80, 60, 66)], rng)
        without = faces_image(160, 120, [], rng)
        path = write_video(root / "clips" / "walk.avi", [with_face] * 8 + [without] * 4, fps=4.0)
        files.append(SampleFile(path, (1, 1, 0), None, (160, 120)))
    return AnnotateSample(root=root, files=tuple(sorted(files, key=lambda f: str(f.path))))


def _jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _half(data: bytes) -> bytes:
    """The first half of an encoded image: the header parses, the pixels are cut off."""
    return data[: len(data) // 2]
