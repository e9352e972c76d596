"""Runs that keep no face at all (issue 7, defect 3).

An input with no rows, or one whose every item is rejected, must still write an empty
dataset that ``read_faces`` opens with the full schema, the error log and the summary,
through the Prefect flow as through the Prefect-free ``run_ingest``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from faces_core.download import DownloadSettings
from faces_core.errors import read_errors
from faces_core.ingest.pipeline import IngestSettings, run_ingest
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.storage import DATASET_SCHEMA, read_faces
from faces_core.testing import LoopbackServer, Route
from tests.reliability.bad_files import bad_files

TRUNCATED = next(case for case in bad_files() if case.name == "truncated_jpeg").data


@dataclass(frozen=True)
class Inputs:
    """Inputs of one run and the rejections it must log (source -> reason -> count)."""

    tcs: Path | None
    imfdb: Path | None
    images: dict[str, int]
    rejected: dict[str, dict[str, int]]


def _empty(tmp: Path) -> Inputs:
    """An empty TCS file and an IMFDB root with an actor and a movie folder but no rows."""
    tcs = tmp / "empty.jsonl"
    tcs.write_bytes(b"")
    root = tmp / "IMFDB_final"
    (root / "Actor" / "Movie" / "images").mkdir(parents=True)
    (root / "Actor" / "Movie" / "Movie.txt").write_bytes(b"\r\n\n")
    return Inputs(tcs, root, {"tcs": 0, "imfdb": 0}, {})


def _all_rejected(tmp: Path, server: LoopbackServer) -> Inputs:
    """Every TCS line and IMFDB row fails, at parse, download and validate stages."""
    server.add("/gone.jpg", Route(status=404, content_type="text/plain", body=b"gone"))
    face = {
        "label": ["G_Male"],
        "points": [{"x": 0.1, "y": 0.1}, {"x": 0.9, "y": 0.9}],
        "imageWidth": 100,
        "imageHeight": 100,
    }
    tcs = tmp / "bad.jsonl"
    lines = ["{not json", json.dumps({"content": server.url("/gone.jpg"), "annotation": [face]})]
    tcs.write_text("\n".join(lines) + "\n")
    movie = tmp / "IMFDB_final" / "Actor" / "Movie"
    (movie / "images").mkdir(parents=True)
    (movie / "images" / "Actor_1.jpg").write_bytes(TRUNCATED)
    row = "Movie_clip1\t0001.jpg\t{}\t10\t20\t30\t40\tMovie\t2001\tActor\tMALE\tNEUTRAL\tNONE\tMEDIUM\tYOUNG\tFRONTAL\tPARTIAL"
    (movie / "Movie.txt").write_text(row.format("Actor_1.jpg") + "\n" + row.format("Actor_2.jpg") + "\n")
    return Inputs(
        tcs,
        movie.parents[1],
        {"tcs": 1, "imfdb": 1},
        {
            "tcs": {"malformed_line": 1, "http_error": 1},
            "imfdb": {"corrupt_image": 1, "missing_crop": 1},
        },
    )


def _inputs(kind: str, tmp: Path, server: LoopbackServer) -> Inputs:
    return _empty(tmp) if kind == "empty" else _all_rejected(tmp, server)


def _assert_empty_outputs(out: Path, summary: dict[str, Any], inputs: Inputs) -> None:
    dataset = read_faces(out)
    assert dataset.schema == DATASET_SCHEMA
    assert dataset.count_rows() == 0
    assert read_faces(out, min_side=128, split="train", source="tcs").to_table().num_rows == 0
    assert (out / "faces").is_dir()
    logged: dict[str, Counter[str]] = {}
    for rejection in read_errors(out / "errors.parquet"):
        logged.setdefault(rejection.source, Counter())[str(rejection.reason)] += 1
    assert logged == inputs.rejected
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["faces"] == 0
    assert summary["rejections"] == sum(sum(c.values()) for c in inputs.rejected.values())
    assert {s: e["images"] for s, e in summary["sources"].items()} == inputs.images
    for source, entry in summary["sources"].items():
        assert (entry["faces"], entry["buckets"], entry["splits"]) == (0, {}, {})
        assert entry["rejected"] == inputs.rejected.get(source, {})


@pytest.mark.parametrize("kind", ["empty", "all_rejected"])
@pytest.mark.parametrize("sources", ["tcs", "imfdb", "both"])
def test_run_ingest_writes_an_empty_dataset(tmp_path: Path, kind: str, sources: str) -> None:
    with LoopbackServer() as server:
        inputs = _inputs(kind, tmp_path, server)
        settings = IngestSettings(
            raw_dir=str(tmp_path / "raw"),
            out_dir=str(tmp_path / "out"),
            workers=1,
            download=DownloadSettings(timeout_s=2.0, retries=0, allow_private_hosts=True),
        )
        use_tcs, use_imfdb = sources in ("tcs", "both"), sources in ("imfdb", "both")
        assert inputs.tcs is not None and inputs.imfdb is not None
        summary = run_ingest(
            read_tcs(inputs.tcs) if use_tcs else None,
            scan_imfdb(inputs.imfdb) if use_imfdb else None,
            inputs.imfdb if use_imfdb else None,
            settings,
        )
    keep = {"tcs"} if sources == "tcs" else {"imfdb"} if sources == "imfdb" else {"tcs", "imfdb"}
    expected = Inputs(
        inputs.tcs,
        inputs.imfdb,
        {s: n for s, n in inputs.images.items() if s in keep},
        {s: r for s, r in inputs.rejected.items() if s in keep},
    )
    _assert_empty_outputs(tmp_path / "out", summary, expected)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("kind", ["empty", "all_rejected"])
def test_flow_writes_an_empty_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    from flows.ingest import ingest

    params = tmp_path / "params.yaml"
    params.write_text("download: {timeout_s: 2.0, retries: 0, allow_private_hosts: true}\n")
    monkeypatch.setenv("FACES_PARAMS", str(params))
    with LoopbackServer() as server:
        inputs = _inputs(kind, tmp_path, server)
        summary = ingest(
            tcs=str(inputs.tcs),
            imfdb_root=str(inputs.imfdb),
            out_dir=str(tmp_path / "out"),
            raw_dir=str(tmp_path / "raw"),
            workers=1,
        )
    _assert_empty_outputs(tmp_path / "out", summary, inputs)
