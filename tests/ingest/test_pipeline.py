"""The Prefect-free ingest pipeline (faces_core.ingest.pipeline) and its input checks."""

from __future__ import annotations

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
