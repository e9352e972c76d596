"""Hostile image files, as local IMFDB crops and downloaded from a loopback server.

Each case of :mod:`tests.reliability.bad_files` asserts its exact outcome both ways: the
face is kept with the right crop (size, format, quadrant colours, so rotation and colour
conversion are checked), or it is rejected at a named stage with a named reason. Each
source is ingested once for all cases (Prefect-free ``run_ingest``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faces_core.download import DownloadSettings
from faces_core.errors import Rejection, read_errors
from faces_core.ingest.pipeline import IngestSettings, run_ingest
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.storage import read_faces
from faces_core.testing import LoopbackServer, Route
from tests.reliability.bad_files import BadFile, Outcome, bad_files, quadrant_means

# Pillow warns above its own 89 M pixel default before our 120 M limit rejects the bomb.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

CASES = bad_files()
HOST = "http://bad-files.invalid"
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".tif": "image/tiff",
}
LABELS = "MALE\tNEUTRAL\tNONE\tMEDIUM\tYOUNG\tFRONTAL\tPARTIAL"
UNCHANGED_JPEGS = {"control_jpeg", "wide_20000px"}
"""Whole-image JPEG crops stored as they are (RGB, no EXIF rotation): bytes kept as is."""


@dataclass(frozen=True)
class Run:
    """Outcome of one ingest: kept rows and rejections by case name."""

    rows: dict[str, dict[str, Any]]
    rejections: dict[str, list[Rejection]]


def _ingest_imfdb(base: Path) -> Run:
    movie = base / "IMFDB_final" / "Actor" / "Film"
    (movie / "images").mkdir(parents=True)
    lines = []
    for case in CASES:
        (movie / "images" / case.filename).write_bytes(case.data)
        lines.append(f"Film_clip1\t0001.jpg\t{case.filename}\t10\t20\t30\t40\tFilm\t2001\tActor\t{LABELS}")
    (movie / "Film.txt").write_text("\n".join(lines) + "\n")
    root = movie.parents[1]
    out = base / "out"
    parsed = scan_imfdb(root)
    assert parsed.rejections == [] and len(parsed.records) == len(CASES)
    run_ingest(None, parsed, root, IngestSettings(out_dir=str(out), raw_dir=str(base / "raw"), workers=1))
    names = {f"Actor/Film/Film.txt:{i}": case.name for i, case in enumerate(CASES, start=1)}
    return _collect(out, names)


def _ingest_tcs(base: Path) -> Run:
    routes, lines, names = {}, [], {}
    for case in CASES:
        url = f"{HOST}/{case.filename}"
        routes[url] = Route(body=case.data, content_type=CONTENT_TYPES[case.suffix])
        width, height = case.size
        face = {
            "label": ["G_Male"],
            "points": [{"x": 0.25, "y": 0.25}, {"x": 0.75, "y": 0.75}],
            "imageWidth": width,
            "imageHeight": height,
        }
        lines.append(json.dumps({"content": url, "annotation": [face]}))
        names[f"{url}#face0"] = case.name
    jsonl = base / "bad.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    out = base / "out"
    with LoopbackServer(routes) as server:
        download = DownloadSettings(timeout_s=5.0, retries=0, proxies={"http": server.proxy_url})
        settings = IngestSettings(out_dir=str(out), raw_dir=str(base / "raw"), workers=1, download=download)
        run_ingest(read_tcs(jsonl), None, None, settings)
    return _collect(out, names)


def _collect(out: Path, names: dict[str, str]) -> Run:
    rows = {names[row["item"]]: row for row in read_faces(out).to_table().to_pylist()}
    rejections: dict[str, list[Rejection]] = {}
    for rejection in read_errors(out / "errors.parquet"):
        rejections.setdefault(names[rejection.item], []).append(rejection)
    return Run(rows, rejections)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    yield {
        "local": _ingest_imfdb(tmp_path_factory.mktemp("local")),
        "downloaded": _ingest_tcs(tmp_path_factory.mktemp("downloaded")),
    }


def _expected_region(case: BadFile, way: str) -> np.ndarray:
    """Pixels the crop must show: the whole image as an IMFDB crop, its centre half as TCS."""
    assert case.expected is not None
    if way == "local":
        return case.expected
    height, width = case.expected.shape[:2]
    return case.expected[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4]


@pytest.mark.parametrize("way", ["local", "downloaded"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_file_outcome(runs: dict[str, Run], case: BadFile, way: str) -> None:
    run = runs[way]
    outcome: Outcome = case.local if way == "local" else case.downloaded
    if not outcome.kept:
        assert case.name not in run.rows
        assert [(str(r.reason), r.stage) for r in run.rejections[case.name]] == [(outcome.reason, outcome.stage)]
        return
    assert case.name not in run.rejections
    row = run.rows[case.name]
    region = _expected_region(case, way)
    height, width = region.shape[:2]
    assert (row["width"], row["height"]) == (width, height)
    assert row["crop_format"] == case.crop_format
    with Image.open(io.BytesIO(row["crop"])) as crop:
        assert crop.size == (width, height)
        assert crop.mode == "RGB"
        got = np.array(quadrant_means(crop))
    want = np.array(quadrant_means(Image.fromarray(region)))
    assert np.abs(got - want).max() <= max(case.tolerance, 0.5), (got.round(1).tolist(), want.tolist())
    if way == "local" and case.name in UNCHANGED_JPEGS:
        assert row["crop"] == case.data


def test_every_case_has_exactly_one_outcome(runs: dict[str, Run]) -> None:
    for run in runs.values():
        assert set(run.rows).isdisjoint(run.rejections)
        assert set(run.rows) | set(run.rejections) == {c.name for c in CASES}


def test_case_list_covers_the_issue() -> None:
    names = {c.name for c in CASES}
    assert len(names) == len(CASES) == 18
    kept = {(c.name, way) for c in CASES for way, o in (("local", c.local), ("downloaded", c.downloaded)) if o.kept}
    assert len(kept) == 2 * 11
