"""Per-file size caps are params (issue 17): each input kind is refused unread past its cap.

Before, the caps were constants in the code (``MAX_TCS_BYTES``, ``MAX_TXT_BYTES``,
``MAX_MODEL_BYTES``) and IMFDB crops and annotate images had none. Each case sets a cap below
a real file and asserts the one outcome: ``too_large`` (or one line naming the key), nothing
decoded or loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from faces_core.annotate.inputs import FileInfo, FileJob, identify, read_frames
from faces_core.annotate.settings import AnnotateSettings
from faces_core.errors import Reason
from faces_core.inference.model import ModelLoadError, load_model
from faces_core.inference.settings import EvaluateSettings, PredictSettings
from faces_core.ingest.pipeline import IngestSettings, local_files
from faces_core.ingest.sources import MAX_TCS_BYTES, MAX_TXT_BYTES
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import TcsInputError, read_tcs
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.validate import MAX_CROP_BYTES, ImageRejected
from flows.params import _build
from flows.params.ingest import ingest_settings
from tests.conftest import REPO
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]


def test_the_caps_come_from_params_and_default_to_the_old_constants() -> None:
    settings = ingest_settings(
        {"ingest": {"max_tcs_bytes": 11, "max_annotation_bytes": 22, "max_crop_bytes": 33}, "download": {}}
    )
    assert (settings.max_tcs_bytes, settings.max_annotation_bytes, settings.max_crop_bytes) == (11, 22, 33)
    assert (IngestSettings().max_tcs_bytes, IngestSettings().max_annotation_bytes) == (MAX_TCS_BYTES, MAX_TXT_BYTES)
    assert IngestSettings().max_crop_bytes == MAX_CROP_BYTES
    annotate = _build(AnnotateSettings, {"max_image_bytes": 44, "max_model_bytes": 55}, "annotate")
    assert annotate.read_settings().max_image_bytes == 44 and annotate.max_model_bytes == 55
    assert _build(EvaluateSettings, {"max_model_bytes": 66}, "evaluate").max_model_bytes == 66
    assert _build(PredictSettings, {"max_model_bytes": 77}, "predict").max_model_bytes == 77


def test_a_tcs_file_over_ingest_max_tcs_bytes_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "faces.jsonl"
    path.write_text('{"content": "http://img.invalid/a.jpg"}\n' * 10)
    with pytest.raises(TcsInputError, match=r"ingest\.max_tcs_bytes"):
        read_tcs(path, max_bytes=100)


def test_an_imfdb_annotation_over_its_cap_is_too_large_and_the_rest_still_parses(tmp_path: Path) -> None:
    sample = write_imfdb_sample(tmp_path / "IMFDB_final")
    whole = scan_imfdb(sample.root)
    biggest = max(sample.root.rglob("*.txt"), key=lambda p: p.stat().st_size)
    capped = scan_imfdb(sample.root, max_file_bytes=biggest.stat().st_size - 1)
    too_large = [r for r in capped.rejections if r.reason == Reason.TOO_LARGE]
    assert len(too_large) == 1 and "ingest.max_annotation_bytes" in too_large[0].message
    assert too_large[0].item.endswith(biggest.name)
    assert 0 < len(capped.records) < len(whole.records)


def test_an_imfdb_crop_over_ingest_max_crop_bytes_is_too_large_unread(tmp_path: Path) -> None:
    sample = write_imfdb_sample(tmp_path / "IMFDB_final")
    parsed = scan_imfdb(sample.root)
    sizes = {r.image_ref: os.path.getsize(r.image_ref) for r in parsed.records if os.path.isfile(r.image_ref)}
    cap = sorted(sizes.values())[len(sizes) // 2]
    files, _, rejections = local_files(parsed.records, sample.root, max_bytes=cap)
    refused = [r for r in rejections if r.reason == Reason.TOO_LARGE]
    assert refused and all("ingest.max_crop_bytes" in r.message for r in refused)
    assert set(files) == {ref for ref, size in sizes.items() if size <= cap}


def test_an_annotate_image_over_annotate_max_image_bytes_is_too_large_undecoded(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (200, 200), (120, 80, 40)).save(path)
    info = identify(FileJob(str(path), str(tmp_path)))
    assert isinstance(info, FileInfo), info
    settings = AnnotateSettings(max_image_bytes=info.size_bytes - 1).read_settings()
    with pytest.raises(ImageRejected) as raised:
        list(read_frames(info, settings))
    assert raised.value.reason == Reason.TOO_LARGE and "annotate.max_image_bytes" in raised.value.message
    assert len(list(read_frames(info, AnnotateSettings().read_settings()))) == 1


def test_a_model_over_its_cap_is_one_line_naming_the_key(tiny_model: Path) -> None:
    size = (tiny_model / "model.pt").stat().st_size
    with pytest.raises(ModelLoadError, match="max_model_bytes"):
        load_model(tiny_model, "cpu", max_bytes=size - 1)
    load_model(tiny_model, "cpu", max_bytes=size)  # at the cap: loads


@pytest.mark.slow
def test_faces_predict_with_a_model_over_predict_max_model_bytes_exits_2_with_one_line(
    tiny_model: Path, tmp_path: Path
) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "x.jpg")
    (tmp_path / "params.yaml").write_text(f"predict: {{model_dir: {tiny_model}, device: cpu, max_model_bytes: 1000}}\n")
    env = {**os.environ, "FACES_PARAMS": str(tmp_path / "params.yaml")}
    done = subprocess.run(
        [sys.executable, "-m", "faces_cli", "predict", "--whole-image", str(tmp_path / "x.jpg")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("faces predict:")]
    assert len(lines) == 1 and "max_model_bytes" in lines[0] and "Traceback" not in done.stderr
