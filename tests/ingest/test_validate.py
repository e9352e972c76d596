"""Image loading, box and label checks, on real files drawn with faces_core.sample."""

from __future__ import annotations

import pickle
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces_core.errors import Reason
from faces_core.records import Box
from faces_core.sample import encode, face_image
from faces_core.validate import (
    DuplicateTracker,
    ImageRejected,
    ValidateSettings,
    check_labels,
    clip_box,
    load_rgb,
    scale_box,
    sha256_file,
)


def _face(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    return face_image(width, height, [(5, 5, 25, 25)], random.Random(seed))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _on_disk(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and size as stored, before load_rgb normalises them."""
    with Image.open(path) as image:
        return image.mode, image.size


def _rejected(path: Path, settings: ValidateSettings | None = None) -> Reason:
    with pytest.raises(ImageRejected) as info:
        load_rgb(path, settings)
    return info.value.reason


def test_rgb_jpeg_loads(tmp_path: Path) -> None:
    image = load_rgb(_write(tmp_path / "a.jpg", encode(_face())))
    assert (image.mode, image.size) == ("RGB", (40, 30))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = _face().convert("RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    image = load_rgb(_write(tmp_path / "a.png", encode(rgba, "PNG")))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((15, 15)) == rgba.getpixel((15, 15))[:3]


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("P", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF")],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    path = tmp_path / f"a.{fmt.lower()}"
    _face().convert(mode).save(path, fmt)
    assert _on_disk(path) == (mode, (40, 30))
    image = load_rgb(path)
    assert (image.mode, image.size) == ("RGB", (40, 30))


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    image = load_rgb(_write(tmp_path / "p.png", encode(palette, "PNG", transparency=0)))
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 1)) == (200, 0, 0)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    wide = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    source = Image.fromarray(wide)
    assert source.mode == "I;16"
    path = _write(tmp_path / "w.png", encode(source, "PNG"))
    assert _on_disk(path)[0] == "I;16"
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert [image.getpixel(xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 100, 255, 200]


def test_exif_orientation_6_swaps_width_and_height(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = _write(tmp_path / "r.jpg", encode(_face(40, 20), exif=exif.tobytes()))
    assert _on_disk(path)[1] == (40, 20)
    assert load_rgb(path).size == (20, 40)


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    data = encode(_face(64, 64))
    assert _rejected(_write(tmp_path / "t.jpg", data[: len(data) // 2])) == Reason.CORRUPT_IMAGE


def test_png_with_bad_crc_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(encode(_face(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # damage compressed pixels; the chunk CRC no longer matches
    assert _rejected(_write(tmp_path / "c.png", bytes(data))) == Reason.CORRUPT_IMAGE


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jpg", random.Random(1).randbytes(2048))
    assert _rejected(path) == Reason.NOT_AN_IMAGE


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert _rejected(tmp_path / "nope.jpg") == Reason.UNREADABLE_FILE


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.png", encode(_face(40, 30), "PNG"))
    assert _rejected(path, ValidateSettings(max_image_pixels=40 * 30 - 1)) == Reason.DECOMPRESSION_BOMB
    assert load_rgb(path, ValidateSettings(max_image_pixels=40 * 30)).size == (40, 30)


def test_works_from_a_process_pool(tmp_path: Path) -> None:
    good = _write(tmp_path / "g.jpg", encode(_face()))
    bad = _write(tmp_path / "b.jpg", b"not an image")
    with ProcessPoolExecutor(max_workers=2) as pool:
        image = pool.submit(load_rgb, good).result()
        with pytest.raises(ImageRejected) as info:
            pool.submit(load_rgb, bad).result()
    assert image.size == (40, 30) and info.value.reason == Reason.NOT_AN_IMAGE


def test_image_rejected_pickles_and_becomes_a_rejection() -> None:
    error = pickle.loads(pickle.dumps(ImageRejected(Reason.CORRUPT_IMAGE, "x.jpg: truncated")))
    assert (error.reason, error.message) == (Reason.CORRUPT_IMAGE, "x.jpg: truncated")
    rejection = error.to_rejection("tcs", "http://h/x.jpg#face0")
    assert (rejection.stage, rejection.reason) == ("validate", Reason.CORRUPT_IMAGE)
    assert (rejection.source, rejection.item) == ("tcs", "http://h/x.jpg#face0")


def test_clip_box_within_tolerance_is_clipped() -> None:
    assert clip_box(Box(-4, -2, 103, 50), 100, 50) == Box(0, 0, 100, 50)
    assert clip_box(Box(10, 10, 20, 20), 100, 50) == Box(10, 10, 20, 20)


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        (Box(-6, 0, 50, 40), Reason.BOX_OUT_OF_BOUNDS),  # 6 px > 5 % of 100
        (Box(0, 0, 50, 53), Reason.BOX_OUT_OF_BOUNDS),  # 3 px > 5 % of 50
        (Box(200, 200, 300, 300), Reason.BOX_OUT_OF_BOUNDS),
        (Box(10, 10, 10, 30), Reason.DEGENERATE_BOX),
        (Box(30, 10, 10, 30), Reason.DEGENERATE_BOX),
        (Box(10, 10, 10.5, 30), Reason.DEGENERATE_BOX),
        (Box(101, 10, 104, 30), Reason.DEGENERATE_BOX),  # within tolerance but nothing left inside
        (Box(float("nan"), 0, 10, 10), Reason.BAD_GEOMETRY),
    ],
)
def test_clip_box_rejects(box: Box, reason: Reason) -> None:
    with pytest.raises(ImageRejected) as info:
        clip_box(box, 100, 50)
    assert info.value.reason == reason


def test_clip_box_settings() -> None:
    assert clip_box(Box(-20, 0, 50, 50), 100, 50, ValidateSettings(box_tolerance=0.25)) == Box(0, 0, 50, 50)
    with pytest.raises(ImageRejected):
        clip_box(Box(0, 0, 3, 3), 100, 50, ValidateSettings(min_box_side=4))


def test_scale_box() -> None:
    box = Box(10, 20, 30, 40)
    assert scale_box(box, (100, 200), (100, 200)) is box
    assert scale_box(box, (100, 200), (50, 400)) == Box(5, 40, 15, 80)
    with pytest.raises(ImageRejected) as info:
        scale_box(box, (0, 200), (50, 400))
    assert info.value.reason == Reason.BAD_GEOMETRY


def test_check_labels() -> None:
    labels: dict[str, str | None] = {"gender": "female", "expression": None, "pose": "sideways", "mood": "odd"}
    assert check_labels(labels) == [("pose", "sideways"), ("mood", "odd")]
    assert check_labels({"colour": None}) == [("colour", "")]
    assert check_labels({"gender": "male", "age_range": "20_30"}) == []


def test_sha256_and_duplicate_tracker(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jpg", b"same")
    b = _write(tmp_path / "b.jpg", b"same")
    c = _write(tmp_path / "c.jpg", b"other")
    assert sha256_file(a) == "0967115f2813a3541eaef77de9d9d5773f1c0c04314b0bbfe4ff3b3b1c55b5d5"
    pairs = sorted((p.name, sha256_file(p)) for p in (c, b, a))

    tracker = DuplicateTracker()
    assert tracker.duplicates(pairs) == {"b.jpg": "a.jpg"}
    assert tracker.add("a.jpg", sha256_file(a)) is None  # the same ref again is not a duplicate
    assert tracker.add("z.jpg", sha256_file(c)) == "c.jpg"
    assert tracker.original(sha256_file(b)) == "a.jpg" and len(tracker) == 2
