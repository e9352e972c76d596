"""Broken or foreign models: one line naming the file and the fault, exit 2, never a traceback.

Each case starts from a real trained model (the session's tiny MobileNetV3) and breaks one
thing the way a user's disk or hand would: a truncated copy, garbage, an edited model.json.
Every case is checked through :func:`load_model` (what evaluate, predict and annotate call)
and through ``faces predict``; one each through ``faces evaluate`` and ``faces annotate``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from faces_cli.main import main
from faces_core.inference.model import META_FILE, MODEL_FILE, ModelLoadError, load_model
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]


def _meta(edit: Callable[[dict[str, object]], object], replace: bool = False) -> Callable[[Path], None]:
    """Edit model.json in place (``replace``: write what ``edit`` returns instead)."""

    def apply(model_dir: Path) -> None:
        data = json.loads((model_dir / META_FILE).read_text())
        result = edit(data)
        (model_dir / META_FILE).write_text(json.dumps(result if replace else data))

    return apply


def _weights(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(model_dir: Path) -> None:
        path = model_dir / MODEL_FILE
        path.write_bytes(edit(path.read_bytes()))

    return apply


def _fifo_weights(model_dir: Path) -> None:
    (model_dir / MODEL_FILE).unlink()
    os.mkfifo(model_dir / MODEL_FILE)  # opening it would block for ever


def _folder_weights(model_dir: Path) -> None:
    (model_dir / MODEL_FILE).unlink()
    (model_dir / MODEL_FILE).mkdir()


def _other_tensors(model_dir: Path) -> None:
    state = torch.load(model_dir / MODEL_FILE, weights_only=True)
    state["heads.gender.weight"] = torch.zeros(3, state["heads.gender.weight"].shape[1])
    torch.save(state, model_dir / MODEL_FILE)


def _pickled_object(model_dir: Path) -> None:
    torch.save({"model": object()}, model_dir / MODEL_FILE)  # weights_only refuses it


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-weights": (_weights(lambda b: b[: len(b) // 2]), "not a loadable PyTorch state dict"),
    "garbage-weights": (_weights(lambda b: os.urandom(4096)), "not a loadable PyTorch state dict"),
    "empty-weights": (_weights(lambda b: b""), "not a loadable PyTorch state dict"),
    "fifo-weights": (_fifo_weights, "not a regular file"),
    "folder-weights": (_folder_weights, "not a regular file"),
    "pickled-object": (_pickled_object, "not a loadable PyTorch state dict"),
    "tensor-of-another-shape": (_other_tensors, "of another shape"),
    "meta-not-json": (lambda d: (d / META_FILE).write_text("{not json"), "not valid JSON"),
    "meta-a-list": (_meta(lambda d: [d], replace=True), "expected a JSON object, found list"),
    "meta-empty-file": (lambda d: (d / META_FILE).write_text(""), "not valid JSON"),
    "class-added": (_meta(lambda d: d["attributes"]["gender"].append("other")), "has classes"),  # type: ignore[index]
    "class-removed": (_meta(lambda d: d["attributes"]["expression"].pop()), "has classes"),  # type: ignore[index]
    "extra-attribute": (_meta(lambda d: d["attributes"].update(mood=["a", "b"])), "not an attribute"),  # type: ignore[union-attr]
    "unknown-backbone": (_meta(lambda d: d.update(backbone="vgg19")), "unknown backbone"),
    "other-backbone": (_meta(lambda d: d.update(backbone="resnet18")), "does not fit"),
    "huge-input-size": (_meta(lambda d: d.update(input_size=100000)), "input_size 100000 is outside"),
    "input-size-a-string": (_meta(lambda d: d.update(input_size="96")), "'input_size' is missing or not int"),
    "no-heads": (_meta(lambda d: d.update(attributes={})), "no attribute heads"),
    "missing-backbone": (_meta(lambda d: d.pop("backbone")), "'backbone' is missing"),
}


@pytest.fixture
def broken(request: pytest.FixtureRequest, tiny_model: Path, tmp_path: Path) -> tuple[Path, str]:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    breaker, expected = CASES[request.param]
    breaker(model_dir)
    return model_dir, expected


@pytest.mark.parametrize("broken", list(CASES), indirect=True)
def test_load_model_names_the_file_and_the_fault(broken: tuple[Path, str]) -> None:
    model_dir, expected = broken
    with pytest.raises(ModelLoadError) as info:
        load_model(model_dir)
    message = str(info.value)
    assert expected in message and str(model_dir) in message and "faces train" in message
    assert "\n" not in message


@pytest.mark.parametrize("broken", list(CASES), indirect=True)
def test_faces_predict_exits_2_with_one_line(broken: tuple[Path, str], tmp_path: Path) -> None:
    model_dir, expected = broken
    image = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(image)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", "--model", str(model_dir), "--whole-image", "--device", "cpu", str(image)])
    assert code == 2
    assert expected in err.getvalue() and "Traceback" not in err.getvalue()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_faces_evaluate_and_annotate_exit_2_with_one_line(
    tiny_model: Path, ingested_sample: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    _weights(lambda b: b[:100])(model_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(photos / "a.png")
    evaluate = ["evaluate", "--model", str(model_dir), "--data", str(ingested_sample), "--split", "val"]
    for argv in (
        [*evaluate, "--device", "cpu", "--out", str(tmp_path / "eval.json"), "--plots-dir", str(tmp_path / "plots")],
        ["annotate", str(photos), "--model", str(model_dir), "--out", str(tmp_path / "ann")],
    ):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 2, (argv[0], err.getvalue()[-2000:])
        assert "not a loadable PyTorch state dict" in err.getvalue() and "Traceback" not in err.getvalue()
    _meta(lambda d: [d], replace=True)(model_dir)  # a model.json that is a list: caught before the flow starts
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["annotate", str(photos), "--model", str(model_dir), "--out", str(tmp_path / "ann")])
    assert code == 2 and "expected a JSON object" in err.getvalue()
