"""dlib's face-recognition ResNet in torch gives dlib's own descriptors, from the same file."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from faces_core import dlibnet
from faces_core.facechip import FaceEmbedder, model_files
from faces_core.sample.faces import face_box, faces_image


def _chips() -> list[np.ndarray]:
    embedder = FaceEmbedder(flip=False)
    chips = []
    for seed in range(4):
        box = face_box(150 + 10 * seed, 150, 100 + 12 * seed)
        pixels = np.asarray(faces_image(320, 300, [box], random.Random(seed)))
        chips.extend(embedder.chips(pixels, [tuple(float(v) for v in box)]))  # type: ignore[list-item]
    rng = np.random.default_rng(0)
    chips.append(rng.integers(0, 256, size=chips[0].shape, dtype=np.uint8))  # not a face: any values
    return chips


def test_the_torch_network_gives_dlibs_descriptors() -> None:
    import dlib
    import torch

    chips = _chips()
    reference = np.asarray(dlib.face_recognition_model_v1(str(model_files()[1])).compute_face_descriptor(chips))
    net = dlibnet.load(model_files()[1])
    with torch.inference_mode():
        ours = net(torch.from_numpy(np.stack(chips))).numpy()
    assert ours.shape == (5, 128)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert np.abs(reference).mean() > 0.05  # real descriptors, not zeros

    # the embedder uses it, mirror-averaged as before: the mean of the chip's and its mirror's
    flipped = np.asarray(
        dlib.face_recognition_model_v1(str(model_files()[1])).compute_face_descriptor(
            [np.ascontiguousarray(c[:, ::-1]) for c in chips]
        )
    )
    np.testing.assert_allclose(FaceEmbedder(flip=True).face_descriptors(chips), (reference + flipped) / 2, atol=1e-5)


def test_a_file_that_is_not_the_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(dlibnet.DlibFormatError, match="not dlib_face_recognition_resnet_model_v1"):
        dlibnet.DlibResNet(dlibnet.read_layers(model_files()[0]))  # the landmark model: no convolutions
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x01\x05con_4" + b"\x01\x02" + b"\x01\x01" * 4 + b"\0\0\0\0" + b"\x01\x07" * 7)
    with pytest.raises(dlibnet.DlibFormatError):
        dlibnet.DlibResNet(dlibnet.read_layers(junk))
