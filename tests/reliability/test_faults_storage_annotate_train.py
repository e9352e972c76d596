"""A full or read-only output during annotate and train: one line, and what was there is kept.

Like test_faults_storage.py (ingest): a small tmpfs mounted on the output folder runs out of
space mid-run, a read-only bind mount refuses every write (root included). Both need mount
privileges (root with CAP_SYS_ADMIN, as here and in CI); without them the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faces_core.annotate import store
from faces_core.sample.faces import write_annotate_sample
from tests.conftest import REPO
from tests.reliability.test_faults_storage import read_only, small_tmpfs
from tests.train.conftest import ingested_sample

__all__ = ["ingested_sample"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _env(tmp_path: Path, params: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "params.yaml").write_text(params)
    return {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FACES_PARAMS": str(tmp_path / "params.yaml"),
    }


ANNOTATE = "annotate: {shard_size: 3, detect: {max_side: 480, device: cpu}}\n"


def _annotate(photos: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``faces annotate PHOTOS --out OUT`` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "flows.annotate", str(photos), "--out", str(out)],
        cwd=REPO,
        env=_env(tmp_path, ANNOTATE),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_annotate_into_a_full_folder_stops_with_one_line_and_keeps_committed_shards(tmp_path: Path) -> None:
    photos = write_annotate_sample(tmp_path / "sample").root
    out = tmp_path / "out"
    out.mkdir()
    with small_tmpfs(out, 64):  # room for the lock and a shard or two of Parquet parts, not all
        done = _annotate(photos, out, tmp_path)
        assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
        last = next(line for line in done.stderr.splitlines() if line.startswith("faces annotate:"))
        assert last.startswith(f"faces annotate: output directory {out} is full (No space left on device")
        assert "every shard committed so far is kept" in last
        kept = store.read_files(out).num_rows  # whole shards only: each readable, none half written
        assert kept % 3 == 0 or kept > 0
        assert not list(out.rglob(".tmp-*"))


def test_annotate_into_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    photos = write_annotate_sample(tmp_path / "sample").root
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        done = _annotate(photos, out, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    line = next(line for line in done.stderr.splitlines() if line.startswith("faces annotate:"))
    assert "Read-only file system" in line


def test_train_onto_a_full_disk_is_one_line_and_keeps_the_previous_model(ingested_sample: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"previous weights")
    (models / "model.json").write_text("{}")
    params = (
        "train: {recipe: cnn, backbone: mobilenet_v3_large, weights: none, input_size: 32, epochs: 1, steps_per_epoch: 1, "
        f"batch_size: 8, workers: 0, min_labels: 1, device: cpu, checkpoint_dir: {tmp_path / 'ckpt'}, "
        f"metrics_file: {tmp_path / 'train.json'}, plots_file: {tmp_path / 'train.csv'}}}\n"
    )
    shutil.copytree(models, tmp_path / "before")
    with small_tmpfs(models, 256):  # far smaller than a MobileNetV3 (about 17 MB)
        shutil.copytree(tmp_path / "before", models, dirs_exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "flows.train", "--data", str(ingested_sample), "--model-dir", str(models)],
            cwd=REPO,
            env=_env(tmp_path, params),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1, done.stderr[-2000:]
        last = next(line for line in done.stderr.splitlines() if line.startswith("faces train:"))
        assert last.startswith("faces train: cannot write") and "No space left on device" in last
        assert "the previous model is unchanged" in last
        assert (models / "model.pt").read_bytes() == b"previous weights"
        assert sorted(p.name for p in models.iterdir()) == ["model.json", "model.pt"]  # no temporaries left
