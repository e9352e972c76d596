"""Kill ingest mid-download (SIGKILL), run it again: same dataset as an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faces_core.errors import read_errors
from faces_core.sample.tcs import write_tcs_sample
from faces_core.storage import read_faces
from faces_core.testing import LoopbackServer
from flows.ingest import ingest
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

PARAMS = "download: {concurrency: 2, timeout_s: 2.0, retries: 2, backoff_s: 0.05, backoff_max_s: 0.2}\n"


def _stored_urls(raw: Path) -> set[str]:
    """URLs the manifest records as stored (a torn last line from the kill is skipped)."""
    manifest = next(raw.rglob("manifest*"), None)
    urls = set()
    for line in [] if manifest is None else manifest.read_text().splitlines():
        with contextlib.suppress(ValueError):
            urls.add(json.loads(line)["url"])
    return urls


def _manifest_lines(raw: Path) -> int:
    manifest = next(raw.rglob("manifest*"), None)
    return 0 if manifest is None else manifest.read_bytes().count(b"\n")


def test_sigkill_mid_download_then_rerun_matches_clean_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    monkeypatch.setenv("FACES_PARAMS", str(params))
    sample = write_tcs_sample(tmp_path / "sample", slow_delay=4.0)
    for route in sample.routes.values():
        route.delay = max(route.delay, 0.4)  # slow enough to kill in the middle
    with LoopbackServer(sample.routes) as server:
        args = ["--tcs", str(sample.jsonl), "--imfdb-root", "", "--workers", "1", "--proxy", server.proxy_url]
        args += ["--no-sample-images"]  # this test's slowed server answers the sample's host, not the bundled one
        killed = tmp_path / "killed"
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "FACES_PARAMS": str(params)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.ingest",
                *args,
                "--out-dir",
                str(killed / "out"),
                "--raw-dir",
                str(killed / "raw"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while _manifest_lines(killed / "raw") < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "ingest finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored_at_kill = _stored_urls(killed / "raw")
        assert 3 <= len(stored_at_kill) < len(sample.routes)
        assert not (killed / "out" / "faces").exists()

        def run_in_process(work: Path) -> None:
            ingest(
                tcs=str(sample.jsonl),
                imfdb_root="",
                workers=1,
                proxy=server.proxy_url,
                out_dir=str(work / "out"),
                raw_dir=str(work / "raw"),
            )

        hits_before = dict(server.hits)
        run_in_process(killed)
        refetched = [u for u in stored_at_kill if server.hits[u] > hits_before[u]]
        clean = tmp_path / "clean"
        run_in_process(clean)

    resumed_table = read_faces(killed / "out").to_table().sort_by("face_id")
    clean_table = read_faces(clean / "out").to_table().sort_by("face_id")
    assert resumed_table.num_rows > 0
    assert resumed_table.equals(clean_table)
    assert len(set(resumed_table["face_id"].to_pylist())) == resumed_table.num_rows

    def errors(out: Path) -> list[tuple[str, str, str]]:
        return sorted((e.item, e.stage, str(e.reason)) for e in read_errors(out / "errors.parquet"))

    assert errors(killed / "out") == errors(clean / "out")
    # Images stored before the kill were not fetched again.
    assert refetched == []
    store_files = sorted(p.name for p in (killed / "raw").rglob("*") if p.is_file() and "manifest" not in p.name)
    clean_files = sorted(p.name for p in (clean / "raw").rglob("*") if p.is_file() and "manifest" not in p.name)
    assert store_files == clean_files
