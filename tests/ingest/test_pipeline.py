"""The Prefect-free ingest pipeline (faces_core.ingest.pipeline) and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from faces_core.download import DownloadSettings
from faces_core.errors import read_errors
from faces_core.ingest.pipeline import IngestInputError, IngestSettings, check_inputs, run_ingest
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import write_tcs_sample
from faces_core.storage import read_faces
from faces_core.testing import LoopbackServer
from tests.conftest import REPO


def test_check_inputs_names_every_missing_input(tmp_path: Path) -> None:
    with pytest.raises(IngestInputError, match="nothing to ingest"):
        check_inputs("", None)
    with pytest.raises(IngestInputError, match=r"TCS file .*missing\.jsonl.*IMFDB root .*nowhere.*faces sample"):
        check_inputs(str(tmp_path / "missing.jsonl"), str(tmp_path / "nowhere"))
    (tmp_path / "a.jsonl").write_text("")
    check_inputs(str(tmp_path / "a.jsonl"), "")
    check_inputs("http://host.invalid/export.json", str(tmp_path))  # URLs are checked when fetched


def test_cli_reports_missing_inputs_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.ingest", "--tcs", str(tmp_path / "x.jsonl"), "--imfdb-root", ""],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "x.jsonl' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_ingest_both_sources_accounts_for_every_face(tmp_path: Path) -> None:
    tcs = write_tcs_sample(tmp_path / "tcs", slow_delay=4.0)
    root = tmp_path / "IMFDB_final"
    write_imfdb_sample(root)
    fast = DownloadSettings(timeout_s=2.0, retries=2, backoff_s=0.05, backoff_max_s=0.2)
    with LoopbackServer(tcs.routes) as server:
        settings = IngestSettings(
            raw_dir=str(tmp_path / "raw"),
            out_dir=str(tmp_path / "out"),
            workers=1,
            download=replace(fast, proxies={"http": server.proxy_url}),
        )
        parsed_tcs, parsed_imfdb = read_tcs(tcs.jsonl), scan_imfdb(root)
        summary = run_ingest(parsed_tcs, parsed_imfdb, root, settings)
    kept = set(read_faces(tmp_path / "out").to_table(columns=["item"])["item"].to_pylist())
    errors = read_errors(tmp_path / "out" / "errors.parquet")
    items = {r.item for r in parsed_tcs.records + parsed_imfdb.records}
    rejected_faces = {e.item for e in errors} & items
    assert kept | rejected_faces == items
    assert summary["faces"] == len(kept)
    assert summary["sources"]["tcs"]["images"] == tcs.images
    assert summary["sources"]["imfdb"]["images"] == parsed_imfdb.images
    assert {"tcs", "imfdb"} == set(summary["sources"])


def _photo(seed: int) -> bytes:
    """A 160x160 JPEG of noise (every seed different bytes)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tcs_line(url: str, x0: float) -> str:
    points = [{"x": x0, "y": 0.1}, {"x": x0 + 0.6, "y": 0.7}]
    face = {"label": ["G_Female"], "points": points, "imageWidth": 160, "imageHeight": 160}
    return json.dumps({"content": url, "annotation": [face]}) + "\n"


def test_a_tcs_file_ingested_in_chunks_gives_the_dataset_of_one_chunk(tmp_path: Path) -> None:
    """Streaming is invisible in the output: a URL whose faces fall in two chunks keeps both
    faces (its face numbers go on), an image repeating an earlier chunk's content is still a
    duplicate_image, a repeated face still a duplicate_row; ids, rows and errors all match."""
    from faces_core.ingest.pipeline import LocalSteps, ingest_run
    from faces_core.testing import Route

    host = "http://faces.test"
    lines = [
        _tcs_line(f"{host}/a.jpg", 0.1),
        _tcs_line(f"{host}/b.jpg", 0.1),
        _tcs_line(f"{host}/a.jpg", 0.3),  # the same image again, another face: in a later chunk (with c)
        _tcs_line(f"{host}/c.jpg", 0.1),  # c's bytes are b's
        _tcs_line(f"{host}/a.jpg", 0.1),  # the first face again: duplicate_row
        _tcs_line(f"{host}/d.jpg", 0.2),
    ]
    tcs = tmp_path / "faces.jsonl"
    tcs.write_text("".join(lines))
    a, b, d = _photo(1), _photo(2), _photo(3)
    routes = {f"{host}/{name}.jpg": Route(body=body) for name, body in {"a": a, "b": b, "c": b, "d": d}.items()}
    outputs = {}
    with LoopbackServer(routes) as server:
        for chunk_images in (1, 50_000):
            phases: list[str] = []
            settings = IngestSettings(
                raw_dir=str(tmp_path / "raw"),
                out_dir=str(tmp_path / f"out-{chunk_images}"),
                workers=1,
                shard_size=1,
                chunk_images=chunk_images,
                download=DownloadSettings(proxies={"http": server.proxy_url}, retries=0),
            )
            with LocalSteps(settings, on_phase=phases.append) as steps:
                summary = ingest_run(str(tcs), None, settings, steps)
            table = read_faces(settings.out_dir).to_table(columns=["face_id", "item", "image_sha256"]).to_pylist()
            errors = sorted((e.item, e.reason) for e in read_errors(Path(settings.out_dir) / "errors.parquet"))
            outputs[chunk_images] = (sorted(map(str, table)), errors, summary["faces"], phases.count("download"))
    chunked, whole = outputs[1], outputs[50_000]
    assert chunked[3] == 4 and whole[3] == 1  # chunks [a], [b], [a again, c], [a again, d]; one in all
    assert chunked[:3] == whole[:3]
    assert whole[2] == 4  # a#face0, a#face1, b#face0, d#face0 (c duplicates b; a#face2 repeats a#face0)
    assert ("http://faces.test/c.jpg#face0", "duplicate_image") in whole[1]
    assert ("http://faces.test/a.jpg#face2", "duplicate_row") in whole[1]
