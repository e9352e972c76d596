"""A planted secret appears nowhere: not in the Prefect database, logs, artifacts or outputs.

Defects: `faces ingest --proxy http://user:pass@host:port` became a flow-run parameter, stored
in plain text in prefect.db and shown in the UI; URL credentials inside TCS `content` were
echoed in errors.parquet's `item` column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faces_core.errors import Reason, Rejection, redact_userinfo
from faces_core.sample.tcs import write_tcs_sample
from faces_core.testing import LoopbackServer
from tests.conftest import REPO

SECRET = "pl4nted-S3cret"


def test_redact_userinfo_hides_passwords_in_any_text() -> None:
    text = f"GET http://bob:{SECRET}@img.example/a.jpg via https://p:{SECRET}@proxy:3128 failed"
    assert SECRET not in redact_userinfo(text)
    assert "http://bob:***@img.example/a.jpg" in redact_userinfo(text)
    assert redact_userinfo("http://img.example/a@b.jpg") == "http://img.example/a@b.jpg"  # an @ in a path
    rejection = Rejection("tcs", f"http://u:{SECRET}@h/x.jpg#face0", "download", Reason.TIMEOUT, f"via {SECRET}@")
    assert SECRET not in rejection.item


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "no_env_proxy")
def test_a_planted_secret_appears_nowhere(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL

    sample = write_tcs_sample(tmp_path / "sample", slow_delay=0.2)
    lines = sample.jsonl.read_text().splitlines()
    # One image URL carries a password, as a TCS export from a private host might.
    lines.append(lines[0].replace("http://tcs-sample.invalid/", f"http://alice:{SECRET}@tcs-sample.invalid/", 1))
    sample.jsonl.write_text("\n".join(lines) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text("download: {concurrency: 8, timeout_s: 2.0, retries: 1, backoff_s: 0.05, backoff_max_s: 0.2}\n")
    with LoopbackServer(sample.routes) as proxy:
        host, port = proxy.proxy_url.removeprefix("http://").split(":")
        with_password = f"http://carol:{SECRET}@{host}:{port}"
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "FACES_PARAMS": str(params)}
        cmd = [sys.executable, "-m", "flows.ingest", "--tcs", str(sample.jsonl), "--imfdb-root", "", "--workers", "1"]
        cmd += ["--out-dir", str(tmp_path / "out"), "--raw-dir", str(tmp_path / "raw"), "--no-sample-images"]
        done = subprocess.run(
            [*cmd, "--proxy", with_password], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["sources"]["tcs"]["faces"] > 0
    assert SECRET not in done.stdout + done.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    database = Path(str(PREFECT_API_DATABASE_CONNECTION_URL.value()).split("///", 1)[-1])
    stored = [p for p in database.parent.glob(database.name + "*") if p.is_file()]
    assert stored, f"no Prefect database at {database}"
    for path in stored:  # flow-run parameters, logs, artifacts, task inputs
        assert SECRET.encode() not in path.read_bytes(), path
