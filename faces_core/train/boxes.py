"""The detector's box of every training face, found in its own crop, cached and resumable.

``annotate`` cuts a face's chip from landmarks dlib looks for inside MTCNN's box; an ingest
crop is the annotator's box, framed differently (on IMFDB the whole crop: the median
detected box overlaps it at IoU 0.85, and dlib's landmarks move by more than a tenth of the
eye distance for one face in five). With ``train.heads.boxes: detector`` training reads
every face as annotate would: MTCNN, with annotate's settings, is run once on each crop
(set in a black border and enlarged when small, so a face that fills its crop is still
seen whole), and the box that overlaps the crop most is kept beside the face
(:attr:`FaceTable.boxes`). A crop where the detector finds no face keeps its ingest box
(``NaN`` here), or is left out of training (``train.heads.undetected: drop``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Final

import numpy as np

from faces_core.inference.detect import FaceDetector
from faces_core.inference.reframe import BORDER, MIN_IOU, MIN_SIDE, find_in_crops
from faces_core.inference.settings import DetectSettings
from faces_core.train.dataset import FaceTable, subset

log = logging.getLogger(__name__)

CHUNK: Final = 256
"""Crops per cached box file: a kill loses at most this much work."""


def _key(blobs: Sequence[bytes], settings: DetectSettings) -> str:
    """Cache key of a chunk's boxes: its crops, the detector's weights (facenet-pytorch's
    version) and settings, and this module's constants."""
    s = settings
    text = f"box:{metadata.version('facenet-pytorch')}:{s.min_face_size}:{s.thresholds}:{s.factor}"
    text += f":{s.min_confidence}:{s.max_side}:{BORDER}:{MIN_SIDE}:{MIN_IOU}:{len(blobs)}"
    digest = hashlib.sha256(text.encode())
    for blob in blobs:
        digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()[:32]


def detector_boxes(
    table: FaceTable,
    cache_dir: Path | None,
    settings: DetectSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """:func:`find_in_crops` of every face of ``table``, in chunks cached under ``cache_dir``
    by the hash of their crops (a re-run, or a run killed halfway, detects only what is
    missing). ``cache_dir`` None keeps nothing."""
    from PIL import Image

    settings = settings or DetectSettings()
    n = len(table)
    out = np.full((n, 4), np.nan, dtype=np.float32)
    detector: FaceDetector | None = None
    start, done = time.perf_counter(), 0
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        blobs = [bytes(table.crop(i)) for i in range(a, b)]
        cached = cache_dir / f"{_key(blobs, settings)}.npy" if cache_dir is not None else None
        if cached is not None and cached.is_file():
            try:
                values = np.load(cached)
                if values.shape == (b - a, 4):
                    out[a:b] = values
                    done += b - a
                    continue
            except (OSError, ValueError):
                pass  # torn or foreign file: detect again
        if detector is None:
            detector = FaceDetector(settings)
        crops = []
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as im:
                crops.append(np.asarray(im.convert("RGB")))
        out[a:b] = find_in_crops(crops, detector)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.tmp.npy")
            np.save(tmp, out[a:b])
            tmp.replace(cached)
        done += b - a
        log.info("face boxes: %d/%d crops (%.0f crops/s)", b, n, done / max(time.perf_counter() - start, 1e-9))
        if progress is not None:
            progress(b, n)
    return out


def with_boxes(table: FaceTable, boxes: np.ndarray) -> FaceTable:
    """``table`` whose faces are cut from ``boxes`` (a ``NaN`` row: the whole crop)."""
    if boxes.shape != (len(table), 4):
        raise ValueError(f"boxes must be [{len(table)}, 4], got {list(boxes.shape)}")
    return dataclasses.replace(table, boxes=boxes.astype(np.float32))


def locate(
    table: FaceTable,
    undetected: str,
    cache_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[FaceTable, dict[str, int | str]]:
    """``table`` with its detector boxes, and what was found (for ``model.json``).

    ``undetected``: ``keep`` trains a crop without a detected face on its ingest box;
    ``drop`` leaves it out. Either way the crops are counted and logged, with the first few
    face ids, so a user can look at them.
    """
    boxes = detector_boxes(table, cache_dir, progress=progress)
    missed = ~np.isfinite(boxes).all(axis=1)
    ids = table.meta.get("face_id", [])
    examples = ", ".join(str(ids[i]) for i in np.flatnonzero(missed)[:5]) if len(ids) == len(table) else ""
    log.info(
        "face boxes: the detector found %d of %d training faces in their crops; %d without one are %s%s",
        len(table) - int(missed.sum()),
        len(table),
        int(missed.sum()),
        "left out" if undetected == "drop" else "kept with their ingest box",
        f" (no_face_in_crop: {examples}, ...)" if examples else "",
    )
    report: dict[str, int | str] = {"faces": len(table), "undetected": int(missed.sum()), "policy": undetected}
    located = with_boxes(table, boxes)
    if undetected == "drop":
        located = subset(located, ~missed)
    return located, report
