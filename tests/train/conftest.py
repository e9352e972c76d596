"""Shared fixtures of the train-stage tests: a real ingest output and a tiny trained model.

Both are built once per session (a few seconds on a 2-core CPU) from the synthetic IMFDB
sample: 8 actors, so the actor-disjoint split gives train and val faces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faces_core.ingest.pipeline import IngestSettings, run_ingest
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.train.loop import train
from faces_core.train.settings import TrainPaths, TrainSettings

TINY_MODEL = TrainSettings(
    backbone="mobilenet_v3_large",
    weights="none",
    input_size=32,
    epochs=1,
    steps_per_epoch=2,
    batch_size=8,
    workers=0,
    min_labels=1,
    device="cpu",
    log_every=0,
)


@pytest.fixture(scope="session")
def ingested_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ingest output dir of the synthetic IMFDB sample (about 130 train and 20 val faces)."""
    base = tmp_path_factory.mktemp("ingested")
    root = base / "IMFDB_final"
    write_imfdb_sample(root, actors=8, movies=2, faces=8)
    settings = IngestSettings(raw_dir=str(base / "raw"), out_dir=str(base / "out"), workers=1)
    run_ingest(None, scan_imfdb(root), root, settings)
    return base / "out"


@pytest.fixture(scope="session")
def tiny_model(ingested_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model dir (model.pt + model.json) of a 2-step MobileNetV3 trained on ``ingested_sample``."""
    base = tmp_path_factory.mktemp("tiny-model")
    paths = TrainPaths(base / "models", base / "metrics" / "train.json", base / "plots" / "train.csv", base / "ckpt")
    train(ingested_sample, TINY_MODEL, paths)
    return paths.model_dir
