"""The Prefect server going away mid-run: a clear message within seconds, data intact.

A real ``prefect server start`` on a loopback port serves the run; it is SIGKILLed while
the flow downloads. The command must exit non-zero within a bounded time (before the
watchdog, Prefect's client retried for almost 4 minutes), with a message naming the API
URL and what to do, and the output directory must still hold the previous dataset.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from faces_cli.watchdog import API_GRACE_S
from faces_core.storage import output_lock, recover
from faces_core.testing import LoopbackServer
from tests.conftest import REPO
from tests.reliability.faults import driver_args, leftovers, run_driver, snapshot, write_sample

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, dict[str, str]]]:
    """A real Prefect server on 127.0.0.1 (own PREFECT_HOME); its API URL and client env."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers form a process group: kill them all at once
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "prefect server start exited"
                assert time.monotonic() < deadline, "prefect server did not answer within 120 s"
                time.sleep(0.5)
        yield server, url, {**env, "PREFECT_API_URL": url}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_server_killed_mid_run_stops_with_a_clear_message(
    tmp_path: Path, prefect_server: tuple[subprocess.Popen[bytes], str, dict[str, str]]
) -> None:
    server, url, env = prefect_server
    sample = write_sample(tmp_path / "sample")
    # Images answer after >= 0.5 s: the run is still downloading when the server dies.
    slow = {u: dataclasses.replace(r, delay=max(r.delay, 0.5)) for u, r in sample.routes.items()}
    with LoopbackServer(slow) as images:
        done = run_driver(driver_args(sample, tmp_path / "run", images.proxy_url, tcs=False))
        assert done.returncode == 0, done.stderr
        out = tmp_path / "run" / "out"
        before = snapshot(out)
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "flows.ingest", "--tcs", str(sample.tcs.jsonl)),
                *("--imfdb-root", str(sample.imfdb_root), "--out-dir", str(out)),
                *("--raw-dir", str(tmp_path / "run" / "raw"), "--workers", "1", "--proxy", images.proxy_url),
                "--no-sample-images",  # this test's own server answers the sample's host
            ],
            cwd=REPO,
            env={**env, "FACES_PARAMS": str(tmp_path / "none.yaml")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        manifest = tmp_path / "run" / "raw" / "images" / "manifest.jsonl"
        deadline = time.monotonic() + 120
        while not (manifest.exists() and manifest.read_bytes().count(b"\n") >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the flow never started downloading"
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    print(f"\nPrefect server killed mid-download: the run stopped {took:.1f} s later")
    assert proc.returncode == 1
    assert took < API_GRACE_S + 20, f"took {took:.1f} s to stop"
    assert stderr.strip().splitlines()[-1] == (
        f"faces ingest: lost the Prefect API at {url} (no answer for {API_GRACE_S:g} s), so the run was stopped; "
        f"{out} still holds the previous dataset. Start the server again (`prefect server start`) and re-run, "
        "or unset PREFECT_API_URL to run with a temporary local server."
    )
    assert snapshot(out).same_as(before)
    with output_lock(out):  # a staging directory may remain until the next run settles it
        recover(out)
    assert leftovers(out) == []
    assert snapshot(out).same_as(before)
