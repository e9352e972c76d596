"""Ways to look at annotations: copies with boxes drawn, and COCO JSON for review tools.

``--draw`` copies every annotated image (and sampled video frame) with its boxes, landmarks
and top attribute labels drawn, at the size the detector saw. ``--export coco`` writes the
current annotations (:func:`faces_core.annotate.store.read_annotations`) as COCO detection
JSON with the five landmarks as keypoints and the attributes as per-box ``attributes``: the
layout CVAT, Label Studio and FiftyOne import for human review.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from PIL import Image, ImageDraw

from faces_core.annotate import store
from faces_core.annotate.inputs import Frame
from faces_core.files import write_atomic_with
from faces_core.inference.detect import LANDMARKS, Face
from faces_core.taxonomy import ATTRIBUTE_NAMES

DRAWN_LABELS: Final = ("gender", "age_stage", "expression")
"""Attributes written beside each drawn box (when the model predicts them)."""


def drawn_path(draw_dir: str | os.PathLike[str], frame: Frame) -> Path:
    """Where the drawn copy of a frame goes: the file's path under its input folder's name.

    ``photos/trip/a.png`` of input ``photos`` becomes ``DRAW/photos/trip/a.png.jpg``; a video
    frame adds its number: ``clip.mp4.f000012.jpg``.
    """
    job = frame.info.job
    suffix = f".f{frame.frame_index:06d}.jpg" if frame.frame_index is not None else ".jpg"
    return Path(draw_dir) / Path(job.root).name / (job.relative + suffix)


class Drawer:
    """Writes drawn copies of frames (a callable for the annotate shard).

    Arguments:
        draw_dir: Folder of the copies.
        quality: JPEG quality.
    """

    def __init__(self, draw_dir: str | os.PathLike[str], quality: int = 90) -> None:
        self.draw_dir = Path(draw_dir)
        self.quality = quality

    def __call__(self, frame: Frame, faces: Sequence[Face], rows: Sequence[dict[str, Any]]) -> None:
        image = Image.fromarray(frame.prepared.pixels).copy()
        draw = ImageDraw.Draw(image)
        scale = frame.prepared.scale
        width = max(1, round(max(image.size) / 300))
        for face, row in zip(faces, rows, strict=True):
            x0, y0, x1, y1 = (v * scale for v in face.box)
            draw.rectangle((x0, y0, x1, y1), outline=(255, 0, 255), width=width)
            for x, y in face.landmarks:
                r = width + 1
                draw.ellipse((x * scale - r, y * scale - r, x * scale + r, y * scale + r), fill=(0, 255, 0))
            words = [f"{row['face']}: {face.confidence:.2f}"]
            words += [str(row[name]) for name in DRAWN_LABELS if row.get(name)]
            draw.text((x0 + 2, max(0.0, y0 - 12)), " ".join(words), fill=(255, 255, 0))
        path = drawn_path(self.draw_dir, frame)
        write_atomic_with(path, lambda tmp: image.save(tmp, format="JPEG", quality=self.quality))


def coco(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The current annotations of an output folder as a COCO detection dict.

    Every successfully annotated image is listed (also those without faces); a video adds
    one image per sampled frame that holds a face, named ``<file>#<frame index>``. Boxes are
    ``[x, y, width, height]`` in pixels; keypoints are the landmarks with visibility 2.
    """
    faces = store.read_annotations(out).to_pylist()
    files = [row for row in store.latest_files(out).to_pylist() if row["status"] == "ok"]
    images: list[dict[str, Any]] = []
    ids: dict[tuple[str, int | None], int] = {}

    def image_id(name: str, frame: int | None, width: int | None, height: int | None, row: dict[str, Any]) -> int:
        key = (name, frame)
        if key not in ids:
            ids[key] = len(ids) + 1
            entry: dict[str, Any] = {
                "id": ids[key],
                "file_name": name if frame is None else f"{name}#{frame}",
                "width": width,
                "height": height,
                "sha256": row["sha256"],
            }
            if frame is not None:
                entry.update(frame_index=frame, timestamp_s=row.get("timestamp_s"))
            images.append(entry)
        return ids[key]

    for row in files:
        if row["kind"] == "image":
            image_id(row["file"], None, row["width"], row["height"], row)
    annotations = []
    for number, row in enumerate(faces, start=1):
        frame = row["frame_index"] if row["kind"] == "video" else None
        iid = image_id(row["file"], frame, row["image_width"], row["image_height"], row)
        x0, y0, x1, y1 = row["x0"], row["y0"], row["x1"], row["y1"]
        keypoints: list[float] = []
        for i in range(0, 10, 2):
            keypoints += [round(row["landmarks"][i], 2), round(row["landmarks"][i + 1], 2), 2]
        annotations.append(
            {
                "id": number,
                "image_id": iid,
                "category_id": 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round((x1 - x0) * (y1 - y0), 2),
                "iscrowd": 0,
                "score": round(row["confidence"], 4),
                "keypoints": keypoints,
                "num_keypoints": 5,
                "attributes": {name: row[name] for name in ATTRIBUTE_NAMES if row.get(name) is not None},
            }
        )
    return {
        "info": {"description": "faces annotate", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "face", "supercategory": "person", "keypoints": list(LANDMARKS), "skeleton": []}
        ],
    }


def write_coco(out: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> Path:
    """Write :func:`coco` of ``out`` to ``path`` (default ``OUT/coco.json``) atomically."""
    target = Path(path) if path is not None else Path(out) / "coco.json"
    text = json.dumps(coco(out), indent=1) + "\n"
    return write_atomic_with(target, lambda tmp: tmp.write_text(text))
