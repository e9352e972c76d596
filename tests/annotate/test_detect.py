"""The batched detector: mixed sizes, faceless images in a batch, the long-side cap, local weights."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces_core.inference.detect import DetectSettings, FaceDetector, canvas_size, prepare
from faces_core.sample.faces import face_box, faces_image
from tests.conftest import REPO

SETTINGS = DetectSettings(max_side=640, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(SETTINGS)


def test_a_mixed_batch_equals_one_image_at_a_time(detector: FaceDetector) -> None:
    rng = random.Random(3)
    images = [
        faces_image(320, 240, [face_box(160, 120, 96)], rng),
        faces_image(300, 240, [], rng),  # same canvas as the first, no face
        faces_image(480, 240, [face_box(130, 120, 100), face_box(350, 120, 100)], rng),
        faces_image(200, 260, [face_box(100, 130, 90)], rng),
        Image.new("RGB", (1, 1), (128, 128, 128)),  # tiny: padded up to the smallest canvas
    ]
    prepared = [prepare(image, SETTINGS.max_side) for image in images]
    assert canvas_size(prepared[0].size, 64) == canvas_size(prepared[1].size, 64) == (320, 256)
    batched = detector.detect(prepared)
    alone = [detector.detect([p])[0] for p in prepared]
    assert [len(faces) for faces in batched] == [1, 0, 2, 1, 0]
    for together, single in zip(batched, alone, strict=True):
        assert len(together) == len(single)
        for a, b in zip(together, single, strict=True):
            assert a.box == pytest.approx(b.box, abs=0.5) and a.confidence == pytest.approx(b.confidence, abs=1e-3)
            assert len(a.landmarks) == 5


def test_cascade_equals_facenets_detect_face(detector: FaceDetector) -> None:
    """Our cascade (channels-last networks on the CPU) gives facenet's own ``detect_face``
    results on the same batch: same faces, boxes and landmarks within float rounding."""
    import torch
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    from facenet_pytorch.models.utils.detect_face import detect_face

    from faces_core.inference.cascade import detect_batch

    assert detector.channels_last and detector.pnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    rng = random.Random(7)
    faces = [[face_box(160, 120, 96)], [], [face_box(90, 120, 70), face_box(230, 110, 110)], [face_box(200, 140, 60)]]
    batch = torch.stack([torch.from_numpy(np.array(faces_image(320, 240, f, rng))) for f in faces])
    args = (SETTINGS.min_face_size, list(SETTINGS.thresholds), SETTINGS.factor)
    plain = [net(pretrained=True).eval() for net in (PNet, RNet, ONet)]
    with torch.inference_mode():
        theirs = detect_face(batch, args[0], *plain, args[1], args[2], "cpu")
        ours = detect_batch(batch, args[0], detector.pnet, detector.rnet, detector.onet, *args[1:], channels_last=True)
    assert [len(b) for b in ours[0]] == [len(b) for b in theirs[0]] and sum(len(b) for b in ours[0]) >= 4
    for k in range(len(faces)):
        np.testing.assert_allclose(ours[0][k], theirs[0][k], atol=1e-2)
        np.testing.assert_allclose(ours[1][k], theirs[1][k], atol=1e-2)


def test_a_batch_without_any_face_gives_empty_slots(detector: FaceDetector) -> None:
    rng = random.Random(4)
    prepared = [prepare(faces_image(256, 192, [], rng), 640) for _ in range(3)]
    assert detector.detect(prepared) == [[], [], []]
    assert detector.detect([]) == []


def test_large_images_are_searched_at_the_cap_and_mapped_back(detector: FaceDetector) -> None:
    image = faces_image(1600, 1200, [face_box(400, 600, 420)], random.Random(5))
    prepared = prepare(image, 640)
    assert prepared.size == (640, 480) and prepared.scale == pytest.approx(0.4)
    (face,) = detector.detect([prepared])[0]
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    assert (cx, cy) == pytest.approx((400, 620), abs=40)
    assert 300 < face.box[2] - face.box[0] < 500
    left_eye, right_eye = face.landmarks[:2]
    assert left_eye[0] < cx < right_eye[0] and left_eye[1] < cy


def test_uint8_arrays_are_accepted_and_never_enlarged() -> None:
    pixels = np.zeros((100, 50, 3), np.uint8)
    prepared = prepare(pixels, 640)
    assert prepared.size == (50, 100) and prepared.scale == 1.0 and prepared.original_size == (50, 100)


def test_bad_settings_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="min_face_size >= 12"):
        DetectSettings(min_face_size=8)
    with pytest.raises(ValueError, match="three numbers"):
        DetectSettings(thresholds=(0.6, 0.7))  # type: ignore[arg-type]


def test_weights_come_from_the_wheel_and_nothing_is_downloaded(tmp_path: Path) -> None:
    """Build the detector with an empty torch cache and every proxy pointing at a closed port."""
    import facenet_pytorch

    data = Path(facenet_pytorch.__file__).parent / "data"
    assert {p.name for p in data.glob("*.pt")} >= {"pnet.pt", "rnet.pt", "onet.pt"}
    cache = tmp_path / "torch-home"
    cache.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "TORCH_HOME": str(cache),
        "XDG_CACHE_HOME": str(cache),
        "HOME": str(tmp_path),
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    code = (
        "from faces_core.inference.detect import FaceDetector, DetectSettings;"
        "d = FaceDetector(DetectSettings(device='cpu')); print(sum(p.numel() for p in d.onet.parameters()))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 0
    assert list(cache.iterdir()) == []


def test_a_huge_rotated_jpeg_is_decoded_reduced_and_mapped_to_its_full_upright_pixels(
    detector: FaceDetector, tmp_path: Path
) -> None:
    """A 2600x1950 phone photo stored on its side (EXIF 6) for a 640-px detector is decoded
    at 1/4 scale (never below the cap), turned upright, and its face is found where a full
    decode puts it, in full-size pixels."""
    from faces_core.annotate.inputs import find_files, identify, read_frames
    from faces_core.annotate.settings import ReadSettings
    from faces_core.validate import decode_image

    upright = faces_image(1950, 2600, [face_box(700, 1500, 600)], random.Random(8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter, shown upright
    path = tmp_path / "phone.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    reduced = decode_image(path, max_side=640)
    assert reduced.full_size == (1950, 2600) and not reduced.unchanged
    assert 640 <= max(reduced.image.size) < 1300  # 1/4 of 2600 = 650: DCT-scaled, not below the cap
    (info,) = (identify(job) for job in find_files([path]))
    (frame,) = read_frames(info, ReadSettings(max_side=640))
    assert frame.prepared.original_size == (1950, 2600) and max(frame.prepared.size) == 640
    full = prepare(decode_image(path).image, 640)
    assert frame.prepared.scale == pytest.approx(full.scale) and frame.prepared.size == full.size
    (face,) = detector.detect([frame.prepared])[0]
    (reference,) = detector.detect([full])[0]
    assert face.box == pytest.approx(reference.box, abs=40)  # 5 % of the 600-px face: 10 px at the cap
    assert ((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2) == pytest.approx((700, 1520), abs=60)
