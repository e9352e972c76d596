"""Shared fixtures: the ../shared reference data (skipped when absent) and a Prefect harness."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "faces_core")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs the read-only ../shared data beside the checkout")
    return path


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a proxy set in the developer's environment from taking loopback requests elsewhere."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (SQLite in a temp dir) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def two_face_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: random.Random | None = None
) -> tuple[Path, list[tuple[int, int, int, int]]]:
    """A ``photos`` folder holding ``two.jpg`` (two drawn faces MTCNN finds) and their boxes,
    with ``FACES_PARAMS`` pointing at the repo's params.yaml set to detect on the CPU: the
    labelled-photo input of the bench tests. ``rng`` draws the faces (default: seed 5)."""
    import yaml

    from faces_core.sample.faces import face_box, faces_image

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["annotate"]["detect"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FACES_PARAMS", str(tmp_path / "params.yaml"))
    photos = tmp_path / "photos"
    photos.mkdir()
    two = [face_box(100, 130, 110), face_box(300, 130, 110)]
    faces_image(420, 260, two, rng or random.Random(5)).save(photos / "two.jpg", quality=92)
    return photos, two
