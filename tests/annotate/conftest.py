"""Shared fixtures of the annotate tests: the generated sample folder and small, fast settings.

The sample (``faces_core.sample.faces``) holds shaded synthetic faces that MTCNN finds, every
kind of bad file, and a short video, so no test here needs ../shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faces_core.annotate.pipeline import AnnotateSettings, ShardReport, annotate_folders
from faces_core.inference.detect import DetectSettings
from faces_core.sample.faces import AnnotateSample, write_annotate_sample
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]

FAST = AnnotateSettings(
    detect=DetectSettings(max_side=640, batch_size=8, device="cpu"),
    shard_size=5,
    decode_threads=2,
    prefetch_frames=8,
    lock_wait_s=5.0,
)
"""Small shards so a run has several commits; the long-side cap shrinks ``large.jpg``."""


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> AnnotateSample:
    """The generated folder (17 files: 12 with faces or none, 5 bad) and what each must give."""
    return write_annotate_sample(tmp_path_factory.mktemp("annotate-sample") / "photos")


@pytest.fixture(scope="session")
def annotated(sample: AnnotateSample, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ShardReport]:
    """One clean detection-only run over the sample: (output folder, its report)."""
    out = tmp_path_factory.mktemp("annotate-out") / "out"
    report = annotate_folders([sample.root], out, FAST, model_dir=None, draw_dir=out / "drawn")
    return out, report
