"""Predict: the reusable Predictor and ``faces predict`` on files, EXIF, alpha, URLs and bad inputs.

Expected outputs are computed with the Predictor on images prepared by hand (rotated,
composited), so the command is checked against what the model says for the right pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from faces_cli.main import main
from faces_core.inference.predict import InputError, LoadedImage, Predictor, load_images
from faces_core.inference.settings import PredictSettings
from faces_core.testing import LoopbackServer, Route

EXIF_ORIENTATION = 0x0112


def _face(width: int, height: int, seed: int) -> Image.Image:
    """A drawn, asymmetric 'face' (so a rotation or mirror changes the pixels)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.15, height * 0.1, width * 0.85, height * 0.9), fill=(220, 180, 150))
    draw.ellipse((width * 0.3, height * 0.35, width * 0.4, height * 0.45), fill=(20, 20, 20))
    draw.rectangle((width * 0.55, height * 0.6, width * 0.8, height * 0.7), fill=(150, 40, 40))
    return image


def _jpeg(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_model: Path) -> Predictor:
    return Predictor(tiny_model, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain JPEG, an EXIF-rotated JPEG, a PNG with alpha and a truncated JPEG."""
    root = tmp_path_factory.mktemp("predict-images")
    plain = root / "plain.jpg"
    plain.write_bytes(_jpeg(_face(48, 64, 0)))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 40x72 landscape-on-its-side; shown rotated 90° clockwise: 72x40
    rotated = root / "rotated.jpg"
    rotated.write_bytes(_jpeg(_face(40, 72, 1), exif=exif))
    rgba = _face(56, 56, 2).convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 27, 55), fill=0)  # left half fully transparent
    rgba.putalpha(alpha)
    alpha_png = root / "alpha.png"
    rgba.save(alpha_png)
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(plain.read_bytes()[: len(plain.read_bytes()) // 2])
    return {"plain": plain, "rotated": rotated, "alpha": alpha_png, "corrupt": corrupt}


def _cli(args: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["predict", *args])
    return code, [json.loads(line) for line in stdout.getvalue().splitlines()], stderr.getvalue()


def _expected(predictor: Predictor, image: Image.Image) -> dict[str, Any]:
    """What ``faces predict`` prints for an image (4-decimal probabilities)."""
    (prediction,) = predictor.predict([image])
    return {a: {"label": p["label"], "probability": round(p["probability"], 4)} for a, p in prediction.items()}


@pytest.fixture
def fast_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Iterator[None]:
    params = tmp_path / "params.yaml"
    params.write_text(
        f"predict: {{model_dir: {tiny_model}, device: cpu, timeout_s: 2.0, retries: 0}}\n"
        "download: {allow_private_hosts: true}\n"  # these tests serve their images on loopback
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    yield


def test_predictor_gives_a_distribution_per_head_for_tensors_and_pil(predictor: Predictor) -> None:
    pil = [_face(48, 64, seed) for seed in range(3)]
    tensors = [torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in pil]
    from_pil, from_tensors = predictor.predict(pil), predictor.predict(tensors)
    singles = [predictor.predict([image])[0] for image in pil]  # batch_size 2: batches of 2 + 1 above
    assert len(from_pil) == 3
    for a, b, c in zip(from_pil, from_tensors, singles, strict=True):
        assert list(a) == list(predictor.attributes) == list(b)
        for head, classes in predictor.attributes.items():
            assert list(a[head]["probabilities"]) == classes
            probabilities = np.array(list(a[head]["probabilities"].values()))
            assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
            assert a[head]["label"] == classes[int(probabilities.argmax())]
            assert a[head]["probability"] == pytest.approx(probabilities.max(), abs=1e-7)
            assert a[head]["label"] == b[head]["label"] == c[head]["label"]
            for name in classes:
                assert a[head]["probabilities"][name] == pytest.approx(b[head]["probabilities"][name], abs=1e-6)
                assert a[head]["probabilities"][name] == pytest.approx(c[head]["probabilities"][name], abs=1e-5)
    assert predictor.predict([]) == []
    with pytest.raises(ValueError, match=r"expected a uint8 image tensor \[3, H, W\]"):
        predictor.predict([torch.zeros(3, 8, 8)])


def test_load_images_applies_exif_and_composites_alpha_on_white(images: dict[str, Path]) -> None:
    plain, rotated, alpha = load_images([str(images["plain"]), str(images["rotated"]), str(images["alpha"])])
    assert isinstance(plain, LoadedImage) and plain.image.size == (48, 64)
    assert isinstance(rotated, LoadedImage) and rotated.image.size == (72, 40)
    with Image.open(images["rotated"]) as raw:
        assert np.array_equal(np.asarray(rotated.image), np.asarray(raw.transpose(Image.Transpose.ROTATE_270)))
    assert isinstance(alpha, LoadedImage) and alpha.image.mode == "RGB"
    pixels = np.asarray(alpha.image)
    assert (pixels[:, :28] == 255).all()  # transparent half is white, as ingest makes it
    assert not (pixels[:, 28:] == 255).all()


@pytest.mark.usefixtures("fast_params")
def test_faces_predict_whole_image_prints_one_object_per_image_and_one_error_for_the_corrupt_file(
    predictor: Predictor, images: dict[str, Path]
) -> None:
    body = images["plain"].read_bytes()
    with LoopbackServer({"/face.jpg": Route(body=body)}) as server:
        url = server.url("/face.jpg")
        code, lines, stderr = _cli(
            [
                "--whole-image",
                str(images["plain"]),
                str(images["rotated"]),
                str(images["alpha"]),
                url,
                str(images["corrupt"]),
            ]
        )
        assert server.hits["/face.jpg"] == 1
    assert code == 0, stderr
    assert [line["input"] for line in lines] == [
        str(images["plain"]),
        str(images["rotated"]),
        str(images["alpha"]),
        url,
        str(images["corrupt"]),
    ]
    plain, rotated, alpha, from_url, corrupt = lines
    with Image.open(images["plain"]) as raw:
        assert plain == {
            "input": str(images["plain"]),
            "face": 0,
            "box": [0, 0, 48, 64],
            "attributes": _expected(predictor, raw.convert("RGB")),
        }
    with Image.open(images["rotated"]) as raw:
        upright = raw.transpose(Image.Transpose.ROTATE_270)
    assert rotated["box"] == [0, 0, 72, 40]
    assert rotated["attributes"] == _expected(predictor, upright)
    with Image.open(images["alpha"]) as raw:
        on_white = Image.alpha_composite(Image.new("RGBA", raw.size, (255, 255, 255, 255)), raw.convert("RGBA"))
    assert alpha["box"] == [0, 0, 56, 56]
    assert alpha["attributes"] == _expected(predictor, on_white.convert("RGB"))
    assert from_url == {**plain, "input": url}
    assert set(corrupt) == {"input", "error"}
    assert corrupt["error"]["reason"] == "corrupt_image"
    assert str(images["corrupt"]) in corrupt["error"]["message"]


@pytest.mark.usefixtures("fast_params")
def test_probabilities_flag_adds_every_class(predictor: Predictor, images: dict[str, Path]) -> None:
    code, (line,), _ = _cli(["--probabilities", "--whole-image", str(images["plain"])])
    assert code == 0
    for head, classes in predictor.attributes.items():
        entry = line["attributes"][head]
        assert list(entry["probabilities"]) == classes
        assert entry["probabilities"][entry["label"]] == entry["probability"]


@pytest.mark.usefixtures("fast_params")
def test_every_input_failing_exits_1_with_a_reason_each(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all, just some words in a file\n" * 3)
    with LoopbackServer({"/page.html": Route(body=b"<html></html>", content_type="text/html")}) as server:
        inputs = [
            str(tmp_path / "missing.jpg"),
            str(text),
            "ftp://127.0.0.1/face.jpg",
            "file:///etc/hostname",
            server.url("/gone.jpg"),
            server.url("/page.html"),
            str(tmp_path),
        ]
        code, lines, _ = _cli(inputs)
    assert code == 1
    assert [(line["input"], line["error"]["reason"]) for line in lines] == [
        (inputs[0], "unreadable_file"),
        (inputs[1], "not_an_image"),
        (inputs[2], "unreadable_file"),
        (inputs[3], "unreadable_file"),
        (inputs[4], "http_error"),
        (inputs[5], "not_an_image"),
        (inputs[6], "unreadable_file"),
    ]
    assert "unsupported URL scheme 'ftp'" in lines[2]["error"]["message"]
    assert "HTTP 404" in lines[4]["error"]["message"]


def test_size_cap_applies_to_files_and_urls(images: dict[str, Path]) -> None:
    body = images["plain"].read_bytes()
    settings = PredictSettings(max_bytes=len(body) - 1, timeout_s=2.0, retries=0, allow_private_hosts=True)
    with LoopbackServer({"/face.jpg": Route(body=body)}) as server:
        results = load_images([str(images["plain"]), server.url("/face.jpg")], settings)
    assert all(isinstance(r, InputError) and r.reason == "too_large" for r in results), results


@pytest.mark.usefixtures("fast_params")
def test_a_missing_model_exits_2_and_says_what_to_do(tmp_path: Path, images: dict[str, Path]) -> None:
    code, lines, stderr = _cli(["--model", str(tmp_path / "nomodel"), str(images["plain"])])
    assert code == 2 and lines == []
    assert "model.pt not found: train a model first (`faces train`) or pass --model DIR" in stderr


@pytest.mark.usefixtures("no_env_proxy")
def test_predict_urls_follow_ingests_url_policy_and_deadlines(images: dict[str, Path]) -> None:
    """Loopback and link-local URLs are refused as in ingest; a drip ends at the URL deadline."""
    body = images["plain"].read_bytes()
    drip = Route(body=body, chunk_size=64, chunk_delay=0.5)
    with LoopbackServer({"/face.jpg": Route(body=body), "/drip.jpg": drip}) as server:
        refused = load_images([server.url("/face.jpg"), "http://169.254.169.254/latest/meta-data"], PredictSettings())
        assert [r.reason for r in refused] == ["refused_host", "refused_host"]  # type: ignore[union-attr]
        started = time.monotonic()
        slow = PredictSettings(allow_private_hosts=True, timeout_s=2.0, retries=0, url_timeout_s=2.0)
        (dripped,) = load_images([server.url("/drip.jpg")], slow)
    assert isinstance(dripped, InputError) and dripped.reason == "timeout"
    assert time.monotonic() - started < 10


def test_predict_settings_take_the_download_sections_policy() -> None:
    from flows.params.evaluate import predict_config

    _, settings = predict_config({"download": {"allow_private_hosts": True, "url_timeout_s": 5}})
    assert settings.allow_private_hosts and settings.url_timeout_s == 5
    _, default = predict_config({})
    assert not default.allow_private_hosts and default.url_timeout_s == 180


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_predict_refuses_a_local_path_that_is_no_regular_file_unopened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "face.jpg"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    started = time.monotonic()
    (result,) = load_images([str(path)], PredictSettings())
    assert isinstance(result, InputError) and result.reason == "unreadable_file", result
    assert time.monotonic() - started < 2  # a FIFO never waited on
