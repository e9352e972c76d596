"""A box declared in the stored (pre-EXIF) frame of a rotated photo lands on the face.

Untried before: every box was taken as drawn on the upright image (what a viewer shows). A
tool that ignores EXIF draws on the stored pixels, and the declared image size then is the
stored one. Each case writes a real JPEG whose stored pixels hold a red face-sized patch,
tags it with an EXIF orientation, declares the box around the patch in the stored frame, and
runs the real partition step: the crop written to Parquet must be the red patch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from faces_core.ingest.partition import ImageJob, PartitionSettings, partition_shard
from faces_core.records import Box, FaceRecord
from faces_core.validate import ValidateSettings, upright_box

STORED_WH = (240, 160)
PATCH = Box(30.0, 40.0, 110.0, 120.0)  # in stored pixels: 80 x 80


def _photo(path: Path, orientation: int) -> None:
    pixels = np.full((STORED_WH[1], STORED_WH[0], 3), 40, np.uint8)
    pixels[int(PATCH.y0) : int(PATCH.y1), int(PATCH.x0) : int(PATCH.x1)] = (230, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def _crop(tmp_path: Path, orientation: int, declared: tuple[int, int], box: Box, frame: str) -> np.ndarray:
    photo = tmp_path / f"o{orientation}.jpg"
    _photo(photo, orientation)
    record = FaceRecord(
        "tcs", f"{photo.name}#face0", photo.name, None, None, box, image_width=declared[0], image_height=declared[1]
    )
    staging = tmp_path / f"staging-{orientation}-{frame}"
    job = ImageJob(str(photo), photo.name, "0" * 64, (record,))
    result = partition_shard([job], staging, 0, PartitionSettings(), ValidateSettings(box_frame=frame))
    assert result.kept == 1 and result.rejections == [], result.rejections
    row = pq.read_table(result.files[0]).to_pylist()[0]
    return np.asarray(Image.open(io.BytesIO(row["crop"])).convert("RGB"), dtype=float)


def _red(crop: np.ndarray) -> float:
    """Share of the crop's pixels that are the red patch."""
    return float(((crop[..., 0] > 150) & (crop[..., 1] < 90)).mean())


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_a_box_in_the_stored_frame_crops_the_face_with_box_frame_stored(tmp_path: Path, orientation: int) -> None:
    crop = _crop(tmp_path, orientation, STORED_WH, PATCH, "stored")
    assert _red(crop) > 0.9


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_auto_reads_a_quarter_turn_from_the_declared_stored_size(tmp_path: Path, orientation: int) -> None:
    crop = _crop(tmp_path, orientation, STORED_WH, PATCH, "auto")
    assert _red(crop) > 0.9


@pytest.mark.parametrize("orientation", [3, 6])
def test_a_box_in_the_upright_frame_is_kept_as_drawn(tmp_path: Path, orientation: int) -> None:
    """The default reading is unchanged: an upright declared size means an upright box."""
    upright_wh = (STORED_WH[1], STORED_WH[0]) if orientation == 6 else STORED_WH
    upright = upright_box(PATCH, STORED_WH, orientation, upright_wh, "stored")  # where the patch shows
    crop = _crop(tmp_path, orientation, upright_wh, upright, "auto")
    assert _red(crop) > 0.9
    crop = _crop(tmp_path, orientation, upright_wh, upright, "upright")
    assert _red(crop) > 0.9


def test_auto_cannot_tell_a_half_turn_and_takes_the_box_as_upright(tmp_path: Path) -> None:
    """The limit of ``auto``, as documented: a half turn keeps the size, so the box is read as
    upright and misses the patch; ``validate.box_frame: stored`` is the fix for such a source."""
    crop = _crop(tmp_path, 3, STORED_WH, PATCH, "auto")
    assert _red(crop) < 0.1


def test_an_unknown_box_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="box_frame"):
        ValidateSettings(box_frame="sideways")
