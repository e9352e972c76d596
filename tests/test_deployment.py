"""A served `ingest` deployment triggered by name, as a user does with the Prefect CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import write_tcs_sample
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _prefect_bin() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def test_serve_and_run_deployment_by_name(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    sample = tmp_path / "sample"
    tcs = write_tcs_sample(sample / "tcs", slow_delay=4.0)
    write_imfdb_sample(sample / "imfdb" / "IMFDB_final")
    params = tmp_path / "params.yaml"
    params.write_text(
        json.dumps(
            {
                "ingest": {
                    "tcs": str(tcs.jsonl),
                    "imfdb_root": str(sample / "imfdb" / "IMFDB_final"),
                    "raw_dir": str(tmp_path / "raw"),
                    "out_dir": str(tmp_path / "processed"),
                    "workers": 1,
                },
                "download": {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.05, "backoff_max_s": 0.2},
            }
        )
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FACES_PARAMS": str(params),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run = _run_deployment(env)
        state = _wait_for_final_state(run, env)
        assert state == "COMPLETED", _tail(server)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = json.loads((tmp_path / "processed" / "summary.json").read_text())
    assert summary["sources"]["tcs"]["faces"] > 0
    assert summary["sources"]["imfdb"]["faces"] > 0


def _run_deployment(env: dict[str, str]) -> str:
    """`prefect deployment run ingest/ingest`, retried until the served deployment exists."""
    deadline = time.monotonic() + 90
    while True:
        proc = subprocess.run(
            [_prefect_bin(), "deployment", "run", "ingest/ingest"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                if "UUID" in line:
                    return line.split()[-1]
            raise AssertionError(f"no flow run id in: {proc.stdout}")
        if time.monotonic() > deadline:
            raise AssertionError(f"deployment never became available: {proc.stdout}{proc.stderr}")
        time.sleep(2)


def _wait_for_final_state(flow_run_id: str, env: dict[str, str]) -> str:
    """Poll the flow run until it is final; returns its state type."""
    deadline = time.monotonic() + 240
    state = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(
            [_prefect_bin(), "flow-run", "inspect", flow_run_id, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode == 0:
            state = json.loads(proc.stdout)["state"]["type"]
            if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return state
        time.sleep(2)
    return f"timed out in state {state!r}"


def _tail(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out[-4000:]
