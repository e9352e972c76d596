"""SIGTERM and Ctrl-C (SIGINT) stop an ingest within seconds and lose nothing.

Defect: after SIGTERM an ingest went on for about 9 minutes, waiting on download threads
stuck on a slow server. The real flow runs in a real subprocess (``python -m flows.ingest``)
against a loopback host whose slow images drip a byte a second, and gets a real signal while
those downloads are in flight. It must exit within seconds, keep every image it stored (a
re-run does not fetch them again) and leave the dataset of the previous run untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faces_core.download import MANIFEST_NAME, ImageStore
from faces_core.sample.tcs import routes_for_jsonl, write_tcs_sample
from faces_core.storage import read_faces
from faces_core.testing import LoopbackServer, Route
from flows.ingest import ingest
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

# A per-read timeout far above the drip interval and deadlines far above the test: only
# the stop can end the slow downloads.
PARAMS = """
download: {concurrency: 8, timeout_s: 30.0, attempt_timeout_s: 300.0, url_timeout_s: 600.0,
           retries: 2, backoff_s: 0.05, backoff_max_s: 0.2}
"""
STOP_WITHIN_S = 8.0
"""Signal to exit, Prefect's crash report to its API included (2 shared CPU cores)."""
HOST = "http://tcs-sample.invalid"


def _extra_lines(sample_jsonl: Path, prefix: str, n: int) -> list[str]:
    """n new, valid TCS lines: copies of the sample's first line under new image URLs."""
    first = json.loads(sample_jsonl.read_text().splitlines()[0])
    return [json.dumps({**first, "content": f"{HOST}/{prefix}/{i}.jpg"}) for i in range(n)]


def _snapshot(out: Path) -> dict[str, str]:
    """sha256 of every file under the output directory, by relative path.

    The run lock file is left out: it records the pid of whichever run last held it.
    """
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".ingest.lock"
    }


def _stored_urls(raw: Path) -> set[str]:
    manifest = raw / "images" / MANIFEST_NAME
    urls = set()
    for line in manifest.read_text().splitlines() if manifest.exists() else []:
        with contextlib.suppress(ValueError):
            urls.add(json.loads(line)["url"])
    return urls


def _interrupt(
    server: LoopbackServer,
    jsonl: Path,
    tmp: Path,
    env: dict[str, str],
    wait_stored: list[str],
    slow: list[str],
    signum: signal.Signals,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the flow in a subprocess, signal it once ``wait_stored`` are stored and ``slow`` in flight."""
    cmd = [sys.executable, "-m", "flows.ingest", "--tcs", str(jsonl), "--imfdb-root", "", "--workers", "1"]
    cmd += ["--proxy", server.proxy_url, "--out-dir", str(tmp / "out"), "--raw-dir", str(tmp / "raw")]
    cmd += ["--no-sample-images"]  # this test's own (slow) server answers the sample's host
    hits_before = {url: server.hits[url] for url in slow}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            in_flight = all(server.hits[url] > hits_before[url] for url in slow)
            if in_flight and set(wait_stored) <= _stored_urls(tmp / "raw"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"ingest ended before the signal: {proc.communicate()[1][-2000:]}"
        time.sleep(0.3)  # the slow downloads are now dripping
        sent = time.monotonic()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), took


def test_sigterm_and_sigint_stop_within_seconds_and_keep_what_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    monkeypatch.setenv("FACES_PARAMS", str(params))
    sample = write_tcs_sample(tmp_path / "sample", slow_delay=0.2)
    base_lines = sample.jsonl.read_text().splitlines()
    first_term, first_int = _extra_lines(sample.jsonl, "term", 4), _extra_lines(sample.jsonl, "int", 4)
    slow_lines = _extra_lines(sample.jsonl, "slow", 4)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join([*base_lines, *first_term, *first_int, *slow_lines]) + "\n")
    extra = routes_for_jsonl(jsonl, seed=7)
    fast = {url: route for url, route in extra.items() if "/term/" in url or "/int/" in url}
    slow = {url: route for url, route in extra.items() if "/slow/" in url}
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FACES_PARAMS": str(params),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    with LoopbackServer(sample.routes) as server:
        # 1. A successful run commits a dataset.
        ingest(
            tcs=str(sample.jsonl),
            imfdb_root="",
            workers=1,
            proxy=server.proxy_url,
            out_dir=str(tmp_path / "out"),
            raw_dir=str(tmp_path / "raw"),
        )
        committed = _snapshot(tmp_path / "out")
        assert any(name.startswith("faces/") for name in committed)
        term_urls = [json.loads(line)["content"] for line in first_term]
        int_urls = [json.loads(line)["content"] for line in first_int]
        for url in term_urls:
            server.add(url, fast[url])
        for url in slow:  # a byte a second: minutes per image, never a read timeout
            server.add(url, Route(slow[url].body, slow[url].content_type, chunk_size=1, chunk_delay=1.0))

        # 2. SIGTERM while the slow images drip, after the fast new ones are stored.
        term, term_s = _interrupt(server, jsonl, tmp_path, env, term_urls, list(slow), signal.SIGTERM)
        # 3. Ctrl-C (SIGINT) likewise, with more new images.
        for url in int_urls:
            server.add(url, fast[url])
        int_, int_s = _interrupt(server, jsonl, tmp_path, env, int_urls, list(slow), signal.SIGINT)

        for result, took, signum in ((term, term_s, signal.SIGTERM), (int_, int_s, signal.SIGINT)):
            assert took < STOP_WITHIN_S, f"{signum.name}: exited {took:.1f}s after the signal\n{result.stderr[-3000:]}"
            assert result.returncode == 128 + signum, result.stderr[-3000:]
            assert f"stopped by {signum.name}" in result.stderr
        assert _snapshot(tmp_path / "out") == committed  # previous dataset untouched
        store = ImageStore(tmp_path / "raw" / "images")
        for url in [*term_urls, *int_urls]:  # stored before the signals, still verified
            stored = store.lookup(url)
            assert stored is not None and stored.path.read_bytes() == fast[url].body
        assert not any(url in _stored_urls(tmp_path / "raw") for url in slow)  # no half image
        assert list(store.partial_dir.iterdir()) == []

        # 4. A re-run (the slow host recovered) fetches only what is missing.
        for url in slow:
            server.add(url, slow[url])
        hits = dict(server.hits)
        summary = ingest(
            tcs=str(jsonl),
            imfdb_root="",
            workers=1,
            proxy=server.proxy_url,
            out_dir=str(tmp_path / "out"),
            raw_dir=str(tmp_path / "raw"),
        )
    assert {url: server.hits[url] - hits[url] for url in [*term_urls, *int_urls]} == dict.fromkeys(
        [*term_urls, *int_urls], 0
    )
    assert all(server.hits[url] - hits[url] == 1 for url in slow)
    assert summary["faces"] > 0
    items = set(read_faces(tmp_path / "out").to_table(columns=["item"])["item"].to_pylist())
    assert {f"{url}#face0" for url in slow} <= items


def test_a_stop_that_does_not_wind_down_is_forced_after_the_grace() -> None:
    """When something swallows the stop (a Prefect API that does not answer, a thread stuck in
    a read), the command still ends: 130 after the grace, with the usual message."""
    code = """
import time
from faces_cli import ingest
with ingest._stop_within(lambda signum: "faces ingest: stopped by SIGINT (test)", grace_s=0.5):
    ready = False
    while True:
        try:
            if not ready:  # inside the try: a signal right after it is swallowed too
                print("ready", flush=True)
                ready = True
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass  # the stop is swallowed, as a hung wind-down would
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "stopped by SIGINT (test) (forced after 0.5 s of winding down)" in stderr
    assert took < 10
